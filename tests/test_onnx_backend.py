"""The onnx backend inside edgeinfer's engine, on SmolLM2-135M-Instruct converted to fp32 ONNX:
greedy output equals transformers', KV reuse and batching keep outputs exact, bad folders refused."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
from hf_fixtures import rebuilt_checkpoint  # noqa: E402

import edgeinfer as ei  # noqa: E402

pytestmark = pytest.mark.slow
PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeinfer_converters import convert

    out = tmp_path_factory.mktemp("onnx") / "smol-fp32"
    convert(rebuilt_checkpoint("smollm2"), out, format="onnx", quant="fp32")
    return out


@pytest.fixture(scope="module")
def model(onnx_dir: Path):
    loaded = ei.load(onnx_dir, n_ctx=512, n_threads=2, kv=ei.KVOptions(settle=False))
    yield loaded
    loaded.close()


def test_loads_on_the_onnx_backend(model, onnx_dir: Path) -> None:
    assert model.backend.name == "onnx" and model.choice.backend == "onnx"
    assert (onnx_dir / "report.json").is_file()


def test_greedy_generation_equals_transformers(model) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    ids = model.tokenize(PROMPT)
    ours = model.generate(ids, max_tokens=32, temperature=0).tokens
    reference = AutoModelForCausalLM.from_pretrained(rebuilt_checkpoint("smollm2"), dtype=torch.float32)
    with torch.no_grad():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)
    assert len(ours) == 32 and ours == out[0, len(ids):].tolist()


def test_chat_turns_reuse_the_cache_and_equal_cold_answers(model, onnx_dir: Path) -> None:
    chat = model.chat(system="You are a helpful assistant.")
    first = chat.send("Name a large city in France.", max_tokens=16, temperature=0)
    second = chat.send("And one in Spain?", max_tokens=16, temperature=0)
    assert second.stats.cached_tokens > 0
    cold = ei.load(onnx_dir, n_ctx=512, n_threads=2, kv=ei.KVOptions(ram_bytes=0, settle=False))
    try:
        messages = [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "Name a large city in France."},
                    {"role": "assistant", "content": first.text},
                    {"role": "user", "content": "And one in Spain?"}]
        again = cold.complete_chat(messages, max_tokens=16, temperature=0)
    finally:
        cold.close()
    assert again.stats.cached_tokens == 0 and again.text == second.text


def test_concurrent_requests_get_their_own_answers(model) -> None:
    prompts = ["Once upon a time", "The history of Rome", "def fibonacci(n):"]
    solo = [model.generate(p, max_tokens=12, temperature=0).text for p in prompts]
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        results[i] = model.generate(prompts[i], max_tokens=12, temperature=0).text

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [results[i] for i in range(len(prompts))] == solo


def test_prompt_over_the_context_is_refused(model) -> None:
    with pytest.raises(ei.ContextOverflowError):
        model.generate("word " * 600, max_tokens=4)
    assert model.generate("Hello", max_tokens=2, temperature=0).text is not None


def copy_folder(onnx_dir: Path, dest: Path) -> Path:
    shutil.copytree(onnx_dir, dest)
    return dest


def test_tampered_folders_are_refused_before_onnxruntime_opens_them(onnx_dir: Path, tmp_path: Path) -> None:
    folder = copy_folder(onnx_dir, tmp_path / "linked")
    (tmp_path / "elsewhere.data").write_bytes((folder / "model.onnx.data").read_bytes())
    (folder / "model.onnx.data").unlink()
    (folder / "model.onnx.data").symlink_to(tmp_path / "elsewhere.data")
    with pytest.raises(ei.CorruptModelError, match="link"):
        ei.load(folder)
    folder = copy_folder(onnx_dir, tmp_path / "truncated")
    with (folder / "model.onnx.data").open("r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(ei.CorruptModelError, match="truncated"):
        ei.load(folder)


def test_kv_buffers_grow_copy_truncate_and_restore_exactly(onnx_dir: Path) -> None:
    """Past the first KV allocation (256 positions) and through copies, truncation and saved states, a
    sequence's next logits equal those of one prefill of the same tokens."""
    import numpy as np

    from edgeinfer.backends.base import EvalItem
    from edgeinfer.backends.onnx import FIRST_CAPACITY, OnnxBackend

    backend = OnnxBackend(onnx_dir, n_ctx=512, n_threads=2, max_sequences=4)
    ids = backend.tokenize(" ".join([PROMPT] * 30))[: FIRST_CAPACITY + 60]

    def last_logits(seq: int, tokens: list[int]) -> np.ndarray:
        (row,) = backend.eval([EvalItem(seq, tokens)])
        return backend.logits(row).copy()

    whole = last_logits(0, ids)
    assert backend.seq_length(0) == len(ids) and backend._pool.capacity >= len(ids)
    pieces = [ids[:100], ids[100:250], ids[250:-1], ids[-1:]]  # grows from 256 while holding data
    stepped = [last_logits(1, piece) for piece in pieces][-1]
    np.testing.assert_allclose(stepped, whole, atol=2e-3)
    backend.kv_copy(0, 2, 120)  # a shared prefix, then its own continuation
    np.testing.assert_allclose(last_logits(2, ids[120:]), whole, atol=2e-3)
    backend.kv_truncate(1, 200)  # roll back and redo: the rows past 200 are overwritten, not reused
    np.testing.assert_allclose(last_logits(1, ids[200:]), whole, atol=2e-3)
    state = backend.state_save(0)
    backend.kv_truncate(0, 10)
    backend.state_load(3, state, len(ids))
    extra = backend.tokenize(" and then", add_special=False)
    reference = last_logits(1, extra)
    np.testing.assert_allclose(last_logits(3, extra), reference, atol=2e-3)
    backend.close()


def test_constrained_json_on_the_onnx_backend(model) -> None:
    schema = {"type": "object", "required": ["city"], "additionalProperties": False,
              "properties": {"city": {"type": "string", "maxLength": 20}}}
    done = model.complete_chat([{"role": "user", "content": "Name a large city in France, as JSON."}],
                               json_schema=schema, max_tokens=40, temperature=0)
    assert done.finish_reason == "stop" and done.parsed == {"city": "Paris"} and done.stats.forced_tokens >= 1
