"""Routing policies: small objects that pick a tier for a request and say why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import InvalidRequestError
from ..protocol import is_chat


@dataclass(frozen=True)
class RouteRequest:
    """What a policy sees: the prompt text, its length in tokens (by the cheapest tier's tokenizer),
    and what the caller says about it."""

    text: str
    prompt_tokens: int
    task: str | None = None
    language: str | None = None


def prompt_text(prompt: Any) -> str:
    """The text a policy reads from a prompt: the text itself, or a chat's message contents joined."""
    if isinstance(prompt, str):
        return prompt
    if is_chat(prompt):
        return "\n".join(str(m.get("content", "")) for m in prompt)
    return ""


@dataclass(frozen=True)
class Decision:
    tier: str
    reason: str


class Policy(Protocol):
    def decide(self, request: RouteRequest, tiers: Sequence[str]) -> Decision: ...


@dataclass(frozen=True)
class Rule:
    """Send matching requests to ``tier``: by task, language, or prompt length (all given must hold)."""

    tier: str
    tasks: frozenset[str] = field(default_factory=frozenset)
    languages: frozenset[str] = field(default_factory=frozenset)
    min_prompt_tokens: int | None = None
    max_prompt_tokens: int | None = None

    def matches(self, request: RouteRequest) -> str | None:
        """Why this rule applies to ``request``, or None."""
        why = []
        if self.tasks:
            if request.task not in self.tasks:
                return None
            why.append(f"task {request.task}")
        if self.languages:
            if request.language not in self.languages:
                return None
            why.append(f"language {request.language}")
        if self.min_prompt_tokens is not None:
            if request.prompt_tokens < self.min_prompt_tokens:
                return None
            why.append(f"prompt {request.prompt_tokens} >= {self.min_prompt_tokens} tokens")
        if self.max_prompt_tokens is not None:
            if request.prompt_tokens > self.max_prompt_tokens:
                return None
            why.append(f"prompt {request.prompt_tokens} <= {self.max_prompt_tokens} tokens")
        return ", ".join(why) or "always"


class Rules:
    """The first matching rule's tier; ``default`` (or the cheapest tier) when none matches."""

    def __init__(self, rules: Sequence[Rule], default: str | None = None) -> None:
        self.rules, self.default = list(rules), default

    def decide(self, request: RouteRequest, tiers: Sequence[str]) -> Decision:
        for rule in self.rules:
            if rule.tier not in tiers:
                raise InvalidRequestError(f"rule names tier {rule.tier!r}; tiers are {', '.join(tiers)}")
            why = rule.matches(request)
            if why is not None:
                return Decision(rule.tier, f"rule: {why}")
        tier = self.default or tiers[0]
        if tier not in tiers:
            raise InvalidRequestError(f"default tier {tier!r} is not one of {', '.join(tiers)}")
        return Decision(tier, "no rule matched: default tier")


class Always:
    """Every request to one tier (a baseline: always-small, always-large)."""

    def __init__(self, tier: str) -> None:
        self.tier = tier

    def decide(self, request: RouteRequest, tiers: Sequence[str]) -> Decision:
        if self.tier not in tiers:
            raise InvalidRequestError(f"tier {self.tier!r} is not one of {', '.join(tiers)}")
        return Decision(self.tier, "always this tier")


# confidence measures a cascade can use: name -> (how to reduce Completion.confidence, valid range)
CONFIDENCE_MEASURES: dict[str, tuple[str, float, float]] = {
    "mean_logprob": ("mean of token log-probabilities", float("-inf"), 0.0),
    "min_logprob": ("lowest token log-probability", float("-inf"), 0.0),
    "mean_margin": ("mean top-1 minus top-2 probability", 0.0, 1.0),
}


def confidence_of(per_token: Sequence[tuple[float, float]], measure: str) -> float:
    """One number for a completion's per-token (log-probability, margin) pairs."""
    if not per_token:
        return 0.0 if measure == "mean_margin" else float("-inf")
    if measure == "mean_logprob":
        return sum(lp for lp, _ in per_token) / len(per_token)
    if measure == "min_logprob":
        return min(lp for lp, _ in per_token)
    return sum(m for _, m in per_token) / len(per_token)


class Cascade:
    """Answer with ``small``; when the answer's confidence (``measure``) is below ``threshold``, answer
    again with ``large``. The small attempt is paid for either way; ``calibrate_threshold`` picks a
    threshold that sends a chosen share of requests on."""

    def __init__(self, small: str, large: str, threshold: float, measure: str = "mean_logprob") -> None:
        if measure not in CONFIDENCE_MEASURES:
            raise InvalidRequestError(f"unknown confidence measure {measure!r}; "
                                      f"choose {', '.join(CONFIDENCE_MEASURES)}")
        _, low, high = CONFIDENCE_MEASURES[measure]
        if not low <= threshold <= high:
            raise InvalidRequestError(f"a {measure} threshold must be in [{low}, {high}], got {threshold}")
        self.small, self.large, self.threshold, self.measure = small, large, threshold, measure

    def decide(self, request: RouteRequest, tiers: Sequence[str]) -> Decision:
        for tier in (self.small, self.large):
            if tier not in tiers:
                raise InvalidRequestError(f"cascade tier {tier!r} is not one of {', '.join(tiers)}")
        return Decision(self.small, "cascade: small tier first")

    def escalate(self, per_token: Sequence[tuple[float, float]]) -> str | None:
        """Why the small answer is not good enough (None: keep it)."""
        value = confidence_of(per_token, self.measure)
        if value < self.threshold:
            return f"{self.measure} {value:.3f} < {self.threshold:.3f}"
        return None


def calibrate_threshold(confidences: Sequence[float], large_share: float) -> float:
    """The threshold under which ``large_share`` of these (held-out) small-tier confidences fall, so a
    Cascade escalates about that share of requests."""
    if not 0.0 <= large_share <= 1.0:
        raise InvalidRequestError(f"large_share must be in [0, 1], got {large_share}")
    values = sorted(c for c in confidences if c == c)  # NaN carries no information
    if not values:
        raise InvalidRequestError("calibrate_threshold needs at least one confidence value")
    if large_share == 0.0:
        return values[0] - 1e-9 if values[0] > float("-inf") else values[0]
    index = min(len(values) - 1, max(0, round(large_share * len(values))))
    return values[index] if large_share < 1.0 else values[-1] + 1e-9
