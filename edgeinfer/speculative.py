"""Speculative decoding: draft proposals (prompt lookup, or a small draft model), the adaptive
draft length, and the verification that keeps output exactly as without speculation.

Prompt lookup finds the longest recent n-gram that ends the text so far earlier in the prompt or
the output, and proposes the tokens that followed it there. It costs no model, and it pays off
where the answer copies from its input (rewriting, extraction, code edits). The engine verifies a
draft in one batched eval (issue 9); ``DraftLength`` keeps drafts short, or off, when they miss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, Union

import numpy as np

from .backends.base import Backend, EvalItem
from .compute import queued_eval
from .errors import InvalidRequestError
from .prompt_cache import common_prefix
from .sampling import NumpySampler, SamplingParams

if TYPE_CHECKING:
    from .model import Model
    from .structured import Constraint


class Proposer(Protocol):
    """Anything that drafts up to ``k`` tokens to follow ``tokens``."""

    def propose(self, tokens: Sequence[int], k: int) -> list[int]: ...


# What ``speculation=`` takes at every level (ei.load, Model, Engine): "auto" (prompt lookup where drafts
# are checked exactly), "prompt-lookup", a smaller loaded Model with the same tokenizer (its drafts), any
# Proposer, or None (off).
Speculation = Union[str, "Model", Proposer, None]


def make_proposer(speculation: Speculation, target: Backend) -> Proposer | None:
    """The drafter for a ``speculation`` setting (a draft model's vocabulary is checked)."""
    from .model import Model  # the Model module builds on this one

    if isinstance(speculation, Model):
        speculation = DraftModel(speculation.backend)
    if speculation is None:
        return None
    if speculation == "auto":  # on where checking a draft cannot change the output
        return PromptLookup(max_ngram=3, min_ngram=2) if target.caps.exact_verify else None
    if speculation == "prompt-lookup":
        return PromptLookup(max_ngram=3, min_ngram=2)
    if isinstance(speculation, str) or not hasattr(speculation, "propose"):
        raise InvalidRequestError(
            f"unknown speculation {speculation!r}: use 'auto', 'prompt-lookup', a draft Model, or None")
    check = getattr(speculation, "check_vocabulary", None)
    if check is not None:
        check(target)
    return speculation


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


class StepCosts:
    """What a decode step with ``rows`` tokens costs relative to a one-token step, measured as the
    engine runs (moving averages); unmeasured sizes use ``prior_slope`` per extra row (on this
    2-core CPU a 2-token step costs ~1.6x a 1-token one, a 4-token step ~2.6x)."""

    def __init__(self, *, prior_slope: float = 0.55, decay: float = 0.9) -> None:
        self.prior_slope, self.decay = prior_slope, decay
        self._seconds: dict[int, float] = {}

    def record(self, rows: int, seconds: float) -> None:
        old = self._seconds.get(rows)
        self._seconds[rows] = seconds if old is None else self.decay * old + (1 - self.decay) * seconds

    def relative(self, rows: int) -> float:
        one, this = self._seconds.get(1), self._seconds.get(rows)
        if rows == 1:
            return 1.0
        if one and this:
            return this / one
        return 1.0 + self.prior_slope * (rows - 1)


class DraftLength:
    """Picks each step's draft length to maximise expected tokens per unit of compute.

    With a per-token acceptance rate ``a`` (a moving estimate) a draft of ``d`` tokens yields
    (1 - a^(d+1)) / (1 - a) tokens for a step costing ``costs.relative(d + 1)``; drafting stops
    when no length beats a plain step, and is probed again after 8, 16, 32 ... plain steps (the
    text may start copying).
    """

    # 4: Gemma 3's Q4_K_M logits change in the last bits once 6+ tokens of a sequence share a batch
    # (measured: up to 5 rows match one-by-one steps), which would change greedy output
    def __init__(self, costs: StepCosts | None = None, *, maximum: int = 4, retry_every: int = 8,
                 margin: float = 1.05, prior: tuple[float, float] = (3.5, 5.0), decay: float = 0.85) -> None:
        self.costs = costs or StepCosts()
        self.maximum, self.retry_every, self.margin, self.decay = maximum, retry_every, margin, decay
        self._hits, self._trials = prior
        self._idle = 0
        self._retry = retry_every  # doubles after each probe that finds nothing (up to 128)

    @property
    def acceptance(self) -> float:
        return self._hits / self._trials if self._trials else 0.0

    def gain(self, d: int) -> float:
        """Expected tokens per step with a draft of ``d`` over a plain step's one, per unit cost."""
        a = min(self.acceptance, 0.999)
        return (1 - a ** (d + 1)) / (1 - a) / self.costs.relative(d + 1)

    def next_k(self) -> int:
        """Tokens to draft for the next step (0: decode one token plainly)."""
        best = max(range(1, self.maximum + 1), key=self.gain)
        if self.gain(best) >= self.margin:
            self._idle = 0
            return best
        self._idle += 1
        if self._idle >= self._retry:  # a cheap probe keeps the estimate current
            self._idle = 0
            return 1
        return 0

    def update(self, drafted: int, accepted: int) -> None:
        """Record a verified draft: ``accepted`` hits, then one miss unless all were accepted."""
        if drafted <= 0:
            return
        misses = 0 if accepted == drafted else 1
        self._retry = self.retry_every if accepted else min(2 * self._retry, 128)
        self._hits = self.decay * self._hits + accepted
        self._trials = self.decay * self._trials + accepted + misses


class Verifier:
    """Picks tokens from the target model's output rows and checks drafts against them.

    Every token is drawn with a uniform number keyed by the request's seed and the token's position
    (inverse CDF over the sampling chain's distribution), and a draft token is kept exactly when it
    equals the token drawn at its position. Greedy, that is the argmax. Sampled, each token still
    follows the target distribution p (a draft token d is kept with probability p(d), as in
    standard rejection sampling, and otherwise the drawn token is a sample of p without d), and in
    addition the output for a given seed is the same whatever was drafted: speculation changes
    the speed, never the text.
    """

    def __init__(self, params: SamplingParams, logits: Callable[[int], np.ndarray],
                 constraint: Constraint | None = None) -> None:
        # with an output constraint, each row is masked to the tokens the grammar allows at its position
        # (the grammar advances with every token drawn), so a draft token it forbids is never kept
        self._constraint = constraint
        self._logits = logits
        self._greedy = params.greedy
        self._penalty = params.repeat_penalty != 1.0
        self._dist = NumpySampler(params)
        self._seed = params.seed if params.seed is not None else int(np.random.SeedSequence().entropy % 2**63)

    def start(self, prompt: Sequence[int]) -> None:
        """Begin a request: the prompt's tail counts for the repeat penalty."""
        self._dist.history = list(prompt)

    def accept(self, token: int) -> None:
        """A token was emitted (it counts for the repeat penalty from now on)."""
        self._dist.history.append(token)

    def sample(self, row: int, position: int, drafted: Sequence[int] = ()) -> int:
        """The token at ``position`` (its index in the generated text) from output row ``row``;
        ``drafted``: draft tokens before it in the same check (not yet accepted)."""
        logits = self._logits(row)
        if self._constraint is None:
            return self._draw(logits, position, drafted)
        token = self._constraint.pick(logits, lambda masked: self._draw(masked, position, drafted))
        self._constraint.accept(token)
        return token

    def _draw(self, logits: np.ndarray, position: int, drafted: Sequence[int]) -> int:
        if self._greedy and not self._penalty:
            return int(logits.argmax())
        history = self._dist.history
        if drafted:
            self._dist.history = [*history, *drafted]
        try:
            ids, probs = self._dist.distribution(logits)
        finally:
            self._dist.history = history
        if self._greedy:
            return int(ids[0])
        u = np.random.default_rng([self._seed, position]).random()
        return int(ids[min(int(np.searchsorted(np.cumsum(probs), u, side="right")), len(ids) - 1)])

    def verify(self, draft: Sequence[int], rows: Sequence[int], position: int) -> tuple[int, int]:
        """(accepted draft tokens, the token that follows them); ``rows`` has len(draft)+1 rows and
        ``position`` is the index of the first drafted token in the generated text."""
        for i, d in enumerate(draft):
            token = self.sample(rows[i], position + i, draft[:i])
            if token != d:
                return i, token
        return len(draft), self.sample(rows[len(draft)], position + len(draft), draft)


class DraftModel:
    """Drafts with a smaller model sharing the target's vocabulary: greedy tokens from its own KV
    sequence, kept in step with the text by trimming it to the common prefix before each draft.

    Drafts are deterministic given the text, so ``Verifier``'s rule (keep d with probability p(d))
    keeps sampled output on the target's distribution here too.
    """

    def __init__(self, draft: Backend, *, seq_id: int = 0) -> None:
        self.backend, self.seq_id = draft, seq_id
        self._held: list[int] = []

    def check_vocabulary(self, target: Backend) -> None:
        """Refuse a draft whose token ids mean other text than the target's."""
        probe = range(0, target.caps.n_vocab, max(1, target.caps.n_vocab // 256))
        same = self.backend.caps.n_vocab == target.caps.n_vocab and all(
            self.backend.token_bytes(t) == target.token_bytes(t) for t in probe)
        if not same:
            raise InvalidRequestError(
                "the draft model's vocabulary differs from the target's: speculative decoding needs "
                "a draft from the same family (same tokenizer); use speculation='prompt-lookup'")

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        if k <= 0 or not tokens:
            return []
        keep = min(common_prefix(self._held, tokens), len(tokens) - 1)
        self.backend.kv_truncate(self.seq_id, keep)
        self._held = list(tokens[:keep])
        (row,) = queued_eval(self.backend, [EvalItem(self.seq_id, tokens[keep:])])
        self._held = list(tokens)
        out: list[int] = []
        for _ in range(k):
            token = int(self.backend.logits(row).argmax())
            if self.backend.is_end(token):
                break
            out.append(token)
            if len(out) == k or len(self._held) + 1 >= self.backend.caps.n_ctx:
                break
            (row,) = queued_eval(self.backend, [EvalItem(self.seq_id, [token])])
            self._held.append(token)
        return out
