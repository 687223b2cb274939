"""PromptCache logic on the fake backend: sharing, interleaving, eviction, RAM budget, disk tier."""

import logging

import pytest

import edgeinfer as ei
from edgeinfer.backends.testing import FakeBackend
from edgeinfer.disk_cache import DiskCache
from edgeinfer.model import Model
from edgeinfer.prompt_cache import PromptCache

GREEDY = dict(temperature=0, max_tokens=4)
SYSTEM = "S" * 40  # a shared 40-token "system prompt"
BINDING = {"model_sha256": "ab" * 32, "backend": "fake", "n_ctx": 512}


def make(max_sequences=2, ram=None, disk=None, **kw) -> Model:
    """No background settling (tests call ``engine.settle()`` where idle time would pass)."""
    backend = FakeBackend(n_ctx=512, max_sequences=max_sequences, whole_history=True, **kw)
    return Model(backend, name="fake", cache=PromptCache(backend, ram_budget_bytes=ram, disk=disk),
                 settle=False)


def cold(prompt: str) -> str:
    return make().generate(prompt, **GREEDY).text


def test_shared_prefix_is_copied_and_the_original_conversation_stays_whole():
    m = make(max_sequences=3)
    first = m.generate(SYSTEM + "question one, asked at some length", **GREEDY)
    second = m.generate(SYSTEM + "question two, asked at some length", **GREEDY)
    assert second.stats.cache_source == "ram-copy" and second.stats.cached_tokens == 48
    assert second.text == cold(SYSTEM + "question two, asked at some length")
    # the first conversation continues in place, reusing what a fresh prefill reproduces exactly
    follow = SYSTEM + "question one, asked at some length" + first.text + " and then?"
    again = m.generate(follow, **GREEDY)
    assert again.stats.cache_source == "ram" and again.stats.cached_tokens == 64  # its whole prefill
    assert again.text == cold(follow)


def test_one_sequence_shared_by_different_prompts_is_truncated_in_place():
    m = make(max_sequences=1)
    m.generate(SYSTEM + "question one, asked at some length", **GREEDY)
    out = m.generate(SYSTEM + "question two, asked at some length", **GREEDY)
    assert out.stats.cache_source == "ram" and out.stats.cached_tokens == 48
    assert out.text == cold(SYSTEM + "question two, asked at some length")
    held = m.engine.backend.seqs[0]
    assert bytes(held).decode() == SYSTEM + "question two, asked at some length" + out.text[:-1]


def test_keep_kv_leaves_only_the_shared_block_and_the_next_request_runs_in_place(tmp_path):
    """A one-off request after a shared block (``keep_kv``): its sequence goes back to the block when it
    ends, so the next request of the block runs in place (no copy), with the same output as a cold
    run, and an evicted block is written to disk once, not once per request."""
    disk = DiskCache(tmp_path, binding=BINDING)
    m = make(max_sequences=2, disk=disk)
    first = m.generate(SYSTEM + "question one, asked at some length", keep_kv=40, **GREEDY)
    held = m.engine.backend.seqs
    assert [bytes(t).decode() for t in held.values() if t] == [SYSTEM]
    second = m.generate(SYSTEM + "question two, asked at some length", keep_kv=40, **GREEDY)
    assert second.stats.cache_source == "ram" and second.stats.cached_tokens == 32  # aligned to tiles
    assert second.text == cold(SYSTEM + "question two, asked at some length") and first.text
    for _ in range(3):  # two other prompts take both sequences: the block is evicted, then restored
        m.generate("X" * 40, **GREEDY)
        m.generate("Y" * 40, **GREEDY)
        again = m.generate(SYSTEM + "and a third one", keep_kv=40, **GREEDY)
        assert again.stats.cache_source == "disk" and again.stats.cached_tokens == 32
    blocks = [e for e in disk.entries() if bytes(e.tokens[:40]).decode() == SYSTEM]
    assert len(blocks) == 1 and bytes(blocks[0].tokens).decode() == SYSTEM  # the block, saved once
    with pytest.raises(ei.InvalidRequestError, match="keep_kv"):
        m.generate("x", keep_kv=-1)


def test_interleaved_conversations_each_keep_their_own_sequence():
    m = make(max_sequences=4)
    history = {c: f"conversation {c}: " + c * 30 for c in "ABCD"}
    for turn in range(3):
        for c in "ABCD":
            history[c] += f" turn {turn}?"
            out = m.generate(history[c], **GREEDY)
            assert out.text == cold(history[c])
            if turn:  # all but the new text and the last partial tile of the settled history
                assert out.stats.cached_tokens >= len(history[c]) - len(" turn 1?") - 1 - 16 - 16
            history[c] += out.text
            m.engine.settle()  # what idle time does between turns


def test_lru_eviction_goes_to_disk_and_comes_back(tmp_path):
    disk = DiskCache(tmp_path, binding=BINDING)
    m = make(max_sequences=2, disk=disk)
    prompts = [f"{c} " * 30 for c in "xyz"]
    for p in prompts:
        m.generate(p, **GREEDY)
    assert len(disk.entries()) == 1  # x was evicted to make room for z
    back = m.generate(prompts[0] + "more", **GREEDY)
    assert back.stats.cache_source == "disk" and back.stats.cached_tokens >= 48
    assert back.text == cold(prompts[0] + "more")


