"""models.lock: the pinned list of models edgeinfer knows (TOML, data only).

Two layers: the packaged models.lock (the project's, tracked, never written by a command) and the user's
own (``models.lock`` in the config folder, $EDGEINFER_CONFIG), where ``edgeinfer lock add`` pins their
models; its entries come after the packaged ones and may not take a packaged name. $EDGEINFER_LOCK names
one file to use instead of both (and to write to).
"""

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
LOCK_ENV = "EDGEINFER_LOCK"  # another models.lock to use instead of the packaged and user ones
PACKAGED, USER = "packaged", "user"  # where an entry comes from (or the path of a $EDGEINFER_LOCK file)
FORMATS = ("gguf", "onnx", "hf")
# what an entry's ``cpu_backend`` may name: "onnx" runs a GGUF's own weights as an ONNX folder made from it
# at pull time (edgeinfer.prepared.GGUF_ONNX); "llama.cpp" (the default for a GGUF) needs nothing
CPU_BACKENDS = ("llama.cpp", "onnx")


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
    checksums: tuple[tuple[str, str], ...] = ()  # (file, sha256) of the hub files a conversion read

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
    cpu_backend: str = ""  # the backend measured fastest for it on a CPU, when not its format's default
    origin: str = PACKAGED  # which lock it comes from: PACKAGED, USER, or the path of another file


def packaged_lock_path() -> Path:
    """The models.lock shipped with edgeinfer: beside the package (checkout) or inside it (wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "models.lock", here / "models.lock"):
        if candidate.is_file():
            return candidate
    raise LockFileError(f"models.lock not found next to {here}; reinstall edgeinfer")


def user_lock_path() -> Path:
    """The user's own models.lock (it need not exist yet)."""
    from .paths import config_root

    return config_root() / "models.lock"


def default_lock_path() -> Path:
    """Where commands pin models: $EDGEINFER_LOCK if set, else the user's own models.lock."""
    env = os.environ.get(LOCK_ENV)
    return Path(env).expanduser() if env else user_lock_path()


def _entry(name: str, raw: Any, origin: Path, layer: str = PACKAGED) -> ModelEntry:
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
    cpu_backend = raw.get("cpu_backend", "")
    if cpu_backend and (cpu_backend not in CPU_BACKENDS or raw["format"] != "gguf"):
        raise LockFileError(f"{where}: invalid cpu_backend {cpu_backend!r}: a gguf entry may name one of "
                            f"{', '.join(CPU_BACKENDS)}")
    sources = []
    for i, src in enumerate(raw["sources"]):
        src = check_source(src, f"{where}: sources[{i}]")
        if src["type"] == "path":  # relative to the lock file's folder
            src = {**src, "path": str((origin.parent / Path(src["path"]).expanduser()).resolve())}
        sources.append(Source(**{**src, "chunks": tuple(src.get("chunks", ())),
                                 "checksums": tuple(sorted(src.get("checksums", {}).items()))}))
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
        cpu_backend=cpu_backend,
        origin=layer,
    )


@dataclass(frozen=True)
class ModelLock:
    """The entries of the packaged models.lock and the user's own (or of one given file)."""

    path: Path
    entries: dict[str, ModelEntry]
    user_path: Path | None = None  # the user's models.lock, when it is layered over ``path``

    @classmethod
    def load(cls, path: Path | None = None) -> ModelLock:
        """``path`` (or $EDGEINFER_LOCK) alone; else the packaged lock with the user's over it."""
        if path is not None or os.environ.get(LOCK_ENV):
            one = Path(path) if path is not None else default_lock_path()
            return cls(one, _read_entries(one, str(one)))
        packaged, user = packaged_lock_path(), user_lock_path()
        entries = _read_entries(packaged, PACKAGED)
        if user.is_file():
            mine = _read_entries(user, USER)
            for name, entry in mine.items():
                taken = _name_taken(entries, name) or next(
                    (a for a in entry.aliases if _name_taken(entries, a)), None)
                if taken:
                    raise LockFileError(f"{user}: {name!r} uses the name {taken!r} of a packaged model; "
                                        "rename it in that file")
            entries.update(mine)
        return cls(packaged, entries, user)

    def get(self, name: str) -> ModelEntry:
        key = name.lower()
        for entry in self.entries.values():
            if key == entry.name.lower() or key in (a.lower() for a in entry.aliases):
                return entry
        where = self.path.name if self.user_path is None else f"{self.path.name} or {self.user_path}"
        raise UnknownModelError(
            f"unknown model {name!r}: it is not in {where} and is not a path to a file. "
            f"Known models: {', '.join(sorted(self.entries))} (see `edgeinfer list`)"
        )

    def by_role(self, role: str) -> list[ModelEntry]:
        return [e for e in self.entries.values() if e.role == role]


