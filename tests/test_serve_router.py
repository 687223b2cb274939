"""A routed virtual model in the server (`edgeinfer serve MODELS --router SPEC`): OpenAI clients name it
like any model, each request goes to the tier the policy picks, in that tier's own style (the base tier
never sees chat markup), and /metrics has the per-tier totals. Real SmolLM2 (chat) and Gemma 3 (base)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from prompt_spy import CHAT_MARKUP, record_chat_prompts  # noqa: E402
from server_helpers import running  # noqa: E402

import edgeinfer as ei  # noqa: E402
from edgeinfer.routing.spec import check_spec, router_from_spec  # noqa: E402
from edgeinfer.server import ServerOptions  # noqa: E402

KEY = "router-key"
ASK = [{"role": "user", "content": "What is the capital of France?"}]
MARKUP = CHAT_MARKUP


@pytest.mark.parametrize(("spec", "says"), [
    ("cascade:x", "must be a number"), ("cascade:-1:loudness", "unknown measure"),
    ("always:", "needs the name"), ("cascade:0.5", "threshold must be in"),
    ("no-such-file.json", "neither a file nor a spec"),
])
def test_a_bad_spec_is_refused_before_any_model_loads(spec, says):
    with pytest.raises(ei.InvalidRequestError, match=says):
        check_spec(spec)


@pytest.fixture(scope="module")
def served():
    small = ei.load("smollm2-135m-instruct", n_ctx=1024, n_threads=1, max_sequences=2)
    large = ei.load("gemma-3-270m", n_ctx=1024, n_threads=1, max_sequences=2)
    prompts = record_chat_prompts(large)  # what the base tier was asked, as text
    with pytest.raises(ei.InvalidRequestError, match="not served"):
        router_from_spec("always:nope", [small, large])
    router = router_from_spec("cascade:0", [small, large])  # log-probs are below 0: always escalated
    with running([small, large, router], ServerOptions(api_key=KEY)) as url:
        yield url, router, prompts
    small.close()
    large.close()


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_the_routed_model_answers_through_the_openai_client(served, stream):
    url, router, prompts = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
    before = router.stats.tiers["gemma-3-270m"].requests
    reply = client.chat.completions.create(model="router", messages=ASK, temperature=0, max_tokens=32,
                                           stream=stream)
    if stream:
        chunks = [c for c in reply if c.choices]
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "stop" and chunks[0].model == "router"
    else:
        text = reply.choices[0].message.content
        assert reply.model == "router" and reply.choices[0].finish_reason == "stop"
    assert "Paris" in text
    assert router.stats.tiers["gemma-3-270m"].requests == before + 1
    assert prompts and not any(mark in prompts[-1] for mark in MARKUP)


@pytest.mark.slow
def test_the_routed_model_is_listed_and_measured(served):
    url, router, _ = served
    headers = {"Authorization": f"Bearer {KEY}"}
    httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=120,
               json={"model": "router", "messages": ASK, "max_tokens": 8}).raise_for_status()
    cards = {c["id"]: c for c in httpx.get(f"{url}/v1/models", headers=headers).json()["data"]}
    assert set(cards) == {"smollm2-135m-instruct", "gemma-3-270m", "router"} and cards["router"]["chat"]
    assert cards["router"]["n_ctx"] == 1024
    metrics = httpx.get(f"{url}/metrics", headers=headers).text
    for tier, totals in router.stats.tiers.items():
        line = f'edgeinfer_router_requests_total{{router="router",tier="{tier}"}} {totals.requests}.0'
        assert line in metrics
    assert 'edgeinfer_requests_capacity{model="router"}' in metrics


@pytest.mark.slow
def test_the_server_takes_the_lock_aliases_the_cli_takes(served):
    url, _, _ = served
    headers = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=120,
                   json={"model": "smollm2", "messages": ASK, "max_tokens": 4})
    assert r.status_code == 200 and r.json()["model"] == "smollm2-135m-instruct"
    r = httpx.post(f"{url}/v1/completions", headers=headers, timeout=120,
                   json={"model": "gemma3-270m", "prompt": "Paris is", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "gemma-3-270m"


def test_the_cli_refuses_a_bad_router_before_loading():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "edgeinfer", "serve", "--router", "cascade:loud"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "threshold must be a number" in (r.stdout + r.stderr)
