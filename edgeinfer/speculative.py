"""Draft proposals for speculative decoding: prompt lookup, with an adaptive draft length.

Prompt lookup finds the longest recent n-gram that ends the text so far earlier in the prompt or
the output, and proposes the tokens that followed it there. It costs no model, and it pays off
where the answer copies from its input (rewriting, extraction, code edits). The engine verifies a
draft in one batched eval (issue 9); ``DraftLength`` keeps drafts short, or off, when they miss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PromptLookup:
    """Proposes up to ``k`` tokens by matching the last ``max_ngram``..``min_ngram`` tokens."""

    def __init__(self, *, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        """The continuation of the most recent earlier occurrence of the longest matching suffix."""
        if k <= 0 or len(tokens) < self.min_ngram + 1:
            return []
        arr = np.asarray(tokens, dtype=np.int64)
        n_tok = len(arr)
        for n in range(min(self.max_ngram, n_tok - 1), self.min_ngram - 1, -1):
            suffix = arr[n_tok - n :]
            # windows starting at 0 .. n_tok - n - 1 (the suffix itself excluded)
            windows = np.lib.stride_tricks.sliding_window_view(arr[: n_tok - 1], n)
            hits = np.flatnonzero((windows == suffix).all(axis=1))
            hits = hits[hits + n < n_tok]  # something must follow the match
            if hits.size:
                start = int(hits[-1]) + n
                return arr[start : start + k].tolist()
        return []


class DraftLength:
    """Adapts the draft length to how much of each draft is accepted; turns drafting off after a
    run of misses and retries it now and then (the text may start copying again)."""

    def __init__(self, *, initial: int = 4, maximum: int = 8, off_after: int = 4,
                 retry_every: int = 16) -> None:
        self.k, self.maximum = initial, maximum
        self.off_after, self.retry_every = off_after, retry_every
        self._misses = 0
        self._idle = 0

    def next_k(self) -> int:
        """Tokens to draft for the next step (0: decode one token plainly)."""
        if self._misses >= self.off_after:
            self._idle += 1
            if self._idle < self.retry_every:
                return 0
            self._idle, self._misses = 0, self.off_after - 1  # one more chance
        return self.k

    def update(self, drafted: int, accepted: int) -> None:
        """Record a verified draft: grow after a full hit, shrink to what was accepted otherwise."""
        if drafted <= 0:
            return
        if accepted == drafted:
            self.k = min(self.maximum, self.k + 2)
            self._misses = 0
        else:
            self.k = max(1, accepted + 1)
            self._misses = self._misses + 1 if accepted == 0 else 0
