"""ei.Router on toy models: rules pick tiers and say why, costs and savings add up, a tier that is down
falls back, streams are routed like generate, and bad configurations are clear errors."""

from __future__ import annotations

import pytest

from edgeinfer.backends.testing import FakeBackend
from edgeinfer.errors import BackendUnavailableError, InvalidRequestError
from edgeinfer.model import Model
from edgeinfer.routing.costs import LocalCost, TokenPrice
from edgeinfer.routing.policies import Always, Rule, Rules
from edgeinfer.routing.router import Router, Tier


def toy(step: int, name: str) -> Model:
    return Model(FakeBackend(n_ctx=256, max_sequences=2, step=step), name=name, speculation=None)


@pytest.fixture()
def models():
    small, large = toy(1, "small"), toy(3, "large")
    yield small, large
    small.close()
    large.close()


def test_rules_route_by_task_and_length_and_say_why(models) -> None:
    small, large = models
    router = Router([Tier("small", small), Tier("large", large)],
                    Rules([Rule("large", tasks=frozenset({"translation"})),
                           Rule("large", min_prompt_tokens=40)]))
    plain = router.generate("abc", max_tokens=4, temperature=0)
    assert plain.text == small.generate("abc", max_tokens=4, temperature=0).text  # served by the small model
    assert plain.stats.route == "small: no rule matched: default tier"
    translated = router.generate("abc", max_tokens=4, temperature=0, task="translation")
    assert translated.text == large.generate("abc", max_tokens=4, temperature=0).text
    assert translated.stats.route == "large: rule: task translation"
    long = router.generate("x" * 50, max_tokens=2, temperature=0)
    assert long.stats.route.startswith("large: rule: prompt 50 >= 40 tokens")
    assert router.stats.shares() == {"small": 1 / 3, "large": 2 / 3}
    assert [tier for tier, _ in router.stats.decisions] == ["small", "large", "large"]


def test_costs_and_savings_against_the_largest_tier(models) -> None:
    small, large = models
    price = TokenPrice(input_per_million=1.0, output_per_million=2.0)
    router = Router([Tier("small", small, LocalCost(per_hour=0.0)), Tier("large", large, price)])
    done = router.generate("hello", max_tokens=5, temperature=0)
    expected = (done.stats.prompt_tokens * 1.0 + done.stats.completion_tokens * 2.0) / 1e6
    assert router.stats.cost == 0.0 and router.stats.largest_tier_cost == pytest.approx(expected)
    assert router.stats.saved == pytest.approx(expected)
    always_large = Router([Tier("small", small), Tier("large", large, price)], Always("large"))
    always_large.generate("hi", max_tokens=2, temperature=0)
    assert always_large.stats.cost > 0 and always_large.stats.saved == 0


def test_local_largest_tier_estimates_from_its_measured_speed(models) -> None:
    small, large = models
    router = Router([Tier("small", small, LocalCost(1.0)), Tier("large", large, LocalCost(10.0))],
                    Rules([Rule("large", tasks=frozenset({"hard"}))]))
    router.generate("abc", max_tokens=3, temperature=0)  # nothing measured on "large" yet: cannot estimate
    assert router.stats.unestimated == 1 and router.stats.saved == 0  # not a loss of the small tier's cost
    router.generate("abc", max_tokens=3, temperature=0, task="hard")
    router.generate("abc", max_tokens=3, temperature=0)
    assert router.stats.unestimated == 1 and router.stats.largest_tier_cost > router.stats.tiers["large"].cost


class Down:
    """A tier that cannot be reached."""

    def generate(self, *args, **kwargs):
        raise BackendUnavailableError("server at 127.0.0.1:9 is unreachable")

    stream = complete_chat = stream_chat = generate


def test_an_unreachable_tier_falls_back_and_says_so(models) -> None:
    small, _ = models
    router = Router([Tier("small", small), Tier("remote", Down(), fallback="small")], Always("remote"))
    done = router.generate("abc", max_tokens=3, temperature=0)
    assert done.stats.route.startswith("small: always this tier; remote unavailable")  # who served it
    assert "fell back to small" in done.stats.route and router.stats.tiers["small"].requests == 1
    streamed = router.stream("abc", max_tokens=3, temperature=0)
    assert "".join(streamed) == done.text and "fell back" in streamed.completion.stats.route
    without = Router([Tier("small", small), Tier("remote", Down())], Always("remote"))
    with pytest.raises(BackendUnavailableError):
        without.generate("abc", max_tokens=3, temperature=0)


def test_streams_and_chats_are_routed_like_generate(models) -> None:
    small, large = models
    router = Router([Tier("small", small), Tier("large", large)], Always("large"))
    stream = router.stream("abc", max_tokens=4, temperature=0)
    assert "".join(stream) == large.generate("abc", max_tokens=4, temperature=0).text
    assert stream.completion.stats.route == "large: always this tier"
    chat = router.complete_chat([{"role": "user", "content": "hi"}], max_tokens=3, temperature=0)
    assert chat.stats.route.startswith("large")
    assert router.stats.tiers["large"].requests == 2


