"""HF -> ONNX: logit parity with transformers for prefill, token-by-token decoding through the KV cache
and a prefill continued in one step (tiny random checkpoints, SmolLM2), plus refusals on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from edgeinfer_converters.checkpoint import Checkpoint
from edgeinfer_converters.to_onnx import ARCHS, build_onnx
from hf_fixtures import empty_past, rebuilt_checkpoint, tiny_checkpoint
from test_convert_gguf import assert_parity, hf_logits, hf_model

from edgeinfer.errors import ConversionError, UnsupportedArchitectureError

pytestmark = pytest.mark.slow

ONNX_ARCHS = ["llama", "llama3-rope", "mistral", "qwen2", "qwen3", "phi3", "gemma3"]


class OnnxDecoder:
    """A minimal numpy driver for the exported graph (batch 1): run ids, keep the KV cache."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime as ort

        self.meta = json.loads((folder / "edgeinfer.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        self.past = list(empty_past(self.meta).values())

    def __call__(self, ids: list[int]) -> np.ndarray:
        """Logits [len(ids), vocab] for ``ids`` following what is already in the cache."""
        start = self.past[0].shape[2]
        feed = {"input_ids": np.array([ids], np.int64),
                "attention_mask": np.ones((1, start + len(ids)), np.int64),
                "position_ids": np.arange(start, start + len(ids), dtype=np.int64)[None]}
        for i in range(self.meta["n_layers"]):
            feed[f"past_key_values.{i}.key"], feed[f"past_key_values.{i}.value"] = self.past[2 * i: 2 * i + 2]
        logits, *self.past = self.session.run(None, feed)
        return logits[0]


@pytest.mark.parametrize("arch", ONNX_ARCHS)
def test_tiny_checkpoint_matches_transformers(arch: str, tmp_path: Path) -> None:
    src = tiny_checkpoint(arch)
    out = build_onnx(Checkpoint.open(src), tmp_path / arch)
    expected = {"edgeinfer.json", "model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json"}
    assert expected <= {p.name for p in out.iterdir()}
    model = OnnxDecoder(out)
    io = model.session
    names = [i.name for i in io.get_inputs()]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert [o.name for o in io.get_outputs()][:3] == ["logits", "present.0.key", "present.0.value"]
    assert model.meta["quantization"] == "fp32" and model.meta["eos_token_id"] == 2

    rng = np.random.default_rng(1)
    ids = [1, *rng.integers(3, 49152, 39).tolist()]
    reference = hf_logits(src, ids)
    prefill = model(ids)  # (a) one prefill from an empty cache
    assert_parity(reference, prefill, tie_margin=0.02)
    model.reset()  # (b) one token at a time through the cache
    stepped = np.concatenate([model([t]) for t in ids])
    assert model.past[0].shape[2] == len(ids)
    assert_parity(reference, stepped, tie_margin=0.02)
    model.reset()  # (c) 30, then 10 more in one step
    split = np.concatenate([model(ids[:30]), model(ids[30:])])
    assert_parity(reference, split, tie_margin=0.02)


def test_right_padded_batch_matches_unpadded(tmp_path: Path) -> None:
    """Two prompts of different lengths in one batch (the shorter right-padded, attention_mask 0 on the
    padding) give each prompt's own logits on its real positions."""
    out = build_onnx(Checkpoint.open(tiny_checkpoint("llama")), tmp_path / "m")
    model = OnnxDecoder(out)
    long, short = [1, 50, 60, 70, 80, 90], [1, 33, 44]
    plain = [model(long)]
    model.reset()
    plain.append(model(short))
    pad = len(long) - len(short)
    feed = {"input_ids": np.array([long, short + [0] * pad], np.int64),
            "attention_mask": np.array([[1] * len(long), [1] * len(short) + [0] * pad], np.int64),
            "position_ids": np.array([list(range(len(long)))] * 2, np.int64)}
    feed.update(empty_past(model.meta, batch=2))
    batched = model.session.run(["logits"], feed)[0]
    np.testing.assert_allclose(batched[0], plain[0], atol=1e-4)
    np.testing.assert_allclose(batched[1, : len(short)], plain[1], atol=1e-4)


def test_num_logits_to_keep_returns_the_last_rows(tmp_path: Path) -> None:
    """The optional input trims logits to the last rows (what a prefill needs); 0, the default, keeps all."""
    out = build_onnx(Checkpoint.open(tiny_checkpoint("qwen2")), tmp_path / "m")
    model = OnnxDecoder(out)
    ids = [1, 50, 60, 70, 80, 90]
    full = model(ids)
    feed = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
            "position_ids": np.arange(len(ids), dtype=np.int64)[None], "num_logits_to_keep": np.array(2)}
    feed.update(empty_past(model.meta, batch=1))
    last_two = model.session.run(["logits"], feed)[0][0]
    assert last_two.shape == (2, full.shape[1])
    np.testing.assert_allclose(last_two, full[-2:], atol=1e-5)


def test_unknown_architecture_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for item in tiny_checkpoint("llama").iterdir():
        (src / item.name).symlink_to(item)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").unlink()
    (src / "config.json").write_text(json.dumps({**config, "architectures": ["MambaForCausalLM"]}))
    with pytest.raises(UnsupportedArchitectureError, match="MambaForCausalLM"):
        build_onnx(Checkpoint.open(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert "MambaForCausalLM" not in ARCHS


def test_existing_output_is_refused_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    ckpt = Checkpoint.open(tiny_checkpoint("llama"))
    with pytest.raises(ConversionError, match="already exists"):
        build_onnx(ckpt, out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ConversionError, match="int4"):
        build_onnx(ckpt, tmp_path / "other", dtype="int4")
    build_onnx(ckpt, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "model.onnx").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folders left behind


def test_smollm2_matches_transformers(tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    src = rebuilt_checkpoint("smollm2")
    model = OnnxDecoder(build_onnx(Checkpoint.open(src), tmp_path / "smollm2"))
    tokenizer = AutoTokenizer.from_pretrained(src)
    text = "The quick brown fox jumps over the lazy dog, and then it runs back into the forest to rest."
    ids = tokenizer(text)["input_ids"]
    reference_model = hf_model(src)
    assert_parity(hf_logits(src, ids, reference_model), model(ids))  # no tie margin on a real model

    prompt = tokenizer("The capital of France is")["input_ids"]
    with torch.no_grad():
        expected = reference_model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                            attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    model.reset()
    generated: list[int] = []
    logits = model(prompt)
    for _ in range(16):
        token = int(logits[-1].argmax())
        generated.append(token)
        if token == model.meta["eos_token_id"]:
            break
        logits = model([token])
    assert generated == expected[0, len(prompt):].tolist()
