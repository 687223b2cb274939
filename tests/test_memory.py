"""Memory budgets: sizes read from GGUF headers against llama.cpp's own buffers, layouts planned within a
budget, sequences allocated as requests need them (bit-exact across the re-made context), and the
states that carry them across."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import numpy as np
import pytest

import edgeinfer as ei
from edgeinfer.backends import llama_state
from edgeinfer.backends.base import EvalItem
from edgeinfer.backends.llamacpp import LlamaCppBackend
from edgeinfer.errors import KVCacheFullError
from edgeinfer.loader import locate_model
from edgeinfer.memory import (
    Footprint,
    Preferred,
    Wanted,
    footprint_of,
    most_sequences,
    parse_size,
    plan_layout,
)

MB = 10**6
MiB = 1 << 20


@pytest.fixture(scope="module")
def gemma_path() -> Path:
    return locate_model("gemma-3-270m").path


@pytest.fixture
def llama_log():
    """The llama.cpp log lines emitted while the test runs (edgeinfer routes them to logging)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("edgeinfer.llama_cpp")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def _mib(lines: list[str], what: str) -> float:
    """The 'CPU <what> buffer size = X MiB' llama.cpp logged, added up (a sliding-window model has two
    KV caches)."""
    sizes = [float(m.group(1)) for line in lines
             if (m := re.search(rf"CPU +{what} buffer size = +([\d.]+) MiB", line))]
    assert sizes, f"llama.cpp logged no {what} buffer size"
    return sum(sizes)


# --- sizes


@pytest.mark.parametrize(("text", "expected"), [
    ("1.5GB", 1_500_000_000), ("800MB", 800_000_000), ("2GiB", 2 << 30), ("512 MiB", 512 << 20),
    ("1000", 1000), (123456, 123456), ("0.5g", 500_000_000),
])
def test_sizes_read_as_bytes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "lots", "1.5 parsecs", "-3GB", "0", 0, -1, True, "1e9"])
def test_malformed_sizes_are_refused_with_an_example(bad):
    with pytest.raises(ei.InvalidRequestError, match="memory size"):
        parse_size(bad)


@pytest.mark.parametrize(("model", "per_token"), [("smollm2", 23040), ("gemma", 18432)])
def test_header_sizes_match_llama_cpp_buffers(model, per_token, smollm2_path, gemma_path, llama_log):
    """KV bytes per token are exact; the compute estimate bounds llama.cpp's reserved buffer."""
    path = smollm2_path if model == "smollm2" else gemma_path
    fp = footprint_of(path)
    assert fp.kv_bytes_per_token() == per_token
    assert fp.weights <= path.stat().st_size
    for n_ctx, n_batch in ((1024, 512), (2048, 128)):
        llama_log.clear()
        backend = LlamaCppBackend(path, n_ctx=n_ctx, n_batch=n_batch, max_sequences=2, initial_sequences=2)
        try:
            assert _mib(llama_log, "KV") * MiB == fp.kv_bytes(n_ctx, 2)
            assert backend.kv_bytes_allocated() == fp.kv_bytes(n_ctx, 2)
            reserved = _mib(llama_log, "compute") * MiB
            estimate = fp.compute_bytes(n_ctx, n_batch, outputs=8)
            assert reserved <= estimate <= 2 * reserved + 4 * MiB
        finally:
            backend.close()


def test_a_large_vocabulary_reserves_a_few_logit_rows(gemma_path, llama_log):
    """Gemma's 262k-token output: the compute buffer is reserved for 8 logit rows, not n_batch (512)."""
    backend = LlamaCppBackend(gemma_path, n_ctx=1024)
    backend.close()
    assert any("n_outputs_max         = 8" in line for line in llama_log)
    assert _mib(llama_log, "compute") < 40  # with 512 rows reserved it was over 500 MiB


# --- planning


def _fp(**over) -> Footprint:
    base = {"weights": 100 * MB, "n_vocab": 50_000, "n_embd": 576, "n_ff": 1536, "n_head": 9,
            "kv_elements": 11520, "n_ctx_train": 8192}
    return Footprint(**base | over)


def test_a_roomy_budget_keeps_the_defaults():
    layout = plan_layout(_fp(), Wanted(), budget=4 << 30, base=50 * MB)
    assert (layout.n_ctx, layout.sequences, layout.kv_type, layout.n_batch) == (4096, 4, "f16", 512)
    assert layout.kv_budget >= _fp().kv_bytes(4096, 4)


def test_what_was_left_open_gives_way_in_order():
    fp = _fp()
    one = fp.fixed_bytes(4096, 512, 1) + fp.kv_bytes(4096, 1)
    layout = plan_layout(fp, Wanted(), budget=50 * MB + one + fp.kv_bytes(4096, 1), base=50 * MB)
    assert (layout.n_ctx, layout.sequences) == (4096, 2)  # fewer sequences first
    tight = plan_layout(fp, Wanted(), budget=50 * MB + one - 20 * MB, base=50 * MB)
    assert tight.sequences >= 1 and (tight.n_batch < 512 or tight.kv_type != "f16" or tight.n_ctx < 4096)
    assert fp.fixed_bytes(tight.n_ctx, tight.n_batch, tight.sequences) + \
        fp.kv_bytes(tight.n_ctx, tight.sequences, tight.kv_type) <= tight.budget - tight.base


