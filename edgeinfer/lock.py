"""models.lock: the pinned list of models edgeinfer knows (TOML, data only)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EdgeInferError, LockFileError, UnknownModelError
from .lock_schema import ENTRY_KEYS, SOURCE_NEEDS, check_source, check_table, model_name
from .sampling import SamplingParams

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SOURCE_TYPES = tuple(SOURCE_NEEDS)
LOCK_ENV = "EDGEINFER_LOCK"  # another models.lock to use instead of the bundled one
FORMATS = ("gguf", "onnx", "hf")


@dataclass(frozen=True)
class Source:
    """One place a model can come from; ``type`` is one of SOURCE_TYPES."""

    type: str
    package: str = ""  # import name of the package holding the file(s)
    install: str = ""  # pip name of that package
    path: str = ""  # file (or folder) inside the package; for "path": the local file (absolute)
    chunks: tuple[str, ...] = ()  # "module/relative/path" pieces joined in order
    repo: str = ""
    revision: str = ""
    filename: str = ""

    def describe(self) -> str:
        if self.type == "hub":
            return f"hub {self.repo}@{self.revision[:12]}/{self.filename or '*'}"
        if self.type == "path":
            return f"path {self.path}"
        return f"package {self.install or self.package}"


@dataclass(frozen=True)
class ModelEntry:
    """A pinned model: what it is, its checksum, and where to get it."""

    name: str
    role: str
    format: str
    quantization: str
    sha256: str
    size: int
    license: str
    file: str
    sources: tuple[Source, ...]
    tier: str = ""
    description: str = ""
    aliases: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # for folder formats: the files the checksum covers
    sampling: dict[str, Any] = field(default_factory=dict)  # the model's recommended defaults


def default_lock_path() -> Path:
    """$EDGEINFER_LOCK if set, else models.lock beside the package (checkout) or inside it (wheel)."""
    env = os.environ.get(LOCK_ENV)
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "models.lock", here / "models.lock"):
        if candidate.is_file():
            return candidate
    raise LockFileError(f"models.lock not found next to {here}; reinstall edgeinfer")


def _entry(name: str, raw: Any, origin: Path) -> ModelEntry:
    """One validated entry (see lock_schema: every key known and typed, every path inside its root)."""
    where = f"{origin}: model {model_name(name, origin)!r}"
    raw = check_table(raw, ENTRY_KEYS, where)
    if raw["format"] not in FORMATS:
        raise LockFileError(f"{where} has unknown format {raw['format']!r}; known: {', '.join(FORMATS)}")
    sha = raw["sha256"].lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise LockFileError(f"{where} has a malformed sha256 (64 hex digits expected)")
    sampling = raw.get("sampling", {})
    unknown = set(sampling) - set(SamplingParams.__dataclass_fields__)
    if unknown:
        raise LockFileError(f"{where} has unknown sampling keys {sorted(unknown)}")
    try:
        SamplingParams(**sampling)
    except (TypeError, ValueError, EdgeInferError) as exc:
        raise LockFileError(f"{where}: invalid sampling defaults: {exc}") from exc
    sources = []
    for i, src in enumerate(raw["sources"]):
        src = check_source(src, f"{where}: sources[{i}]")
        if src["type"] == "path":  # relative to the lock file's folder
            src = {**src, "path": str((origin.parent / Path(src["path"]).expanduser()).resolve())}
        sources.append(Source(**{**src, "chunks": tuple(src.get("chunks", ()))}))
    return ModelEntry(
        name=name,
        role=raw["role"],
        format=raw["format"],
        quantization=raw.get("quantization", ""),
        sha256=sha,
        size=raw["size"],
        license=raw.get("license", ""),
        file=raw["file"],
        sources=tuple(sources),
        tier=raw.get("tier", ""),
        description=raw.get("description", ""),
        aliases=tuple(raw.get("aliases", ())),
        files=tuple(raw.get("files", ())),
        sampling=dict(sampling),
    )


@dataclass(frozen=True)
class ModelLock:
    """All entries of one models.lock file."""

    path: Path
    entries: dict[str, ModelEntry]

    @classmethod
    def load(cls, path: Path | None = None) -> ModelLock:
        path = Path(path) if path else default_lock_path()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise LockFileError(f"cannot read {path}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise LockFileError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise LockFileError(f"{path} is not valid TOML: {exc}") from exc
        unknown = sorted(set(data) - {"version", "models"})
        if unknown:
            raise LockFileError(f"{path} has unknown top-level key(s) {', '.join(unknown)}")
        models = data.get("models", {})
        if not isinstance(models, dict):
            raise LockFileError(f"{path}: [models] must be a table of model entries")
        return cls(path, {name: _entry(name, raw, path) for name, raw in models.items()})

    def get(self, name: str) -> ModelEntry:
        key = name.lower()
        for entry in self.entries.values():
            if key == entry.name.lower() or key in (a.lower() for a in entry.aliases):
                return entry
        raise UnknownModelError(
            f"unknown model {name!r}: it is not in {self.path.name} and is not a path to a file. "
            f"Known models: {', '.join(sorted(self.entries))} (see `edgeinfer list`)"
        )

    def by_role(self, role: str) -> list[ModelEntry]:
        return [e for e in self.entries.values() if e.role == role]


# --- adding entries (`edgeinfer lock add`) -------------------------------------------------------
ROLES = ("chat", "base", "embedding")
TIERS = ("small", "large")
_NEW_LOCK_HEADER = (
    "# models.lock: models pinned by sha256 (written by `edgeinfer lock add`).\n"
    "# A file is used only after its sha256 matches. \"path\" sources are relative to this file.\n"
)


def _header_comments(text: str) -> str:
    """The comment block at the top of a lock file, re-emitted on a rewrite (tomli_w drops comments)."""
    lines = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        lines.append(line)
    block = "\n".join(lines).strip("\n")
    return block + "\n" if block else ""


def _gguf_meta(path: Path) -> dict[str, Any]:
    """general.file_type (as a name) and general.license of a GGUF, where present and readable."""
    from .errors import CorruptModelError
    from .gguf_check import file_type_name, read_gguf_header

    try:
        metadata = read_gguf_header(path).metadata
    except CorruptModelError:
        return {}
    out: dict[str, Any] = {}
    if isinstance(metadata.get("general.file_type"), int):
        out["quantization"] = file_type_name(metadata["general.file_type"])
    if metadata.get("general.license"):
        out["license"] = str(metadata["general.license"])
    return out


def _report_quant(artifact: Path) -> str:
    """The quant recorded in the artifact's report.json (X.report.json, or folder/report.json)."""
    import json

    if artifact.is_dir():
        report = artifact / "report.json"
    else:
        report = artifact.with_name(f"{artifact.stem}.report.json")
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(data.get("quant") or "") if isinstance(data, dict) else ""


