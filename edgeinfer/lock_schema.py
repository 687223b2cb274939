"""What a models.lock entry may contain: its keys and their types as tables, and the path rules.

A lock file can come from anywhere (a shared repository, a download), so nothing in it is trusted:
every key must be known and of its type, names and file names are single path components, and the
paths it names inside a package or folder stay inside it (no absolute paths, no ``..``). Anything
else is a ``LockFileError`` that names the model and the key, before any file is touched.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import LockFileError
from .untrusted import MAX_NAME, is_count, relative_path

# key -> (type, required). "str list" is a list of strings; ints are non-negative.
ENTRY_KEYS: dict[str, tuple[str, bool]] = {
    "role": ("str", True),
    "format": ("str", True),
    "sha256": ("str", True),
    "size": ("int", True),
    "file": ("name", True),
    "sources": ("table list", True),
    "quantization": ("str", False),
    "license": ("str", False),
    "tier": ("str", False),
    "description": ("str", False),
    "aliases": ("str list", False),
    "files": ("relative list", False),
    "sampling": ("table", False),
    "cpu_backend": ("str", False),
}
SOURCE_KEYS: dict[str, tuple[str, bool]] = {
    "type": ("str", True),
    "package": ("module", False),
    "install": ("str", False),
    "path": ("str", False),  # checked by source type below
    "chunks": ("chunk list", False),
    "repo": ("repo", False),
    "revision": ("str", False),
    "filename": ("relative", False),
    "checksums": ("checksum table", False),  # hub files -> sha256, as downloaded for a conversion
}
# source type -> the keys it needs
SOURCE_NEEDS: dict[str, tuple[str, ...]] = {
    "package": ("package", "path"), "package-chunks": ("chunks",), "hub": ("repo", "revision"),
    "path": ("path",),
}
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def model_name(name: object, origin: object) -> str:
    """A model name: letters, digits, '.', '_' and '-', starting with a letter or digit (it names a
    folder in the cache, so it must be one harmless path component)."""
    if not isinstance(name, str) or len(name) > MAX_NAME or not _MODEL_NAME.fullmatch(name):
        raise LockFileError(f"{origin}: invalid model name {name!r}: use letters, digits, '.', '_' and '-', "
                            "starting with a letter or digit")
    return name


def _valid(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return is_count(value)
    if kind == "table":
        return isinstance(value, dict)
    if kind == "checksum table":
        return isinstance(value, dict) and all(
            isinstance(k, str) and relative_path(k) and isinstance(v, str) and bool(_SHA256.fullmatch(v))
            for k, v in value.items())
    if kind == "name":
        return isinstance(value, str) and relative_path(value) and "/" not in value
    if kind == "relative":
        return isinstance(value, str) and relative_path(value)
    if kind == "module":
        return isinstance(value, str) and bool(_MODULE.fullmatch(value))
    if kind == "repo":
        return isinstance(value, str) and bool(_REPO.fullmatch(value)) and ".." not in value
    if kind.endswith(" list"):
        item = kind.removesuffix(" list")
        if not isinstance(value, list):
            return False
        if item == "chunk":
            return all(_valid("str", c) and _chunk(c) for c in value) and bool(value)
        return all(_valid({"table": "table", "str": "str", "relative": "relative"}[item], v) for v in value)
    raise AssertionError(kind)  # pragma: no cover - a table entry without a check


def _chunk(value: str) -> bool:
    """A chunk is "package_module/relative/path" inside that installed package."""
    module, _, rel = value.partition("/")
    return bool(_MODULE.fullmatch(module)) and relative_path(rel)


_EXPECTED = {
    "str": "a string", "int": "a non-negative integer", "table": "a table", "table list": "a list of tables",
    "str list": "a list of strings", "name": "a plain file or folder name (no '/', '..' or absolute path)",
    "relative": "a relative path inside its folder (no '..', no absolute path)",
    "relative list": "a list of relative paths inside the model folder (no '..', no absolute path)",
    "module": "a Python module name", "repo": "a hub repository id like 'org/name'",
    "chunk list": "a list of 'module/relative/path' chunks inside that package",
    "checksum table": "a table of relative file paths to sha256 hex digests",
}


def check_table(raw: Any, keys: dict[str, tuple[str, bool]], where: str) -> dict[str, Any]:
    """``raw`` as a dict whose keys are all in ``keys``, each of its type, the required ones present."""
    if not isinstance(raw, dict):
        raise LockFileError(f"{where} must be a table, not {type(raw).__name__}")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise LockFileError(f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(keys)}")
    missing = [k for k, (_, required) in keys.items() if required and k not in raw]
    if missing:
        raise LockFileError(f"{where} lacks {', '.join(missing)}")
    for key, value in raw.items():
        kind = keys[key][0]
        if not _valid(kind, value):
            raise LockFileError(f"{where}: {key} must be {_EXPECTED[kind]}, got {value!r:.80}")
    return raw


def check_source(raw: Any, where: str) -> dict[str, Any]:
    """One source table: known keys and types, and what its type needs."""
    src = check_table(raw, SOURCE_KEYS, where)
    kind = src["type"]
    needs = SOURCE_NEEDS.get(kind)
    if needs is None:
        raise LockFileError(f"{where}: a source of unknown type {kind!r}; known: {', '.join(SOURCE_NEEDS)}")
    missing = [k for k in needs if not src.get(k)]
    if missing:
        raise LockFileError(f"{where}: a {kind!r} source needs {', '.join(missing)}")
    if kind == "package" and not relative_path(src["path"]):
        raise LockFileError(f"{where}: path must be {_EXPECTED['relative']}, got {src['path']!r:.80}")
    if kind == "path" and (not src["path"] or "\x00" in src["path"]):
        raise LockFileError(f"{where}: path must name a local file or folder")
    return src