def test_what_was_asked_for_must_fit_or_the_error_says_what_would():
    fp = _fp()
    budget = 50 * MB + fp.fixed_bytes(4096, 512, 2) + fp.kv_bytes(4096, 2)
    with pytest.raises(ei.MemoryBudgetError) as caught:
        plan_layout(fp, Wanted(n_ctx=4096, sequences=8), budget=budget, base=50 * MB, name="smol")
    message = str(caught.value)
    assert "smol needs about" in message and "for 8 sequences of 4096 tokens" in message
    fits = re.search(r"at most (\d+) sequences of 4096, or (\d+) of (\d+)", message)
    assert fits, message
    assert int(fits.group(1)) == 2 == most_sequences(fp, budget - 50 * MB, 4096)
    assert int(fits.group(2)) > 2 and int(fits.group(3)) < 4096
    assert caught.value.budget == budget and caught.value.needed > budget
    with pytest.raises(ei.MemoryBudgetError, match="the weights and buffers alone need"):
        plan_layout(fp, Wanted(), budget=120 * MB, base=50 * MB)


def test_a_preferred_count_is_lowered_a_plain_one_is_not(smollm2_path):
    fp = footprint_of(smollm2_path)
    from edgeinfer.memory import process_rss

    base = process_rss()
    budget = base + fp.fixed_bytes(1024, 512, 8) + fp.kv_bytes(1024, 3)
    model = ei.load(smollm2_path, n_ctx=1024, max_sequences=Preferred(8), memory=budget, n_threads=1)
    try:
        assert model.layout is not None and 1 <= model.layout.sequences < 8
        assert model.backend.caps.max_sequences == model.layout.sequences
    finally:
        model.close()
    with pytest.raises(ei.MemoryBudgetError, match=r"at most \d sequences? of 1024"):
        ei.load(smollm2_path, n_ctx=1024, max_sequences=8, memory=budget, n_threads=1)


# --- sequences allocated as they are needed


def test_one_conversation_holds_one_sequence(smollm2_path):
    with ei.load(smollm2_path, n_ctx=1024, n_threads=1) as model:
        conversation = model.chat("You are terse.")
        conversation.send("Name a colour.", max_tokens=8, temperature=0)
        conversation.send("Another one.", max_tokens=8, temperature=0)
        assert model.backend.sequences_allocated == 1
        usage = model.metrics.snapshot()
        assert usage["sequences_allocated"] == 1
        assert usage["kv_bytes_allocated"] == 1024 * footprint_of(smollm2_path).kv_bytes_per_token()
        assert 0 < usage["kv_bytes_in_use"] < usage["kv_bytes_allocated"]


def test_sequences_are_kept_for_reuse_only_when_asked_for(smollm2_path):
    """By default a prompt that continues nothing evicts the held one (no concurrency, no new sequence);
    with max_sequences given, each conversation keeps its own sequence, allocated when first used."""
    questions = ["Name a colour.", "Name a fruit."]
    for asked, expected_sequences, expected_source in ((None, 1, "ram"), (2, 2, "ram")):
        with ei.load(smollm2_path, n_ctx=512, n_threads=1, max_sequences=asked) as model:
            chats = [model.chat(f"You are assistant number {k}, and you are terse.") for k in range(2)]
            for chat, question in zip(chats, questions, strict=True):
                chat.send(question, max_tokens=6, temperature=0)
            model.engine.settle()
            again = chats[0].send("Another one.", max_tokens=6, temperature=0)
            assert model.backend.sequences_allocated == expected_sequences
            assert again.stats.cache_source == expected_source
            # kept: the whole first conversation is reused; evicted: only the shared system-prompt start
            whole = again.stats.cached_tokens >= again.stats.prompt_tokens - 24
            assert whole == (asked is not None), again.stats


