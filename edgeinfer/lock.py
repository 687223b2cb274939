"""models.lock: the pinned list of models edgeinfer knows (TOML, data only)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LockFileError, UnknownModelError
from .sampling import SamplingParams

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SOURCE_TYPES = ("package", "package-chunks", "hub")
FORMATS = ("gguf", "onnx", "hf")


@dataclass(frozen=True)
class Source:
    """One place a model can come from; ``type`` is one of SOURCE_TYPES."""

    type: str
    package: str = ""  # import name of the package holding the file(s)
    install: str = ""  # pip name of that package
    path: str = ""  # file (or folder) inside the package
    chunks: tuple[str, ...] = ()  # "module/relative/path" pieces joined in order
    repo: str = ""
    revision: str = ""
    filename: str = ""

    def describe(self) -> str:
        if self.type == "hub":
            return f"hub {self.repo}@{self.revision[:12]}/{self.filename or '*'}"
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
    extra: dict[str, Any] = field(default_factory=dict)


def default_lock_path() -> Path:
    """models.lock beside the package (source checkout) or inside it (installed wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "models.lock", here / "models.lock"):
        if candidate.is_file():
            return candidate
    raise LockFileError(f"models.lock not found next to {here}; reinstall edgeinfer")


def _entry(name: str, raw: dict[str, Any], origin: Path) -> ModelEntry:
    required = ("role", "format", "sha256", "size", "file", "sources")
    missing = [k for k in required if k not in raw]
    if missing:
        raise LockFileError(f"{origin}: model {name!r} lacks {', '.join(missing)}")
    if raw["format"] not in FORMATS:
        raise LockFileError(f"{origin}: model {name!r} has unknown format {raw['format']!r}")
    sha = str(raw["sha256"]).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise LockFileError(f"{origin}: model {name!r} has a malformed sha256")
    sampling = raw.get("sampling", {})
    unknown = set(sampling) - set(SamplingParams.__dataclass_fields__)
    if unknown:
        raise LockFileError(f"{origin}: model {name!r} has unknown sampling keys {sorted(unknown)}")
    sources = []
    for src in raw["sources"]:
        if src.get("type") not in SOURCE_TYPES:
            raise LockFileError(f"{origin}: model {name!r} has a source of unknown type {src}")
        sources.append(Source(**{**src, "chunks": tuple(src.get("chunks", ()))}))
    known = set(ModelEntry.__dataclass_fields__) - {"name", "sources", "extra"}
    return ModelEntry(
        name=name,
        role=raw["role"],
        format=raw["format"],
        quantization=raw.get("quantization", ""),
        sha256=sha,
        size=int(raw["size"]),
        license=raw.get("license", ""),
        file=raw["file"],
        sources=tuple(sources),
        tier=raw.get("tier", ""),
        description=raw.get("description", ""),
        aliases=tuple(raw.get("aliases", ())),
        files=tuple(raw.get("files", ())),
        sampling=dict(raw.get("sampling", {})),
        extra={k: v for k, v in raw.items() if k not in known and k != "sources"},
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
        except tomllib.TOMLDecodeError as exc:
            raise LockFileError(f"{path} is not valid TOML: {exc}") from exc
        models = data.get("models", {})
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
