"""Where edgeinfer keeps its files: a cache root (EDGEINFER_HOME) for what can be rebuilt, a data root
(EDGEINFER_DATA) for what the user made (translation memory and history), and a config root
(EDGEINFER_CONFIG) for the user's settings (their own models.lock)."""

from __future__ import annotations

import os
import shutil
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


def data_root() -> Path:
    """Root of the user's own edgeinfer data (kept when the cache is cleared)."""
    env = os.environ.get("EDGEINFER_DATA")
    return private_folder(Path(env) if env else Path(platformdirs.user_data_dir("edgeinfer")))


def config_root() -> Path:
    """Root of the user's edgeinfer settings (not created here: reading needs no folder)."""
    env = os.environ.get("EDGEINFER_CONFIG")
    return Path(env) if env else Path(platformdirs.user_config_dir("edgeinfer"))


def inside(root: Path, *parts: str) -> Path | None:
    """``root / parts`` if it resolves (symlinks followed) to a path inside ``root``, else None: a name
    read from an untrusted file must never lead out of the folder it is meant for."""
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    return target if target != base and target.is_relative_to(base) else None


def current_umask() -> int:
    """The process umask (read by setting and restoring it), for files made private by mkstemp."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def private_folder(path: Path) -> Path:
    """Make ``path`` (and missing parents) for the user's own data: a folder it creates is 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(target: Path, suffix: str = ".part", *, private: bool = False) -> Iterator[Path]:
    """A temp path beside ``target`` for a writer that opens files itself; renamed into place only
    if the block completes, removed on any exception (KeyboardInterrupt included). ``private``: the
    file holds the user's text (conversations, KV states), so it stays 0600 in a 0700 folder."""
    if private:
        private_folder(target.parent)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if not private:  # mkstemp makes 0600; the result is an ordinary file
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(target: Path, mode: str = "wb", *, private: bool = False) -> Iterator:
    """Write to a temp file beside ``target`` and rename it into place only on success."""
    with atomic_path(target, private=private) as tmp, open(tmp, mode) as handle:
        yield handle
        handle.flush()


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A hidden folder beside ``target`` that takes its place (replacing it) only if the block
    completes; removed on any exception, KeyboardInterrupt included."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700; the result is an ordinary folder
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "previous")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def scratch_path(beside: Path, tag: str = "tmp") -> Iterator[Path]:
    """An unused hidden path in ``beside``'s folder (same disk: renaming it there is atomic), removed
    when the block ends whatever happens. The file is not created: its writer makes it."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{beside.name}.", suffix=f".{tag}.part", dir=beside.parent)
    os.close(fd)
    os.unlink(name)  # mkstemp's file would be private (0600); the writer creates it with the usual mode
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


@contextmanager
def scratch_dir(beside: Path, tag: str = "tmp") -> Iterator[Path]:
    """A hidden temp folder in ``beside``'s folder, removed with its contents when the block ends."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    name = tempfile.mkdtemp(prefix=f".{beside.name}.", suffix=f".{tag}.part", dir=beside.parent)
    try:
        yield Path(name)
    finally:
        shutil.rmtree(name, ignore_errors=True)