def test_concurrency_adds_sequences_without_changing_any_output(smollm2_path):
    """Requests that arrive while another decodes grow the context; every greedy output is the one it
    gets alone, including the request that was decoding while its KV moved to the new context."""
    prompts = [f"Write a short list of {topic}." for topic in ("fruits", "rivers", "tools", "birds")]
    with ei.load(smollm2_path, n_ctx=512, n_threads=2, kv=ei.KVOptions(ram_bytes=0)) as model:
        alone = [model.generate(p, max_tokens=24, temperature=0).text for p in prompts]
        assert model.backend.sequences_allocated == 1
        first = iter(model.stream(prompts[0], max_tokens=24, temperature=0))
        head = next(first)  # decoding on sequence 0 when the others arrive
        results: dict[int, str] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(
            i, model.generate(prompts[i], max_tokens=24, temperature=0).text)) for i in (1, 2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        results[0] = head + "".join(first)
        assert model.backend.sequences_allocated == 4
        assert [results[i] for i in range(4)] == alone


def test_a_budget_bounds_the_sequences_and_requests_wait(smollm2_path):
    fp = footprint_of(smollm2_path)
    from edgeinfer.memory import process_rss

    budget = process_rss() + fp.fixed_bytes(512, 512, 8) + fp.kv_bytes(512, 2) + 2 * MB
    with ei.load(smollm2_path, n_ctx=512, n_threads=2, memory=budget, max_sequences=Preferred(8),
                 kv=ei.KVOptions(ram_bytes=0)) as model:
        assert model.layout.sequences == 2
        streams = [model.stream(f"Count to {n}.", max_tokens=12, temperature=0) for n in range(3, 9)]
        texts = [s.result().text for s in streams]
        assert all(texts) and model.backend.sequences_allocated == 2
        assert model.backend.kv_bytes_allocated() <= model.layout.kv_budget


def test_growth_that_does_not_fit_the_kv_budget_is_refused(smollm2_path):
    fp = footprint_of(smollm2_path)
    backend = LlamaCppBackend(smollm2_path, n_ctx=256, max_sequences=4, kv_budget=fp.kv_bytes(256, 2))
    try:
        assert backend.grow_sequences(4) == 2  # growth stops at what the budget holds
        with pytest.raises(KVCacheFullError, match="memory budget"):
            backend.seq_length(3)
    finally:
        backend.close()


# --- states that move between contexts


def test_states_load_into_contexts_with_other_sequence_counts(gemma_path):
    """Gemma keeps two caches (sliding-window layers apart): a state saved with one KV stream loads
    into a context of four, and the next token's logits are the same bits."""
    tokens = list(range(100, 300))
    small = LlamaCppBackend(gemma_path, n_ctx=512, max_sequences=4)
    large = LlamaCppBackend(gemma_path, n_ctx=512, max_sequences=4, initial_sequences=4)
    try:
        small.eval([EvalItem(0, tokens)])
        state = small.state_save(0)
        small.eval([EvalItem(0, [400])])
        expected = small.logits(0).copy()
        large.state_load(3, state, len(tokens))
        large.eval([EvalItem(3, [400])])
        assert np.array_equal(large.logits(0), expected)
    finally:
        small.close()
        large.close()


@pytest.mark.parametrize("damage", ["truncate", "streams", "sections", "magic"])
def test_damaged_states_are_refused(smollm2_path, damage):
    backend = LlamaCppBackend(smollm2_path, n_ctx=256, max_sequences=2)
    try:
        backend.eval([EvalItem(0, list(range(100, 140)))])
        state = bytearray(backend.state_save(0))
        offset = len(llama_state.MAGIC) + llama_state.PREFIX
        if damage == "truncate":
            state = state[:-100]
        elif damage == "streams":
            state[offset + 8 : offset + 12] = (99999).to_bytes(4, "little")
        elif damage == "sections":
            state[offset : offset + 4] = (77).to_bytes(4, "little")
        else:
            state[:5] = b"EIKV9"
        with pytest.raises(ei.BackendError):
            backend.state_load(1, bytes(state), 40)
        assert backend.seq_length(1) == 0
        backend.eval([EvalItem(0, [7])])  # the process and the other sequence are fine
    finally:
        backend.close()


def test_restream_rewrites_only_the_stream_count():
    entry = (3).to_bytes(4, "little") + b"cells..."
    section = (4).to_bytes(4, "little") + bytes(8) + entry + bytes(4)  # 4 streams, cells in the third
    assert llama_state.restream(section, 1) == (1).to_bytes(4, "little") + entry
    two = llama_state.restream(llama_state.restream(section, 1), 2)
    assert two == (2).to_bytes(4, "little") + entry + bytes(4)
    with pytest.raises(ValueError, match="more than one stream"):
        llama_state.restream(section[:-4] + (1).to_bytes(4, "little"), 1)


def test_a_context_that_cannot_be_remade_fails_the_requests_and_the_engine_lives_on():
    """Growing the backend failing (e.g. llama.cpp out of memory re-making its context) ends the
    running and waiting requests with the error instead of stopping the scheduler."""
    from edgeinfer.backends.testing import FakeBackend
    from edgeinfer.errors import BackendError
    from edgeinfer.model import Model

    class CannotGrow(FakeBackend):
        broken = True

        @property
        def sequences_allocated(self) -> int:
            return 1

        def grow_sequences(self, n: int) -> int:
            if self.broken:
                raise BackendError("no memory to re-make the context")
            return 1

    backend = CannotGrow(n_ctx=256, max_sequences=2, delay=0.01)
    with Model(backend, name="fake", settle=False) as model:
        first = model.stream("a long request", max_tokens=50, temperature=0)
        iter(first).__next__()  # running on sequence 0
        second = model.stream("another one", max_tokens=5, temperature=0)
        for stream in (first, second):
            with pytest.raises(BackendError, match="re-make the context"):
                stream.result()
        backend.broken = False
        assert model.generate("still serving", max_tokens=3, temperature=0).text
