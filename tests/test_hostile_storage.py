"""Files edgeinfer reads back (KV states, saved conversations, the translation memory) are untrusted:
a damaged one is dropped with a warning and never breaks a later request; a failed save warns and the
work goes on; and the files that hold the user's text are private (0600 in 0700 folders)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_prompt_cache import BINDING, GREEDY, SYSTEM, cold, make

from edgeinfer.backends.testing import FakeBackend
from edgeinfer.disk_cache import MAGIC, DiskCache
from edgeinfer.errors import InvalidRequestError, StorageError
from edgeinfer.model import Model
from edgeinfer.prompt_cache import PromptCache
from edgeinfer.translate.memory import TranslationMemory

TEMPLATE = "{% for m in messages %}{{ m.role }}:{{ m.content }}|{% endfor %}"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def state_file(header: object, payload: bytes = b"\x01\x02\x03\x04") -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return MAGIC + struct.pack("<Q", len(raw)) + raw + payload


GOOD = {"binding": BINDING, "tokens": [83] * 40, "prefill_end": 40, "exact_end": 32,
        "payload_sha256": "0" * 64, "payload_bytes": 4}
DAMAGED_HEADERS = {
    "not an object": [1, 2, 3],
    "a string": "binding",
    "no binding": {k: v for k, v in GOOD.items() if k != "binding"},
    "binding not an object": {**GOOD, "binding": "x"},
    "tokens not ints": {**GOOD, "tokens": ["a", "b"]},
    "tokens negative": {**GOOD, "tokens": [-1, 5]},
    "tokens empty": {**GOOD, "tokens": []},
    "exact_end a string": {**GOOD, "exact_end": "32"},
    "prefill_end past the tokens": {**GOOD, "prefill_end": 10**9},
    "payload_bytes missing": {k: v for k, v in GOOD.items() if k != "payload_bytes"},
    "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("case", list(DAMAGED_HEADERS))
def test_a_damaged_state_header_is_dropped_and_requests_go_on(tmp_path, caplog, case):
    disk = DiskCache(tmp_path, binding=BINDING)
    disk.folder.mkdir(parents=True)
    bad = disk.folder / "bad.kv"
    bad.write_bytes(state_file(DAMAGED_HEADERS[case]))
    m = make(disk=disk)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # not only the first request: the file is gone, not failing every time
            out = m.generate(SYSTEM + "hello there", **GREEDY)
            assert out.text == cold(SYSTEM + "hello there")
    assert not bad.exists() and "removing KV state bad.kv" in caplog.text


def test_kv_states_and_conversations_are_private(tmp_path):
    backend = FakeBackend(n_ctx=512, whole_history=True)
    m = Model(backend, name="fake", chat_template=TEMPLATE,
              cache=PromptCache(backend, disk=DiskCache(tmp_path / "kv", binding=BINDING)))
    conv = m.chat(id="diary")
    conv.send("my secret", **GREEDY)
    saved = conv.save()
    (state,) = list((tmp_path / "kv").rglob("*.kv"))
    for path in (saved, state):
        assert mode(path) == 0o600 and mode(path.parent) == 0o700, path


def test_the_translation_memory_is_private_and_survives_a_damaged_page(tmp_path, caplog):
    path = tmp_path / "data" / "tm.sqlite3"
    memory = TranslationMemory(path)
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    for i in range(300):  # enough rows for several pages
        memory.put("m", "en", "fr", f"sentence {i} " * 8, f"phrase {i}")
    memory.close()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page: 3 * page] = b"\xa5" * page  # a page in the middle: the file still opens
    path.write_bytes(bytes(data))
    memory = TranslationMemory(path)
    with caplog.at_level(logging.WARNING):
        for i in (5, 150, 299):
            memory.get("m", "en", "fr", f"sentence {i} " * 8)  # whatever it finds, it must not raise
    memory.put("m", "en", "fr", "hello", "bonjour")
    assert memory.get("m", "en", "fr", "hello") == "bonjour"
    assert memory.get("m", "en", "fr", "hello") == "bonjour"  # and not only once
    memory.close()
    assert "was damaged" in caplog.text and list(path.parent.glob("tm.sqlite3.damaged-*"))  # kept aside


def test_a_damaged_query_is_detected_not_only_a_damaged_open(tmp_path, monkeypatch, caplog):
    memory = TranslationMemory(tmp_path / "tm.sqlite3")
    memory.put("m", "en", "fr", "hello", "bonjour")
    real = memory._db

    class Malformed:  # the connection of a file whose page broke after it was opened
        def execute(self, *args: object) -> None:
            raise sqlite3.DatabaseError("database disk image is malformed")

        def close(self) -> None:
            real.close()

    memory._db = Malformed()
    with caplog.at_level(logging.WARNING):
        assert memory.get("m", "en", "fr", "hello") is None  # a fresh store
    memory.put("m", "en", "fr", "hello", "salut")
    assert memory.get("m", "en", "fr", "hello") == "salut" and "moved it to" in caplog.text
    memory.close()


def test_a_damaged_saved_conversation_is_a_clear_error(tmp_path):
    m = Model(FakeBackend(n_ctx=512), name="fake", chat_template=TEMPLATE)
    path = m.conversation_path("trip")
    path.parent.mkdir(parents=True, exist_ok=True)
    damages = ('{"messages": "hi"}', '{"messages": [1, 2]}', "[" * 100_000, '{"messages": [{"role": 1}]}')
    for damaged in damages:
        path.write_text(damaged)
        with pytest.raises(InvalidRequestError, match="trip"):
            m.resume("trip")
    path.unlink()
    assert m.chat(id="trip").send("hello", **GREEDY).text  # healthy afterwards


def test_a_failed_conversation_save_is_a_storage_error(monkeypatch):
    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    m = Model(FakeBackend(n_ctx=512), name="fake", chat_template=TEMPLATE)
    conv = m.chat(id="full-disk")
    conv.send("hello", **GREEDY)
    monkeypatch.setattr("edgeinfer.conversation.atomic_write", no_space)
    with pytest.raises(StorageError, match="No space left"):
        conv.save()
    assert conv.send("again", **GREEDY).text  # the conversation goes on


@pytest.mark.slow
def test_chat_with_an_id_goes_on_when_the_disk_is_full(tmp_path):
    """`edgeinfer chat --id` with saves failing (no space): a warning after each turn, answers go on."""
    prelude = ("import errno, edgeinfer.conversation\n"
               "def no_space(*a, **k):\n"
               "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
               "edgeinfer.conversation.atomic_write = no_space\n")
    code = prelude + "import sys\nfrom edgeinfer.cli import main\nsys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EDGEINFER_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code, "chat", "--id", "full", "--temperature", "0",
                           "--max-tokens", "8", "--threads", "1"],
                          input="Hello.\nWhat is the capital of France?\n/exit\n", capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("warning: could not save conversation 'full'") == 2
    assert "Traceback" not in done.stderr and done.stdout.count("\n") >= 2
