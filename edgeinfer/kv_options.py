"""``ei.KVOptions``: how a loaded model keeps and reuses KV cache between requests, in one object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidRequestError
from .untrusted import is_count


@dataclass(frozen=True)
class KVOptions:
    """KV reuse settings for ``ei.load(..., kv=KVOptions(...))``.

    ``ram_bytes`` bounds the KV kept between requests (None: what the model's sequences hold; 0: nothing
    kept).
    ``disk`` (a folder, or True for the cache folder) keeps evicted and saved sequence states on disk, at
    most ``disk_bytes``, so a restarted app resumes without prefill. ``settle`` recomputes generated
    tokens' KV as a prefill in idle time, so a chat's next turn reuses it bit-exactly (off: the next
    turn recomputes the previous answer itself). ``exact=False`` reuses generated tokens' KV as decoding
    computed it, as llama.cpp's server does: a follow-up turn computes only its new tokens (its first
    token sooner, with no idle time needed), but its output may differ in the last bits from a cold
    run of the same conversation (``exact=True``, the default: reuse never changes an output).
    ``keep_sequences``: add a sequence to keep an idle prompt's KV (a conversation, a few-shot block)
    rather than evict it, up to ``max_sequences`` (None: when ``ei.load`` was given ``max_sequences``;
    False: sequences only for requests running at once).
    """

    ram_bytes: int | None = None
    keep_sequences: bool | None = None
    disk: str | Path | bool | None = None
    disk_bytes: int = 2 << 30
    settle: bool = True
    exact: bool = True

    def __post_init__(self) -> None:
        if self.ram_bytes is not None and not is_count(self.ram_bytes):
            raise InvalidRequestError(f"KVOptions.ram_bytes must be None or bytes, got {self.ram_bytes!r}")
        if not is_count(self.disk_bytes):
            raise InvalidRequestError(f"KVOptions.disk_bytes must be a byte count, got {self.disk_bytes!r}")
