"""KV reuse on the real llama.cpp backend: output with the cache equals output without it."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
from waits import PATIENCE, wait_until

import edgeinfer as ei

pytestmark = pytest.mark.slow
GREEDY = dict(temperature=0, max_tokens=24)
# long enough that the first turn's prefill is an exact batch (caps.exact_min_batch: 64 tokens)
SYSTEM = ("You are a helpful assistant who answers in one or two short sentences. Be precise and "
          "friendly. If you do not know something, say so plainly instead of guessing. Prefer common "
          "words, avoid jargon, and never repeat the question back to the user. When a question has "
          "a short factual answer, give the answer first and stop there. When the user asks a "
          "follow-up question, answer it in the light of the earlier turns of the conversation.")
QUESTIONS = ["What is the capital of France?", "Name a large animal.", "What color is the sky?",
             "And at night?"]


@contextlib.contextmanager
def cold_model(path):
    """A second model that forgets everything before each request: the 'without cache' output."""
    model = ei.load(path, n_ctx=1024, kv=ei.KVOptions(settle=False))

    def run(messages: list[dict], **options) -> str:
        model.engine.reset()
        return model.complete_chat(messages, **{**GREEDY, **options}).text

    try:
        yield run
    finally:
        model.close()


@pytest.fixture(scope="module")
def cold(smollm2_path):
    with cold_model(smollm2_path) as run:
        yield run


def test_chat_turns_equal_their_cold_outputs(smollm2_path, cold):
    with ei.load(smollm2_path, n_ctx=1024) as m:
        conv = m.chat(system=SYSTEM)
        for i, q in enumerate(QUESTIONS):
            before = list(conv.messages)
            out = conv.send(q, **GREEDY)
            assert out.text == cold([*before, {"role": "user", "content": q}])
            if i:
                stats = out.stats
                assert stats.cache_source == "ram" and stats.cached_tokens > stats.prompt_tokens // 2


def wait_settled(model) -> None:
    wait_until(lambda: model.engine.cache.unsettled() is None, "the idle-time settling")


def test_idle_time_makes_the_whole_history_reusable_and_exact(smollm2_path, cold):
    with ei.load(smollm2_path, n_ctx=1024) as m:
        conv = m.chat(system=SYSTEM)
        for i, q in enumerate(["Tell me about Lyon.", "And its food?", "Which dish first?"]):
            before = list(conv.messages)
            out = conv.send(q, temperature=0, max_tokens=64)
            assert out.text == cold([*before, {"role": "user", "content": q}], max_tokens=64)
            if i:  # only this turn's message (and the last partial tile) was computed
                new = len(m.chat_prompt([*before, {"role": "user", "content": q}])) - len(
                    m.chat_prompt(before, add_generation_prompt=False))
                slack = 2 * m.backend.caps.exact_min_batch
                assert out.stats.cached_tokens >= out.stats.prompt_tokens - new - slack
            wait_settled(m)  # the user reads the answer: the settler recomputes it meanwhile


def test_inexact_reuse_computes_only_the_new_turn_with_no_idle_time(smollm2_path):
    """``KVOptions(exact=False)``: the previous answer's decode-computed KV is reused as it is, so a
    follow-up sent at once computes its own message only (and nothing settles in the background)."""
    with ei.load(smollm2_path, n_ctx=1024, kv=ei.KVOptions(exact=False)) as m:
        assert not m.engine.settle_idle
        conv = m.chat(system=SYSTEM)
        conv.send("Tell me about Lyon.", temperature=0, max_tokens=48)
        before = list(conv.messages)
        q = "And its food?"
        out = conv.send(q, temperature=0, max_tokens=24)
        held = len(m.chat_prompt(before, add_generation_prompt=False))
        new = len(m.chat_prompt([*before, {"role": "user", "content": q}])) - held
        # computed: the new message, and what the previous turn never evaluated (its last token, its end
        # of turn); with exact reuse this would be the whole answer (48 tokens)
        assert out.stats.prompt_tokens - out.stats.cached_tokens <= new + 3
        assert out.finish_reason in ("stop", "length") and out.text.strip()
        assert m.engine.cache.unsettled() is not None  # decode-computed KV stays as it is


def test_interleaved_conversations_and_eviction_equal_cold_outputs(smollm2_path, cold, tmp_path):
    # 3 conversations on 2 sequences: every turn evicts one (to disk) and may restore another
    with ei.load(smollm2_path, n_ctx=1024, max_sequences=2, kv=ei.KVOptions(disk=tmp_path)) as m:
        convs = [m.chat(system=f"{SYSTEM} You are assistant number {k}.") for k in range(3)]
        sources = []
        for q in QUESTIONS[:3]:
            for conv in convs:
                before = list(conv.messages)
                out = conv.send(q, **GREEDY)
                sources.append(out.stats.cache_source)
                assert out.text == cold([*before, {"role": "user", "content": q}])
        assert "disk" in sources and "ram-copy" in sources


def test_one_sequence_reuses_a_shared_prefix_in_place(smollm2_path, cold):
    with ei.load(smollm2_path, n_ctx=1024, max_sequences=1) as m:
        for q in QUESTIONS[:3]:
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
            out = m.complete_chat(messages, **GREEDY)
            assert out.text == cold(messages)
        assert out.stats.cache_source == "ram" and out.stats.cached_tokens >= 16


def test_unified_kv_layout_shares_cells_and_still_reuses(smollm2_path):
    with ei.load(smollm2_path, n_ctx=1024, max_sequences=3, kv_unified=True) as m:
        chats = [m.chat(system=f"{SYSTEM} You are assistant number {k}.") for k in range(2)]
        for q in QUESTIONS[:2]:
            for conv in chats:
                out = conv.send(q, **GREEDY)
                assert out.text.strip() and out.finish_reason in ("stop", "length")
        assert out.stats.cache_source == "ram" and out.stats.cached_tokens > out.stats.prompt_tokens // 2
        backend = m.engine.backend
        assert backend.state_binding()["kv_unified"] is True
        assert backend.caps.n_ctx == 1024  # the sequences share these cells


def test_shared_few_shot_prefix_on_gemma_equals_cold():
    shots = "".join(f"English: {e}\nFrench: {f}\n\n" for e, f in [
        ("Good morning.", "Bonjour."), ("Thank you very much.", "Merci beaucoup."),
        ("Where is the station?", "Où est la gare ?"), ("I like tea.", "J'aime le thé."),
        ("The weather is nice today.", "Il fait beau aujourd'hui."),
        ("My brother is tall.", "Mon frère est grand."),
        ("We eat bread every morning.", "Nous mangeons du pain chaque matin."),
        ("Can you help me, please?", "Pouvez-vous m'aider, s'il vous plaît ?")])
    with ei.load("gemma-3-270m", n_ctx=512) as m:
        outs, colds = [], []
        for sentence in ["The cat sleeps.", "We are late.", "Open the window."]:
            prompt = f"{shots}English: {sentence}\nFrench:"
            out = m.generate(prompt, temperature=0, max_tokens=12, stop=["\n"])
            outs.append((out.text, out.stats.cached_tokens))
        for sentence in ["The cat sleeps.", "We are late.", "Open the window."]:
            m.engine.reset()
            colds.append(m.generate(f"{shots}English: {sentence}\nFrench:", temperature=0, max_tokens=12,
                                    stop=["\n"]).text)
        assert [t for t, _ in outs] == colds
        assert all(cached >= 64 for _, cached in outs[1:])


RESUME = textwrap.dedent("""
    import json, sys
    import edgeinfer as ei
    path, disk, step = sys.argv[1], sys.argv[2], sys.argv[3]
    m = ei.load(path, n_ctx=1024, kv=ei.KVOptions(disk=disk))
    if step == "first":
        conv = m.chat(system=sys.argv[4], id="trip")
        conv.send("Plan a day in Lyon.", temperature=0, max_tokens=48)
        conv.save()
        print(json.dumps({"messages": conv.messages}))
    else:
        conv = m.resume("trip")
        out = conv.send("And the evening?", temperature=0, max_tokens=24)
        print(json.dumps({"text": out.text, "source": out.stats.cache_source,
                          "cached": out.stats.cached_tokens, "prompt": out.stats.prompt_tokens}))