def artifact_record(artifact: Path) -> dict[str, Any]:
    """format, sha256, size, file(s) and quantization of a local artifact, as models.lock stores them."""
    from .backends import format_of
    from .gguf_check import require_gguf_magic
    from .hashing import cached_digest, sha256_file, sha256_tree

    artifact = Path(artifact).expanduser().resolve()
    if not artifact.exists():
        raise LockFileError(f"{artifact}: no such file or folder; pass a .gguf file or a model folder")
    fmt = format_of(artifact)
    if fmt not in FORMATS:
        raise LockFileError(
            f"{artifact} is not a model artifact edgeinfer knows: pass a .gguf file, an ONNX folder "
            "(with model.onnx) or a Hugging Face folder (with config.json)"
        )
    meta: dict[str, Any] = {}
    record: dict[str, Any] = {"format": fmt, "file": artifact.name}
    if artifact.is_dir():
        files = sorted(
            p.relative_to(artifact).as_posix() for p in artifact.rglob("*")
            if p.is_file() and p.relative_to(artifact).as_posix() != "report.json"
        )
        record["files"] = files
        record["size"] = sum((artifact / f).stat().st_size for f in files)
        members = [artifact / f for f in files]
        record["sha256"] = cached_digest(artifact, members, lambda p: sha256_tree(p, files),
                                         trust_stamp=False)
    else:
        require_gguf_magic(artifact)
        record["size"] = artifact.stat().st_size
        record["sha256"] = cached_digest(artifact, [artifact], sha256_file, trust_stamp=False)
        meta = _gguf_meta(artifact)
    record["quantization"] = _report_quant(artifact) or meta.get("quantization", "")
    record["license"] = meta.get("license", "")
    return record


