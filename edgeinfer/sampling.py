"""Sampling settings (validated once) and a numpy sampler for backends without a native one."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from .errors import InvalidRequestError

if TYPE_CHECKING:
    from .structured import OutputFormat


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. ``temperature == 0`` means greedy (deterministic).

    Defaults follow llama.cpp's own (temp 0.8, top-k 40, top-p 0.95, min-p 0.05, no repeat penalty).
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = field(default_factory=tuple)
    # also report each token's log-probability and top-2 margin (Completion.confidence): one softmax
    # over the vocabulary per token, and no speculative drafting for the request
    confidence: bool = False
    # what the output must match (a JSON schema, Lark grammar or regex; see edgeinfer.structured): give
    # json_schema= / grammar= / regex= to make_params and the generation methods
    output: OutputFormat | None = None
    # how many leading tokens of the request's sequence stay cached when it ends (None: all it computed).
    # For a one-off request after a shared block (a translator's examples): the sequence goes back to the
    # block, so the next request of the block runs in place instead of copying it, and nothing else is
    # kept or written to disk
    keep_kv: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature must be >= 0 (0 means greedy)"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.repeat_penalty > 0, "repeat_penalty must be > 0 (1.0 disables it)"),
            (self.repeat_last_n >= 0, "repeat_last_n must be >= 0"),
            (self.max_tokens >= 1, "max_tokens must be >= 1"),
            (self.seed is None or self.seed >= 0, "seed must be a non-negative integer"),
            (self.keep_kv is None or (isinstance(self.keep_kv, int) and self.keep_kv >= 0),
             "keep_kv must be None or a number of tokens >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidRequestError(message)
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_overrides(self, **overrides: object) -> SamplingParams:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


class NumpySampler:
    """Reference sampler on a logits row; same chain order as llama.cpp's native one."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.history: list[int] = []

    def accept(self, token: int) -> None:
        self.history.append(token)

    def sample(self, logits: np.ndarray) -> int:
        if self.params.greedy:
            return int(np.argmax(self._penalized(logits)))
        ids, probs = self.distribution(logits)
        return int(ids[self.rng.choice(len(ids), p=probs)])

    def _penalized(self, logits: np.ndarray) -> np.ndarray:
        p = self.params
        logits = np.array(logits, dtype=np.float32, copy=True)
        if p.repeat_penalty != 1.0 and p.repeat_last_n and self.history:
            recent = np.unique(np.asarray(self.history[-p.repeat_last_n :]))
            vals = logits[recent]
            penalty = np.float32(p.repeat_penalty)  # in float32, as llama.cpp's penalties sampler computes
            logits[recent] = np.where(vals > 0, vals / penalty, vals * penalty)
        return logits

    def distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tokens the chain keeps and their probabilities (what ``sample`` draws from)."""
        p = self.params
        logits = self._penalized(logits)
        if p.greedy:
            return np.array([int(np.argmax(logits))]), np.ones(1)
        if p.top_k and p.top_k < len(logits):  # partition first: a full sort of 262k logits is slow
            top = np.argpartition(-logits, p.top_k - 1)[: p.top_k]
            order = top[np.argsort(-logits[top], kind="stable")]
        else:
            order = np.argsort(-logits, kind="stable")
        kept = logits[order]
        probs = _softmax(kept)
        if p.top_p < 1.0:
            cut = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1
            order, kept = order[:cut], kept[:cut]
        if p.min_p > 0:
            keep = _softmax(kept) >= p.min_p * _softmax(kept).max()
            order, kept = order[keep], kept[keep]
        return order, _softmax(kept / p.temperature)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def token_confidence(logits: np.ndarray, token: int) -> tuple[float, float]:
    """(log-probability of ``token``, top-1 minus top-2 probability) under ``logits``' softmax."""
    x = np.asarray(logits, dtype=np.float64)
    top = float(x.max())
    log_total = top + float(np.log(np.exp(x - top).sum()))
    second = float(np.partition(x, -2)[-2]) if x.size > 1 else -np.inf
    return float(x[token]) - log_total, float(np.exp(top - log_total) - np.exp(second - log_total))