""")


def test_a_conversation_resumes_from_disk_in_a_new_process(smollm2_path, cold, tmp_path):
    env = {**os.environ, "EDGEINFER_HOME": str(tmp_path / "home")}

    def step(*args: str) -> dict:
        r = subprocess.run([sys.executable, "-c", RESUME, str(smollm2_path), str(tmp_path / "kv"), *args],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    first = step("first", SYSTEM)
    second = step("second")
    assert second["source"] == "disk" and second["cached"] > second["prompt"] // 2
    expected = cold([*first["messages"], {"role": "user", "content": "And the evening?"}])
    assert second["text"] == expected


def test_reused_prefixes_give_bit_identical_logits_on_gemma():
    """Random shared prefixes (some across the 512-token prefill cut): the last logits with reuse
    equal a fresh prefill's bit for bit (Gemma's Q4_K_M needs the alignment rules; SmolLM2 does not)."""
    import random

    import numpy as np

    from edgeinfer.backends.base import EvalItem

    with ei.load("gemma-3-270m", n_ctx=2048, max_sequences=2, kv=ei.KVOptions(settle=False)) as m:
        lyon = m.tokenize("The history of Lyon begins with the Roman colony of Lugdunum in 43 BC. " * 40)
        paris = m.tokenize("Paris is a large city on the Seine with many museums and old bridges. " * 40)
        cache, backend, rng = m.engine.cache, m.backend, random.Random(7)

        def last_logits(prompt: list[int]) -> tuple[np.ndarray, int]:
            reuse = cache.acquire(prompt)
            (row,) = backend.eval([EvalItem(reuse.seq_id, prompt[reuse.cached :])])
            cache.release(reuse.seq_id, prompt, (reuse.cached, len(prompt)))
            return backend.logits(row).copy(), reuse.cached

        reused = 0
        for _ in range(8):
            shared = rng.randint(20, 1100)
            a = lyon[:shared] + paris[: rng.randint(1, 60)]
            b = lyon[:shared] + paris[100 : 100 + rng.randint(1, 60)]
            m.engine.reset()
            last_logits(a)
            got, cached = last_logits(b)
            m.engine.reset()
            want, _ = last_logits(b)
            assert np.array_equal(got, want), (shared, len(a), len(b), cached)
            reused += cached
        assert reused > 1000


def test_an_interrupted_eval_leaves_the_sequence_as_it_was(smollm2_path):
    """``Backend.interrupt`` stops an interruptible eval; llama.cpp drops the batch's KV, and the same eval
    afterwards gives the logits an uninterrupted one gives."""
    from edgeinfer.backends.base import EvalInterrupted, EvalItem
    from edgeinfer.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(smollm2_path, n_ctx=1024)
    try:
        prompt = backend.tokenize(SYSTEM)[:64]
        backend.eval([EvalItem(0, prompt[:16])])
        with backend.interruptible():
            backend.interrupt()
            with pytest.raises(EvalInterrupted):
                backend.eval([EvalItem(0, prompt[16:])])
        assert backend.seq_length(0) == 16
        (row,) = backend.eval([EvalItem(0, prompt[16:])])  # outside the block: nothing stops it
        after = backend.logits(row).copy()
        backend.kv_truncate(0, 16)
        (row,) = backend.eval([EvalItem(0, prompt[16:])])
        assert (backend.logits(row) == after).all()
    finally:
        backend.close()


def test_a_request_interrupts_idle_settling_at_once_and_reuse_stays_exact(smollm2_path, cold):
    """A follow-up sent while the previous answer is being settled stops the settling eval mid-graph (it
    does not wait for the step), and every turn still equals its cold output."""
    interrupts_settling_and_stays_exact(smollm2_path, cold)


def interrupts_settling_and_stays_exact(path, cold) -> None:
    """The test above for the model at ``path`` (another backend's tests call it too)."""
    import threading

    from edgeinfer.backends.base import EvalInterrupted
    from edgeinfer.compute import device_queue

    with ei.load(path, n_ctx=1024) as m:
        queue, backend = device_queue(m.backend.device), m.backend
        interrupted, reached, go = [], threading.Event(), threading.Event()
        settle_step, evaluate = m.engine.cache.settle_step, backend.eval

        def recorded(*args, **kwargs):
            try:
                return settle_step(*args, **kwargs)
            except EvalInterrupted:
                interrupted.append(True)
                raise

        def gated(items):  # the first settling eval waits until the follow-up is submitted
            if queue._interruptible is backend and not go.is_set():
                reached.set()
                go.wait(PATIENCE)
            return evaluate(items)

        m.engine.cache.settle_step, backend.eval = recorded, gated
        conv = m.chat(system=SYSTEM)
        conv.send("Tell me about Lyon.", temperature=0, max_tokens=96)
        wait_until(reached.is_set, "a settling eval running")
        before = list(conv.messages)
        stream = conv.stream("And its food?", temperature=0, max_tokens=24)  # submitted: interrupts it
        go.set()
        out = stream.result()
        assert interrupted  # the settling step stopped for the follow-up
        assert out.text == cold([*before, {"role": "user", "content": "And its food?"}])
        wait_settled(m)
        before = list(conv.messages)
        out = conv.send("Thanks!", temperature=0, max_tokens=16)
        assert out.text == cold([*before, {"role": "user", "content": "Thanks!"}], max_tokens=16)
