"""Each Router tier gets a request in its own style: a base model (Gemma 3 270M, no chat template) is
asked with a plain question-and-answer transcript, never another model's chat markup; a chat model gets
a text prompt as a user message. An empty answer is never kept as a confident one. Real models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from prompt_spy import CHAT_MARKUP, record_chat_prompts

import edgeinfer as ei
from edgeinfer.backends.testing import FakeBackend
from edgeinfer.base_chat import transcript
from edgeinfer.model import Model

ASK = [{"role": "user", "content": "What is the capital of France?"}]
MARKUP = (*CHAT_MARKUP, "user\n")


def test_a_transcript_has_the_system_text_the_turns_and_ends_with_an_open_answer():
    text = transcript([{"role": "system", "content": "Be brief."}, *ASK,
                       {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Spain?"}])
    assert text.startswith("Be brief.\n\nQuestion: What is the boiling point")
    assert text.endswith("Question: What is the capital of France?\nAnswer: Paris.\n\n"
                         "Question: And Spain?\nAnswer:")
    assert not any(mark in text for mark in MARKUP)


@pytest.fixture(scope="module")
def tiers(smollm2_path):
    small = ei.load("smollm2-135m-instruct", n_ctx=512, n_threads=2)
    large = ei.load("gemma-3-270m", n_ctx=512, n_threads=2)
    seen = record_chat_prompts(large)  # what the large tier was asked, as text
    yield small, large, seen
    small.close()
    large.close()


@pytest.mark.slow
def test_a_base_model_answers_chat_messages_from_a_transcript(tiers):
    small, large, seen = tiers
    assert (small.role, large.role) == ("chat", "base")
    done = large.complete_chat(ASK, temperature=0, max_tokens=32)
    assert "Paris" in done.text and done.finish_reason == "stop"
    assert seen and not any(mark in seen[-1] for mark in MARKUP)


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True])
def test_a_router_sends_each_tier_the_request_in_its_style(tiers, streaming):
    small, large, seen = tiers
    router = ei.Router([ei.Tier("small", small), ei.Tier("large", large)], ei.Always("large"))
    call = router.stream_chat if streaming else router.complete_chat
    done = call(ASK, temperature=0, max_tokens=32)
    done = done.result() if streaming else done
    assert "Paris" in done.text and done.stats.route == "large: always this tier"
    assert not any(mark in seen[-1] for mark in MARKUP)
    # a bare question as text: the chat tier gets it as a user message (generate would end at once)
    small_first = ei.Router([ei.Tier("small", small), ei.Tier("large", large)], ei.Always("small"))
    text = small_first.generate("What is the capital of France?", temperature=0, max_tokens=32)
    assert "Paris" in text.text


def test_an_empty_answer_is_never_kept_as_confident():
    # the fake model writes "bcd...": stopped at "b" its answer is empty, with every token certain
    small = Model(FakeBackend(n_ctx=64), name="small", settle=False, speculation=None)
    large = Model(FakeBackend(n_ctx=64), name="large", settle=False, speculation=None)
    router = ei.Router([ei.Tier("small", small), ei.Tier("large", large)],
                       ei.Cascade("small", "large", threshold=-100.0))
    done = router.generate("a", max_tokens=4, temperature=0, stop=["b"])
    assert done.stats.route == "large: cascade: empty answer"
    kept = router.generate("a", max_tokens=4, temperature=0)
    assert kept.text == "bcde" and kept.stats.route.startswith("small:")
    router.close()


@pytest.mark.slow
def test_the_cli_cascade_gives_the_base_tier_a_transcript():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "edgeinfer", "run", "smollm2-135m-instruct",
                        "What is the capital of France?", "--escalate-to", "gemma-3-270m", "--threshold", "0",
                        "--temperature", "0", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["route"].startswith("large: cascade:") and "Paris" in out["text"]
    assert not any(mark in out["text"] for mark in MARKUP) and out["finish_reason"] == "stop"
