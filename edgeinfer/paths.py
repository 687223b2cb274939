"""Where edgeinfer keeps its files: one cache root, overridable with EDGEINFER_HOME."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs


def cache_root() -> Path:
    """Root of edgeinfer's cache (models, verification stamps, KV states)."""
    env = os.environ.get("EDGEINFER_HOME")
    root = Path(env) if env else Path(platformdirs.user_cache_dir("edgeinfer"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def atomic_write(target: Path, mode: str = "wb") -> Iterator:
    """Write to a temp file beside ``target`` and rename it into place only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
