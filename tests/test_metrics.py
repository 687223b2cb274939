"""Live metrics on the fake backend: per-model totals by finish reason, cached share, percentiles over a
bounded window, thread safety, a Router's shares and saving, and the Prometheus rendering of them."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from waits import EvalGate, wait_until

from edgeinfer.backends.testing import FakeBackend
from edgeinfer.metrics import ModelMetrics, percentile
from edgeinfer.model import Model
from edgeinfer.routing.costs import LocalCost, TokenPrice
from edgeinfer.routing.policies import Rule, Rules
from edgeinfer.routing.router import Router, Tier
from edgeinfer.stats import Stats

GREEDY = dict(temperature=0)
SYSTEM = "You are a terse assistant. " * 2  # 54 tokens: the first 48 are reused by a second request


def test_totals_cached_share_and_percentiles_match_the_requests_own_stats():
    m = Model(FakeBackend(n_ctx=256, eos_after=70), name="fake")
    done = [
        m.generate(SYSTEM + "hello there", max_tokens=4, **GREEDY),  # length
        m.generate(SYSTEM + "hello world", max_tokens=4, **GREEDY),  # reuses 48 cached tokens
        m.generate("a", max_tokens=20, stop=["fg"], **GREEDY),  # a stop string
        m.generate(SYSTEM + "ab", max_tokens=50, **GREEDY),  # the end token (eos_after=70)
        m.generate("abc", max_tokens=1, **GREEDY),  # one token: a TTFT but no decode speed
    ]
    assert [c.finish_reason for c in done] == ["length", "length", "stop", "stop", "length"]
    assert done[1].stats.cached_tokens == 48
    snap = m.metrics.snapshot()
    assert snap["model"] == "fake" and snap["requests"] == 5 and snap["errors"] == 0
    assert snap["finish_reasons"] == {"stop": 2, "length": 3, "cancelled": 0, "error": 0}
    stats = [c.stats for c in done]
    assert snap["prompt_tokens"] == sum(s.prompt_tokens for s in stats)
    assert snap["cached_tokens"] == sum(s.cached_tokens for s in stats) >= 48
    assert snap["completion_tokens"] == sum(s.completion_tokens for s in stats)
    assert snap["cached_share"] == pytest.approx(snap["cached_tokens"] / snap["prompt_tokens"])
    for key, values in (("ttft_s", [s.ttft_s for s in stats]),
                        ("decode_tok_s", [s.decode_tok_s for s in stats if s.completion_tokens > 1]),
                        ("total_s", [s.total_s for s in stats])):
        summary = snap[key]
        assert summary["count"] == len(values) and summary["sum"] == pytest.approx(sum(values)), key
        for q in (50, 90, 99):
            assert summary[f"p{q}"] == pytest.approx(np.percentile(values, q)), (key, q)
    assert snap["decode_tok_s"]["count"] == 4  # the one-token request has no decode speed
    m.close()


def test_cancelled_and_failed_requests_are_counted_by_reason():
    m = Model(FakeBackend(n_ctx=256), name="slow")
    with EvalGate(m.backend) as gate:
        gate.allow(3)  # it is decoding, and cannot finish before the cancel
        stream = m.stream("a", max_tokens=200, **GREEDY)
        pieces = iter(stream)
        next(pieces)
        stream.cancel()
    wait_until(lambda: m.metrics.requests == 1, "the cancelled request to be counted")
    m.close()
    failing = Model(FakeBackend(fail_on_eval=1), name="broken")
    with pytest.raises(RuntimeError, match="injected"):
        failing.generate("abc", max_tokens=3)
    failing.close()
    cancelled, failed = m.metrics.snapshot(), failing.metrics.snapshot()
    assert cancelled["finish_reasons"]["cancelled"] == 1 and cancelled["requests"] == 1
    assert cancelled["ttft_s"]["count"] == 1 and cancelled["total_s"]["count"] == 0  # not a finished one
    assert failed["finish_reasons"]["error"] == failed["errors"] == failed["requests"] == 1
    assert failed["ttft_s"] == {"p50": None, "p90": None, "p99": None, "count": 0, "sum": 0.0, "mean": None}


def test_percentiles_cover_a_bounded_window_and_totals_cover_everything():
    metrics = ModelMetrics("w", window=10)
    for i in range(1, 101):  # TTFT 0.01 .. 1.00 s
        metrics.record(Stats(prompt_tokens=10, cached_tokens=5, completion_tokens=3, ttft_s=i / 100,
                             decode_s=0.1, total_s=i / 10, finish_reason="length"))
    snap = metrics.snapshot()
    assert snap["ttft_s"]["count"] == 100 and snap["ttft_s"]["sum"] == pytest.approx(50.5)
    recent = [i / 100 for i in range(91, 101)]
    assert snap["ttft_s"]["p50"] == pytest.approx(np.percentile(recent, 50)) == pytest.approx(0.955)
    assert snap["ttft_s"]["p99"] == pytest.approx(np.percentile(recent, 99))
    assert snap["decode_tok_s"]["p90"] == pytest.approx(20.0) and snap["cached_share"] == 0.5
    metrics.reset()
    assert metrics.snapshot()["requests"] == 0 and metrics.snapshot()["cached_share"] == 0.0


def test_percentile_interpolates_like_numpy():
    values = sorted([3.0, 1.0, 4.0, 1.5, 9.0, 2.6])
    for q in (0.0, 0.25, 0.5, 0.9, 0.99, 1.0):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q * 100))
    assert percentile([], 0.5) is None and percentile([7.0], 0.99) == 7.0


def test_records_from_many_threads_are_all_counted():
    metrics = ModelMetrics("t")

    def work() -> None:
        for _ in range(500):
            metrics.record(Stats(prompt_tokens=2, completion_tokens=1, ttft_s=0.1, finish_reason="stop"))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(50):
        metrics.snapshot()  # reading while they write
    for t in threads:
        t.join()
    snap = metrics.snapshot()
    assert snap["requests"] == 2000 and snap["prompt_tokens"] == 4000 and snap["ttft_s"]["count"] == 2000
    assert len(metrics.ttft_s.recent) == 1000  # the default window


def test_router_snapshot_and_prometheus_rendering():
    parser = pytest.importorskip("prometheus_client.parser")
    pytest.importorskip("fastapi")  # the exporter is in edgeinfer.server: the whole server extra
    from prometheus_client import generate_latest

    from edgeinfer.server.prometheus import prometheus_registry

    small = Model(FakeBackend(n_ctx=256, step=1), name="small", speculation=None)
    large = Model(FakeBackend(n_ctx=256, step=3), name="large", speculation=None)
    price = TokenPrice(input_per_million=1.0, output_per_million=2.0)
    router = Router([Tier("small", small, LocalCost(0.0)), Tier("large", large, price)],
                    Rules([Rule("large", min_prompt_tokens=40)]))
    for prompt in ("abc", "def", "x" * 50):
        router.generate(prompt, max_tokens=4, **GREEDY)
    snap = router.metrics_snapshot()
    assert snap["requests"] == 3
    assert snap["tiers"]["small"]["share"] == pytest.approx(2 / 3) and snap["tiers"]["large"]["requests"] == 1
    assert snap["saved"] == pytest.approx(router.stats.saved) and snap["saved"] > 0
    assert snap["cost"] == pytest.approx(router.stats.cost)

    text = generate_latest(prometheus_registry({"small": small, "large": large}, routers={"chat": router},
                                               process=False)).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in parser.text_string_to_metric_families(text) for s in family.samples}
    assert samples[("edgeinfer_requests_total", (("finish_reason", "length"), ("model", "small")))] == 2
    assert samples[("edgeinfer_completion_tokens_total", (("model", "large"),))] == 4
    assert samples[("edgeinfer_router_requests_total", (("router", "chat"), ("tier", "small")))] == 2
    assert samples[("edgeinfer_router_tier_share_ratio", (("router", "chat"), ("tier", "large")))] \
        == pytest.approx(1 / 3)
    assert samples[("edgeinfer_router_saved_cost", (("router", "chat"),))] == pytest.approx(snap["saved"])
    assert samples[("edgeinfer_time_to_first_token_seconds_count", (("model", "small"),))] == 2
    assert ("edgeinfer_time_to_first_token_seconds", (("model", "small"), ("quantile", "0.99"))) in samples
    small.close()
    large.close()
