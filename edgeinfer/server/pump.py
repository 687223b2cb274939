"""Bridges between blocking model streams and the event loop: admission control and the pump."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from starlette.types import Receive

from ..engine import Completion, CompletionStream
from .errors import APIError


class Admission:
    """Counts a model's admitted requests (running or queued) and refuses those over capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.admitted = 0
        self._lock = threading.Lock()

    def acquire(self) -> Ticket:
        """A ticket for one request, or a 503 at once when the queue is full."""
        with self._lock:
            if self.admitted >= self.capacity:
                raise APIError(503, f"the server is busy ({self.admitted} requests running or queued "
                               "for this model): retry later", code="server_busy",
                               headers={"Retry-After": "1"})
            self.admitted += 1
        return Ticket(self)

    def _release(self) -> None:
        with self._lock:
            self.admitted -= 1


class Ticket:
    """One admitted request; releasing it twice is harmless."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._release()


class Pump:
    """Iterates a CompletionStream in its own thread (iteration blocks on the engine) and hands the
    pieces to the event loop; cancels the stream as soon as the client disconnects."""

    def __init__(self, stream: CompletionStream, receive: Receive) -> None:
        self.stream = stream
        self.disconnected = False
        self._done = False
        self._queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._run, name="edgeinfer-pump", daemon=True).start()
        self._watcher = asyncio.ensure_future(self._watch(receive))

    @property
    def completion(self) -> Completion | None:
        return self.stream.completion

    async def __aiter__(self) -> AsyncIterator[str]:
        """Text pieces until the stream ends (an engine error is raised) or the client is gone."""
        try:
            while True:
                kind, value = await self._queue.get()
                if kind == "piece":
                    yield value  # type: ignore[misc]
                elif kind == "error":
                    raise value  # type: ignore[misc]
                else:
                    return
        finally:
            self.close()

    def close(self) -> None:
        """Stop watching the client and cancel the stream if it has not ended."""
        self._watcher.cancel()
        if not self._done:
            self.stream.cancel()

    def _run(self) -> None:
        try:
            for piece in self.stream:
                self._put("piece", piece)
            self._put("end", None)
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop, raised there
            self._put("error", exc)

    def _put(self, kind: str, value: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._deliver, kind, value)
        except RuntimeError:  # the loop is closed: the server has stopped
            self.stream.cancel()

    def _deliver(self, kind: str, value: object) -> None:
        self._done = self._done or kind != "piece"
        self._queue.put_nowait((kind, value))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self.stream.cancel()
        self._queue.put_nowait(("gone", None))
