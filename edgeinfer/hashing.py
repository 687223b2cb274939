"""sha256 of model files and folders, with stamps so an unchanged file is hashed only once."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from .paths import atomic_write, cache_root

_CHUNK = 8 * 1024 * 1024
_stamp_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(root: Path, files: list[str]) -> str:
    """Digest of a model folder: sha256 over sorted 'sha256  relpath' lines of the listed files."""
    lines = sorted(f"{sha256_file(root / rel)}  {rel}\n" for rel in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _stamp_file() -> Path:
    return cache_root() / "verified.json"


def _fingerprint(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _load_stamps() -> dict:
    """The stamps file (a cache file: untrusted, so anything not shaped as written counts as empty)."""
    try:
        stamps = json.loads(_stamp_file().read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def cached_digest(
    path: Path, members: list[Path], compute, *, trust_stamp: bool = True, kind: str = ""
) -> str:
    """Digest of ``path`` via ``compute(path)``, reused while none of ``members`` changed. ``kind``
    keeps stamps of other results about the same file (e.g. a passed check) apart from its sha256."""
    key = f"{kind}:{path.resolve()}" if kind else str(path.resolve())
    fingerprint = [_fingerprint(m) for m in members]
    if trust_stamp:
        stamp = _load_stamps().get(key)
        if isinstance(stamp, dict) and stamp.get("fingerprint") == fingerprint \
                and isinstance(stamp.get("sha256"), str):
            return stamp["sha256"]
    digest = compute(path)
    with _stamp_lock:
        stamps = _load_stamps()
        stamps[key] = {"fingerprint": fingerprint, "sha256": digest}
        try:
            with atomic_write(_stamp_file(), "w") as handle:
                json.dump(stamps, handle)
        except OSError:
            pass  # a read-only or full cache only costs a re-hash next time
    return digest
