"""The decode loop shared by every backend: continuous batching, prefix reuse, speculative
decoding, sampling, stop conditions, streaming, stats.

One scheduler thread per engine owns the backend. Requests from any thread join a waiting queue;
between steps the scheduler admits them into free KV sequences (reusing cached prefixes), and each
step runs one eval carrying the next token of every decoding sequence, then one prompt piece of a
newly joined request. Finished or cancelled requests leave at once and free their sequence. When
nothing runs, the scheduler uses the idle time to settle cached sequences (see PromptCache).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .backends.base import Backend, EvalInterrupted, EvalItem, prefill_cuts
from .compute import INTERACTIVE, device_queue, queued_eval
from .errors import BackendError, ContextOverflowError, EmptyPromptError, KVCacheFullError
from .metrics import ModelMetrics
from .prompt_cache import PromptCache
from .sampling import SamplingParams, token_confidence
from .speculative import DraftLength, LookupIndex, Speculation, StepCosts, Verifier, make_proposer
from .stats import Stats
from .stopping import TextAssembler
from .structured import ConstrainedSampler, Constraint, parsed_output

SETTLE_STEP_SECONDS = 0.1  # one idle settling step's target: the most a new request waits for it where
# the backend cannot interrupt a running eval (llama.cpp on CPU can: a request stops it at once)


@dataclass
class Completion:
    """The result of one request."""

    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (end token or stop string), "length", "cancelled"
    stats: Stats = field(default_factory=Stats)
    # with SamplingParams(confidence=True): per sampled token, (log-probability, top-1 minus top-2
    # probability) under the model's own distribution; what a cascade router reads
    confidence: list[tuple[float, float]] = field(default_factory=list)
    # with an output constraint (json_schema=, grammar=, regex=): the decoded output once it is complete
    # (finish_reason "stop"): the JSON value, or the pydantic model / dataclass asked for; else None
    parsed: Any = None


class Occupancy(NamedTuple):
    """An engine's requests now: those it runs (decoding or prefilling) and those queued for a sequence."""

    running: int
    waiting: int


class Request:
    """One generation request: its prompt and settings, the scheduler's progress on it, and the
    queue its text pieces travel through to the consumer's thread."""

    def __init__(self, prompt: list[int], params: SamplingParams, stats: Stats,
                 constraint: Constraint | None = None) -> None:
        self.prompt, self.params, self.stats = prompt, params, stats
        self.constraint = constraint  # the output's grammar state, if it is constrained
        self.events: queue.SimpleQueue = queue.SimpleQueue()  # ("piece", str) | ("end", Completion|exc)
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.t_start = time.perf_counter()  # TTFT counts the wait for a free sequence
        # --- owned by the scheduler thread
        self.seq_id = -1
        self.evaluated: list[int] = []  # tokens the sequence's KV holds
        self.cuts: list[int] = []  # where the rest of the prompt's prefill is cut into pieces
        self.prefill: tuple[int, int] | None = None  # (start, end) of the prompt part computed
        self.next_token: int | None = None  # sampled, not yet evaluated: the request is decoding
        self.forced: list[int] = []  # tokens the constraint forces after next_token: evaluated with it
        self.generated: list[int] = []
        self.assembler = TextAssembler(params.stop)
        self.sampler = None
        self.verifier: Verifier | None = None
        self.draft_length: DraftLength | None = None
        self.draft_evidence: int | None = None  # the match length behind the draft being checked
        self.lookup_index: LookupIndex | None = None  # the text so far, indexed for prompt-lookup drafts
        self.confidence: list[tuple[float, float]] = []
        self.t_first = self.t_last = 0.0

    @property
    def prefilling(self) -> bool:
        return self.next_token is None


