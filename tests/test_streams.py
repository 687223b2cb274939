"""Streams behave like Python iterators, for every kind of stream: a model's, a chat's, a conversation
turn's, a routed one's and a translation's.

Reading part, then the rest, then ``result()`` gives the whole answer; stopping to read cancels nothing;
cancelling is explicit (``cancel()`` from any thread, leaving a ``with`` block, the stream being dropped
unfinished) and then ``result()`` gives ``finish_reason="cancelled"`` with the text generated so far.
Engine logic on the fake backend, gated so that "the request is still running" holds by construction;
the last tests repeat the issue's own examples on the real SmolLM2 GGUF.
"""

from __future__ import annotations

import gc
import threading

import pytest
from waits import EvalGate, wait_until

import edgeinfer as ei
from edgeinfer.backends.testing import FakeBackend
from edgeinfer.model import Model
from edgeinfer.routing.policies import Cascade
from edgeinfer.routing.router import Router, Tier

TEMPLATE = "{% for m in messages %}{{ m.content }}|{% endfor %}"
LONG = 200  # tokens asked for: far more than a gated test lets the engine generate
CANCELLABLE = ["model", "chat", "conversation", "router", "translation"]
KINDS = [*CANCELLABLE, "cascade"]  # a cascade's stream starts with its whole answer: nothing to cancel


@pytest.fixture
def fake():
    m = Model(FakeBackend(n_ctx=4096, max_sequences=2), name="fake", chat_template=TEMPLATE, settle=False,
              speculation=None)
    yield m
    m.close()


def start(kind: str, m: Model):
    """A new stream of ``kind`` on ``m``, greedy, so that two of a kind give the same answer."""
    options = {"max_tokens": LONG, "temperature": 0}
    if kind == "model":
        return m.stream("abc", **options)
    if kind == "chat":
        return m.stream_chat([{"role": "user", "content": "abc"}], **options)
    if kind == "conversation":
        return m.chat(system="S").stream("abc", **options)
    if kind == "router":
        return Router([Tier("only", m)]).stream("abc", **options)
    if kind == "cascade":  # a threshold no answer reaches: the small tier's answer, then the large one's
        return Router([Tier("small", m), Tier("large", m)], Cascade("small", "large", 0.0)).stream("abc",
                                                                                                 **options)
    assert kind == "translation"
    return ei.Translator(m, memory=False).stream("The weather is nice today.", to="fr", source="en")


def engine_idle(m: Model) -> bool:
    return m.engine.occupancy() == (0, 0)


def running(kind: str, m: Model, gate: EvalGate):
    """A new stream of ``kind`` and its first piece, once its request waits at ``gate`` unfinished (after
    3 decode steps)."""
    gate.allow(3)
    stream = start(kind, m)
    first = next(stream)
    gate.wait_held()
    return stream, first


def open_once_cancelled(gate: EvalGate, m: Model) -> threading.Thread:
    """Open ``gate`` once every request of ``m`` is cancelled (from the thread under test)."""
    def cancelled() -> bool:
        requests = [*m.engine._active, *m.engine._waiting]
        return bool(requests) and all(r.cancelled.is_set() for r in requests)

    def run() -> None:
        wait_until(cancelled, "the stream's request to be cancelled")
        gate.open()

    opener = threading.Thread(target=run, daemon=True)
    opener.start()
    return opener


@pytest.mark.parametrize("kind", KINDS)
def test_next_then_the_rest_then_the_result(fake, kind):
    whole = start(kind, fake).result()
    stream = start(kind, fake)
    first = next(iter(stream))  # the usual way to time the first token: iter() is the stream itself
    rest = list(stream)  # goes on after the first piece
    done = stream.result()
    assert iter(stream) is stream and list(stream) == [] and next(stream, None) is None  # each piece once
    assert done.finish_reason == whole.finish_reason != "cancelled"
    assert (first + "".join(rest)).strip() == done.text == whole.text and len(whole.text) > 10


@pytest.mark.parametrize("kind", KINDS)
def test_break_then_result_gives_the_whole_answer(fake, kind):
    whole = start(kind, fake).result()
    stream = start(kind, fake)
    for piece in stream:
        assert piece
        break
    done = stream.result()
    assert done.text == whole.text and done.finish_reason == whole.finish_reason != "cancelled"
    assert stream.result() is done and engine_idle(fake)


@pytest.mark.parametrize("kind", CANCELLABLE)
def test_cancel_from_another_thread_keeps_the_text_so_far(fake, kind):
    whole = start(kind, fake).result()
    with EvalGate(fake.backend, decode_only=True) as gate:
        stream, first = running(kind, fake, gate)
        canceller = threading.Thread(target=stream.cancel)
        canceller.start()
        canceller.join()
        gate.open()
        rest = list(stream)  # this thread reads on: the pieces up to the step the cancel stopped
    done = stream.result()
    assert done.finish_reason == "cancelled"
    assert (first + "".join(rest)).strip() == done.text and 0 < len(done.text) < len(whole.text)
    assert whole.text.startswith(done.text)
    assert engine_idle(fake) and fake.metrics.snapshot()["finish_reasons"]["cancelled"] == 1
    assert start(kind, fake).result().text == whole.text  # the model serves the next request as before


@pytest.mark.parametrize("kind", CANCELLABLE)
def test_a_stream_dropped_unfinished_is_cancelled(fake, kind):
    with EvalGate(fake.backend, decode_only=True) as gate:
        stream, _ = running(kind, fake, gate)
        del stream  # nobody can read the rest
        gc.collect()
        gate.open()
        wait_until(lambda: engine_idle(fake), "the dropped stream's request to end")
    reasons = fake.metrics.snapshot()["finish_reasons"]
    assert reasons["cancelled"] == 1 and sum(reasons.values()) == 1


