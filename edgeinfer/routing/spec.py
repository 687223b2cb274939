"""``--router FILE_OR_SPEC``: a routing policy over models already loaded, from a short spec or a router
file from ``edgeinfer router train``. The models are the tiers, cheapest first, named by model name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError
from .learned import Learned, TrainedRouter
from .policies import CONFIDENCE_MEASURES, Always, Cascade
from .router import Router, Tier

DEFAULT_THRESHOLD = -1.0  # as `edgeinfer run --escalate-to`
SPEC_HELP = ("cascade[:THRESHOLD[:MEASURE]] (the first model answers, the last one when the mean token "
             f"log-prob is below THRESHOLD, default {DEFAULT_THRESHOLD}), always:MODEL, or a router file "
             "from `edgeinfer router train` (between the first and the last model)")


def check_spec(spec: str) -> TrainedRouter | None:
    """Refuse a malformed spec before any model loads; the trained router when ``spec`` is a file."""
    kind, _, rest = spec.partition(":")
    if kind == "cascade":
        _cascade(rest, "small", "large")
        return None
    if kind == "always":
        if not rest:
            raise InvalidRequestError("--router always:MODEL needs the name of one of the served models")
        return None
    if Path(spec).is_file():
        return TrainedRouter.load(spec)
    raise InvalidRequestError(f"--router {spec!r} is neither a file nor a spec: use {SPEC_HELP}")


def router_from_spec(spec: str, models: Sequence[Any], *, name: str = "router",
                     embedder: Callable[[TrainedRouter], Any] | None = None) -> Router:
    """A Router named ``name`` over ``models`` (cheapest first) as ``spec`` says; ``embedder`` loads the
    embedding model a router file was trained with."""
    if len(models) < 2 and not spec.startswith("always:"):
        raise InvalidRequestError("routing needs two models or more: serve the small one, then the larger")
    names = [m.name for m in models]
    small, large = names[0], names[-1]
    tiers = [Tier(n, m) for n, m in zip(names, models, strict=True)]
    kind, _, rest = spec.partition(":")
    if kind == "cascade":
        policy: Any = _cascade(rest, small, large)
    elif kind == "always":
        if rest not in names:
            raise InvalidRequestError(f"--router always:{rest}: {rest!r} is not served; served: "
                                      f"{', '.join(names)}")
        policy = Always(rest)
    else:
        trained = TrainedRouter.load(spec)
        if embedder is None:
            raise InvalidRequestError("a router file needs its embedding model loaded")
        policy = Learned(embedder(trained), trained, small=small, large=large)
    return Router(tiers, policy, name=name)


def _cascade(rest: str, small: str, large: str) -> Cascade:
    threshold, _, measure = rest.partition(":")
    try:
        value = float(threshold) if threshold else DEFAULT_THRESHOLD
    except ValueError:
        raise InvalidRequestError(f"--router cascade:{rest}: the threshold must be a number") from None
    if measure and measure not in CONFIDENCE_MEASURES:
        raise InvalidRequestError(f"--router cascade: unknown measure {measure!r}; choose "
                                  f"{', '.join(CONFIDENCE_MEASURES)}")
    return Cascade(small, large, value, measure or "mean_logprob")