def add_entry(
    artifact: Path,
    *,
    name: str,
    role: str = "chat",
    tier: str = "",
    description: str = "",
    license: str | None = None,
    lock_path: Path | None = None,
    force: bool = False,
) -> ModelEntry:
    """Pin a local artifact in models.lock under ``name`` (a "path" source), keeping the other entries.

    ``license`` defaults to the GGUF's general.license, else "unknown". An existing name is refused
    unless ``force``. A new entry is appended to the file as text (its comments survive); a replaced
    one rewrites the file with tomli_w and re-emits the header comment block.
    """
    import tomli_w

    from .paths import atomic_write

    key = model_name(name.strip(), "edgeinfer lock add").lower()
    if role not in ROLES:
        raise LockFileError(f"invalid role {role!r}: choose one of {', '.join(ROLES)}")
    if tier and tier not in TIERS:
        raise LockFileError(f"invalid tier {tier!r}: choose one of {', '.join(TIERS)}")
    lock_path = Path(lock_path).expanduser() if lock_path else default_lock_path()
    try:
        text = lock_path.read_text(encoding="utf-8") if lock_path.exists() else ""
        data = tomllib.loads(text) if text else {}
    except OSError as exc:
        raise LockFileError(f"cannot read {lock_path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise LockFileError(f"{lock_path} is not valid TOML: {exc}; fix it before adding models") from exc
    models: dict[str, Any] = data.setdefault("models", {})
    existing = next((k for k in models if k.lower() == key), None)
    for other, raw in models.items():
        if other != existing and key in (str(a).lower() for a in raw.get("aliases", ())):
            raise LockFileError(f"{name!r} is an alias of {other!r} in {lock_path}; choose another name")
    if existing is not None and not force:
        raise LockFileError(f"{name!r} is already in {lock_path}; pass --force to replace it")

    record = artifact_record(artifact)
    where = Path(artifact).expanduser().resolve()
    try:  # inside the lock's folder: store it relative, so the folder can move as a whole
        source_path = where.relative_to(lock_path.resolve().parent).as_posix()
    except ValueError:
        source_path = str(where)
    raw_entry: dict[str, Any] = {}
    if description:
        raw_entry["description"] = description
    raw_entry["role"] = role
    if tier:
        raw_entry["tier"] = tier
    raw_entry.update(
        format=record["format"],
        quantization=record["quantization"],
        sha256=record["sha256"],
        size=record["size"],
        license=license or record["license"] or "unknown",
        file=record["file"],
    )
    if "files" in record:
        raw_entry["files"] = record["files"]
    raw_entry["sources"] = [{"type": "path", "path": source_path}]

    if existing is None and text:
        new_text = text.rstrip("\n") + "\n\n" + tomli_w.dumps({"models": {name: raw_entry}})
    else:
        models.pop(existing, None)
        models[name] = raw_entry
        data.setdefault("version", 1)
        body = tomli_w.dumps({"version": data.pop("version"), **data})
        new_text = (_header_comments(text) or _NEW_LOCK_HEADER) + body
    try:  # never write a lock file that would not load back
        entry = _entry(name, tomllib.loads(new_text)["models"][name], lock_path)
    except (tomllib.TOMLDecodeError, KeyError) as exc:  # pragma: no cover - tomli_w output is valid
        raise LockFileError(f"could not add {name!r} to {lock_path}: {exc}") from exc
    with atomic_write(lock_path, "w") as handle:
        handle.write(new_text)
    return entry
