"""The llama.cpp backend, for real, on the bundled SmolLM2-135M-Instruct Q4_1."""

import llama_cpp
import numpy as np
import pytest

import edgeinfer as ei
from edgeinfer.backends.base import EvalItem
from edgeinfer.sampling import NumpySampler, SamplingParams

pytestmark = pytest.mark.slow
PROMPT = "The three primary colors are"


@pytest.fixture(scope="module")
def reference(smollm2_path):
    """llama-cpp-python's own high-level API on the same file."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(smollm2_path), n_ctx=512, n_threads=2, n_batch=512, verbose=False)
    yield llm
    llm.close()


def test_greedy_output_equals_llama_cpp_python_token_for_token(smol, reference):
    tokens = smol.tokenize(PROMPT)
    assert tokens == reference.tokenize(PROMPT.encode())
    smol.engine.reset()  # a cold prefill, as the reference does
    ours = smol.generate(tokens, max_tokens=32, temperature=0)
    reference.reset()
    theirs = []
    for t in reference.generate(tokens, temp=0.0, top_k=1, reset=True):
        if llama_cpp.llama_vocab_is_eog(reference._model.vocab, t) or len(theirs) == 32:
            break
        theirs.append(t)
    assert ours.tokens == theirs[: len(ours.tokens)] and len(ours.tokens) == len(theirs)
    assert ours.text == reference.detokenize(theirs).decode()


def test_native_and_numpy_samplers_agree_when_greedy(smol):
    b = smol.backend
    b.kv_drop(1)
    (row,) = b.eval([EvalItem(1, smol.tokenize(PROMPT))])
    native = b.make_sampler(SamplingParams(temperature=0))
    assert native.sample(row) == NumpySampler(SamplingParams(temperature=0)).sample(b.logits(row))
    native.close()
    b.kv_drop(1)


def test_greedy_with_a_repeat_penalty_picks_what_llama_cpp_s_chain_picks(smol):
    """Greedy picks with a repeat penalty run in numpy (the native chain copies the whole vocabulary each
    token); over 64 steps of two texts and two penalties they are llama.cpp's picks, token for token."""
    from edgeinfer.backends.base import LogitsSampler
    from edgeinfer.backends.llamacpp import NativeSampler

    b = smol.backend
    for text in (PROMPT, "Repeat after me: the cat, the cat, the cat, the cat,"):
        for penalty in (1.1, 1.5):
            params = SamplingParams(temperature=0, repeat_penalty=penalty, repeat_last_n=16)
            assert isinstance(b.make_sampler(params), LogitsSampler)
            picks = []
            for sampler in (NativeSampler(b, params), b.make_sampler(params)):
                b.kv_drop(1)
                prompt = smol.tokenize(text)
                for token in prompt:
                    sampler.accept(token)
                (row,) = b.eval([EvalItem(1, prompt)])
                tokens = []
                for _ in range(64):
                    tokens.append(sampler.sample(row))
                    (row,) = b.eval([EvalItem(1, [tokens[-1]])])
                sampler.close()
                picks.append(tokens)
            assert picks[0] == picks[1]
    b.kv_drop(1)


