"""The decode loop shared by every backend: prefix reuse, sampling, stop conditions, streaming, stats."""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .backends.base import Backend, EvalItem
from .errors import ContextOverflowError, EmptyPromptError, KVCacheFullError
from .prompt_cache import PromptCache
from .sampling import SamplingParams
from .stats import Stats
from .stopping import TextAssembler


@dataclass
class Completion:
    """The result of one request."""

    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (end token or stop string), "length", "cancelled"
    stats: Stats = field(default_factory=Stats)


class CompletionStream:
    """Iterates text pieces as they are generated; ``completion`` is set once it is exhausted."""

    def __init__(self, gen: Iterator[str]) -> None:
        self._gen = gen
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        self.completion = yield from self._gen

    def result(self) -> Completion:
        """Run to the end (if not already) and return the Completion."""
        for _ in self:
            pass
        assert self.completion is not None
        return self.completion

    def close(self) -> None:
        """Stop generating early; the KV cache stays consistent."""
        self._gen.close()


class Settler:
    """A background thread that, while the engine is idle, recomputes generated tokens' KV as a
    prefill (``PromptCache.settle_step``) in short steps, yielding to any request that arrives."""

    STEP_SECONDS = 0.1  # one step's target duration: the most a new request waits for it

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._tokens_per_step = 32
        _live_settlers.add(self)

    def kick(self) -> None:
        """There may be work: run it when the engine is idle."""
        if self._stopped:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="edgeinfer-settle", daemon=True)
            self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopped:
            self._wake.wait()
            self._wake.clear()
            while not self._stopped:
                engine = self._engine()
                if engine is None or engine.waiting:
                    break
                with engine.lock:
                    if self._stopped or engine.waiting:
                        break
                    t0 = time.perf_counter()
                    done = engine.cache.settle_step(self._tokens_per_step)
                    if not done:
                        break
                    per_token = (time.perf_counter() - t0) / done
                    self._tokens_per_step = max(16, min(512, int(self.STEP_SECONDS / max(per_token, 1e-6))))
                del engine

    def stop(self) -> None:
        """Stop for good; returns once no step is running (so the backend can be freed)."""
        self._stopped = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)


_live_settlers: weakref.WeakSet[Settler] = weakref.WeakSet()


@atexit.register
def _stop_settlers() -> None:  # no llama_decode may run while the interpreter tears down
    for settler in list(_live_settlers):
        settler.stop()


