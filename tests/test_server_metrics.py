"""/metrics on a real server (uvicorn on a free 127.0.0.1 port, the real SmolLM2): the Prometheus text a
scraper reads adds up to what the requests' own usage said, and it is behind the API key."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
parser = pytest.importorskip("prometheus_client.parser")

from server_helpers import running  # noqa: E402
from waits import wait_until  # noqa: E402

import edgeinfer as ei  # noqa: E402
from edgeinfer.server import ServerOptions  # noqa: E402

pytestmark = pytest.mark.slow
KEY = "metrics-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SYSTEM = {"role": "system", "content": "You are a concise geography teacher. " * 8}


@pytest.fixture(scope="module")
def model(smollm2_path):
    m = ei.load(smollm2_path, n_ctx=1024, n_threads=1, max_sequences=2)
    yield m
    m.close()


@pytest.fixture(scope="module")
def http(model) -> Iterator[httpx.Client]:
    with running([model], ServerOptions(api_key=KEY)) as url, \
            httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        yield client


def scrape(http: httpx.Client) -> dict[tuple[str, tuple], float]:
    r = http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(r.text) for s in family.samples}


def streamed_usage(http: httpx.Client, body: dict) -> dict:
    with http.stream("POST", "/v1/completions", json={**body, "stream": True,
                                                      "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    return events[-1]


def test_metrics_add_up_to_the_requests_usage(http, model):
    name = model.name
    label = (("model", name),)
    before = scrape(http)
    assert before[("edgeinfer_requests_total", (("finish_reason", "stop"), *label))] == 0
    assert before[("edgeinfer_requests_capacity", label)] == 2 + 8

    question = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]
    again = [SYSTEM, {"role": "user", "content": "What is the capital of Italy?"}]
    bodies = [http.post("/v1/chat/completions", json={"messages": m, "max_tokens": 6, "temperature": 0})
              .json() for m in (question, again)]
    bodies.append(streamed_usage(http, {"prompt": "1, 2, 3, 4,", "max_tokens": 5, "temperature": 0}))
    usages = [b["usage"] for b in bodies]
    stats = [b["x_edgeinfer"] for b in bodies]
    assert usages[1]["prompt_tokens_details"]["cached_tokens"] > 0  # the system prompt's KV was reused

    # a streamed request's slot is released just after its last byte is sent: wait for that, not luck
    wait_until(lambda: http.get("/health").json()["models"][name]["admitted"] == 0, "the slots to be free")
    after = scrape(http)
    reasons = collections.Counter(s["finish_reason"] for s in stats)
    for reason in ("stop", "length", "cancelled", "error"):
        assert after[("edgeinfer_requests_total", (("finish_reason", reason), *label))] == reasons[reason]
    prompt = sum(u["prompt_tokens"] for u in usages)
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    assert after[("edgeinfer_prompt_tokens_total", label)] == prompt
    assert after[("edgeinfer_cached_prompt_tokens_total", label)] == cached
    assert after[("edgeinfer_completion_tokens_total", label)] == sum(u["completion_tokens"] for u in usages)
    assert after[("edgeinfer_cached_prompt_tokens_ratio", label)] == pytest.approx(cached / prompt)

    ttfts = [s["ttft_s"] for s in stats]  # rounded to 0.1 ms in x_edgeinfer
    assert after[("edgeinfer_time_to_first_token_seconds_count", label)] == 3
    assert after[("edgeinfer_time_to_first_token_seconds_sum", label)] == pytest.approx(sum(ttfts), abs=1e-3)
    for q in ("0.5", "0.9", "0.99"):
        value = after[("edgeinfer_time_to_first_token_seconds", (*label, ("quantile", q)))]
        assert value == pytest.approx(np.percentile(ttfts, float(q) * 100), abs=1e-3), q
    rates = [s["decode_tok_s"] for s in stats if s["completion_tokens"] > 1]  # rounded to 0.01
    assert after[("edgeinfer_decode_tokens_per_second_count", label)] == len(rates)
    p50 = after[("edgeinfer_decode_tokens_per_second", (*label, ("quantile", "0.5")))]
    assert p50 == pytest.approx(np.percentile(rates, 50), rel=0.01)
    assert after[("edgeinfer_request_duration_seconds_count", label)] == 3
    assert after[("edgeinfer_requests_admitted", label)] == after[("edgeinfer_requests_running", label)] == 0
    assert after[("process_resident_memory_bytes", ())] > 0
    per_token = model.backend.kv_bytes_per_token()
    allocated = after[("edgeinfer_kv_cache_bytes", (*label, ("state", "allocated")))]
    used = after[("edgeinfer_kv_cache_bytes", (*label, ("state", "used")))]
    sequences = after[("edgeinfer_kv_sequences_allocated", label)]
    assert allocated == sequences * model.n_ctx * per_token
    assert 1 <= sequences <= model.backend.caps.max_sequences
    assert 0 < used <= allocated and used % per_token == 0

    snap = model.metrics.snapshot()  # the same numbers for Python users
    assert snap["requests"] == 3 and snap["cached_tokens"] == cached and snap["prompt_tokens"] == prompt


def test_metrics_need_the_api_key_when_one_is_set(http):
    r = http.get("/metrics", headers={"Authorization": ""})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert http.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert http.get("/health", headers={"Authorization": ""}).status_code == 200  # liveness stays open
