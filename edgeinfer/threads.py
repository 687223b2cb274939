"""Adaptive thread counts: a backend's threads chosen from its measured step times.

llama.cpp's threads meet at a barrier after every operation, so when another process holds a core, one
preempted thread stalls every step: 2 threads on 2 cores with one core busy decoded at 0.36x the speed
of 1 thread. The tuner starts at the physical core count, watches decode steps (timed on the compute
queue, without the wait for other models), and tries one thread fewer when steps slow down, or a
neighbouring count now and then; it keeps whichever is faster. At every core it tries one fewer once
after loading, then when steps slow down (or every half minute); below, a probe of one more that loses
waits twice as long before the next, so a quiet machine pays almost nothing. Without flash attention,
outputs do not depend on the thread count (rows are split across threads, each summed in the same
order); with it they would, so a flash-attention context is never retuned.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable

DECODE_TOKENS = 4  # steps of at most this many tokens are timed (prefill chunks vary too much)
WINDOW = 5  # steps per median, and per trial of another thread count
SLOWDOWN = 1.3  # recent steps this much slower than the best seen at the same count: try fewer threads
CLEAR_LOSS = 1.5  # a trial whose fastest step is this much slower than the current's slowest ends early
MARGIN = 0.1  # a trial must be this much faster to be kept (one thread less on a quiet 2-core machine
# is ~20% slower; with one core busy, one thread more is 3x slower: neither is near the margin)
FIRST_PROBE_S = 2.0  # seconds before probing one thread more; doubles after each losing probe
MAX_PROBE_S = 32.0  # at most this long between probes; at every core, how often one fewer is tried


class ThreadTuner:
    """Hill-climbs one backend's thread count over 1..max_threads from the step times it is told.

    A trial alternates the candidate count with the current one step by step (A B A B ...), so drift
    (a cache warming up, another program starting) hits both alike; the medians decide.
    """

    def __init__(self, max_threads: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_threads = max(1, max_threads)
        self.current = self.max_threads
        self.trial: int | None = None
        self.switches = 0  # how often the count changed (for stats and tests)
        self._clock = clock
        self._recent: deque[float] = deque(maxlen=WINDOW)  # steps at the current count
        self._best: float | None = None  # the fastest median seen at the current count
        self._tokens = 1  # the step size watched (decode steps of one size compare fairly)
        self._steps = 0  # steps at the current count since it was set
        self._trial_samples: dict[int, list[float]] = {}
        self._trial_steps = 0
        self._interval = FIRST_PROBE_S
        self._last_trial = clock()
        self._next_probe = self._last_trial  # the first probe right after warm-up: a model loaded while
        # another process holds a core finds out at once, not after seconds of slow steps

    def threads(self) -> int:
        """The count to run the next step with."""
        if self.trial is not None and self._trial_steps % 2 == 0:
            return self.trial
        return self.current

    def record(self, threads: int, tokens: int, seconds: float) -> None:
        """One step's time; may start, finish or skip a trial of another count."""
        if not 0 < tokens <= DECODE_TOKENS:
            return
        if self.trial is not None:
            if tokens == self._tokens:
                self._trial_steps += 1
                if self._trial_steps > 2:  # the first pair wakes threads up: not a fair sample
                    self._trial_samples.setdefault(threads, []).append(seconds)
                tried, base = self._trial_samples.get(self.trial), self._trial_samples.get(self.current)
                clearly_worse = tried and base and min(tried) > CLEAR_LOSS * max(base)
                if clearly_worse or self._trial_steps >= 2 * (WINDOW + 1):
                    self._finish_trial()  # a count that is far slower is not run for long
            return
        if tokens != self._tokens:
            self._tokens, self._steps, self._best = tokens, 0, None
            self._recent.clear()
        self._steps += 1
        if self._steps <= WINDOW:  # just loaded, or just switched: caches and threads warming up
            return
        self._recent.append(seconds)
        if len(self._recent) < WINDOW:
            return
        recent = statistics.median(self._recent)
        self._best = min(self._best or recent, recent)
        now = self._clock()
        if recent > SLOWDOWN * self._best and self.current > 1 and now - self._last_trial >= FIRST_PROBE_S:
            self._start(self.current - 1)  # slowed down: another process may hold a core
        elif now >= self._next_probe:
            self._start(self.current + 1 if self.current < self.max_threads else self.current - 1)

    def _start(self, threads: int) -> None:
        if threads == self.current or not 1 <= threads <= self.max_threads:
            self._next_probe = self._clock() + self._interval
            return
        self.trial, self._trial_steps, self._trial_samples = threads, 0, {}

    def _finish_trial(self) -> None:
        trial, self.trial = self.trial, None
        tried = statistics.median(self._trial_samples.get(trial, [float("inf")]))
        base = statistics.median(self._trial_samples.get(self.current, [float("inf")]))
        # leaving every core needs clear evidence; coming back to more of them, a little less
        margin = MARGIN if trial < self.current else MARGIN / 3
        if tried < (1 - margin) * base:
            self.current, self._interval = trial, FIRST_PROBE_S
            self._steps, self._best = WINDOW, None  # measured just now: no warm-up, a new best
            self._recent.clear()
            self.switches += 1
        else:
            self._interval = min(2 * self._interval, MAX_PROBE_S)
        self._last_trial = self._clock()
        # at every core, fewer is tried again only when steps slow down (or rarely); below, more is tried
        # again soon, then less and less often while it keeps losing
        wait = MAX_PROBE_S if self.current == self.max_threads else self._interval
        self._next_probe = self._last_trial + wait
