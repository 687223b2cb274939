"""ONNX int8 / int4 (MatMulNBits): folders that onnxruntime and the engine load, a quality report where int8
beats int4, the lm_head option, nothing left behind on Ctrl-C, refusals; SmolLM2's quality numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from hf_fixtures import rebuilt_checkpoint, tiny_checkpoint  # noqa: E402

import edgeinfer as ei  # noqa: E402
from converters import convert  # noqa: E402
from converters.checkpoint import Checkpoint  # noqa: E402
from converters.to_onnx import build_onnx  # noqa: E402
from edgeinfer.errors import ConversionError  # noqa: E402

pytestmark = pytest.mark.slow


def node_ops(folder: Path) -> dict[str, int]:
    """How many nodes of each op type the folder's graph has (weights left on disk)."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """int8 and int4 folders (with report.json) of one tiny checkpoint."""
    root = tmp_path_factory.mktemp(f"onnxq-{request.param}")
    src = tiny_checkpoint(request.param)
    out = {q: convert(src, root / q, format="onnx", quant=q, n_threads=2).artifact for q in ("int8", "int4")}
    assert sorted(p.name for p in root.iterdir()) == ["int4", "int8"]  # the fp32 scratch folder is gone
    return out


def test_folders_load_and_report_quality(converted: dict[str, Path]) -> None:
    import onnxruntime as ort

    quality = {}
    for quant, folder in converted.items():
        ops = node_ops(folder)
        assert ops.get("MatMulNBits", 0) >= 7 * 2 and "MatMul" in ops  # attention scores stay MatMul
        assert json.loads((folder / "edgeinfer.json").read_text())["quantization"] == f"{quant}-b32-sym"
        ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        report = json.loads((folder / "report.json").read_text())
        assert report["quant"] == quant
        quality[quant] = report["quality"]
        assert 0 < quality[quant]["mean_kl"] < 1 and math.isfinite(quality[quant]["ppl_candidate"])
    assert quality["int8"]["mean_kl"] < quality["int4"]["mean_kl"]
    assert quality["int8"]["top1_agreement"] > 0.8 and quality["int4"]["top1_agreement"] > 0.3


def test_engine_generates_greedily(converted: dict[str, Path]) -> None:
    for folder in converted.values():
        model = ei.load(folder, n_ctx=128, n_threads=2, kv_settle=False)
        try:
            first = model.generate("Once upon a time", max_tokens=6, temperature=0)
            again = model.generate("Once upon a time", max_tokens=6, temperature=0)
            assert first.tokens == again.tokens and len(first.tokens) > 0
            assert model.backend.name == "onnx"
        finally:
            model.close()


def test_keep_lm_head_leaves_the_untied_head_fp32(tmp_path: Path) -> None:
    from converters.to_onnx.quantize import quantize_onnx

    src = build_onnx(Checkpoint.open(tiny_checkpoint("llama")), tmp_path / "fp32")
    full = quantize_onnx(src, tmp_path / "q", "int4")
    kept = quantize_onnx(src, tmp_path / "k", "int4", keep_lm_head=True)
    assert node_ops(kept)["MatMulNBits"] == node_ops(full)["MatMulNBits"] - 1
    assert (kept / "model.onnx.data").stat().st_size > (full / "model.onnx.data").stat().st_size


def test_ctrl_c_mid_quantization_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    def interrupted(self: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(mnq.MatMulNBitsQuantizer, "process", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_checkpoint("llama"), tmp_path / "out", format="onnx", quant="int4")
    assert list(tmp_path.iterdir()) == []


def test_unknown_quant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="int8, int4"):
        convert(tiny_checkpoint("llama"), tmp_path / "out", format="onnx", quant="int3")
    assert list(tmp_path.iterdir()) == []


def test_smollm2_quality(tmp_path: Path) -> None:
    """SmolLM2-135M: int4 (block 32) and int8 within KL 0.5 of fp32 on the shipped text, int8 closer."""
    from converters.to_onnx.quality import measure_onnx_quality
    from converters.to_onnx.quantize import quantize_onnx

    src = build_onnx(Checkpoint.open(rebuilt_checkpoint("smollm2")), tmp_path / "fp32")
    metrics = {}
    for quant in ("int8", "int4"):
        folder = quantize_onnx(src, tmp_path / quant, quant)
        metrics[quant] = measure_onnx_quality(src, folder, n_threads=2)
        size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        print(f"\n{quant}: {metrics[quant]} size {size_mb:.1f} MB")
    assert metrics["int8"].mean_kl < metrics["int4"].mean_kl < 0.5
    assert np.isfinite(metrics["int4"].ppl_candidate)
