"""``repack=True`` never kills the process: on a CPU that reports AMX, llama.cpp's repacked kernels are
tried once in a child process (a VM that reports AMX without granting it dies with SIGILL there), and a
model whose child died loads without repacking, with a warning that says why."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hf_fixtures import gguf_source

from edgeinfer.backends import extra_buffers
from edgeinfer.backends.llamacpp import LlamaCppBackend

pytestmark = pytest.mark.slow

SIGILL_WHY = "llama.cpp's repacked kernels kill the process here (SIGILL in a child process that tried them)"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path))
    return tmp_path


def test_a_machine_whose_repacked_kernels_crash_loads_without_them(
        home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    probes = []
    monkeypatch.setattr(extra_buffers, "_cpu_reports_amx", lambda: True)
    monkeypatch.setattr(extra_buffers, "run_probe", lambda path: probes.append(path) or (False, SIGILL_WHY))
    path, _ = gguf_source("smollm2")
    with caplog.at_level(logging.WARNING, logger="edgeinfer.llama_cpp"):
        for _ in range(2):
            backend = LlamaCppBackend(path, n_ctx=256, repack=True)
            try:
                assert backend.repack_refused == SIGILL_WHY and not backend.state_binding()["repack"]
            finally:
                backend.close()
    assert probes == [path]  # probed once: the answer is kept in the cache
    assert "loading without repacking: llama.cpp's repacked kernels kill the process" in caplog.text


def test_where_the_probe_passes_or_the_cpu_has_no_amx_repacking_is_on(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = gguf_source("smollm2")
    monkeypatch.setattr(extra_buffers, "_cpu_reports_amx", lambda: True)
    monkeypatch.setattr(extra_buffers, "run_probe", lambda path: (True, ""))
    backend = LlamaCppBackend(path, n_ctx=256, repack=True)
    try:
        assert backend.repack_refused == "" and backend.state_binding()["repack"]
    finally:
        backend.close()
    monkeypatch.setattr(extra_buffers, "_cpu_reports_amx", lambda: False)
    monkeypatch.setattr(extra_buffers, "run_probe", lambda path: pytest.fail("probed without AMX"))
    assert extra_buffers.extra_buffers_usable(path) == (True, "")


def test_a_damaged_probe_cache_is_probed_again(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = gguf_source("smollm2")
    monkeypatch.setattr(extra_buffers, "_cpu_reports_amx", lambda: True)
    monkeypatch.setattr(extra_buffers, "run_probe", lambda path: (False, SIGILL_WHY))
    for damaged in ("{not json", "[1, 2]", '{"x": {"ok": "yes"}}'):
        stamp = home / "probes" / "extra-buffers.json"
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(damaged)
        assert extra_buffers.extra_buffers_usable(path) == (False, SIGILL_WHY)


def test_repack_true_never_kills_the_process(home: Path) -> None:
    """For real: on this project's CI VM (AMX reported, not granted) this died with SIGILL before."""
    code = ("import edgeinfer as ei\nfrom edgeinfer.backends.base import EvalItem\n"
            "m = ei.load('smollm2-135m-instruct', n_ctx=512, repack=True)\n"
            "tokens = m.tokenize('The history of lighthouses is long. ' * 20)[:48]\n"
            "m.backend.eval([EvalItem(0, tokens)])\n"
            "print('answered', bool(m.generate('Hi', max_tokens=4).tokens))")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "EDGEINFER_HOME": str(home)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "answered True" in done.stdout