def test_seeded_sampling_is_reproducible_and_seed_matters(smol):
    opts = dict(max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = smol.generate(PROMPT, seed=11, **opts).text
    b = smol.generate(PROMPT, seed=11, **opts).text
    outs = {smol.generate(PROMPT, seed=s, **opts).text for s in range(4)}
    assert a == b and len(outs) > 1


def test_kv_truncate_copy_and_state_roundtrip_reproduce_logits(smol):
    b = smol.backend
    toks = smol.tokenize("One two three four five six seven")
    for s in (1, 2, 3):
        b.kv_drop(s)
    (row,) = b.eval([EvalItem(1, toks)])
    full = b.logits(row).copy()
    # truncate then re-eval the tail: same logits
    b.kv_truncate(1, 3)
    assert b.seq_length(1) == 3
    (row,) = b.eval([EvalItem(1, toks[3:])])
    assert np.allclose(b.logits(row), full, atol=1e-3)
    # copy a prefix into another sequence and finish there
    b.kv_copy(1, 2, 4)
    (row,) = b.eval([EvalItem(2, toks[4:])])
    assert np.allclose(b.logits(row), full, atol=1e-3)
    # save / restore a sequence state
    b.kv_truncate(1, len(toks) - 1)
    state = b.state_save(1)
    b.state_load(3, state, len(toks) - 1)
    (row,) = b.eval([EvalItem(3, toks[-1:])])
    assert np.allclose(b.logits(row), full, atol=1e-3)
    for s in (1, 2, 3):
        b.kv_drop(s)


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_outputs_do_not_depend_on_the_thread_count(model: str):
    """The thread tuner changes threads between evals: a 600-token prefill and the decode step after it
    give bit-identical logits at 1, 2 and 3 threads. With flash attention they would not (a long
    sequence's decode step splits attention by thread), so there the count is never changed."""
    with ei.load(model, n_ctx=1024, n_threads=2, speculation=None, flash_attn=True,
                 kv=ei.KVOptions(settle=False)) as flash:
        assert not flash.backend.threads_adjustable and not flash.backend.set_threads(1)
    with ei.load(model, backend="llama.cpp", n_ctx=1024, n_threads=2, speculation=None,
                 kv=ei.KVOptions(settle=False)) as m:
        b = m.backend
        toks = m.tokenize("The history of the lighthouse begins with fires lit on hilltops. " * 60)[:600]
        seen = []
        for threads in (2, 1, 3, 2):
            assert b.set_threads(threads) and b.threads == threads
            b.kv_drop(0)
            (row,) = b.eval([EvalItem(0, toks)])
            prefill = b.logits(row).copy()
            (row,) = b.eval([EvalItem(0, [int(prefill.argmax())])])
            seen.append((prefill, b.logits(row).copy()))
        assert all(np.array_equal(seen[0][0], p) and np.array_equal(seen[0][1], d) for p, d in seen)


def test_two_sequences_in_one_eval_match_separate_evals(smol):
    b = smol.backend
    a_toks, c_toks = smol.tokenize("Paris is in"), smol.tokenize("Water boils at one hundred")
    for s in (1, 2):
        b.kv_drop(s)
    rows = b.eval([EvalItem(1, a_toks), EvalItem(2, c_toks)])
    both = [b.logits(r).copy() for r in rows]
    for s in (1, 2):
        b.kv_drop(s)
    (r1,) = b.eval([EvalItem(1, a_toks)])
    alone = b.logits(r1).copy()
    assert np.allclose(both[0], alone, atol=1e-2)
    assert int(np.argmax(both[0])) == int(np.argmax(alone))
    for s in (1, 2):
        b.kv_drop(s)


def test_long_prompt_is_prefilled_in_several_batches(smollm2_path):
    with ei.load(smollm2_path, n_ctx=2048) as m:
        text = "The quick brown fox jumps over the lazy dog. " * 120
        toks = m.tokenize(text)
        assert len(toks) > m.backend.caps.n_batch
        c = m.generate(toks, max_tokens=4, temperature=0)
        assert c.stats.prompt_tokens == len(toks) and c.stats.completion_tokens >= 1


def test_chat_answers_and_the_second_turn_reuses_the_cache(smol):
    system = ("You are a helpful assistant. Answer in one short sentence, plainly and precisely, "
              "without repeating the question. If you do not know, say so instead of guessing. "
              "Use the earlier turns of the conversation to understand follow-up questions.")
    conv = smol.chat(system=system)
    first = conv.send("What is the capital of France?", temperature=0, max_tokens=24)
    assert "Paris" in first.text
    second = conv.send("And of Italy?", temperature=0, max_tokens=24)
    caps = smol.backend.caps  # reuse leaves exact_min_batch tokens to compute, at an aligned split
    assert first.stats.prompt_tokens >= caps.exact_min_batch
    assert second.stats.cached_tokens >= first.stats.prompt_tokens - caps.exact_min_batch
    assert second.text


def test_chat_template_comes_from_the_gguf(smol):
    assert "<|im_start|>" in smol.chat_template
    toks = smol.chat_prompt([{"role": "user", "content": "hi"}])
    assert toks.count(toks[0]) >= 2  # <|im_start|> parsed as a special token, not as text
    assert smol.backend.caps.quantization == "Q4_1"


def test_stats_report_prefill_and_decode(smol):
    c = smol.generate("Once upon a time", max_tokens=16, temperature=0)
    s = c.stats
    assert s.backend == "llama.cpp" and s.device == "cpu"
    assert s.prompt_tokens == len(smol.tokenize("Once upon a time"))
    assert s.ttft_s > 0 and s.decode_tok_s > 1 and s.prefill_tok_s > 1


def test_ctrl_c_right_after_llama_decode_leaves_the_model_usable_and_correct(smol, monkeypatch):
    base = smol.tokenize(PROMPT + " red,")
    first = smol.generate(base, max_tokens=2, temperature=0).tokens
    follow = base + first  # extends exactly what the interrupted request will have computed
    smol.engine.reset()
    expected = smol.generate(follow, max_tokens=8, temperature=0).text
    calls = {"n": 0}

    class InterruptingLlama:
        """llama_cpp, except that the 3rd llama_decode is followed by a Ctrl-C."""

        def __getattr__(self, name):
            return getattr(llama_cpp, name)

        def llama_decode(self, ctx, batch):
            rc = llama_cpp.llama_decode(ctx, batch)
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return rc

    monkeypatch.setattr(smol.backend, "_ll", InterruptingLlama())
    with pytest.raises(KeyboardInterrupt):
        smol.generate(base, max_tokens=12, temperature=0)  # prefill, step 1, step 2 + Ctrl-C
    monkeypatch.undo()
    assert calls["n"] == 3
    assert smol.generate(follow, max_tokens=8, temperature=0).text == expected


def test_models_from_the_lock_get_their_recommended_sampling():
    with ei.load("smollm2-135m-instruct", n_ctx=256) as m:
        assert (m.default_params.temperature, m.default_params.top_p) == (0.2, 0.9)
        assert m.generate("Hi", max_tokens=2, temperature=0).stats.completion_tokens >= 1


@pytest.mark.parametrize(("start", "end", "cuts"), [
    (0, 1055, [512, 1024]),  # a fresh prefill: every multiple of n_batch
    (1000, 1055, []),  # its tail is long: it shares one call with the reused part's neighbours
    (1000, 1030, [1024]),  # a short tail is cut as a fresh prefill cuts it (other kernels)
    (100, 1100, [512, 1024]),
    (0, 300, []),
])
def test_prefill_cuts_follow_a_fresh_prefill(start, end, cuts):
    from edgeinfer.backends.base import prefill_cuts

    assert prefill_cuts(start, end, 512) == cuts


def test_a_prompt_reused_across_a_batch_boundary_equals_cold(smollm2_path):
    text = "The river flows past the old mill and under the stone bridge. " * 100
    with ei.load(smollm2_path, n_ctx=2048, kv=ei.KVOptions(settle=False)) as m:
        base = m.tokenize(text)[:1030]
        first = m.generate(base[:1010] + m.tokenize(" Then", add_special=False), max_tokens=8, temperature=0)
        second = m.generate(base, max_tokens=8, temperature=0)
        # the reuse point leaves exact_min_batch to compute, and moves back before the 1024 cut
        assert first.stats.cached_tokens == 0
        caps = m.backend.caps
        assert second.stats.cached_tokens >= 1030 - 2 * caps.exact_min_batch - caps.reuse_align
        m.engine.reset()
        assert m.generate(base, max_tokens=8, temperature=0).tokens == second.tokens
