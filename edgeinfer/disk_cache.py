"""KV states of sequences on disk, so an app restart resumes without re-prefilling.

One file per state, written atomically: a JSON header (format, binding, tokens, payload digest)
then the backend's raw state bytes. Files live in a folder named after the model's sha256 and the
context settings, and the header repeats that binding, so a state from another model or other
settings is never loaded. Corrupt files are removed with a warning; the folder is size-bounded
(oldest first out). Several processes may share a folder: writes are atomic renames and a file that
vanishes under a reader is just a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .paths import atomic_write
from .prompt_cache import common_prefix
from .untrusted import is_count

log = logging.getLogger(__name__)
MAGIC = b"EIKV1\n"
_LEN = struct.Struct("<Q")


def tokens_key(tokens: list[int]) -> str:
    return hashlib.sha256(np.asarray(tokens, dtype=np.int32).tobytes()).hexdigest()[:32]


def _header_problem(header: object) -> str:
    """What is wrong with a state file's header (a file on disk is untrusted), or "" if nothing."""
    if not isinstance(header, dict):
        return "not an object"
    if not isinstance(header.get("binding"), dict):
        return "no binding"
    tokens = header.get("tokens")
    if not isinstance(tokens, list) or not tokens or not all(is_count(t) and t < 2**31 for t in tokens):
        return "no token list"
    header.setdefault("prefill_end", 0)
    header.setdefault("exact_end", 0)
    for key in ("prefill_end", "exact_end", "payload_bytes"):
        if not is_count(header.get(key)) or (key != "payload_bytes" and header[key] > len(tokens)):
            return f"bad {key}"
    if not isinstance(header.get("payload_sha256"), str):
        return "no payload digest"
    return ""


@dataclass(frozen=True)
class DiskEntry:
    path: Path
    tokens: tuple[int, ...]
    size: int
    prefill_end: int = 0
    exact_end: int = 0


class DiskCache:
    """A size-bounded folder of sequence states bound to one model file and context settings."""

    def __init__(self, root: Path, *, binding: dict, max_bytes: int = 2 << 30) -> None:
        self.binding = binding
        digest = hashlib.sha256(json.dumps(binding, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(root) / f"{binding.get('model_sha256', 'unknown')[:16]}-{digest}"
        self.max_bytes = max_bytes
        self._index: dict[str, tuple[int, DiskEntry]] = {}  # file name -> (mtime_ns, entry)

    # --- writing
    def save(self, tokens: list[int], state: bytes, *, prefill_end: int = 0,
             exact_end: int = 0) -> Path | None:
        """Store ``state`` (the KV of exactly ``tokens``); None (and a warning) if it cannot."""
        if not tokens or not state or self.max_bytes <= 0:
            return None
        header = json.dumps({
            "binding": self.binding,
            "tokens": list(tokens),
            "prefill_end": prefill_end,
            "exact_end": exact_end,
            "payload_sha256": hashlib.sha256(state).hexdigest(),
            "payload_bytes": len(state),
        }).encode()
        target = self.folder / f"{tokens_key(tokens)}.kv"
        try:
            with atomic_write(target, private=True) as handle:  # it holds the user's text
                handle.write(MAGIC + _LEN.pack(len(header)) + header)
                handle.write(state)
        except OSError as exc:  # full disk, read-only folder...: keep running without it
            log.warning("could not save a KV state to %s (%s); continuing without it", self.folder, exc)
            return None
        self._enforce_budget(keep=target)
        return target

    def _enforce_budget(self, keep: Path) -> None:
        files = []
        for path in self.folder.glob("*.kv"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime_ns, st.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            if path == keep and total - size > 0:
                continue
            path.unlink(missing_ok=True)
            self._index.pop(path.name, None)
            total -= size

    # --- reading
    def holds(self, tokens: list[int]) -> bool:
        """Whether a state of exactly ``tokens`` is stored (it is then not written again)."""
        return (self.folder / f"{tokens_key(tokens)}.kv").is_file()

    def entries(self) -> list[DiskEntry]:
        """Every readable state in the folder (headers are read once per file version)."""
        out = []
        seen = set()
        for path in self.folder.glob("*.kv"):
            try:
                mtime = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            seen.add(path.name)
            cached = self._index.get(path.name)
            if cached and cached[0] == mtime:
                out.append(cached[1])
                continue
            entry = self._read_header(path)
            if entry is not None:
                self._index[path.name] = (mtime, entry)
                out.append(entry)
        for name in set(self._index) - seen:
            del self._index[name]
        return out

    def _read_header(self, path: Path) -> DiskEntry | None:
        try:
            with open(path, "rb") as handle:
                header = self._parse_header(handle)
                size = os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            return None
        except (OSError, ValueError, struct.error, RecursionError) as exc:
            self._discard(path, f"unreadable header ({exc})")
            return None
        if header["binding"] != self.binding:
            log.warning("ignoring KV state %s: made for another model or settings", path.name)
            return None
        return DiskEntry(path, tuple(header["tokens"]), size, header["prefill_end"], header["exact_end"])

    @staticmethod
    def _parse_header(handle) -> dict:  # noqa: ANN001
        if handle.read(len(MAGIC)) != MAGIC:
            raise ValueError("not an edgeinfer KV state")
        (n,) = _LEN.unpack(handle.read(_LEN.size))
        if n > 64 << 20:
            raise ValueError("header too large")
        header = json.loads(handle.read(n))
        problem = _header_problem(header)
        if problem:
            raise ValueError(f"malformed header: {problem}")
        return header

    def load(self, entry: DiskEntry) -> bytes | None:
        """The state bytes of ``entry``, or None (file gone, truncated or corrupt: removed)."""
        try:
            with open(entry.path, "rb") as handle:
                header = self._parse_header(handle)
                state = handle.read()
        except FileNotFoundError:
            return None
        except (OSError, ValueError, struct.error, RecursionError) as exc:
            self._discard(entry.path, f"unreadable ({exc})")
            return None
        if len(state) != header.get("payload_bytes") or \
                hashlib.sha256(state).hexdigest() != header.get("payload_sha256"):
            self._discard(entry.path, "truncated or corrupted payload")
            return None
        try:
            os.utime(entry.path)  # recently used: last to be evicted
        except OSError:
            pass
        return state

    def _discard(self, path: Path, why: str) -> None:
        log.warning("removing KV state %s: %s", path.name, why)
        path.unlink(missing_ok=True)
        self._index.pop(path.name, None)

    def longest_prefix(self, prompt: list[int]) -> tuple[DiskEntry | None, int]:
        """The stored state sharing the longest prefix with ``prompt``, and that length."""
        best, best_n = None, 0
        for entry in self.entries():
            n = common_prefix(entry.tokens, prompt)
            if n > best_n:
                best, best_n = entry, n
        return best, best_n
