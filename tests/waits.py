"""Waiting on events, not on the clock: the tools every test that watches concurrent work uses.

- ``wait_until(condition)`` polls a condition until it holds. Its timeout is a safety net against a
  hang (generous: a loaded 2-core machine may be many times slower than usual), never the thing tested.
- ``EvalGate(backend)`` lets a backend's evals through only as the test says (``hold``, ``allow(n)``,
  ``open``), so "the request is still running when the client leaves" is true by construction, not
  because the machine happened to be slow enough.
- ``concurrently(model, prompts)`` runs requests at once, so the engine batches them;
  ``one_by_one(model, prompts)`` runs them alone, each from a cold cache (the reference).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

# A safety net for a wait on something that will happen: long enough for the slowest machine we run on
# under load, short enough that a real hang fails the test well before pytest-timeout kills the run.
PATIENCE = 120.0


def wait_until(condition: Callable[[], Any], what: str = "the condition", timeout: float = PATIENCE) -> None:
    """Return once ``condition()`` is true; fail the test if it is still false after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        pause.wait(0.01)


class EvalGate:
    """Holds a backend's ``eval`` calls until the test lets them through.

    ``hold()`` stops every eval at the gate, ``allow(n)`` lets ``n`` more through, ``open()`` lets all
    through (``decode_only``: only decode steps count). ``held`` is set while an eval waits at the
    gate. Use as a context manager: leaving it opens the gate and puts the backend's own ``eval`` back (a
    failed test never leaves an engine stuck).
    Idle-time settling evaluates too: call ``engine.settle()`` first where that matters.
    """

    def __init__(self, backend: Any, *, decode_only: bool = False) -> None:
        self.backend = backend
        # count only decode steps (one token per sequence): a prompt's prefill passes whatever its
        # length, and the budget is in generated tokens
        self.decode_only = decode_only
        self.held = threading.Event()
        self.passed = 0  # evals that went through the gate
        self._budget: int | None = None  # evals still allowed; None: no limit
        self._changed = threading.Condition()
        self._real = backend.eval
        backend.eval = self._eval

    def _eval(self, items: Any) -> Any:
        if self.decode_only and any(len(item.tokens) > 1 for item in items):
            return self._real(items)
        with self._changed:
            while self._budget == 0:
                self.held.set()
                if not self._changed.wait(timeout=PATIENCE):
                    self._budget = None  # the test never let it through: do not hang the engine
            self.held.clear()
            if self._budget is not None:
                self._budget -= 1
            self.passed += 1
        return self._real(items)

    def allow(self, n: int) -> None:
        """Let ``n`` more evals through, then hold."""
        with self._changed:
            self._budget = n
            self._changed.notify_all()

    def hold(self) -> None:
        self.allow(0)

    def open(self) -> None:
        with self._changed:
            self._budget = None
            self._changed.notify_all()

    def wait_held(self, what: str = "an eval to reach the gate") -> None:
        if not self.held.wait(PATIENCE):
            raise AssertionError(f"timed out after {PATIENCE:g} s waiting for {what}")

    def close(self) -> None:
        self.open()
        vars(self.backend).pop("eval", None)

    def __enter__(self) -> EvalGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# prompts whose greedy continuations batching tests compare (batched vs one by one)
BATCH_PROMPTS = [
    "The three primary colors are",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "List of the planets of the solar system:",
]


def concurrently(model, prompts: list[str], *, timeout: float = 300, **options) -> list:  # noqa: ANN001
    """``model.generate`` of every prompt at once, one thread each, released together (so the engine
    batches them); the completions in prompt order."""
    out: list = [None] * len(prompts)
    start = threading.Barrier(len(prompts))

    def worker(i: int) -> None:
        start.wait()
        out[i] = model.generate(prompts[i], **options)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return out


def one_by_one(model, prompts: list[str], **options) -> list:  # noqa: ANN001
    """``model.generate`` of each prompt alone, each from an empty cache (the unbatched reference); the
    cache is left empty."""
    out = []
    for prompt in prompts:
        model.engine.reset()
        out.append(model.generate(prompt, **options))
    model.engine.reset()
    return out
