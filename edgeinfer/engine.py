"""The decode loop shared by every backend: prefix reuse, sampling, stop conditions, streaming, stats."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .backends.base import Backend, EvalItem
from .errors import ContextOverflowError, EmptyPromptError
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


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


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
    """Runs requests on one backend. One request at a time per engine (a lock serializes them)."""

    def __init__(self, backend: Backend, *, model_name: str = "") -> None:
        self.backend = backend
        self.model_name = model_name
        self.lock = threading.RLock()
        self._seq_tokens: dict[int, list[int]] = {}  # what each sequence's KV cache holds

    def forget(self, seq_id: int = 0) -> None:
        """Drop what ``seq_id`` holds, so the next request on it prefills from scratch."""
        with self.lock:
            self._seq_tokens.pop(seq_id, None)
            self.backend.kv_drop(seq_id)

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

    def generate(self, tokens: Sequence[int], params: SamplingParams, *, seq_id: int = 0) -> Iterator[str]:
        """Generator of text pieces; its return value (StopIteration.value) is the Completion."""
        self.check_prompt(tokens)
        return self._run(list(tokens), params, seq_id)

    def _prefill(self, seq_id: int, prompt: list[int]) -> tuple[int, int]:
        """Reuse the longest cached prefix of this sequence, evaluate the rest; (row, reused)."""
        backend = self.backend
        held = self._seq_tokens.get(seq_id, [])
        reuse = min(common_prefix_length(held, prompt), len(prompt) - 1)
        self._seq_tokens[seq_id] = prompt[:reuse]  # before truncating: never claim more than is held
        backend.kv_truncate(seq_id, reuse)
        (row,) = backend.eval([EvalItem(seq_id, prompt[reuse:])])
        self._seq_tokens[seq_id] = list(prompt)
        return row, reuse

    def _run(self, prompt: list[int], params: SamplingParams, seq_id: int) -> Iterator[str]:
        backend = self.backend
        n_ctx = backend.caps.n_ctx
        stats = Stats(model=self.model_name, backend=backend.name, device=backend.device,
                      prompt_tokens=len(prompt))
        generated: list[int] = []
        assembler = TextAssembler(params.stop)
        finish = "cancelled"
        with self.lock:
            t_start = time.perf_counter()
            sampler = backend.make_sampler(params)
            try:
                row, stats.cached_tokens = self._prefill(seq_id, prompt)
                if params.repeat_penalty != 1.0:
                    for tok in prompt[-params.repeat_last_n :]:
                        sampler.accept(tok)
                evaluated = self._seq_tokens[seq_id]
                t_first = t_last = 0.0
                while True:
                    token = sampler.sample(row)
                    t_last = time.perf_counter()
                    if not generated and not t_first:
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
                    (row,) = backend.eval([EvalItem(seq_id, (token,))])
                    evaluated.append(token)
                tail = assembler.flush()
                if tail:
                    yield tail
            except GeneratorExit:  # closed by the consumer between steps: the cache is consistent
                raise
            except BaseException:  # an error or Ctrl-C mid-eval may leave the KV cache part-written
                self.forget(seq_id)
                raise
            finally:
                sampler.close()
                stats.completion_tokens = len(generated)
                stats.decode_s = t_last - t_first if generated else 0.0
                stats.total_s = time.perf_counter() - t_start
                stats.finish_reason = finish
        return Completion(assembler.text, generated, finish, stats)
