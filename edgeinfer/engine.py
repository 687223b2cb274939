"""The decode loop shared by every backend: prefix reuse, sampling, stop conditions, streaming, stats."""

from __future__ import annotations

import threading
import time
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


class Engine:
    """Runs requests on one backend, reusing cached prefixes through a PromptCache.

    One request at a time per engine (a lock serializes them).
    """

    def __init__(self, backend: Backend, *, model_name: str = "", cache: PromptCache | None = None) -> None:
        self.backend = backend
        self.model_name = model_name
        self.cache = cache or PromptCache(backend)
        self.lock = threading.RLock()

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
        with self.lock:
            t_start = time.perf_counter()
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
        return Completion(assembler.text, generated, finish, stats)