@pytest.mark.parametrize("kind", CANCELLABLE)
def test_leaving_a_with_block_cancels_what_is_left(fake, kind):
    whole = start(kind, fake).result()
    with EvalGate(fake.backend, decode_only=True) as gate:
        gate.allow(3)
        opener = open_once_cancelled(gate, fake)
        with start(kind, fake) as stream:
            for piece in stream:
                first = piece
                break
            gate.wait_held()
        assert engine_idle(fake)  # leaving the block waited until the request let go of its sequence
        opener.join()
    done = stream.result()
    assert done.finish_reason == "cancelled" and done.text.startswith(first.strip())
    assert whole.text.startswith(done.text) and len(done.text) < len(whole.text)


@pytest.mark.parametrize("kind", KINDS)
def test_a_with_block_read_to_the_end_keeps_the_answer(fake, kind):
    whole = start(kind, fake).result()
    with start(kind, fake) as stream:
        text = "".join(stream)
    assert stream.result().text == text.strip() == whole.text
    assert stream.result().finish_reason == whole.finish_reason != "cancelled"


@pytest.mark.parametrize("kind", CANCELLABLE)
def test_an_error_is_raised_by_the_read_and_again_by_result(fake, kind):
    with EvalGate(fake.backend, decode_only=True) as gate:
        stream, _ = running(kind, fake, gate)
        fake.backend.fail_on_eval = fake.backend.evals + 1  # the eval waiting at the gate fails
        gate.open()
        with pytest.raises(RuntimeError, match="injected"):
            list(stream)
        with pytest.raises(RuntimeError, match="injected"):  # not an AssertionError
            stream.result()
        stream.close()  # never raises: the error is the result's
    fake.backend.fail_on_eval = None
    wait_until(lambda: engine_idle(fake), "the failed request to end")
    assert start(kind, fake).result().text


def test_a_conversation_records_the_answer_result_gives():
    m = Model(FakeBackend(n_ctx=4096), name="fake", chat_template=TEMPLATE, settle=False, speculation=None)
    conv = m.chat()
    stream = conv.stream("abc", max_tokens=20, temperature=0)
    for _ in stream:
        break
    whole = stream.result()  # the whole answer, though the loop stopped after one piece
    assert whole.finish_reason == "length"
    assert conv.messages[-1] == {"role": "assistant", "content": whole.text}
    with EvalGate(m.backend, decode_only=True) as gate:
        gate.allow(3)
        open_once_cancelled(gate, m)
        with conv.stream("more", max_tokens=20, temperature=0) as stream:
            next(stream)
            gate.wait_held()
    partial = stream.result()
    assert partial.finish_reason == "cancelled" and conv.messages[-1]["content"] == partial.text
    assert [x["role"] for x in conv.messages] == ["user", "assistant"] * 2
    m.close()


def test_a_turn_cancelled_before_any_text_is_not_recorded():
    m = Model(FakeBackend(n_ctx=256, max_sequences=1), name="fake", chat_template=TEMPLATE, settle=False,
              speculation=None)
    conv = m.chat()
    with EvalGate(m.backend) as gate:
        gate.hold()
        busy = m.stream("xyz", max_tokens=5, temperature=0)  # holds the only sequence, at the gate
        gate.wait_held()
        stream = conv.stream("abc", max_tokens=20, temperature=0)  # waits for a sequence
        stream.cancel()
        gate.open()
        done = stream.result()
    assert done.finish_reason == "cancelled" and done.text == "" and conv.messages == []
    assert busy.result().finish_reason == "length"
    m.close()


def test_a_translation_cancelled_keeps_no_memory(fake, tmp_path):
    memory = tmp_path / "tm.sqlite3"
    with EvalGate(fake.backend, decode_only=True) as gate:
        gate.allow(3)
        tr = ei.Translator(fake, memory=memory)
        with tr.stream("The weather is nice today.", to="fr", source="en") as stream:
            next(stream)
            gate.wait_held()
            stream.cancel()
            gate.open()
    assert stream.result().finish_reason == "cancelled" and tr.history() == []
    done = tr.translate("The weather is nice today.", to="fr", source="en")
    assert done.finish_reason == "length" and not done.from_memory  # nothing was remembered
    tr.close()


# --- the examples on the real default model --------------------------------------------------
@pytest.mark.slow
def test_the_first_token_then_the_result_on_a_real_model(smol):
    whole = smol.generate("Once upon a time", max_tokens=32, temperature=0)
    s = smol.stream("Once upon a time", max_tokens=32, temperature=0)
    first = next(iter(s))
    done = s.result()
    assert done.finish_reason == whole.finish_reason == "length" and done.stats.completion_tokens == 32
    assert done.text == whole.text and done.text.startswith(first)


@pytest.mark.slow
def test_a_conversation_stream_stopped_early_on_a_real_model(smol):
    c = smol.chat()
    s = c.stream("Hello there", max_tokens=16, temperature=0)
    for _ in s:
        break
    done = s.result()  # no AssertionError: the whole answer
    assert done.finish_reason != "cancelled" and done.text and c.messages[-1]["content"] == done.text
    with c.stream("Tell me a long story about the sea.", max_tokens=200, temperature=0) as s:
        next(s)
    partial = s.result()  # leaving the block cancelled the rest
    assert partial.finish_reason == "cancelled" and partial.stats.completion_tokens < 200
    assert c.messages[-1]["content"] == partial.text
