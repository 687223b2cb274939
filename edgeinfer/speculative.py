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
        exact = target.caps.exact_verify and target.caps.exact_rows != 1
        return PromptLookup(max_ngram=8, min_ngram=2) if exact else None
    if speculation == "prompt-lookup":
        return PromptLookup(max_ngram=8, min_ngram=2)
    if isinstance(speculation, str) or not hasattr(speculation, "propose"):
        raise InvalidRequestError(
            f"unknown speculation {speculation!r}: use 'auto', 'prompt-lookup', a draft Model, or None")
    check = getattr(speculation, "check_vocabulary", None)
    if check is not None:
        check(target)
    return speculation


class PromptLookup:
    """Proposes up to ``k`` tokens by matching the text's last ``min_ngram``..``max_ngram`` tokens."""

    def __init__(self, *, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def index(self) -> LookupIndex:
        """An empty index for one request's text, extended as the text grows (the engine keeps one
        per request, so a step's lookup costs microseconds whatever the text's length)."""
        return LookupIndex(self.min_ngram, self.max_ngram)

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        """The continuation of the most recent earlier occurrence of the longest matching suffix."""
        index = self.index()
        index.extend(tokens)
        return index.lookup(k)[0]


class LookupIndex:
    """Where each ``min_ngram``-gram of a growing text starts, for prompt-lookup drafts."""

    CANDIDATES = 64  # most recent occurrences compared per lookup (bounds a step's work)

    def __init__(self, min_ngram: int, max_ngram: int) -> None:
        self.min_ngram, self.max_ngram = min_ngram, max_ngram
        self.tokens: list[int] = []
        self._starts: dict[tuple[int, ...], list[int]] = {}

    def extend(self, tokens: Sequence[int]) -> None:
        """Append tokens to the text."""
        n0, text = self.min_ngram, self.tokens
        for token in tokens:
            text.append(int(token))
            if len(text) >= n0:
                start = len(text) - n0
                self._starts.setdefault(tuple(text[start:]), []).append(start)

    def lookup(self, k: int) -> tuple[list[int], int]:
        """(draft, match length): what followed the most recent earlier occurrence of the longest
        match of the text's end, and how many tokens matched (a longer match is likelier to go on as
        before); ([], 0) when there is none."""
        n0, text = self.min_ngram, self.tokens
        n_tok = len(text)
        if k <= 0 or n_tok < n0 + 1:
            return [], 0
        starts = self._starts.get(tuple(text[n_tok - n0 :]), ())
        best_start, best_length = -1, 0
        for start in reversed(starts[-self.CANDIDATES - 1 :]):
            if start + n0 >= n_tok:  # the text's end itself (nothing follows it)
                continue
            length = n0
            while length < self.max_ngram and start + n0 - length > 0 and (
                    text[start + n0 - length - 1] == text[n_tok - length - 1]):
                length += 1
            if length > best_length:  # ties keep the more recent
                best_start, best_length = start, length
                if length == self.max_ngram:
                    break
        if best_start < 0:
            return [], 0
        first = best_start + n0
        return text[first : first + k], best_length


class StepCosts:
    """What a decode step with ``rows`` tokens costs relative to a one-token step, measured as the
    engine runs (moving averages); unmeasured sizes use ``prior_slope`` per extra row (on a 2-core
    CPU a 2-token step costs 1.4-1.8x a 1-token one, a 4-token step 2.6-3x). ``pinned`` keeps the
    priors whatever is measured: drafting decisions then do not depend on the machine's load (tests,
    exactness checks that need drafts to happen)."""

    def __init__(self, *, prior_slope: float = 0.7, decay: float = 0.9, pinned: bool = False) -> None:
        self.prior_slope, self.decay, self.pinned = prior_slope, decay, pinned
        self._seconds: dict[int, float] = {}

    def record(self, rows: int, seconds: float) -> None:
        if self.pinned:
            return
        old = self._seconds.get(rows)
        self._seconds[rows] = seconds if old is None else self.decay * old + (1 - self.decay) * seconds

    def measured(self) -> dict[int, float]:
        """The relative cost of every token count measured so far (for reports)."""
        return {rows: self.relative(rows) for rows in sorted(self._seconds) if 1 in self._seconds}

    def relative(self, rows: int) -> float:
        one, this = self._seconds.get(1), self._seconds.get(rows)
        if rows == 1:
            return 1.0
        if one and this:
            return this / one
        return 1.0 + self.prior_slope * (rows - 1)


# Prompt-lookup drafts are judged by how long a match found them: a 2-token match in free text is
# mostly chance, 6+ tokens mean the text is copying its input. Each evidence class keeps its own
# acceptance; (hits, trials) priors, measured on the benchmark's tasks (see benchmarks/speculative.py).
EVIDENCE_CLASSES: tuple[tuple[int, tuple[float, float]], ...] = (
    (2, (1.0, 4.0)),  # match length >= 2 (and below the next class): acceptance 0.25 to start with
    (3, (2.0, 4.0)),
    (4, (2.8, 4.0)),
    (6, (3.4, 4.0)),
    (8, (3.8, 4.0)),
)
MODEL_PRIOR = (3.5, 5.0)  # a draft model's proposals (no match length)


class _Acceptance:
    """One evidence class's moving acceptance estimate and its probing schedule."""

    def __init__(self, prior: tuple[float, float], retry_every: int) -> None:
        self.hits, self.trials = prior
        self.idle, self.retry = 0, retry_every

    @property
    def rate(self) -> float:
        return self.hits / self.trials if self.trials else 0.0


class DraftLength:
    """Picks each step's draft length to maximise expected tokens per unit of compute.

    With a per-token acceptance rate ``a`` (a moving estimate, kept per evidence class: how long
    the match behind a prompt-lookup draft is) a draft of ``d`` tokens yields
    (1 - a^(d+1)) / (1 - a) tokens for a step costing ``costs.relative(d + 1)`` (measured). A
    draft is checked only when its expected gain beats a plain step by ``margin``; a class that does
    not pay is probed with one token after ``retry_every`` chances, then 2x, 4x ... (up to 256x)
    while probes miss. So text that never copies costs a handful of probes, and copying text
    (long matches) drafts from its first step.
    """

    # 4: Gemma 3's Q4_K_M logits change in the last bits once 6+ tokens of a sequence share a batch
    # (measured: up to 5 rows match one-by-one steps), which would change greedy output
    def __init__(self, costs: StepCosts | None = None, *, maximum: int = 4, retry_every: int = 16,
                 margin: float = 1.1, prior: tuple[float, float] | None = None, decay: float = 0.85) -> None:
        self.costs = costs or StepCosts()
        self.maximum, self.retry_every, self.margin, self.decay = maximum, retry_every, margin, decay
        priors = [p for _, p in EVIDENCE_CLASSES] if prior is None else [prior] * len(EVIDENCE_CLASSES)
        self._classes = [_Acceptance(p, retry_every) for p in priors]
        self._model = _Acceptance(prior or MODEL_PRIOR, retry_every)

    def _class(self, evidence: int | None) -> _Acceptance:
        if evidence is None:
            return self._model
        index = 0
        for i, (least, _) in enumerate(EVIDENCE_CLASSES):
            if evidence >= least:
                index = i
        return self._classes[index]

    def acceptance(self, evidence: int | None = None) -> float:
        """The estimated chance that a draft token of this evidence class is accepted."""
        return self._class(evidence).rate

    def gain(self, d: int, evidence: int | None = None) -> float:
        """Expected tokens per step with a draft of ``d`` over a plain step's one, per unit cost."""
        a = min(self.acceptance(evidence), 0.999)
        return (1 - a ** (d + 1)) / (1 - a) / self.costs.relative(d + 1)

    def next_k(self, evidence: int | None = None) -> int:
        """Tokens to draft for the next step (0: decode one token plainly); ``evidence``: the match
        length behind a prompt-lookup draft (None: a draft model)."""
        state = self._class(evidence)
        best = max(range(1, self.maximum + 1), key=lambda d: self.gain(d, evidence))
        if self.gain(best, evidence) >= self.margin:
            state.idle = 0
            return best
        state.idle += 1
        if state.idle >= state.retry:  # a cheap probe keeps the estimate current
            state.idle = 0
            return 1
        return 0

    def update(self, drafted: int, accepted: int, evidence: int | None = None) -> None:
        """Record a verified draft: ``accepted`` hits, then one miss unless all were accepted."""
        if drafted <= 0:
            return
        state = self._class(evidence)
        misses = 0 if accepted == drafted else 1
        state.retry = self.retry_every if accepted else min(2 * state.retry, 16 * self.retry_every)
        state.hits = self.decay * state.hits + accepted
        state.trials = self.decay * state.trials + accepted + misses


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
