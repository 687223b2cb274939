"""Engine logic on the fake backend: stop conditions, limits, prefix reuse, cancellation, stats."""

import pytest
from waits import EvalGate, wait_until

from edgeinfer.backends.testing import FakeBackend
from edgeinfer.errors import ContextOverflowError, EmptyPromptError
from edgeinfer.model import Model, make_params

GREEDY = dict(temperature=0)


def model(settle: bool = True, **kw) -> Model:
    return Model(FakeBackend(**kw), name="fake", settle=settle)


def test_greedy_continuation_and_max_tokens():
    c = model().generate("a", max_tokens=5, **GREEDY)
    assert c.text == "bcdef" and c.finish_reason == "length"
    assert c.stats.completion_tokens == 5 and c.stats.prompt_tokens == 1


def test_end_token_stops_generation():
    c = model(eos_after=4).generate("ab", max_tokens=50, **GREEDY)
    assert c.text == "cd" and c.finish_reason == "stop"


def test_stop_string_cuts_the_text():
    c = model().generate("a", max_tokens=20, stop=["fg"], **GREEDY)
    assert c.text == "bcde" and c.finish_reason == "stop"


def test_stream_yields_the_same_text_and_sets_the_completion():
    m = model()
    stream = m.stream("k", max_tokens=6, **GREEDY)
    pieces = list(stream)
    assert "".join(pieces) == "lmnopq" == stream.completion.text


def test_result_after_reading_a_stream_returns_its_completion():
    """Reading a stream to its end, then asking for the result, must not wait for more pieces."""
    m = model()
    stream = m.stream([1, 2, 3], max_tokens=4)
    pieces = list(stream)
    assert stream.result() is stream.completion and stream.result().text == "".join(pieces)
    assert list(stream) == []  # read again: nothing more, and still the same completion
    assert stream.completion is not None


def test_empty_prompt_and_too_long_prompt_are_refused():
    m = model(n_ctx=16)
    with pytest.raises(EmptyPromptError):
        m.generate("")
    with pytest.raises(ContextOverflowError, match="16"):
        m.generate("x" * 16)
    assert m.generate("x" * 15, max_tokens=5, **GREEDY).finish_reason == "length"


def test_generation_stops_when_the_context_is_full():
    c = model(n_ctx=10).generate("abcd", max_tokens=100, **GREEDY)
    assert c.finish_reason == "length" and c.stats.prompt_tokens + c.stats.completion_tokens <= 11


SYSTEM = "You are a terse assistant. " * 2  # 52 characters = tokens


def test_prefix_is_reused_at_an_aligned_boundary_and_output_is_unchanged():
    cold = model(n_ctx=256)
    expected = cold.generate(SYSTEM + "hello world", max_tokens=4, **GREEDY).text
    m = model(n_ctx=256, settle=False)  # idle-time settling would evaluate tokens of its own meanwhile
    m.generate(SYSTEM + "hello there", max_tokens=4, **GREEDY)
    before = m.backend.evaluated_tokens
    c = m.generate(SYSTEM + "hello world", max_tokens=4, **GREEDY)
    assert c.text == expected
    shared = len(SYSTEM + "hello ")
    assert c.stats.cached_tokens == shared - shared % 16 == 48 and c.stats.cache_source == "ram-copy"
    # only the tokens after the aligned reuse point and the generated ones were computed
    assert m.backend.evaluated_tokens - before == len(SYSTEM + "hello world") - 48 + 3


def test_identical_prompt_reuses_an_aligned_prefix():
    m = model(n_ctx=256)
    m.generate(SYSTEM, max_tokens=2, **GREEDY)
    c = m.generate(SYSTEM, max_tokens=2, **GREEDY)
    # an aligned split that leaves at least MIN_BATCH (16) tokens to compute
    assert c.stats.cached_tokens == (len(SYSTEM) - 16) // 16 * 16


def test_closing_a_stream_early_stops_it_and_keeps_the_cache_consistent():
    m = model(settle=False)  # no idle-time evals after the request
    gate = EvalGate(m.backend)
    gate.allow(4)  # the prefill and 3 decode steps; then the request waits at the gate, unfinished
    stream = m.stream("abc", max_tokens=200, **GREEDY)
    it = iter(stream)
    next(it)
    next(it)
    gate.wait_held()
    stream.cancel()
    gate.open()
    stream.close()  # returns once the engine has let go of the request
    held = m.engine.cache.slots[0].tokens
    # stopped at the first step after the cancel: no eval after the one waiting at the gate
    assert gate.passed == 5 and m.metrics.snapshot()["finish_reasons"]["cancelled"] == 1
    assert m.backend.seqs[0] == held and len(held) == 3 + 4  # the prompt, and the tokens evaluated
    assert not m.engine.cache.slots[0].busy and m.engine.occupancy() == (0, 0)
    assert m.generate("abc", max_tokens=3, **GREEDY).text == "def"


