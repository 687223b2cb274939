"""Predicates for values read from untrusted files (lock entries, headers, configs, cache files)."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

MAX_NAME = 200  # characters in a path component


def is_count(value: object) -> bool:
    """A non-negative integer (JSON and TOML ``true``/``false`` are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def relative_path(value: str) -> bool:
    """True when ``value`` is a relative path that stays below its root: no absolute or drive paths,
    no backslashes, no empty, '.' or '..' components, no control characters."""
    if not value or any(ord(c) < 32 for c in value) or "\\" in value:
        return False
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive:
        return False
    return all(part not in ("", ".", "..") and len(part) <= MAX_NAME for part in value.split("/"))
