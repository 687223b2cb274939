"""Artifacts prepared before load: the plan (which transform a pinned model gets, and where its output
lives in the cache), never the work.

Three transforms exist: a pinned Hugging Face checkpoint becomes a GGUF (llama.cpp runs it): an embedding
model in F16, a language model in the type its entry pins (``edgeinfer pull hf:…`` chose it); a GGUF
with a shipped vocabulary shortlist gets its vocabulary cut to the translator's languages; and a GGUF
meant for the ONNX backend becomes an ONNX folder with its own quantized weights: asked for
(``backend="onnx"``, ``edgeinfer pull NAME --backend onnx``), or where its lock entry says onnxruntime
runs it faster on a CPU (``cpu_backend = "onnx"``, the default chat model). The converters package does
the work at pull time (``edgeinfer pull NAME``, ``edgeinfer_converters.prepare(NAME, backend="auto")``,
or the first command that loads it); the runtime only looks for the results, so ``ei.load`` only loads.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Collection
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .backends import format_of
from .hashing import cached_digest, sha256_file
from .lock import ModelEntry
from .paths import cache_root

CHECKPOINT_GGUF = "checkpoint-gguf"  # a pinned HF checkpoint converted to a GGUF
CHECKPOINT_DEFAULT_QUANT = "Q8_0"  # for a checkpoint pinned without a type (`edgeinfer lock add FOLDER`)
SHORTLIST = "shortlist"  # a GGUF's vocabulary cut to the languages of a shipped shortlist
GGUF_ONNX = "gguf-onnx"  # a GGUF as an ONNX folder with the GGUF's own weights (for the onnx backend)
KINDS = (CHECKPOINT_GGUF, SHORTLIST)  # what every model gets; GGUF_ONNX only where it runs on onnx
ONNX_MODULES = ("onnxruntime", "onnx", "tokenizers")  # what making (and running) an ONNX folder takes


@dataclass(frozen=True)
class Located:
    """A model on disk, and its models.lock entry when it came from one."""

    path: Path
    name: str
    entry: ModelEntry | None = None


@dataclass(frozen=True)
class Preparation:
    """One transform of ``source`` into ``target`` (in the cache), done once before load."""

    kind: str  # CHECKPOINT_GGUF, SHORTLIST or GGUF_ONNX
    source: Path
    target: Path
    recipe: Path | None = None  # the shipped shortlist file, for SHORTLIST
    description: str = ""
    quant: str = ""  # the GGUF type, for CHECKPOINT_GGUF
    model_name: str = ""  # its name inside the GGUF, for CHECKPOINT_GGUF (the repo's, not a commit id)

    @property
    def done(self) -> bool:
        return self.target.is_file() or (self.target / "edgeinfer.json").is_file()  # a GGUF, or a folder


def can_make_onnx_folders() -> bool:
    """Whether what makes an ONNX folder from a GGUF, and runs it, is installed (without importing it)."""
    return all(importlib.util.find_spec(name) is not None for name in ONNX_MODULES)


def runs_on_onnx(entry: ModelEntry | None, backend: str = "auto") -> bool:
    """Whether a GGUF is meant for the onnx backend: asked for, or, for "auto", where its models.lock
    entry says onnxruntime runs it faster on a CPU and onnxruntime is installed."""
    if backend != "auto":
        return backend == "onnx"
    return entry is not None and entry.cpu_backend == "onnx" and can_make_onnx_folders()


def kinds_for(located: Located, backend: str = "auto", kinds: Collection[str] = KINDS) -> tuple[str, ...]:
    """The transforms of ``kinds`` that ``located`` gets before it is loaded on ``backend``, plus its ONNX
    folder where it runs on the onnx backend (see ``runs_on_onnx``)."""
    return (*kinds, GGUF_ONNX) if runs_on_onnx(located.entry, backend) else tuple(kinds)


def prepared_dir() -> Path:
    return cache_root() / "converted"


def shortlists_dir() -> Path:
    return Path(str(resources.files("edgeinfer") / "data" / "shortlists"))


def shortlist_for(model_sha256: str) -> tuple[Path, dict] | None:
    """The shipped shortlist built for this exact model file (its path and header), if any."""
    for path in sorted(shortlists_dir().glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if model_sha256 in data.get("models", []):
            return path, data
    return None


def preparations(located: Located, kinds: Collection[str] = KINDS) -> list[Preparation]:
    """The transforms of ``kinds`` that ``located`` gets before it is used (none for most models). Only
    what is asked is looked at: finding a shortlist may hash an unpinned file."""
    path, entry = located.path, located.entry
    fmt = format_of(path)
    if fmt == "hf" and entry is not None and CHECKPOINT_GGUF in kinds:
        quant = checkpoint_quant(entry)
        return [Preparation(CHECKPOINT_GGUF, path, checkpoint_target(entry, quant), quant=quant,
                            model_name=entry.file,
                            description=f"converting the checkpoint to GGUF ({quant})")]
    if fmt != "gguf" or not {GGUF_ONNX, SHORTLIST} & set(kinds):
        return []  # before hashing: an unpinned file is hashed only when a transform may apply
    sha = entry.sha256 if entry else cached_digest(path, [path], sha256_file)
    plans = []
    if GGUF_ONNX in kinds:
        plans.append(Preparation(GGUF_ONNX, path, prepared_dir() / f"{path.stem}-{sha[:16]}-onnx",
                                 description="converting it to an ONNX folder with its own weights"))
    found = shortlist_for(sha) if SHORTLIST in kinds else None
    if found is not None:
        recipe, data = found
        name = str(data.get("name", recipe.stem))
        target = prepared_dir() / f"{path.stem}-{sha[:16]}-{name}.gguf"
        description = f"cutting the vocabulary to {data.get('description') or name}"
        plans.append(Preparation(SHORTLIST, path, target, recipe=recipe, description=description))
    return plans


def checkpoint_quant(entry: ModelEntry) -> str:
    """The GGUF type a pinned checkpoint is converted to: F16 for an embedding model (no next-token quality
    to trade), else the type its entry pins."""
    if entry.role == "embedding":
        return "F16"
    quant = entry.quantization.strip().upper()
    return quant if quant and quant != "AUTO" else CHECKPOINT_DEFAULT_QUANT


def checkpoint_target(entry: ModelEntry, quant: str) -> Path:
    """Where the cache keeps the GGUF made from a pinned checkpoint."""
    return prepared_dir() / f"{entry.name}-{entry.sha256[:16]}-{quant}.gguf"


def prepared(located: Located, kind: str) -> Preparation | None:
    """The ``kind`` transform planned for ``located``, whether or not it has been done yet."""
    return next(iter(preparations(located, (kind,))), None)