class CompletionStream:
    """The text of one request, piece by piece, as it is generated; ``result()`` gives the Completion.

    It is its own iterator, like the openai client's streams: each piece is read once, a ``for`` loop or
    ``next()`` after a partial read goes on where the last one stopped, and ``result()`` reads the rest
    and returns the Completion (``completion`` is set once the stream has ended). Stopping to read does
    not stop generation: after ``break``, ``result()`` still gives the whole answer.

    Cancelling is explicit: ``cancel()`` (returns at once, safe from any thread, e.g. a server whose
    client went away), ``close()`` (cancels and waits until the request has let go of its sequence),
    leaving a ``with`` block, or the stream being garbage-collected unfinished. Generation then stops at
    its next step, and ``result()`` gives ``finish_reason="cancelled"`` with the text generated so far
    (an answer that had already ended keeps its own finish reason).
    """

    def __init__(self, source: Request | Iterator[str], *,
                 on_cancel: Callable[[], None] | None = None) -> None:
        self._request = source if isinstance(source, Request) else None
        # a stream built on another (a conversation turn, a routed or translated request): a generator
        # of its pieces that returns its Completion; on_cancel cancels what it reads
        self._gen = None if isinstance(source, Request) else source
        self._on_cancel = on_cancel
        self._error: BaseException | None = None
        self.completion: Completion | None = None

    def __iter__(self) -> CompletionStream:
        return self

    def __next__(self) -> str:
        if self.completion is not None or self._error is not None:
            raise StopIteration
        try:
            piece = self._next_piece()
        except StopIteration:
            raise
        except (KeyboardInterrupt, SystemExit):  # the reader was interrupted: stop generating
            self.cancel()
            if self._gen is not None:  # the generator is gone with the exception
                self._error = BackendError("the stream was interrupted before its end")
            raise
        except BaseException as exc:
            self._error = exc
            raise
        return piece

    def _next_piece(self) -> str:
        if self._gen is not None:
            try:
                return next(self._gen)
            except StopIteration as end:
                if end.value is None:  # a wrapper that lost its inner stream's end
                    raise BackendError("the stream ended without a result") from None
                self.completion = end.value
                raise StopIteration from None
        request = self._request
        assert request is not None  # one of the two sources is always set
        kind, value = request.events.get()
        if kind == "piece":
            return value
        if isinstance(value, BaseException):
            raise value
        self.completion = value
        raise StopIteration

    def result(self) -> Completion:
        """Read the rest (if any) and return the Completion; an error that ended the stream is raised."""
        for _ in self:
            pass
        if self._error is not None:
            raise self._error
        assert self.completion is not None  # __next__ ends with one or the other
        return self.completion

    def cancel(self) -> None:
        """Stop generating at the next step and free the sequence; does not wait."""
        if self._request is not None:
            self._request.cancelled.set()
        elif self._on_cancel is not None:
            self._on_cancel()

    def close(self) -> None:
        """Cancel what is left and wait until the request has let go of its sequence; ``result()`` then
        gives what was generated. Never raises: an error that ended the stream is kept for ``result()``."""
        if self.completion is not None or self._error is not None:
            return
        self.cancel()
        if self._request is not None and not self._request.finished.wait(timeout=60):
            return  # the engine is stuck (closing?): leave the stream to whoever reads it next
        with contextlib.suppress(Exception):
            self.result()

    def __enter__(self) -> CompletionStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # dropped unfinished: nobody will read the rest
        if self.completion is None and self._error is None:
            with contextlib.suppress(Exception):
                self.cancel()


_live_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _stop_engines() -> None:  # no llama_decode may run while the interpreter tears down
    for engine in list(_live_engines):
        engine.close()


