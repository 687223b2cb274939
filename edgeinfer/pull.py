"""``edgeinfer pull hf:ORG/REPO[@REVISION][:FILE]``: choose what to download (a GGUF file for this
machine, or the files a conversion reads), download it verified (``edgeinfer.hub``), and pin it in the
user's models.lock with the resolved commit and every file's sha256.

A safetensors repo is converted by a ``Converter`` (``edgeinfer_converters.hub_pull``): the runtime
downloads and pins, it never converts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import (
    GatedModelError,
    LockFileError,
    ModelNotAvailableError,
    ModelNotPreparedError,
    UnknownModelError,
)
from .hashing import sha256_tree
from .hub import (
    HF_PREFIX,
    HubSpec,
    RemoteFile,
    RepoListing,
    checkpoint_folder,
    download,
    is_model_gguf,
    list_repo,
    offline_advice,
    parse_spec,
)
from .lock import ModelEntry, ModelLock, pin_entry
from .lock_schema import model_name
from .untrusted import relative_path

# GGUF types as they appear in file names, and the order a pull picks them in: 4-bit K-quants first (the
# best quality per byte where decoding is bandwidth-bound, and what llama.cpp runs without repacking), then
# the other 4-bit types, then larger ones, then smaller ones. A file needs RAM for itself and its context.
PICK_ORDER = ("Q4_K_M", "Q4_K_S", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_1", "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1",
              "Q6_K", "Q8_0", "Q3_K_L", "Q3_K_M", "IQ3_M", "Q3_K_S", "IQ3_S", "IQ3_XS", "IQ3_XXS", "Q2_K_L",
              "Q2_K", "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S", "F16", "BF16", "F32")
RAM_SHARE = 0.75  # a picked file's size times RAM_HEADROOM must fit in this share of the available RAM
RAM_HEADROOM = 1.2  # the file plus its KV cache and compute buffers, roughly
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.I)

# What a conversion reads from a safetensors repo (weights come from the index when sharded).
CHECKPOINT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                    "chat_template.json", "vocab.json", "merges.txt")
WEIGHTS_INDEX = "model.safetensors.index.json"
# Where a repo states its recommended sampling -> edgeinfer's SamplingParams field: a checkpoint's
# generation_config.json, a GGUF's general.sampling.* metadata. Copied into the entry's defaults.
GENERATION_CONFIG_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                              "min_p": "min_p", "repetition_penalty": "repeat_penalty"}
GGUF_SAMPLING = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
                 "general.sampling.top_k": "top_k", "general.sampling.min_p": "min_p",
                 "general.sampling.penalty_repeat": "repeat_penalty",
                 "general.sampling.penalty_last_n": "repeat_last_n"}
MAX_JSON_BYTES = 16 << 20  # a config or index larger than this is not one

# --- choosing what to download ---------------------------------------------------------------------
def quant_in_name(filename: str) -> str:
    """The GGUF type a file name states (e.g. "Q4_K_M" in "Llama-3.2-1B-Instruct-Q4_K_M.gguf"), or ""."""
    upper = Path(filename).name.upper()
    for quant in sorted(PICK_ORDER, key=len, reverse=True):
        if re.search(rf"(?<![A-Z0-9]){quant}(?![A-Z0-9_])", upper):
            return quant
    return ""


def pick_order(cpu_features: frozenset[str] | set[str]) -> tuple[tuple[str, ...], str]:
    """The order GGUF types are picked in on this CPU, and why: PICK_ORDER where the CPU has the SIMD
    dot products llama.cpp's 4-bit kernels use; else Q8_0 first (the simplest kernels, see
    ``device.fastest_cpu_quants``)."""
    from .device import QUANT_SPEED_RULES

    if any(feature in cpu_features for feature, _, _ in QUANT_SPEED_RULES):
        return PICK_ORDER, "4-bit K-quants first"
    return ("Q8_0", *(t for t in PICK_ORDER if t != "Q8_0")), "Q8_0 first: this CPU lacks SIMD dot products"


def pick_gguf(listing: RepoListing, *, quant: str | None = None, ram_available: int | None = None,
              order: tuple[tuple[str, ...], str] = (PICK_ORDER, "4-bit K-quants first"),
              ) -> tuple[RemoteFile, str]:
    """The GGUF file to download, and why: the spec's file, else the ``quant`` asked for, else the first
    type of ``order`` (``pick_order``) whose file fits in RAM_SHARE of the available RAM."""
    spec = listing.spec
    if spec.file:
        remote = listing.files.get(spec.file)
        if remote is None:
            raise UnknownModelError(f"{spec.repo} has no file {spec.file!r} at {listing.commit[:12]}")
        return remote, "named in the spec"
    ggufs = [f for f in listing.files.values() if is_model_gguf(f.name)]
    whole = [f for f in ggufs if not _SPLIT.search(f.name)]
    if not whole:
        detail = " (only split files: NAME-00001-of-0000N.gguf)" if ggufs else ""
        raise ModelNotAvailableError(f"{spec.repo} has no single-file GGUF model{detail}; edgeinfer pulls "
                                     "one file: name it with hf:ORG/REPO:FILE")
    by_type = {}
    for remote in sorted(whole, key=lambda f: f.name):
        by_type.setdefault(quant_in_name(remote.name), remote)
    if quant:
        wanted = quant.strip().upper()
        if wanted not in by_type:
            known = ", ".join(t for t in PICK_ORDER if t in by_type) or "none named"
            raise UnknownModelError(f"{spec.repo} has no {wanted} file; its types: {known}")
        return by_type[wanted], f"--quant {wanted}"
    limit = None if ram_available is None else ram_available * RAM_SHARE
    types, rule = order
    ranked = [by_type[t] for t in types if t in by_type] + ([by_type[""]] if "" in by_type else [])
    for remote in ranked:
        if limit is None or remote.size is None or remote.size * RAM_HEADROOM <= limit:
            kind = quant_in_name(remote.name) or "unnamed type"
            room = f"; fits in {limit / 2**30:.1f} GiB" if limit is not None else ""
            return remote, f"{kind}: the first type of this repo in the pick order ({rule}){room}"
    smallest = min(ranked, key=lambda f: f.size or 0)
    raise ModelNotAvailableError(
        f"{spec.repo}: even its smallest file ({smallest.name}, {(smallest.size or 0) / 2**30:.1f} GiB) "
        f"needs more than the RAM available here ({(ram_available or 0) / 2**30:.1f} GiB); choose another "
        "model")


def checkpoint_files(listing: RepoListing, read_index: Callable[[str], Path]) -> list[str]:
    """The files a conversion needs from a safetensors repo: configs and tokenizer files present, and the
    weights (every shard the index names, else model.safetensors)."""
    spec = listing.spec
    names = [n for n in CHECKPOINT_FILES if n in listing.files]
    if WEIGHTS_INDEX in listing.files:
        index = _small_json(read_index(WEIGHTS_INDEX), WEIGHTS_INDEX)
        shards = sorted({str(v) for v in (index.get("weight_map") or {}).values()})
        bad = [s for s in shards if not relative_path(s) or s not in listing.files]
        if not shards or bad:
            raise ModelNotAvailableError(f"{spec.repo}: {WEIGHTS_INDEX} names shards the repo does not have "
                                         f"({', '.join(bad[:3]) or 'none'})")
        return [*names, WEIGHTS_INDEX, *shards]
    if "model.safetensors" not in listing.files:
        others = sorted(n for n in listing.files if n.endswith(".safetensors"))
        raise ModelNotAvailableError(
            f"{spec.repo} has no model.safetensors (nor an index); found {', '.join(others[:5]) or 'none'}. "
            "Name a GGUF file with hf:ORG/REPO:FILE, or download and convert it yourself")
    return [*names, "model.safetensors"]


def _small_json(path: Path, what: str) -> dict[str, Any]:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ModelNotAvailableError(f"{what} is larger than {MAX_JSON_BYTES >> 20} MB; not a config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelNotAvailableError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelNotAvailableError(f"{what} is not a JSON object")
    return data


def sampling_defaults(values: dict[str, Any], table: dict[str, str]) -> dict[str, Any]:
    """The sampling a repo recommends, as SamplingParams fields; a value SamplingParams refuses (or one that
    is not a number) is left out, so a strange config never makes an entry that does not load."""
    from .sampling import SamplingParams

    out: dict[str, Any] = {}
    if values.get("do_sample") is False:  # the repo asks for greedy decoding
        out["temperature"] = 0.0
    for key, field_name in table.items():
        value = values.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or field_name in out:
            continue
        value = int(value) if field_name in ("top_k", "repeat_last_n") else float(value)
        try:
            SamplingParams(**{**out, field_name: value})
        except Exception:  # noqa: BLE001 - any refusal means: not a usable default
            continue
        out[field_name] = value
    return out


# --- pulling --------------------------------------------------------------------------------------
class Converter(Protocol):
    """What ``pull`` needs from the converters for a safetensors repo (``edgeinfer_converters``)."""

    def refuse(self, config: dict[str, Any]) -> str | None:
        """Why this config cannot be converted (an unknown architecture), or None; asked before any
        weights are downloaded."""

    def is_encoder(self, config: dict[str, Any]) -> bool:
        """An embedding model (no next-token logits: converted to F16, pinned with role "embedding")."""

    def convert(self, folder: Path, entry: ModelEntry, quant: str, on_progress: Callable[[str], None]) -> str:
        """Convert the downloaded checkpoint for ``entry`` (quant "auto" picks one); the type made."""


@dataclass
class PullResult:
    """What a pull pinned, and how."""

    entry: ModelEntry
    lock: Path
    files: dict[str, str] = field(default_factory=dict)  # file -> sha256
    why: str = ""  # why this file or type
    already: bool = False  # the same commit and file were pinned before: nothing was downloaded


def default_name(listing: RepoListing, lock: ModelLock, quant: str = "") -> str:
    """A models.lock name from the repo name: lower case, "-GGUF" dropped, the type added for GGUF; the
    owner added when another model (a packaged one, say) has that name."""
    org, repo = listing.spec.repo.lower().split("/")
    base = re.sub(r"[-_.]gguf$", "", repo)
    if quant and quant.lower() not in base:
        base = f"{base}-{quant.lower()}"
    candidates = [base, f"{base}-{org}"]
    for candidate in candidates:
        name = re.sub(r"[^a-z0-9._-]", "-", candidate)[:100].strip("-._") or "hub-model"
        taken = _existing(name, lock)
        if taken is None or _from_repo(taken, listing):
            return model_name(name, "the repo name")
    raise LockFileError(f"the names {' and '.join(candidates)} are taken; choose one with --name")


def find_pinned(spec: HubSpec, lock: ModelLock | None = None) -> ModelEntry | None:
    """The last entry pinned from ``spec``'s repo (and its commit and file, when the spec names them)."""
    lock = lock or ModelLock.load()
    found = None
    for entry in lock.entries.values():
        for src in entry.sources:
            if src.type != "hub" or src.repo.lower() != spec.repo.lower():
                continue
            if spec.file and (src.filename or entry.file) != spec.file:
                continue
            if spec.revision and _looks_like_commit(spec.revision) and \
                    not src.revision.startswith(spec.revision.lower()):
                continue  # a branch or tag name cannot be checked offline: any pinned commit will do
            found = entry
    return found