def _read_entries(path: Path, layer: str) -> dict[str, ModelEntry]:
    """Every entry of one lock file, validated."""
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
    return {name: _entry(name, raw, path, layer) for name, raw in models.items()}


def _name_taken(entries: dict[str, ModelEntry], name: str) -> str | None:
    """The entry name or alias in ``entries`` equal to ``name`` (case aside), if any."""
    key = name.lower()
    for entry in entries.values():
        for taken in (entry.name, *entry.aliases):
            if taken.lower() == key:
                return taken
    return None


# --- adding entries (`edgeinfer lock add`) -------------------------------------------------------
ROLES = ("chat", "base", "embedding")
TIERS = ("small", "large")
_NEW_LOCK_HEADER = (
    "# models.lock: models pinned by sha256 (written by `edgeinfer lock add` and `edgeinfer pull hf:...`).\n"
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


EMBEDDING_ARCHITECTURES = ("bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "modern-bert", "t5encoder")


def gguf_metadata(path: Path) -> dict[str, Any]:
    """A GGUF's metadata, or {} when its header cannot be read."""
    from .errors import CorruptModelError
    from .gguf_check import read_gguf_header

    try:
        return read_gguf_header(path).metadata
    except CorruptModelError:
        return {}


def gguf_record(metadata: dict[str, Any]) -> dict[str, Any]:
    """quantization (general.file_type's name), license and role ("chat" with a chat template, "embedding"
    for an encoder, else "base") from a GGUF's metadata (``gguf_metadata``)."""
    from .gguf_check import file_type_name

    out: dict[str, Any] = {}
    if isinstance(metadata.get("general.file_type"), int):
        out["quantization"] = file_type_name(metadata["general.file_type"])
    if metadata.get("general.license"):
        out["license"] = str(metadata["general.license"])
    if metadata.get("tokenizer.chat_template"):
        out["role"] = "chat"
    elif metadata.get("general.architecture") in EMBEDDING_ARCHITECTURES:
        out["role"] = "embedding"
    else:
        out["role"] = "base"
    return out


def _report_quant(artifact: Path) -> str:
    """The quant recorded in the artifact's report.json (X.report.json, or folder/report.json)."""
    from .reports import read_report

    return str((read_report(artifact) or {}).get("quant") or "")


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
        from .reports import folder_files

        files = folder_files(artifact)
        record["files"] = files
        record["size"] = sum((artifact / f).stat().st_size for f in files)
        members = [artifact / f for f in files]
        record["sha256"] = cached_digest(artifact, members, lambda p: sha256_tree(p, files),
                                         trust_stamp=False)
    else:
        require_gguf_magic(artifact)
        record["size"] = artifact.stat().st_size
        record["sha256"] = cached_digest(artifact, [artifact], sha256_file, trust_stamp=False)
        meta = gguf_record(gguf_metadata(artifact))
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
    """Pin a local artifact under ``name`` (a "path" source) in the user's models.lock (or ``lock_path``,
    never the packaged one), keeping the other entries.

    ``license`` defaults to the GGUF's general.license, else "unknown". An existing name is refused
    unless ``force``.
    """
    _checked_key(name, role, tier)  # before the artifact is read: a bad name is the first thing said
    lock_path = _writable(lock_path)
    record = artifact_record(artifact)
    where = Path(artifact).expanduser().resolve()
    try:  # inside the lock's folder: store it relative, so the folder can move as a whole
        source_path = where.relative_to(lock_path.resolve().parent).as_posix()
    except ValueError:
        source_path = str(where)
    raw_entry: dict[str, Any] = {"description": description} if description else {}
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
    return pin_entry(name, raw_entry, lock_path=lock_path, force=force)


def _checked_key(name: str, role: object, tier: object) -> str:
    """The lower-case key of a new entry's name, after checking the name, role and tier."""
    key = model_name(name.strip(), "models.lock entry").lower()
    if role not in ROLES:
        raise LockFileError(f"invalid role {role!r}: choose one of {', '.join(ROLES)}")
    if tier and tier not in TIERS:
        raise LockFileError(f"invalid tier {tier!r}: choose one of {', '.join(TIERS)}")
    return key


def entry_from_raw(name: str, raw: dict[str, Any], lock_path: Path) -> ModelEntry:
    """The entry ``raw`` would be once written to ``lock_path`` (validated as any lock entry is)."""
    return _entry(name, raw, lock_path, _layer_of(Path(lock_path).resolve()))


def pin_entry(name: str, raw_entry: dict[str, Any], *, lock_path: Path | None = None,
              force: bool = False) -> ModelEntry:
    """Write one entry (a models.lock table) under ``name`` in the user's models.lock (or ``lock_path``,
    never the packaged one), keeping the others. An existing name is refused unless ``force``. A new entry
    is appended as text (the file's comments survive); a replaced one rewrites the file with tomli_w and
    re-emits the header comment block. Nothing is written that would not load back."""
    import tomli_w

    from .paths import atomic_write

    key = _checked_key(name, raw_entry.get("role"), raw_entry.get("tier", ""))
    lock_path = _writable(lock_path)
    if _layer_of(lock_path) == USER and (taken := _name_taken(_read_entries(packaged_lock_path(), PACKAGED),
                                                               key)):
        raise LockFileError(f"{name!r} is the name of a packaged model ({taken}); choose another name")
    text, data = _read_for_update(lock_path)
    models: dict[str, Any] = data.setdefault("models", {})
    existing = next((k for k in models if k.lower() == key), None)
    for other, raw in models.items():
        if other != existing and key in (str(a).lower() for a in raw.get("aliases", ())):
            raise LockFileError(f"{name!r} is an alias of {other!r} in {lock_path}; choose another name")
    if existing is not None and not force:
        raise LockFileError(f"{name!r} is already in {lock_path}; pass --force to replace it")
    if existing is None and text:
        new_text = text.rstrip("\n") + "\n\n" + tomli_w.dumps({"models": {name: raw_entry}})
    else:
        models.pop(existing, None)
        models[name] = raw_entry
        new_text = _rewritten(text, data)
    try:  # never write a lock file that would not load back
        entry = _entry(name, tomllib.loads(new_text)["models"][name], lock_path, _layer_of(lock_path))
    except (tomllib.TOMLDecodeError, KeyError) as exc:  # pragma: no cover - tomli_w output is valid
        raise LockFileError(f"could not add {name!r} to {lock_path}: {exc}") from exc
    with atomic_write(lock_path, "w") as handle:
        handle.write(new_text)
    return entry


def _writable(lock_path: Path | None) -> Path:
    """The lock file a command may change: ``lock_path`` or the default, never the packaged one."""
    target = (Path(lock_path).expanduser() if lock_path else default_lock_path()).resolve()
    if target == packaged_lock_path().resolve():
        raise LockFileError(f"{target} is edgeinfer's packaged models.lock, which commands never change: pin "
                            f"models in your own ({user_lock_path()}, the default) or another --lock file")
    return target


def _read_for_update(lock_path: Path) -> tuple[str, dict[str, Any]]:
    """A lock file's text and data before a change (empty when it does not exist yet)."""
    try:
        text = lock_path.read_text(encoding="utf-8") if lock_path.exists() else ""
        return text, (tomllib.loads(text) if text else {})
    except OSError as exc:
        raise LockFileError(f"cannot read {lock_path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise LockFileError(f"{lock_path} is not valid TOML: {exc}; fix it before changing it") from exc


def remove_entry(name: str, *, lock_path: Path | None = None) -> tuple[ModelEntry, list[Path]]:
    """Remove ``name`` from the user's models.lock (or ``lock_path``) and its files from the caches; the
    entry and the paths removed. A "path" source is the user's own file: it stays where it is."""
    from .paths import atomic_write
    from .sources import forget_files

    lock_path = _writable(lock_path)
    text, data = _read_for_update(lock_path)
    models: dict[str, Any] = data.get("models", {})
    key = next((k for k in models if k.lower() == name.strip().lower()), None)
    if key is None:
        packaged = _name_taken(_read_entries(packaged_lock_path(), PACKAGED), name)
        if packaged:
            raise LockFileError(f"{packaged!r} is one of edgeinfer's packaged models; it cannot be removed")
        raise UnknownModelError(f"{name!r} is not in {lock_path}; `edgeinfer list` shows where each model "
                                "comes from")
    entry = _entry(key, models.pop(key), lock_path, _layer_of(lock_path))
    others = [_entry(k, raw, lock_path, _layer_of(lock_path)) for k, raw in models.items()]
    with atomic_write(lock_path, "w") as handle:
        handle.write(_rewritten(text, data))
    return entry, forget_files(entry, others)


def _rewritten(text: str, data: dict[str, Any]) -> str:
    """A lock file's new text from its data (tomli_w drops comments: the header block is put back)."""
    import tomli_w

    body = tomli_w.dumps({"version": data.pop("version", 1), **data})
    return (_header_comments(text) or _NEW_LOCK_HEADER) + body


def _layer_of(lock_path: Path) -> str:
    """The ``origin`` of entries in the (resolved) lock file a command writes."""
    user = lock_path == user_lock_path().resolve() and not os.environ.get(LOCK_ENV)
    return USER if user else str(lock_path)
