"""``ei.Router``: each request goes to the cheapest tier a policy thinks can serve it.

Tiers are listed cheapest first (a small local model, a larger one, a remote server). The Router has
the generate / stream / chat surface of a Model; every completion's ``stats.route`` says which tier
served it and why, and ``router.stats`` adds up calls, tokens and cost per tier, with the saving
against sending everything to the last (largest) tier.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..conversation import Chats
from ..engine import Completion, CompletionStream
from ..errors import BackendUnavailableError, EdgeInferError, InvalidRequestError, RemoteUnavailableError
from ..protocol import LanguageModel, Message, count_tokens, is_chat
from ..stats import Stats
from .costs import LocalCost, TokenPrice
from .policies import Decision, Policy, RouteRequest, Rules, prompt_text

DECISIONS_KEPT = 1000  # recent decisions kept in RouterStats


@dataclass
class Tier:
    """One model the router can send to; ``fallback`` is the tier used when this one is unreachable.

    Each tier gets a request in its own style: a text prompt goes to a chat model (role "chat": an
    instruction model, a RemoteModel) as one user message through its chat template, and chat
    messages go to a base model as its plain transcript (``Model.complete_chat`` does that). ``adapt``
    replaces this with your own conversion (e.g. a few-shot text prompt); it may return text, token
    ids or chat messages."""

    name: str
    model: LanguageModel  # edgeinfer.Model, edgeinfer.RemoteModel, a Router, or your own LanguageModel
    cost: LocalCost | TokenPrice = field(default_factory=LocalCost)
    fallback: str | None = None
    # the request as this tier wants it (e.g. a base model: chat messages -> a few-shot text prompt)
    adapt: Callable[[Any], Any] | None = None

    def call(self, streaming: bool, prompt: Any, params: Any, options: dict[str, Any]) -> Any:
        """Run ``prompt`` on this tier's model in its style (or as ``adapt`` makes it): chat messages go
        to the chat methods and a text prompt (or token ids) to the text ones."""
        if self.adapt is not None:
            prompt = self.adapt(prompt)
        elif isinstance(prompt, str) and getattr(self.model, "role", None) == "chat":
            prompt = [{"role": "user", "content": prompt}]
        model = self.model
        if is_chat(prompt):
            return (model.stream_chat if streaming else model.complete_chat)(prompt, params, **options)
        return (model.stream if streaming else model.generate)(prompt, params, **options)


@dataclass
class TierTotals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cost: float = 0.0


@dataclass
class RouterStats:
    """Totals per tier, recent decisions, and the estimated saving vs always using the largest tier."""

    tiers: dict[str, TierTotals] = field(default_factory=dict)
    decisions: list[tuple[str, str]] = field(default_factory=list)  # (tier, reason), most recent last
    cost: float = 0.0
    largest_tier_cost: float = 0.0  # what the same requests would have cost on the largest tier
    unestimated: int = 0  # requests whose largest-tier cost could not be estimated yet
    estimated_cost: float = 0.0  # the cost of the requests that have a largest-tier estimate

    @property
    def saved(self) -> float:
        """Saved against the largest tier, over the requests where both costs are known (a request served
        before the largest tier has a measured speed is left out, never counted as a loss)."""
        return self.largest_tier_cost - self.estimated_cost

    def shares(self) -> dict[str, float]:
        """Share of requests each tier served."""
        total = sum(t.requests for t in self.tiers.values()) or 1
        return {name: t.requests / total for name, t in self.tiers.items()}

    def snapshot(self) -> dict:
        """Plain numbers, in the style of ``ModelMetrics.snapshot()``: per-tier totals and shares,
        cost, what the largest tier would have cost, and the saving."""
        shares = self.shares()
        return {"requests": sum(t.requests for t in self.tiers.values()),
                "tiers": {name: {**asdict(t), "share": shares[name]} for name, t in self.tiers.items()},
                "cost": self.cost, "largest_tier_cost": self.largest_tier_cost, "saved": self.saved,
                "unestimated": self.unestimated}


class Router(Chats):
    """Routes each request to one of ``tiers`` (cheapest first) as ``policy`` decides (default: the
    cheapest tier for everything, i.e. ``Rules([])``). A Router is a LanguageModel itself."""

    role = "chat"  # takes chat messages (each tier gets them in its own style)
    chat_template = None  # tools go to its tiers in the generic JSON format

    def __init__(self, tiers: Sequence[Tier], policy: Policy | None = None, *,
                 name: str | None = None) -> None:
        if not tiers:
            raise InvalidRequestError("a Router needs at least one tier, e.g. Router([Tier('small', model)])")
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise InvalidRequestError(f"tier names must be unique, got {names}")
        for tier in tiers:
            if tier.fallback is not None and tier.fallback not in names:
                raise InvalidRequestError(f"tier {tier.name!r} falls back to unknown tier {tier.fallback!r}")
        self.tiers = {t.name: t for t in tiers}
        self.names = names
        self.name = name or "router(" + ", ".join(names) + ")"
        self.policy = policy or Rules([])
        self.stats = RouterStats(tiers={n: TierTotals() for n in names})
        self._lock = threading.Lock()

    @property
    def n_ctx(self) -> int:
        """The smallest context among the tiers that say theirs (a request must fit any tier it may get);
        4096 when none does (remote tiers)."""
        sizes = [getattr(t.model, "n_ctx", None) for t in self.tiers.values()]
        return min((n for n in sizes if isinstance(n, int)), default=4096)

    # --- the Model surface
    def generate(self, prompt: str | Sequence[int], params: Any = None, *, task: str | None = None,
                 language: str | None = None, **options: Any) -> Completion:
        return self._run(prompt, params, task, language, options)

    def complete_chat(self, messages: Sequence[Message], params: Any = None, *, task: str | None = None,
                      language: str | None = None, **options: Any) -> Completion:
        return self._run(messages, params, task, language, options)

    def stream(self, prompt: str | Sequence[int], params: Any = None, *, task: str | None = None,
               language: str | None = None, **options: Any) -> CompletionStream:
        return self._stream(prompt, params, task, language, options)

    def stream_chat(self, messages: Sequence[Message], params: Any = None, *, task: str | None = None,
                    language: str | None = None, **options: Any) -> CompletionStream:
        return self._stream(messages, params, task, language, options)

    def close(self) -> None:
        for tier in self.tiers.values():
            tier.model.close()

    def metrics_snapshot(self) -> dict:
        """``self.stats.snapshot()`` taken consistently (each tier's model has its own ``metrics``)."""
        with self._lock:
            return self.stats.snapshot()

    # --- deciding
    def decide(self, prompt: Any, *, task: str | None = None, language: str | None = None) -> Decision:
        """The policy's choice for ``prompt`` (text, token ids or chat messages), without running it."""
        decision = self.policy.decide(self._request(prompt, task, language), self.names)
        if decision.tier not in self.tiers:
            raise InvalidRequestError(f"the policy chose unknown tier {decision.tier!r}")
        return decision

    def _request(self, prompt: Any, task: str | None, language: str | None) -> RouteRequest:
        if not isinstance(prompt, str) and not is_chat(prompt):  # token ids
            return RouteRequest("", len(prompt), task, language)
        text = prompt_text(prompt)
        n = count_tokens(self.tiers[self.names[0]].model, text, add_special=True)
        return RouteRequest(text, n, task, language)

    # --- running
    def _run(self, prompt: Any, params: Any, task: str | None, language: str | None,
             options: dict[str, Any]) -> Completion:
        decision = self.decide(prompt, task=task, language=language)
        escalate = getattr(self.policy, "escalate", None)
        if escalate is not None:  # a cascade: try the small tier, read its confidence, maybe go on
            first = self.tiers[decision.tier].call(False, prompt, params, {**options, "confidence": True})
            # an empty answer is never a confident one, however sure the model was of its end token
            why = "empty answer" if not first.text.strip() else escalate(first.confidence)
            self._record(self.tiers[decision.tier], decision.reason + ("; escalated" if why else "; kept"),
                         first.stats)
            if why is None:
                return first
            decision = Decision(self.policy.large, f"cascade: {why}")  # type: ignore[attr-defined]
        tier, reason, completion = self._call(decision, False, prompt, params, options)
        self._record(tier, reason, completion.stats)
        return completion

    def _call(self, decision: Decision, streaming: bool, prompt: Any, params: Any,
              options: dict[str, Any]) -> tuple[Tier, str, Any]:
        """Start the request on the decided tier, or on its fallback when it is unreachable; returns the
        tier that took it, the reason, and what the call returned (a Completion or a stream)."""
        tier, reason = self.tiers[decision.tier], decision.reason
        try:
            return tier, reason, tier.call(streaming, prompt, params, options)
        except EdgeInferError as exc:
            if tier.fallback is None or not _unavailable(exc):
                raise
            reason = f"{reason}; {tier.name} unavailable ({exc}), fell back to {tier.fallback}"
            tier = self.tiers[tier.fallback]
            return tier, reason, tier.call(streaming, prompt, params, options)

    def _stream(self, prompt: Any, params: Any, task: str | None, language: str | None,
                options: dict[str, Any]) -> CompletionStream:
        if getattr(self.policy, "escalate", None) is not None:  # a cascade decides on a whole answer
            completion = self._run(prompt, params, task, language, options)

            def whole() -> Iterator[str]:
                yield completion.text
                return completion

            return CompletionStream(whole())
        decision = self.decide(prompt, task=task, language=language)
        tier, reason, inner = self._call(decision, True, prompt, params, options)

        def run() -> Iterator[str]:
            # not `yield from`: closing this generator would close inner and wait for its engine; dropping
            # this stream cancels inner (on_cancel) without waiting
            for piece in inner:  # noqa: UP028
                yield piece
            completion = inner.completion
            if completion is not None:
                self._record(tier, reason, completion.stats)
            return completion

        return CompletionStream(run(), on_cancel=inner.cancel)

    def _record(self, tier: Tier, reason: str, stats: Stats) -> None:
        stats.route = f"{tier.name}: {reason}"
        cost = tier.cost.cost(stats)
        with self._lock:
            totals = self.stats.tiers[tier.name]
            totals.requests += 1
            totals.prompt_tokens += stats.prompt_tokens
            totals.completion_tokens += stats.completion_tokens
            totals.seconds += stats.total_s
            totals.cost += cost
            self.stats.cost += cost
            largest = self._largest_cost(stats, tier.name, cost)
            if largest is None:
                self.stats.unestimated += 1
            else:
                self.stats.largest_tier_cost += largest
                self.stats.estimated_cost += cost
            self.stats.decisions.append((tier.name, reason))
            del self.stats.decisions[:-DECISIONS_KEPT]

    def _largest_cost(self, stats: Stats, served_by: str, cost: float) -> float | None:
        """What this completion would have cost on the largest tier: exact for a token price; for a
        local tier, its measured seconds per token so far times these tokens (None before any)."""
        name = self.names[-1]
        if served_by == name:
            return cost
        largest = self.tiers[name]
        if isinstance(largest.cost, TokenPrice):
            return largest.cost.cost(stats)
        totals = self.stats.tiers[name]
        tokens = totals.prompt_tokens + totals.completion_tokens
        if not tokens:
            return None
        per_token = totals.seconds / tokens
        return largest.cost.per_hour * per_token * (stats.prompt_tokens + stats.completion_tokens) / 3600


def _unavailable(exc: EdgeInferError) -> bool:
    """Errors that mean "this tier cannot serve now" (a remote that is down or timing out, a backend
    that is not installed), not "this request is bad": only these fall back."""
    return isinstance(exc, (RemoteUnavailableError, BackendUnavailableError))
