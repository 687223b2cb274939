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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: Path, suffix: str = ".part") -> Iterator[Path]:
    """A temp path beside ``target`` for a writer that opens files itself; renamed into place only
    if the block completes, removed on any exception (KeyboardInterrupt included)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result is an ordinary file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(target: Path, mode: str = "wb") -> Iterator:
    """Write to a temp file beside ``target`` and rename it into place only on success."""
    with atomic_path(target) as tmp, open(tmp, mode) as handle:
        yield handle
        handle.flush()
