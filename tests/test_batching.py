"""Continuous batching and speculation in the engine, on the fake backend (scheduling logic only)."""


import pytest
from waits import EvalGate, concurrently

from edgeinfer.backends.testing import FakeBackend
from edgeinfer.model import Model

GREEDY = dict(temperature=0)


def test_concurrent_requests_share_steps_and_match_one_by_one():
    prompts = [chr(97 + i) * 3 for i in range(4)]
    solo = Model(FakeBackend(n_ctx=128, max_sequences=4), name="fake", speculation=None)
    expected = [solo.generate(p, max_tokens=20, **GREEDY).text for p in prompts]
    backend = FakeBackend(n_ctx=128, max_sequences=4)
    m = Model(backend, name="fake", speculation=None, settle=False)
    with EvalGate(backend) as gate:
        gate.hold()  # all four are queued before the first step runs: they overlap by construction
        streams = [m.stream(p, max_tokens=20, **GREEDY) for p in prompts]
        gate.open()
        done = [s.result() for s in streams]
    assert [c.text for c in done] == expected
    # 4 prefills (one a step) + 19 decode steps: batched, far fewer than the 4 x 20 evals of one by one
    assert backend.evals <= 4 + 19 + 3


def test_more_requests_than_sequences_wait_their_turn():
    backend = FakeBackend(n_ctx=128, max_sequences=2)
    m = Model(backend, name="fake", speculation=None)
    prompts = [chr(97 + i) for i in range(7)]
    done = concurrently(m, prompts, timeout=30, max_tokens=5, **GREEDY)
    assert [c.text for c in done] == [
        "".join(chr(ord(p) + j) for j in range(1, 6)) for p in prompts]
    assert m.engine.occupancy() == (0, 0) and not any(s.busy for s in m.engine.cache.slots)


def test_a_cancelled_request_frees_its_sequence_for_a_waiting_one():
    backend = FakeBackend(n_ctx=512, max_sequences=1)
    m = Model(backend, name="fake", speculation=None)
    gate = EvalGate(backend)
    gate.allow(3)  # the long request runs a few steps, then waits at the gate, unfinished
    long = m.stream("a", max_tokens=400, **GREEDY)
    waiting = m.stream("b", max_tokens=3, **GREEDY)
    pieces = iter(long)
    next(pieces)
    gate.wait_held()
    assert m.engine.occupancy() == (1, 1)
    long.cancel()
    gate.open()
    assert waiting.result().text == "cde"
    assert long.result().finish_reason == "cancelled"


def test_a_failing_step_ends_only_its_requests():
    backend = FakeBackend(n_ctx=128, max_sequences=2)
    m = Model(backend, name="fake", speculation=None)
    backend.fail_on_eval = backend.evals + 2
    with pytest.raises(RuntimeError, match="injected"):
        m.generate("abc", max_tokens=10, **GREEDY)
    backend.fail_on_eval = None
    assert m.generate("abc", max_tokens=2, **GREEDY).text == "de"


COPY_PROMPT = "abcdefghijklmnopqrstuvwxyz" + "abc"


def test_prompt_lookup_speculation_keeps_greedy_output_and_saves_steps():
    plain_backend = FakeBackend(n_ctx=256)
    plain = Model(plain_backend, name="fake", speculation=None).generate(COPY_PROMPT, max_tokens=22, **GREEDY)
    spec_backend = FakeBackend(n_ctx=256)
    spec = Model(spec_backend, name="fake").generate(COPY_PROMPT, max_tokens=22, **GREEDY)
    assert spec.text == plain.text and spec.finish_reason == plain.finish_reason == "length"
    assert spec.stats.accepted_tokens >= 12 and spec_backend.evals < plain_backend.evals / 2


def test_speculation_stops_exactly_at_max_tokens_and_stop_strings():
    for options in (dict(max_tokens=7), dict(max_tokens=40, stop=["mno"])):
        plain = Model(FakeBackend(n_ctx=256), name="fake", speculation=None).generate(
            COPY_PROMPT, **options, **GREEDY)
        m = Model(FakeBackend(n_ctx=256), name="fake", settle=False)
        spec = m.generate(COPY_PROMPT, **options, **GREEDY)
        assert (spec.text, spec.tokens) == (plain.text, plain.tokens)
        slot = m.engine.cache.slots[0]
        assert m.backend.seqs[0] == slot.tokens  # no unverified draft left in the KV cache
        assert slot.tokens == [*m.tokenize(COPY_PROMPT), *spec.tokens[:-1]]


def test_when_shared_kv_cells_run_out_only_the_youngest_request_gives_way():
    from edgeinfer.errors import KVCacheFullError

    backend = FakeBackend(n_ctx=128, max_sequences=2, kv_cells=50)
    m = Model(backend, name="fake", speculation=None, settle=False)
    gate = EvalGate(backend)
    gate.allow(2)  # the older request's prefill and one step; it waits at the gate, unfinished...
    older = m.stream("abcde", max_tokens=30, **GREEDY)
    pieces = iter(older)
    next(pieces)
    gate.wait_held()
    younger = m.stream("vwxyz", max_tokens=30, **GREEDY)  # ...when the younger one arrives
    gate.open()
    with pytest.raises(KVCacheFullError, match="retry"):
        younger.result()
    for _ in pieces:
        pass
    assert older.completion.finish_reason == "length" and len(older.completion.tokens) == 30
