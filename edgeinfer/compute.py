"""One compute queue per device, shared by every model in the process.

llama.cpp runs each eval on an OpenMP team tied to the calling thread. When every model's engine thread
called it directly, each model kept a team of its own, and an idle team spun on the cores the other
one needed (SmolLM2 decoded at half its speed with Gemma loaded beside it, even used in turn). Here all
evals for a device run on one worker thread: one team, models interleaved (first come first served
within a priority, so engines waiting a step each take turns), interactive steps before background
ones (idle-time settling), and a worker that sleeps while there is nothing to do. An interactive call
that arrives while a background eval runs interrupts it (where the backend can stop mid-graph), so
idle-time work never delays a request by more than a graph node.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from .threads import ThreadTuner

if TYPE_CHECKING:
    from .backends.base import Backend, EvalItem

T = TypeVar("T")
INTERACTIVE = 0  # a request's prefill or decode step, a draft, an embedding
BACKGROUND = 1  # idle-time work (settling a finished answer's KV)


class ComputeQueue:
    """Runs submitted calls one at a time on its own thread, by priority, then in order of arrival."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._heap: list[tuple[int, int, Callable[[], Any], Future]] = []
        self._interruptible: Backend | None = None  # the backend of the background eval running now
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._tuners: weakref.WeakKeyDictionary[Backend, ThreadTuner] = weakref.WeakKeyDictionary()

    def adapt_threads(self, backend: Backend, max_threads: int) -> None:
        """Let ``backend``'s thread count follow its measured step times, between 1 and ``max_threads``."""
        if max_threads > 1 and backend.threads_adjustable and backend.set_threads(max_threads):
            self._tuners[backend] = ThreadTuner(max_threads)

    def tuner(self, backend: Backend) -> ThreadTuner | None:
        return self._tuners.get(backend)

    def eval(self, backend: Backend, items: Sequence[EvalItem], *, priority: int = INTERACTIVE) -> list[int]:
        """``backend.eval(items)`` on the worker, at the thread count its tuner picks, timed for the tuner."""
        return self.run(self._timed_eval, backend, items, priority=priority)

    def background_eval(self, backend: Backend, items: Sequence[EvalItem]) -> list[int]:
        """``backend.eval(items)`` when nothing interactive is queued; a request arriving meanwhile stops
        it (``EvalInterrupted``) where the backend can stop a running eval."""
        return self.run(self._interruptible_eval, backend, items, priority=BACKGROUND)

    def _interruptible_eval(self, backend: Backend, items: Sequence[EvalItem]) -> list[int]:
        with self._ready:
            self._interruptible = backend
        try:
            with backend.interruptible():
                return self._timed_eval(backend, items)
        finally:
            with self._ready:
                self._interruptible = None

    def interrupt_background(self) -> None:
        """Stop the background eval running now, if any: an interactive call is coming."""
        with self._ready:
            if self._interruptible is not None:
                self._interruptible.interrupt()

    def _timed_eval(self, backend: Backend, items: Sequence[EvalItem]) -> list[int]:
        tuner = self._tuners.get(backend)
        if tuner is None:
            return backend.eval(items)
        threads = tuner.threads()
        backend.set_threads(threads)
        started = time.perf_counter()
        rows = backend.eval(items)
        tuner.record(threads, sum(len(item.tokens) for item in items), time.perf_counter() - started)
        return rows

    def run(self, fn: Callable[..., T], *args: Any, priority: int = INTERACTIVE) -> T:
        """``fn(*args)`` on the device's worker; blocks until done, then returns (or raises) its result."""
        if threading.current_thread() is self._thread:  # already on the worker (a nested call)
            return fn(*args)
        future: Future = Future()
        with self._ready:
            heapq.heappush(self._heap, (priority, next(self._order), lambda: fn(*args), future))
            if priority == INTERACTIVE:
                self.interrupt_background()  # the condition's lock is re-entrant
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"edgeinfer-compute-{self.device}",
                                                daemon=True)
                self._thread.start()
            self._ready.notify()
        return future.result()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._heap:
                    self._ready.wait()  # asleep: nothing spins while idle
                _, _, call, future = heapq.heappop(self._heap)
            try:
                future.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, the worker lives on
                future.set_exception(exc)


_QUEUES: dict[str, ComputeQueue] = {}
_QUEUES_LOCK = threading.Lock()


def device_queue(device: str) -> ComputeQueue:
    """The process' queue for ``device`` ("cpu", "cuda:0", ...), made on first use."""
    queue = _QUEUES.get(device)  # every step asks: no lock once the queue exists
    if queue is not None:
        return queue
    with _QUEUES_LOCK:
        queue = _QUEUES.get(device)
        if queue is None:
            queue = _QUEUES[device] = ComputeQueue(device)
        return queue


def queued_eval(backend: Backend, items: Sequence[EvalItem], *, priority: int = INTERACTIVE) -> list[int]:
    """``backend.eval(items)`` on its device's queue; a BACKGROUND eval is interruptible."""
    queue = device_queue(backend.device)
    if priority == BACKGROUND:
        return queue.background_eval(backend, items)
    return queue.eval(backend, items, priority=priority)
