"""Live metrics for long-running use: every completion's Stats, added up per model.

Each Model has a ``ModelMetrics`` (``model.metrics``) that its engine updates once per finished
request (completed, cancelled or failed; never per token). ``snapshot()`` returns plain numbers:

- requests, by finish reason ("stop", "length", "cancelled", "error"); ``errors`` is the last of them;
- prompt, cached and completion tokens since the start, and the cached-token share
  (cached / prompt tokens: how much prefill the KV cache saved);
- TTFT, decode tokens/s and request seconds: p50 / p90 / p99 over the last ``window`` requests
  (1,000 by default) that measured them, plus the count, sum and mean over all of them.

Which requests measure what: TTFT, every request that sampled a first token; decode tok/s, every one
that sampled at least two; request seconds, every one that ran to its end ("stop" or "length"), so
that a client hanging up early does not look like a fast request. Requests refused before they were
queued (an empty prompt, one over the context) never reach the engine and are not counted.

``edgeinfer serve`` exposes the same numbers (and a Router's shares and saving) at ``/metrics`` in
Prometheus' text format: see ``edgeinfer.server.prometheus`` (the ``server`` extra).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

from .stats import Stats

WINDOW = 1000  # recent requests the percentiles are computed over
QUANTILES = (0.5, 0.9, 0.99)
FINISH_REASONS = ("stop", "length", "cancelled", "error")  # always reported, as 0 when none yet


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of sorted values, interpolating between the closest ranks (as
    numpy.percentile does by default); None for no values."""
    if not sorted_values:
        return None
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class _Series:
    """One measured quantity: all-time count and sum, plus a bounded window of recent values."""

    __slots__ = ("count", "total", "recent")

    def __init__(self, window: int) -> None:
        self.count, self.total = 0, 0.0
        self.recent: collections.deque[float] = collections.deque(maxlen=window)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.recent.append(value)

    def summary(self, recent: list[float]) -> dict:
        values = sorted(recent)
        out: dict[str, Any] = {f"p{round(q * 100)}": percentile(values, q) for q in QUANTILES}
        out.update(count=self.count, sum=self.total, mean=self.total / self.count if self.count else None)
        return out


class ModelMetrics:
    """Thread-safe running totals of one model's completions (see the module docstring).

    ``record(stats)`` is called by the engine as each request finishes: a few additions under a lock.
    Percentiles are computed only when ``snapshot()`` is called, over the last ``window`` requests.
    """

    def __init__(self, model: str = "", *, window: int = WINDOW) -> None:
        self.model = model
        self.window = window
        self._lock = threading.Lock()
        # live gauges read at each snapshot (the engine sets it: KV bytes in use and allocated)
        self.memory: Callable[[], dict[str, int]] | None = None
        self.reset()

    def reset(self) -> None:
        """Start counting afresh (e.g. between benchmark phases)."""
        with self._lock:
            self.started = time.time()
            self.finish_reasons: collections.Counter[str] = collections.Counter()
            self.cache_sources: collections.Counter[str] = collections.Counter()
            self.prompt_tokens = self.cached_tokens = self.completion_tokens = 0
            self.draft_tokens = self.accepted_tokens = 0
            self.ttft_s = _Series(self.window)
            self.decode_tok_s = _Series(self.window)
            self.total_s = _Series(self.window)

    def record(self, stats: Stats) -> None:
        """Add one finished request (its ``finish_reason`` set)."""
        decode_rate = stats.decode_tok_s
        with self._lock:
            self.finish_reasons[stats.finish_reason or "unknown"] += 1
            if stats.cache_source:
                self.cache_sources[stats.cache_source] += 1
            self.prompt_tokens += stats.prompt_tokens
            self.cached_tokens += stats.cached_tokens
            self.completion_tokens += stats.completion_tokens
            self.draft_tokens += stats.draft_tokens
            self.accepted_tokens += stats.accepted_tokens
            if stats.ttft_s > 0:
                self.ttft_s.add(stats.ttft_s)
            if decode_rate > 0:
                self.decode_tok_s.add(decode_rate)
            if stats.finish_reason in ("stop", "length"):
                self.total_s.add(stats.total_s)

    @property
    def requests(self) -> int:
        with self._lock:
            return sum(self.finish_reasons.values())

    def snapshot(self) -> dict:
        """The totals and percentiles now, as a JSON-ready dict."""
        with self._lock:  # copy under the lock; sort outside it
            reasons = dict.fromkeys(FINISH_REASONS, 0) | dict(self.finish_reasons)
            sources = dict(self.cache_sources)
            prompt, cached, completion = self.prompt_tokens, self.cached_tokens, self.completion_tokens
            draft, accepted = self.draft_tokens, self.accepted_tokens
            series = {name: (s, list(s.recent)) for name, s in (
                ("ttft_s", self.ttft_s), ("decode_tok_s", self.decode_tok_s), ("total_s", self.total_s))}
            started = self.started
        return {
            "model": self.model,
            "since": started,
            "window": self.window,
            "requests": sum(reasons.values()),
            "finish_reasons": reasons,
            "errors": reasons["error"],
            "prompt_tokens": prompt,
            "cached_tokens": cached,
            "computed_prompt_tokens": prompt - cached,
            "completion_tokens": completion,
            "cached_share": cached / prompt if prompt else 0.0,
            "cache_sources": sources,
            "draft_tokens": draft,
            "accepted_tokens": accepted,
            **{name: s.summary(recent) for name, (s, recent) in series.items()},
            **(self.memory() if self.memory is not None else {}),
        }
