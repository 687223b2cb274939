"""`edgeinfer bench` for real: SmolLM2 measured in its own process, the table, the JSON, the chart, and
its errors (an artifact that does not exist, bad settings)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import gguf

from edgeinfer.bench import bandwidth_probe, bytes_read_per_token
from edgeinfer.loader import locate_model


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeinfer", *args], capture_output=True, text=True,
                          timeout=300)


def test_bench_measures_a_model_and_writes_table_json_and_chart(tmp_path: Path, monkeypatch):
    # a cache of its own: the default model's ONNX folder (which another test may have made in the
    # session's cache) is not made here, so it runs as its GGUF on llama.cpp whatever ran before
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path / "home"))
    png, md, js = tmp_path / "bench.png", tmp_path / "bench.md", tmp_path / "bench.json"
    done = _cli("bench", "smollm2-135m-instruct", "no-such-model", "--prompt-tokens", "48",
                "--gen-tokens", "8", "--repeats", "2", "--threads", "2", "--plot", str(png),
                "--markdown", str(md), "--json-out", str(js))
    assert done.returncode == 0, done.stderr
    assert "| smollm2-135m-instruct | gguf (llama.cpp/cpu) |" in done.stdout
    assert "| no-such-model | failed: UnknownModelError" in done.stdout  # the others still ran
    data = json.loads(js.read_text())
    smol = data["results"][0]
    path = locate_model("smollm2-135m-instruct").path
    assert smol["size_bytes"] == path.stat().st_size and len(smol["samples"]) == 2
    assert all(s["generated"] == 8 for s in smol["samples"])
    decode = smol["decode_tok_s"]
    assert 0 < decode["min"] <= decode["median"] <= decode["max"]
    assert smol["prefill_tok_s"]["median"] > 0 and 0 < smol["ttft_s"]["median"] < 10
    assert smol["peak_rss_bytes"] > 0.5 * smol["size_bytes"]
    assert 0 < smol["share_of_bound"] < 1.5  # near or under the bandwidth limit, never far above it
    assert md.read_text().startswith("# edgeinfer bench")
    width, height = struct.unpack(">II", png.read_bytes()[16:24])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and width > 800 and height > 300


def test_bytes_per_token_counts_every_weight_of_a_tied_model():
    path = locate_model("smollm2-135m-instruct").path
    tensors = gguf.GGUFReader(str(path)).tensors
    assert "output.weight" not in {t.name for t in tensors}  # tied: the embedding table is the head
    assert bytes_read_per_token(path) == sum(int(t.n_bytes) for t in tensors)
    assert 1e9 < bandwidth_probe(repeats=2) < 1e12  # bytes/s of a real machine


def test_bad_settings_and_nothing_measurable_are_errors():
    bad = _cli("bench", "smollm2-135m-instruct", "--gen-tokens", "1")
    assert bad.returncode == 2 and "--gen-tokens must be at least 2" in bad.stderr
    none = _cli("bench", "no-such-model", "--repeats", "1", "--json")
    assert none.returncode == 1 and json.loads(none.stdout)["results"][0]["error"].startswith("UnknownModel")