def test_a_zero_ram_budget_keeps_nothing_and_stays_correct():
    m = make(ram=0)
    for _ in range(2):
        out = m.generate(SYSTEM + "q", **GREEDY)
        assert out.stats.cached_tokens == 0 and out.text == cold(SYSTEM + "q")
    assert all(not s.tokens for s in m.engine.cache.slots)


def test_a_small_ram_budget_evicts_least_recently_used():
    m = make(max_sequences=3, ram=1)  # fake states cost 4 bytes per token: 1 byte keeps nothing
    m.generate("a" * 40, **GREEDY)
    m.generate("b" * 40, **GREEDY)
    assert sum(bool(s.tokens) for s in m.engine.cache.slots) <= 1


def test_full_kv_cells_evict_other_sequences_and_retry():
    m = make(max_sequences=3, kv_cells=100)
    m.generate("a" * 45, **GREEDY)
    m.generate("b" * 45, **GREEDY)
    out = m.generate("c" * 45, **GREEDY)  # does not fit beside both: the oldest goes
    assert out.text == cold("c" * 45)


def test_disk_states_survive_a_new_process_and_foreign_ones_are_ignored(tmp_path, caplog):
    m = make(disk=DiskCache(tmp_path, binding=BINDING))
    m.generate(SYSTEM + "hello", **GREEDY)
    m.save_cache()
    fresh = make(disk=DiskCache(tmp_path, binding=BINDING))  # a "restarted app"
    out = fresh.generate(SYSTEM + "hello there", **GREEDY)
    assert out.stats.cache_source == "disk" and out.text == cold(SYSTEM + "hello there")
    other = make(disk=DiskCache(tmp_path, binding={**BINDING, "model_sha256": "cd" * 32}))
    assert other.generate(SYSTEM + "hello there", **GREEDY).stats.cache_source == "none"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "payload"])
def test_damaged_state_files_are_removed_with_a_warning(tmp_path, caplog, damage):
    m = make(disk=DiskCache(tmp_path, binding=BINDING))
    m.generate(SYSTEM + "hello", **GREEDY)
    m.save_cache()
    (path,) = list(tmp_path.rglob("*.kv"))
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) - 7], "garbage": b"\x00" * 50,
                      "payload": data[:-4] + b"XXXX"}[damage])
    fresh = make(disk=DiskCache(tmp_path, binding=BINDING))
    with caplog.at_level(logging.WARNING):
        out = fresh.generate(SYSTEM + "hello there", **GREEDY)
    assert out.stats.cache_source == "none" and out.text == cold(SYSTEM + "hello there")
    assert not path.exists() and "removing KV state" in caplog.text


def test_a_full_disk_is_a_warning_not_a_crash(tmp_path, caplog, monkeypatch):
    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("edgeinfer.disk_cache.atomic_write", no_space)
    m = make(disk=DiskCache(tmp_path, binding=BINDING))
    m.generate(SYSTEM + "hello", **GREEDY)
    with caplog.at_level(logging.WARNING):
        m.save_cache()
    assert "No space left" in caplog.text and not list(tmp_path.rglob("*.kv*"))
    assert m.generate(SYSTEM + "hello", **GREEDY).text == cold(SYSTEM + "hello")


def test_two_processes_sharing_a_folder(tmp_path):
    a = make(disk=DiskCache(tmp_path, binding=BINDING))
    b = make(disk=DiskCache(tmp_path, binding=BINDING))
    a.generate(SYSTEM + "from a", **GREEDY)
    b.generate(SYSTEM + "from b", **GREEDY)
    a.save_cache()
    b.save_cache()
    for path in list(tmp_path.rglob("*.kv"))[:1]:
        path.unlink()  # the other process evicted it meanwhile: just a miss
    c = make(disk=DiskCache(tmp_path, binding=BINDING))
    for text in ("from a", "from b"):
        assert c.generate(SYSTEM + text + "!", **GREEDY).text == cold(SYSTEM + text + "!")


def test_disk_folder_is_size_bounded(tmp_path):
    disk = DiskCache(tmp_path, binding=BINDING, max_bytes=1500)
    for c in "pqrstu":
        disk.save([ord(c)] * 100, bytes(400))
    assert sum(p.stat().st_size for p in tmp_path.rglob("*.kv")) <= 1500
    assert len(disk.entries()) >= 1


def test_conversations_are_saved_and_resumed_by_id(tmp_path):
    template = "{% for m in messages %}{{ m.role }}:{{ m.content }}|{% endfor %}"
    backend = FakeBackend(n_ctx=512, whole_history=True)
    m = Model(backend, name="fake", chat_template=template,
              cache=PromptCache(backend, disk=DiskCache(tmp_path, binding=BINDING)))
    conv = m.chat(system="be brief", id="trip-1")
    conv.send("plan a trip to Lyon", **GREEDY)
    conv.save()
    backend2 = FakeBackend(n_ctx=512, whole_history=True)
    m2 = Model(backend2, name="fake", chat_template=template,
               cache=PromptCache(backend2, disk=DiskCache(tmp_path, binding=BINDING)))
    resumed = m2.resume("trip-1")
    assert resumed.messages == conv.messages
    out = resumed.send("and Paris?", **GREEDY)
    assert out.stats.cache_source == "disk" and out.stats.cached_tokens > 20
    assert out.text == conv.send("and Paris?", **GREEDY).text