def test_backend_failure_is_raised_and_the_engine_recovers():
    m = model(fail_on_eval=3)
    with pytest.raises(RuntimeError, match="injected"):
        m.generate("abc", max_tokens=10, **GREEDY)
    assert m.backend.seqs[0] == [] and m.engine.cache.slots[0].tokens == []
    m.backend.fail_on_eval = None
    assert m.generate("abc", max_tokens=2, **GREEDY).text == "de"


def test_seeded_sampling_is_reproducible():
    a = model().generate("a", max_tokens=12, temperature=1.0, top_k=0, min_p=0, seed=3).text
    b = model().generate("a", max_tokens=12, temperature=1.0, top_k=0, min_p=0, seed=3).text
    assert a == b


def test_chat_conversation_records_turns():
    template = "{% for m in messages %}{{ m.content }}|{% endfor %}"
    m = Model(FakeBackend(n_ctx=256), name="fake", chat_template=template, settle=False)
    conv = m.chat(system="S" * 40)
    first = conv.send("hi", max_tokens=30, **GREEDY)
    assert [x["role"] for x in conv.messages] == ["system", "user", "assistant"]
    second = conv.send("yo", max_tokens=3, **GREEDY)
    assert conv.messages[-1]["content"] == second.text
    # reuse stops at a multiple of caps.reuse_align (16 here) inside the prompt's prefill: the
    # answer's decode-step KV is recomputed (nothing settled it in idle time here)
    assert second.stats.cached_tokens == 32 and second.stats.cache_source == "ram"
    assert first.stats.cached_tokens == 0


def test_idle_time_settles_an_answer_so_the_next_turn_reuses_it():
    template = "{% for m in messages %}{{ m.content }}|{% endfor %}"
    backend = FakeBackend(n_ctx=256, whole_history=True)
    m = Model(backend, name="fake", chat_template=template)
    conv = m.chat(system="S" * 40)
    conv.send("hi", max_tokens=30, **GREEDY)  # 44-token prompt + 29 evaluated answer tokens = 73
    wait_until(lambda: m.engine.cache.unsettled() is None, "idle-time settling")
    slot = m.engine.cache.slots[0]
    assert slot.exact_end == 64 and len(slot.tokens) == 64  # the last partial tile is left out
    before = backend.evaluated_tokens
    out = conv.send("yo, tell me more about it", max_tokens=3, **GREEDY)
    assert out.stats.cached_tokens == 64
    assert backend.evaluated_tokens - before == out.stats.prompt_tokens - 64 + 2
    cold = Model(FakeBackend(n_ctx=256, whole_history=True), name="fake", chat_template=template,
                 settle=False)
    assert out.text == cold.complete_chat(conv.messages[:-1], max_tokens=3, **GREEDY).text


def test_a_stopped_answer_is_kept_as_far_as_it_went():
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    m = Model(FakeBackend(n_ctx=256), name="fake", chat_template=template)
    conv = m.chat()
    with EvalGate(m.backend) as gate:
        gate.allow(3)  # the prefill and 2 decode steps; the request then waits at the gate, unfinished
        stream = conv.stream("a", max_tokens=10, **GREEDY)
        shown = next(stream) + next(stream)
        gate.wait_held()
        stream.cancel()
        gate.open()
        stream.close()
    done = stream.result()  # what was generated until the cancel took effect
    assert done.finish_reason == "cancelled" and done.text.startswith(shown) and len(done.text) < 10
    assert conv.messages == [{"role": "user", "content": "a"}, {"role": "assistant", "content": done.text}]
    with pytest.raises(ContextOverflowError):
        conv.send("x" * 300)
    assert len(conv.messages) == 2  # a refused turn leaves the conversation as it was


def test_stats_are_filled():
    c = model().generate("abc", max_tokens=8, **GREEDY)
    s = c.stats
    assert s.backend == "fake" and s.model == "fake" and s.ttft_s > 0 and s.total_s >= s.ttft_s
    assert s.finish_reason == "length" and s.to_dict()["computed_prompt_tokens"] == 3


def test_make_params_keeps_base_values():
    p = make_params(make_params(temperature=0.1, max_tokens=7), seed=5)
    assert (p.temperature, p.max_tokens, p.seed) == (0.1, 7, 5)