def test_bad_configurations_are_clear_errors(models) -> None:
    small, large = models
    with pytest.raises(InvalidRequestError, match="at least one tier"):
        Router([])
    with pytest.raises(InvalidRequestError, match="unique"):
        Router([Tier("a", small), Tier("a", large)])
    with pytest.raises(InvalidRequestError, match="unknown tier"):
        Router([Tier("a", small, fallback="zzz")])
    with pytest.raises(InvalidRequestError, match="rule names tier 'big'"):
        Router([Tier("small", small)], Rules([Rule("big")])).generate("abc", max_tokens=2, temperature=0)
    with pytest.raises(InvalidRequestError, match=">= 0"):
        LocalCost(per_hour=-1)
    with pytest.raises(InvalidRequestError, match=">= 0"):
        TokenPrice(-1, 0)


def test_confidence_is_reported_per_token_when_asked(models) -> None:
    import numpy as np

    from edgeinfer.sampling import token_confidence

    small, _ = models
    done = small.generate("abc", max_tokens=4, temperature=0, confidence=True)
    assert len(done.confidence) == len(done.tokens) == 4
    assert all(lp <= 0 and 0 <= margin <= 1 for lp, margin in done.confidence)
    assert small.generate("abc", max_tokens=4, temperature=0).confidence == []  # off by default
    logits = np.array([2.0, 1.0, 0.0, -1.0], np.float32)
    probs = np.exp(logits) / np.exp(logits).sum()
    lp, margin = token_confidence(logits, 1)
    assert lp == pytest.approx(np.log(probs[1])) and margin == pytest.approx(probs[0] - probs[1])


def test_cascade_keeps_confident_answers_and_escalates_the_rest(models) -> None:
    from edgeinfer.routing.policies import Cascade

    small, large = models
    tiers = [Tier("small", small, LocalCost(1.0)), Tier("large", large, LocalCost(10.0))]
    keep = Router(tiers, Cascade("small", "large", threshold=-50.0))
    kept = keep.generate("abc", max_tokens=3, temperature=0)
    assert kept.stats.route == "small: cascade: small tier first; kept"
    assert kept.text == small.generate("abc", max_tokens=3, temperature=0).text
    escalate = Router(tiers, Cascade("small", "large", threshold=0.0))  # log-probabilities are < 0
    moved = escalate.generate("abc", max_tokens=3, temperature=0)
    assert moved.text == large.generate("abc", max_tokens=3, temperature=0).text
    assert moved.stats.route.startswith("large: cascade: mean_logprob -") and "< 0.000" in moved.stats.route
    assert escalate.stats.tiers["small"].requests == 1  # the small attempt is paid for too
    assert "".join(escalate.stream("abc", max_tokens=3, temperature=0)) == moved.text


def test_cascade_thresholds_are_checked_and_calibrated() -> None:
    from edgeinfer.routing.policies import Cascade, calibrate_threshold

    with pytest.raises(InvalidRequestError, match=r"in \[0.0, 1.0\]"):
        Cascade("small", "large", threshold=1.5, measure="mean_margin")
    with pytest.raises(InvalidRequestError, match="in \\[-inf, 0.0\\]"):
        Cascade("small", "large", threshold=0.5)
    with pytest.raises(InvalidRequestError, match="unknown confidence measure"):
        Cascade("small", "large", threshold=-1, measure="vibes")
    scores = [-0.1 * i for i in range(10)]  # 0.0 .. -0.9
    threshold = calibrate_threshold(scores, 0.3)
    assert sum(s < threshold for s in scores) == 3
    assert sum(s < calibrate_threshold(scores, 0.0) for s in scores) == 0
    assert sum(s < calibrate_threshold(scores, 1.0) for s in scores) == 10
    with pytest.raises(InvalidRequestError, match="large_share"):
        calibrate_threshold(scores, 1.5)


def test_a_remote_tier_that_is_down_falls_back_to_the_local_one(models) -> None:
    import socket

    from edgeinfer.remote import RemoteModel

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    small, _ = models
    remote = RemoteModel(f"http://127.0.0.1:{port}", "big", retries=1, backoff=0.01, timeout=2)
    router = Router([Tier("small", small), Tier("remote", remote, TokenPrice(0.5, 1.5), fallback="small")],
                    Always("remote"))
    done = router.generate("abc", max_tokens=3, temperature=0)
    assert done.stats.route.startswith("small: always this tier; remote unavailable")
    assert f"127.0.0.1:{port}" in done.stats.route
    streamed = router.stream("abc", max_tokens=3, temperature=0)
    assert "".join(streamed) == done.text
    remote.close()


def test_a_tier_can_adapt_the_request_to_its_own_prompt_style(models) -> None:
    """A base-model tier turns chat messages into a few-shot text prompt; the router runs it as text."""
    small, large = models
    seen = []

    def few_shot(messages):
        seen.append(messages)
        return "Q: 1\nA: 2\nQ: " + messages[-1]["content"] + "\nA:"

    router = Router([Tier("small", small), Tier("large", large, adapt=few_shot)], Always("large"))
    asked = [{"role": "user", "content": "abc"}]
    done = router.complete_chat(asked, max_tokens=3, temperature=0)
    assert seen == [asked]
    assert done.text == large.generate("Q: 1\nA: 2\nQ: abc\nA:", max_tokens=3, temperature=0).text
    streamed = router.stream_chat(asked, max_tokens=3, temperature=0)
    assert "".join(streamed) == done.text


def test_a_cascade_needs_a_local_first_tier() -> None:
    """Confidence is local-only: never sent to a server, and asking a remote tier for it is an error."""
    from edgeinfer.remote import request_options
    from edgeinfer.sampling import SamplingParams

    assert "confidence" not in request_options(SamplingParams(), {})[0]
    with pytest.raises(InvalidRequestError, match="per-token confidence"):
        request_options(None, {"confidence": True})