class Engine:
    """Runs requests on one backend, reusing cached prefixes through a PromptCache.

    One request at a time per engine (a lock serializes them). With ``settle`` (the default), idle
    time is used to make generated tokens' KV exactly reusable (see ``PromptCache.settle_step``).
    """

    def __init__(self, backend: Backend, *, model_name: str = "", cache: PromptCache | None = None,
                 settle: bool = True) -> None:
        self.backend = backend
        self.model_name = model_name
        self.cache = cache or PromptCache(backend)
        self.lock = threading.RLock()
        self._waiting = 0  # requests waiting for the lock: the settler steps aside
        self._waiting_lock = threading.Lock()
        self.settler = Settler(self) if settle else None

    @property
    def waiting(self) -> bool:
        return self._waiting > 0

    def _acquire(self) -> None:
        with self._waiting_lock:
            self._waiting += 1
        try:
            self.lock.acquire()
        finally:
            with self._waiting_lock:
                self._waiting -= 1

    def settle(self) -> None:
        """Do now, in this thread, what the settler would do in idle time."""
        self._acquire()
        try:
            while self.cache.settle_step(512):
                pass
        finally:
            self.lock.release()

    def close(self) -> None:
        """Stop the background work (before the backend is freed)."""
        if self.settler is not None:
            self.settler.stop()

    def reset(self) -> None:
        """Drop every cached sequence, so the next request prefills from scratch."""
        with self.lock:
            for slot in self.cache.slots:
                self.cache.forget(slot.seq_id)

    def check_prompt(self, tokens: Sequence[int]) -> None:
        """Refuse prompts that are empty or do not leave room for one generated token."""
        n_ctx = self.backend.caps.n_ctx
        if not tokens:
            raise EmptyPromptError("the prompt is empty: give at least one token of text")
        if len(tokens) >= n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(tokens)} tokens but the context holds {n_ctx} "
                f"(and needs room to answer): shorten the prompt or load the model with a "
                f"larger n_ctx",
                prompt_tokens=len(tokens),
                n_ctx=n_ctx,
            )

    def generate(self, tokens: Sequence[int], params: SamplingParams) -> Iterator[str]:
        """Generator of text pieces; its return value (StopIteration.value) is the Completion."""
        self.check_prompt(tokens)
        return self._run(list(tokens), params)

    def _eval(self, seq_id: int, tokens: Sequence[int], held: int) -> int:
        """Evaluate ``tokens`` on ``seq_id`` (which holds ``held``), evicting other sequences'
        KV when the cells run out; returns the output row."""
        while True:
            try:
                (row,) = self.backend.eval([EvalItem(seq_id, tokens)])
                return row
            except KVCacheFullError:
                self.backend.kv_truncate(seq_id, held)  # drop whatever part did go in
                if not self.cache.evict_lru(exclude=seq_id):
                    raise

    def _run(self, prompt: list[int], params: SamplingParams) -> Iterator[str]:
        backend = self.backend
        n_ctx = backend.caps.n_ctx
        stats = Stats(model=self.model_name, backend=backend.name, device=backend.device,
                      prompt_tokens=len(prompt))
        generated: list[int] = []
        assembler = TextAssembler(params.stop)
        finish = "cancelled"
        t_start = time.perf_counter()  # TTFT includes any wait for the engine
        self._acquire()
        try:
            reuse = self.cache.acquire(prompt)
            seq_id = reuse.seq_id
            stats.cached_tokens, stats.cache_source = reuse.cached, reuse.source
            evaluated = prompt[: reuse.cached]
            prefill: tuple[int, int] | None = None
            sampler = backend.make_sampler(params)
            try:
                row = self._eval(seq_id, prompt[reuse.cached :], reuse.cached)
                evaluated, prefill = prompt, (reuse.cached, len(prompt))
                if params.repeat_penalty != 1.0:
                    for tok in prompt[-params.repeat_last_n :]:
                        sampler.accept(tok)
                t_first = t_last = 0.0
                while True:
                    token = sampler.sample(row)
                    t_last = time.perf_counter()
                    if not t_first:
                        t_first = t_last
                        stats.ttft_s = stats.prefill_s = t_first - t_start
                    if backend.is_end(token):
                        finish = "stop"
                        break
                    generated.append(token)
                    piece = assembler.feed(backend.token_bytes(token))
                    if piece:
                        yield piece
                    if assembler.stopped:
                        finish = "stop"
                        break
                    if len(generated) >= params.max_tokens or len(evaluated) >= n_ctx:
                        finish = "length"
                        break
                    row = self._eval(seq_id, (token,), len(evaluated))
                    evaluated.append(token)
                tail = assembler.flush()
                if tail:
                    yield tail
            except GeneratorExit:  # closed by the consumer between steps: the cache is consistent
                self.cache.release(seq_id, evaluated, prefill)
                raise
            except BaseException:  # an error or Ctrl-C mid-eval may leave the KV cache part-written
                self.cache.forget(seq_id)
                raise
            else:
                self.cache.release(seq_id, evaluated, prefill)
            finally:
                sampler.close()
                stats.completion_tokens = len(generated)
                stats.decode_s = t_last - t_first if generated else 0.0
                stats.total_s = time.perf_counter() - t_start
                stats.finish_reason = finish
        finally:
            self.lock.release()
            if self.settler is not None:
                self.settler.kick()
        return Completion(assembler.text, generated, finish, stats)