class Engine:
    """Runs requests on one backend as a continuous batch, reusing cached prefixes.

    ``max_batch`` bounds the sequences decoded together (default: all the backend holds, at most the
    rows it computes exactly as alone, ``caps.exact_rows``); more requests wait, first come first
    served. ``speculation`` ("auto": prompt lookup where the backend checks drafts exactly;
    "prompt-lookup", a ``DraftModel``, or None) drafts tokens and verifies them in one eval when one
    request is decoding alone. With ``settle`` (the default), idle time makes generated tokens' KV
    exactly reusable.
    """

    def __init__(self, backend: Backend, *, model_name: str = "", cache: PromptCache | None = None,
                 settle: bool = True, max_batch: int | None = None,
                 speculation: Speculation = "auto") -> None:
        self.backend = backend
        self.proposer = make_proposer(speculation, backend)
        self.model_name = model_name
        self.cache = cache or PromptCache(backend)
        self.metrics = ModelMetrics(model_name)  # every finished request's stats, added up
        self.metrics.memory = self.kv_usage
        self.settle_idle = settle
        caps = backend.caps  # by default, batching changes no output: at most caps.exact_rows at once
        self.max_batch = max(1, min(max_batch or caps.exact_rows or caps.max_sequences, caps.max_sequences))
        self.step_costs = StepCosts()  # measured cost of a decode step by its token count
        self.lock = threading.RLock()  # held by the scheduler for each step
        self._wake = threading.Condition()
        self._waiting: collections.deque[Request] = collections.deque()
        self._active: list[Request] = []
        self._settle_pending = False
        self._tokens_per_settle = 32
        self._stopped = False
        self._thread: threading.Thread | None = None
        _live_engines.add(self)

    # --- public
    def occupancy(self) -> Occupancy:
        """Requests running and waiting now, for health checks and queue gauges."""
        return Occupancy(len(self._active), len(self._waiting))

    def kv_usage(self) -> dict[str, int]:
        """KV cache bytes in use (tokens the sequences hold) and allocated, and the sequences allocated;
        read from the engine's own records, so any thread may ask while requests run."""
        per_token = self.backend.kv_bytes_per_token()
        held = sum(len(slot.tokens) for slot in self.cache.slots if not slot.busy) + sum(
            len(r.evaluated) for r in list(self._active))  # a running request's sequence: what it evaluated
        return {"kv_bytes_in_use": held * per_token, "kv_bytes_allocated": self.backend.kv_bytes_allocated(),
                "kv_bytes_per_token": per_token, "sequences_allocated": self.backend.sequences_allocated,
                "sequences_max": self.backend.caps.max_sequences}

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

    def submit(self, tokens: Sequence[int], params: SamplingParams) -> CompletionStream:
        """Queue a request; the stream yields its text as the scheduler generates it."""
        self.check_prompt(tokens)
        if self._stopped:
            raise BackendError("this model is closed")
        stats = Stats(model=self.model_name, backend=self.backend.name, device=self.backend.device,
                      prompt_tokens=len(tokens))
        # compiled here, in the caller's thread: a grammar error is raised to the caller, before queueing
        constraint = Constraint(params.output, self.backend) if params.output is not None else None
        request = Request(list(tokens), params, stats, constraint)
        with self._wake:
            self._waiting.append(request)
            self._ensure_thread()
            self._wake.notify()
        device_queue(self.backend.device).interrupt_background()  # idle-time settling gives way at once
        return CompletionStream(request)

    def settle(self) -> None:
        """Do now, in this thread, what idle time would do: settle every idle cached sequence."""
        with self.lock:
            while self.cache.settle_step(512, priority=INTERACTIVE):
                pass

    def reset(self) -> None:
        """Drop every idle cached sequence, so the next request prefills from scratch."""
        with self.lock:
            for slot in self.cache.slots:
                if not slot.busy:
                    self.cache.forget(slot.seq_id)

    def close(self) -> None:
        """Cancel what is queued or running and stop the scheduler (before the backend is freed)."""
        with self._wake:
            self._stopped = True
            for request in [*self._waiting, *self._active]:
                request.cancelled.set()
            self._wake.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60)

    # --- the scheduler thread
    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="edgeinfer-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._stopped or self._waiting or self._active or self._settle_pending):
                    self._wake.wait()
                if self._stopped:
                    break
            with self.lock:
                if self._waiting or self._active:
                    self._step()
                else:
                    self._settle_step()
        with self.lock:  # closing: end whatever is left
            for request in [*self._waiting, *self._active]:
                self._finish(request, "cancelled")
            self._waiting.clear()

    def _step(self) -> None:
        self._admit()
        for request in [r for r in self._active if r.cancelled.is_set()]:
            self._finish(request, "cancelled")
        decoding = [r for r in self._active if not r.prefilling]
        if decoding:
            self._guard(decoding, self._decode_step)
        prefilling = [r for r in self._active if r.prefilling]
        if prefilling:
            self._guard(prefilling[:1], lambda reqs: self._prefill_step(reqs[0]))

    def _guard(self, requests: list[Request], step) -> None:  # noqa: ANN001
        """Run a step; an error ends the requests it touched (their KV may be part-written)."""
        try:
            step(requests)
        except BaseException as exc:  # noqa: BLE001 - reported to the consumers; the thread lives on
            for request in requests:
                if request in self._active:
                    self.cache.forget(request.seq_id)
                    request.seq_id = -1
                    self._finish(request, "error", exc)

    def _admit(self) -> None:
        while self._waiting and len(self._active) < self.max_batch:
            request = self._waiting[0]
            if request.cancelled.is_set():
                self._waiting.popleft()
                self._finish(request, "cancelled")
                continue
            demand = min(len(self._active) + len(self._waiting), self.max_batch)
            try:
                room = self.cache.free_slots(demand)
            except Exception as exc:  # noqa: BLE001 - re-making the backend's context failed
                self._fail_all(exc)  # the running requests' KV may be gone with it
                continue
            if not room:
                return  # wait for a running request to finish
            try:
                reuse = self.cache.acquire(request.prompt, busy_neighbours=self._busy_ids(), demand=demand)
            except Exception as exc:  # noqa: BLE001 - e.g. a disk state that failed to load
                self._waiting.popleft()
                self._finish(request, "error", exc)
                continue
            self._waiting.popleft()
            request.seq_id = reuse.seq_id
            request.stats.cached_tokens, request.stats.cache_source = reuse.cached, reuse.source
            request.evaluated = request.prompt[: reuse.cached]
            caps = self.backend.caps
            request.cuts = prefill_cuts(reuse.cached, len(request.prompt), caps.n_batch, caps.exact_min_batch)
            if self.proposer is not None:  # the verifier then picks every token of the request
                request.verifier = Verifier(request.params, self.backend.logits, request.constraint)
                request.verifier.start(request.prompt)
                request.draft_length = DraftLength(self.step_costs)
                make_index = getattr(self.proposer, "index", None)
                request.lookup_index = make_index() if make_index is not None else None
            elif request.constraint is not None:  # masked sampling (numpy) on the backend's rows
                request.sampler = ConstrainedSampler(self.backend, request.params, request.constraint)
            else:
                request.sampler = self.backend.make_sampler(request.params)
            self._active.append(request)

    def _fail_all(self, exc: BaseException) -> None:
        """End every running and waiting request with ``exc``; their sequences are forgotten."""
        for request in [*self._active, *self._waiting]:
            if request.seq_id >= 0:
                self.cache.forget(request.seq_id, drop=False)
                request.seq_id = -1
            self._finish(request, "error", exc)
        self._waiting.clear()

    def _busy_ids(self) -> set[int]:
        return {r.seq_id for r in self._active}

    def _eval(self, items: list[EvalItem]) -> list[int]:
        """Evaluate, evicting idle sequences' KV when the cells run out."""
        held = {item.seq_id: self.backend.seq_length(item.seq_id) for item in items}
        while True:
            try:
                return queued_eval(self.backend, items)
            except KVCacheFullError:
                for seq_id, n in held.items():
                    self.backend.kv_truncate(seq_id, n)  # drop whatever part did go in
                if not self.cache.evict_lru(exclude=None):
                    raise

    def _prefill_step(self, request: Request) -> None:
        """The next piece of a prompt (at most n_batch tokens, so a cancel or a new request waits
        one piece at most), cut where a fresh prefill is cut so its KV stays exactly reusable."""
        start, end = len(request.evaluated), len(request.prompt)
        stop = request.cuts.pop(0) if request.cuts else end
        (row,) = self._eval([EvalItem(request.seq_id, request.prompt[start:stop])])
        request.evaluated = request.prompt[:stop]
        if stop < end:
            return
        request.prefill = (request.stats.cached_tokens, end)
        if request.sampler is not None and request.params.repeat_penalty != 1.0:
            for token in request.prompt[-request.params.repeat_last_n :]:
                request.sampler.accept(token)
        self._emit(request, [self._sample(request, row)])

    def _sample(self, request: Request, row: int) -> int:
        if request.verifier is not None:  # position-keyed: the same text whatever gets drafted
            token = request.verifier.sample(row, len(request.generated))
        else:
            token = request.sampler.sample(row)
        if request.params.confidence:
            request.confidence.append(token_confidence(self.backend.logits(row), token))
        return token

    def _decode_step(self, requests: list[Request]) -> None:
        """One eval with the next token of every decoding request (plus a draft when one decodes
        alone), then the tokens each emits."""
        requests.sort(key=lambda r: r.seq_id)  # runs of adjacent sequences batch together
        t0 = time.perf_counter()  # a step's cost includes drafting it
        drafts = [self._draft(r) if len(requests) == 1 else [] for r in requests]
        while True:
            items = [EvalItem(r.seq_id, [r.next_token, *r.forced, *d], n_outputs=1 + len(d))
                     for r, d in zip(requests, drafts, strict=True)]
            try:
                rows = self._eval(items)
                break
            except KVCacheFullError:  # shared cells ran out: the youngest request gives way
                if len(requests) == 1:
                    raise
                victim = max(requests, key=lambda r: r.t_start)
                del drafts[requests.index(victim)]
                requests.remove(victim)
                self._finish(victim, "error", KVCacheFullError(
                    "the KV cache filled up while other requests were running: retry this request, "
                    "or load the model with a larger n_ctx or fewer sequences"))
        if len(items) == 1:
            self.step_costs.record(len(items[0].tokens), time.perf_counter() - t0)
        first = 0
        for request, draft, item in zip(requests, drafts, items, strict=True):
            own = rows[first : first + item.n_outputs]
            first += item.n_outputs
            request.evaluated.extend(item.tokens)
            # forced tokens were certain: they go out with the token(s) sampled after them
            forced, request.forced = request.forced, []
            if not draft:
                self._emit(request, [*forced, self._sample(request, own[0])])
                continue
            accepted, follow = request.verifier.verify(draft, own, len(request.generated) + len(forced))
            request.draft_length.update(len(draft), accepted, request.draft_evidence)
            request.stats.draft_tokens += len(draft)
            request.stats.accepted_tokens += accepted
            self._trim(request, len(draft) - accepted)
            self._emit(request, [*forced, *draft[:accepted], follow])

    def _draft(self, request: Request) -> list[int]:
        """The tokens to check with the next step (often none): a proposal, cut to the length that the
        request's measured acceptance and step costs say pays."""
        if request.verifier is None or request.params.confidence:  # confidence is read token by token
            return []
        forced = request.forced  # evaluated before the draft, in the same eval
        caps = self.backend.caps
        room = min(request.params.max_tokens - len(request.generated) - len(forced) - 1,
                   caps.n_ctx - len(request.evaluated) - len(forced) - 2,
                   (caps.exact_rows or caps.n_batch) - len(forced) - 1)  # a check as exact as a step
        policy, index = request.draft_length, request.lookup_index
        if index is not None:  # a free proposal first: how long its match is decides whether to check it
            # the text only grows (prompt, generated, then forced tokens, emitted in that order)
            held, n_prompt = len(index.tokens), len(request.prompt)
            index.extend([*request.prompt[held:], *request.generated[max(0, held - n_prompt):], *forced])
            draft, evidence = index.lookup(min(room, policy.maximum))
            k = policy.next_k(evidence) if draft else 0
        else:  # a draft model costs compute to propose: decide first
            evidence, k = None, policy.next_k()
            text = [*request.prompt, *request.generated, *forced]
            draft = self.proposer.propose(text, min(k, room)) if min(k, room) > 0 else []
        draft = draft[: max(0, min(k, room))]
        if request.constraint is not None:  # only what the grammar allows is worth checking
            draft = draft[: request.constraint.valid_prefix(draft)]
        request.draft_evidence = evidence
        return draft

    def _trim(self, request: Request, n: int) -> None:
        """Drop the last ``n`` evaluated tokens from the request's sequence."""
        if n > 0:
            del request.evaluated[-n:]
            self.backend.kv_truncate(request.seq_id, len(request.evaluated))

    def _emit(self, request: Request, tokens: list[int]) -> None:
        """Hand sampled tokens to the consumer; finish on an end token, a stop string or a limit.
        All but the last of ``tokens`` are already evaluated (accepted draft tokens)."""
        backend, n_ctx = self.backend, self.backend.caps.n_ctx
        now = time.perf_counter()
        if not request.t_first:
            request.t_first = now
            request.stats.ttft_s = request.stats.prefill_s = now - request.t_start
        request.t_last = now
        for i, token in enumerate(tokens):
            reason = None
            if backend.is_end(token):
                reason = "stop"
            else:
                request.generated.append(token)
                if request.verifier is not None:
                    request.verifier.accept(token)
                piece = request.assembler.feed(backend.token_bytes(token))
                if piece:
                    request.events.put(("piece", piece))
                if request.assembler.stopped:
                    reason = "stop"
                elif len(request.generated) >= request.params.max_tokens or len(request.evaluated) >= n_ctx:
                    reason = "length"
            if reason:
                self._trim(request, len(tokens) - 1 - i)  # keep the KV of what was emitted
                self._finish(request, reason)
                return
        request.next_token = tokens[-1]
        if request.constraint is not None:
            self._force(request)

    def _force(self, request: Request) -> None:
        """Take the tokens the grammar now allows alone: they are evaluated with the next token in one
        eval and emitted with the token sampled after them, with no sampling step of their own."""
        room = min(request.params.max_tokens - len(request.generated) - 1,
                   self.backend.caps.n_ctx - len(request.evaluated) - 2)
        request.forced = request.constraint.forced(room)
        request.stats.forced_tokens += len(request.forced)
        for token in request.forced:
            if request.sampler is not None:  # its repeat-penalty history (a verifier's: when emitted)
                request.sampler.accept(token)
            if request.params.confidence:
                request.confidence.append((0.0, 1.0))  # certain: the only token allowed

    def _finish(self, request: Request, reason: str, error: BaseException | None = None) -> None:
        """Release the request's sequence (its KV stays cached) and end its stream."""
        if request in self._active:
            self._active.remove(request)
        if request.seq_id >= 0:
            self.cache.release(request.seq_id, request.evaluated, request.prefill,
                               keep=request.params.keep_kv)
            self._settle_pending = self.settle_idle
        if request.sampler is not None:
            request.sampler.close()
        stats = request.stats
        stats.completion_tokens = len(request.generated)
        stats.decode_s = request.t_last - request.t_first if request.generated else 0.0
        stats.total_s = time.perf_counter() - request.t_start
        stats.threads = self.backend.threads
        stats.kv_bytes = len(request.evaluated) * self.backend.kv_bytes_per_token()
        stats.finish_reason = reason if error is None else "error"
        self.metrics.record(stats)  # before the consumer can see the end
        if error is not None:
            request.events.put(("end", error))
        else:
            tail = request.assembler.flush()
            if tail:
                request.events.put(("piece", tail))
            request.events.put(("end", Completion(request.assembler.text, request.generated, reason, stats,
                                                  request.confidence,
                                                  parsed_output(request.params.output, request.assembler.text,
                                                                reason))))
        request.finished.set()

    def _settle_step(self) -> None:
        """One short step of idle work; stops when there is none left."""
        t0 = time.perf_counter()
        try:
            done = self.cache.settle_step(self._tokens_per_settle)
        except EvalInterrupted:  # a request arrived: it goes first, settling goes on when idle again
            return
        if not done:
            self._settle_pending = False
            return
        per_token = (time.perf_counter() - t0) / done
        self._tokens_per_settle = max(16, min(512, int(SETTLE_STEP_SECONDS / max(per_token, 1e-6))))

