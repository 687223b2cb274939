"""One sequence's llama.cpp KV state in a form that loads into a context with any number of KV streams.

llama.cpp writes a sequence's state per KV cache (one, or two for sliding-window models) as the cache's
stream count followed by one entry per stream: a cell count, then the cells. Only the sequence's own
stream has cells; the others are a zero count. A context with another stream count refuses the state,
so sequences could not move to a context re-made with room for more sequences. Here a state is kept
with one stream per cache ("canonical") plus the section lengths, and re-written for the stream count
of the context it goes into. Reading never trusts the bytes: a malformed state raises ValueError.
"""

from __future__ import annotations

import struct

MAGIC = b"EIKV1"
PREFIX = 8  # llama.cpp's own state magic and the sequence id, before the caches' sections
_U32 = struct.Struct("<I")
MAX_SECTIONS = 8


def _entry(section: bytes | memoryview) -> bytes | None:
    """The one non-empty stream entry (cell count onward) of a cache section, or None if empty."""
    if len(section) < 4:
        raise ValueError("a KV state section is shorter than its header")
    (streams,) = _U32.unpack_from(section, 0)
    if streams == 0 or 4 + 4 * streams > len(section):
        raise ValueError(f"a KV state section claims {streams} streams")
    lead = 0
    while lead < streams and _U32.unpack_from(section, 4 + 4 * lead)[0] == 0:
        lead += 1
    if lead == streams:  # the sequence holds nothing in this cache
        if len(section) != 4 + 4 * streams:
            raise ValueError("an empty KV state section has trailing bytes")
        return None
    tail = 4 * (streams - 1 - lead)
    end = len(section) - tail
    if any(section[end:]):
        raise ValueError("a KV state holds cells in more than one stream (not one sequence's state)")
    return bytes(section[4 + 4 * lead : end])


def restream(section: bytes | memoryview, streams: int) -> bytes:
    """A cache section re-written for a context with ``streams`` KV streams."""
    entry = _entry(section)
    head = _U32.pack(streams)
    if entry is None:
        return head + bytes(4 * streams)
    return head + entry + bytes(4 * (streams - 1))


def to_canonical(raw: bytes, section_sizes: list[int]) -> bytes:
    """Wrap llama.cpp's state (its prefix, then sections of the given sizes) as one-stream sections."""
    if PREFIX + sum(section_sizes) != len(raw) or not 1 <= len(section_sizes) <= MAX_SECTIONS:
        raise ValueError("the KV state sections do not add up to the state")
    view, start, parts = memoryview(raw), PREFIX, []
    for size in section_sizes:
        parts.append(restream(view[start : start + size], 1))
        start += size
    header = MAGIC + raw[:PREFIX] + _U32.pack(len(parts)) + b"".join(_U32.pack(len(p)) for p in parts)
    return header + b"".join(parts)


def canonical_size(raw_size: int, sections: int, streams: int) -> int:
    """The length ``to_canonical`` gives a raw state of ``raw_size`` bytes with ``sections`` caches
    written for ``streams`` KV streams (each section loses its other streams' empty entries)."""
    return len(MAGIC) + raw_size + 4 + sections * (4 - 4 * (streams - 1))


def from_canonical(data: bytes, streams: int) -> bytes:
    """llama.cpp's state for a context with ``streams`` KV streams, from ``to_canonical``'s bytes."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + PREFIX + 4:
        raise ValueError("not an edgeinfer KV state")
    offset = len(MAGIC) + PREFIX
    (n,) = _U32.unpack_from(data, offset)
    offset += 4
    if not 1 <= n <= MAX_SECTIONS or offset + 4 * n > len(data):
        raise ValueError(f"a KV state claims {n} sections")
    sizes = [_U32.unpack_from(data, offset + 4 * i)[0] for i in range(n)]
    offset += 4 * n
    if offset + sum(sizes) != len(data):
        raise ValueError("a KV state's sections do not add up to its length")
    view, parts = memoryview(data), [data[len(MAGIC) : len(MAGIC) + PREFIX]]
    for size in sizes:
        parts.append(restream(view[offset : offset + size], streams))
        offset += size
    return b"".join(parts)
