"""A checkpoint folder is untrusted: safetensors headers whose shapes overflow or are not numbers, and
configs whose sizes are absurd or do not match the weights, are refused with a CheckpointError before
any output is opened (nothing written, bounded work)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from edgeinfer_converters import convert
from test_convert_gguf import assert_nothing_written, copy_of, edit_config, rewrite_header

import edgeinfer as ei


def first_tensor(header: dict) -> dict:
    return header[min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])]


SHAPES = {
    # name: what the first tensor's header entry becomes
    "element count overflows int64": lambda t: t.update(shape=[2**62 + 1, 4], data_offsets=[0, 16]),
    "a dimension of 2**64": lambda t: t.update(shape=[2**64]),
    "a boolean dimension": lambda t: t.update(shape=[True, 4]),
    "a negative dimension": lambda t: t.update(shape=[-1, 4]),
    "a string dimension": lambda t: t.update(shape=["4", 4]),
    "a float dimension": lambda t: t.update(shape=[4.0, 4]),
    "too many dimensions": lambda t: t.update(shape=[1] * 64),
    "a boolean offset": lambda t: t.update(data_offsets=[False, t["data_offsets"][1]]),
    "offsets reversed": lambda t: t.update(data_offsets=t["data_offsets"][::-1]),
    "an unknown dtype": lambda t: t.update(dtype="F128"),
    "entry not an object": lambda t: t.clear(),
}


@pytest.mark.parametrize("case", list(SHAPES))
def test_a_lying_tensor_header_is_refused_before_anything_is_written(tmp_path: Path, case: str) -> None:
    src = copy_of("llama", tmp_path / "ck")
    rewrite_header(src / "model.safetensors", lambda header: SHAPES[case](first_tensor(header)))
    started = time.monotonic()
    with pytest.raises(ei.CheckpointError):
        convert(src, tmp_path / "out.gguf", quant="F32")
    assert time.monotonic() - started < 60  # refused from the header, not after writing without bound
    assert_nothing_written(tmp_path)


def test_a_deeply_nested_header_is_refused(tmp_path: Path) -> None:
    src = copy_of("llama", tmp_path / "ck")
    nested = b"[" * 100_000 + b"]" * 100_000
    (src / "model.safetensors").write_bytes(len(nested).to_bytes(8, "little") + nested)
    with pytest.raises(ei.CheckpointError, match="not valid JSON"):
        convert(src, tmp_path / "out.gguf", quant="F32")
    assert_nothing_written(tmp_path)


CONFIGS = {
    "a billion layers": (dict(num_hidden_layers=10**9), "num_hidden_layers"),
    "more layers than the weights hold": (dict(num_hidden_layers=64), "weights hold"),
    "zero layers": (dict(num_hidden_layers=0), "num_hidden_layers"),
    "a boolean size": (dict(hidden_size=True), "hidden_size"),
    "a string size": (dict(num_attention_heads="8"), "num_attention_heads"),
    "an absurd context": (dict(max_position_embeddings=10**12), "max_position_embeddings"),
    "an absurd vocabulary": (dict(vocab_size=2**40), "vocab_size"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_an_absurd_config_is_refused_before_anything_is_written(tmp_path: Path, case: str, fmt: str) -> None:
    changes, message = CONFIGS[case]
    src = copy_of("llama", tmp_path / "ck")
    edit_config(src, **changes)
    out = tmp_path / ("out.gguf" if fmt == "gguf" else "out-onnx")
    started = time.monotonic()
    with pytest.raises(ei.CheckpointError, match=message):
        convert(src, out, format=fmt, quant="F32" if fmt == "gguf" else "fp32")
    assert time.monotonic() - started < 60
    assert not out.exists()
    assert_nothing_written(tmp_path)
    assert convert(copy_of("llama", tmp_path / "fine"), tmp_path / "fine.gguf", quant="F32").artifact.exists()