def _looks_like_commit(revision: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{7,40}", revision))


def pull(spec: HubSpec | str, *, name: str | None = None, quant: str | None = None, role: str | None = None,
         force: bool = False, offline: bool | None = None, converter: Converter | None = None,
         progress: bool = True, on_progress: Callable[[str], None] | None = None,
         ram_available: int | None = None) -> PullResult:
    """Download ``spec`` (verified), convert a safetensors repo with ``converter``, pin it in the user's
    models.lock (or $EDGEINFER_LOCK); already pinned and present, nothing is downloaded."""
    from .lock import default_lock_path
    from .sources import is_offline

    spec = parse_spec(spec) if isinstance(spec, str) else spec
    say = on_progress or (lambda _text: None)
    lock_path = default_lock_path()
    lock = ModelLock.load()
    pinned = find_pinned(spec, lock)
    if is_offline(offline):
        if pinned is None:
            raise ModelNotAvailableError(offline_advice(spec))
        return PullResult(pinned, lock_path, why="pinned before (offline)", already=True)
    try:
        listing = list_repo(spec)
    except ModelNotAvailableError as exc:  # the hub unreachable: what is pinned (and cached) still serves
        if pinned is None or isinstance(exc, GatedModelError):
            raise
        from .sources import resolve

        resolve(pinned, offline=True)
        say(f"{exc}\n{spec}: kept the pinned commit")
        return PullResult(pinned, lock_path, why="the hub is unreachable: kept the pinned commit",
                          already=True)
    say(f"{spec.repo}: commit {listing.commit[:12]}")
    if listing.kind == "gguf":
        return _pull_gguf(listing, lock, name, quant, role, force, progress, say, ram_available, lock_path)
    if listing.kind == "safetensors":
        return _pull_checkpoint(listing, lock, name, quant, role, force, progress, say, converter, lock_path)
    raise ModelNotAvailableError(
        f"{spec.repo} at {listing.commit[:12]} holds neither a GGUF file nor a safetensors checkpoint "
        "(config.json + *.safetensors); edgeinfer pulls those two kinds")


def _same_pin(entry: ModelEntry | None, listing: RepoListing, filename: str) -> bool:
    return entry is not None and any(
        s.type == "hub" and s.repo.lower() == listing.spec.repo.lower() and s.revision == listing.commit
        and (s.filename or entry.file) == filename for s in entry.sources)


def _existing(name: str, lock: ModelLock) -> ModelEntry | None:
    try:
        return lock.get(name)
    except UnknownModelError:
        return None


def _pull_gguf(listing: RepoListing, lock: ModelLock, name: str | None, quant: str | None, role: str | None,
               force: bool, progress: bool, say: Callable[[str], None], ram_available: int | None,
               lock_path: Path) -> PullResult:
    from .loader import cached_probe
    from .lock import gguf_metadata, gguf_record

    probe = cached_probe()
    remote, why = pick_gguf(listing, quant=quant, order=pick_order(probe.cpu_features),
                            ram_available=probe.ram_available if ram_available is None else ram_available)
    say(f"{listing.spec.repo}: {remote.name} ({why})")
    name = name or default_name(listing, lock, quant_in_name(remote.name))
    existing = _existing(name, lock)
    if _same_pin(existing, listing, remote.name) and not force:
        from .sources import resolve

        resolve(existing, progress=progress)  # present and intact, or fetched again
        return PullResult(existing, lock_path, why=why, already=True)
    path, sha = download(listing, remote.name, progress=progress)
    metadata = gguf_metadata(path)
    record = gguf_record(metadata)
    raw = _raw_entry(listing, record, role or record.pop("role"), quant_in_name(remote.name))
    raw.update(sha256=sha, size=path.stat().st_size, file=Path(remote.name).name)
    if sampling := sampling_defaults(metadata, GGUF_SAMPLING):
        raw["sampling"] = sampling
    raw["sources"] = [{"type": "hub", "repo": listing.spec.repo, "revision": listing.commit,
                       "filename": remote.name}]
    entry = pin_entry(name, raw, lock_path=lock_path, force=force or _from_repo(existing, listing))
    return PullResult(entry, lock_path, {remote.name: sha}, why)


def _pull_checkpoint(listing: RepoListing, lock: ModelLock, name: str | None, quant: str | None,
                     role: str | None, force: bool, progress: bool, say: Callable[[str], None],
                     converter: Converter | None, lock_path: Path) -> PullResult:
    spec = listing.spec
    if converter is None:
        raise ModelNotPreparedError(
            f"{spec} is a safetensors checkpoint, converted to GGUF once when it is pulled: run "
            f"`edgeinfer pull {spec}` (it needs pip install 'edgeinfer[convert]')")
    name = name or default_name(listing, lock)
    config_path, _ = download(listing, "config.json", progress=False)
    config = _small_json(config_path, f"{spec.repo}/config.json")
    refusal = converter.refuse(config)
    if refusal:
        raise ModelNotAvailableError(f"{spec.repo} cannot be converted: {refusal}")
    encoder = converter.is_encoder(config)
    quant = quant or ("F16" if encoder else "auto")
    files = checkpoint_files(listing, lambda n: download(listing, n, progress=False)[0])
    existing = _existing(name, lock)
    if existing is not None and not force and not _from_repo(existing, listing):
        raise LockFileError(f"{name!r} is already pinned ({existing.origin}); pass --name or --force")
    if _same_pin(existing, listing, existing.file if existing else "") and not force and _converted(existing):
        from .sources import resolve

        resolve(existing, progress=progress)  # the checkpoint present and intact, or fetched again
        return PullResult(existing, lock_path, why="converted before", already=True)
    checksums, paths = {}, {}
    for file in files:
        paths[file], checksums[file] = download(listing, file, progress=progress)
    folder = checkpoint_folder(paths)
    assert folder is not None  # config.json is at the top of every checkpoint
    role = role or ("embedding" if encoder else "chat" if _has_template(folder) else "base")
    raw = _raw_entry(listing, {}, role, "")
    raw.update(sha256=sha256_tree(folder, files), size=sum((folder / f).stat().st_size for f in files),
               file=spec.repo.split("/")[-1], files=files)
    if "generation_config.json" in files and (sampling := sampling_defaults(
            _small_json(folder / "generation_config.json", "generation_config.json"),
            GENERATION_CONFIG_SAMPLING)):
        raw["sampling"] = sampling
    raw["sources"] = [{"type": "hub", "repo": spec.repo, "revision": listing.commit, "checksums": checksums}]
    from .lock import entry_from_raw

    draft = entry_from_raw(name, {**raw, "quantization": quant}, lock_path)
    made = converter.convert(folder, draft, quant, say)
    raw["quantization"] = made
    entry = pin_entry(name, raw, lock_path=lock_path, force=True)
    return PullResult(entry, lock_path, checksums, f"converted to {made}")


def _converted(entry: ModelEntry | None) -> bool:
    """The GGUF made from a pinned checkpoint is in the cache."""
    from .prepared import checkpoint_quant, checkpoint_target

    return entry is not None and checkpoint_target(entry, checkpoint_quant(entry)).is_file()


def _from_repo(entry: ModelEntry | None, listing: RepoListing) -> bool:
    """An entry pinned from the same repo before (another commit): a pull may update it in place."""
    return entry is not None and entry.origin != "packaged" and any(
        s.type == "hub" and s.repo.lower() == listing.spec.repo.lower() for s in entry.sources)


def _has_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and "chat_template" in _small_json(config, "tokenizer_config.json")


def _raw_entry(listing: RepoListing, record: dict[str, Any], role: str, quant: str) -> dict[str, Any]:
    return {
        "description": f"pulled from {HF_PREFIX}{listing.spec.repo}@{listing.commit[:12]}",
        "role": role, "format": "hf" if not record else "gguf",
        "quantization": record.get("quantization") or quant,
        "license": listing.license or record.get("license") or "unknown",
    }
