"""ONNX int8 / int4 (MatMulNBits): folders that onnxruntime and the engine load, a quality report where int8
beats int4, the bits each weight role gets, nothing left behind on Ctrl-C, refusals; SmolLM2's quality."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from edgeinfer_converters import convert  # noqa: E402
from edgeinfer_converters.checkpoint import Checkpoint  # noqa: E402
from edgeinfer_converters.to_onnx import build_onnx  # noqa: E402
from hf_fixtures import empty_past, rebuilt_checkpoint, tiny_checkpoint  # noqa: E402

import edgeinfer as ei  # noqa: E402
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
    quants = ("int8", "int4", "int4-fast")
    out = {q: convert(src, root / q, format="onnx", quant=q, n_threads=2).artifact for q in quants}
    assert sorted(p.name for p in root.iterdir()) == sorted(quants)  # the fp32 scratch folder is gone
    return out


LABELS = {"int8": "int8-b32-sym", "int4": "int4-b32-asym-gptq", "int4-fast": "int4-fast-b32-asym-awq-gptq"}


def weight_bits(folder: Path) -> dict[str, int]:
    """{weight initializer: bits} of every MatMulNBits / GatherBlockQuantized node."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return {n.input[1] if n.op_type == "MatMulNBits" else n.input[0]: next(a.i for a in n.attribute
                                                                         if a.name == "bits")
            for n in model.graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")}


def test_folders_load_and_report_quality(converted: dict[str, Path]) -> None:
    import onnxruntime as ort

    quality = {}
    for quant, folder in converted.items():
        ops = node_ops(folder)
        n_layers = json.loads((folder / "edgeinfer.json").read_text())["n_layers"]
        # every weight matmul quantized: QKV, output, gate+up, down per layer, and the head
        assert ops["MatMulNBits"] == 4 * n_layers + 1 and "MatMul" not in ops and "Gemm" not in ops
        assert ops["GatherBlockQuantized"] == 1  # the embedding is read from an 8-bit table
        assert json.loads((folder / "edgeinfer.json").read_text())["quantization"] == LABELS[quant]
        ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        report = json.loads((folder / "report.json").read_text())
        assert report["quant"] == quant
        quality[quant] = report["quality"]
        assert 0 < quality[quant]["mean_kl"] < 1 and math.isfinite(quality[quant]["ppl_candidate"])
    assert quality["int8"]["mean_kl"] < quality["int4"]["mean_kl"]
    assert quality["int8"]["top1_agreement"] > 0.8 and quality["int4"]["top1_agreement"] > 0.3


def test_engine_generates_greedily(converted: dict[str, Path]) -> None:
    for folder in converted.values():
        model = ei.load(folder, n_ctx=128, n_threads=2, kv=ei.KVOptions(settle=False))
        try:
            first = model.generate("Once upon a time", max_tokens=6, temperature=0)
            again = model.generate("Once upon a time", max_tokens=6, temperature=0)
            assert first.tokens == again.tokens and len(first.tokens) > 0
            assert model.backend.name == "onnx"
        finally:
            model.close()


def test_int4_keeps_head_embedding_qkv_and_down_at_8_bits(converted: dict[str, Path]) -> None:
    bits = weight_bits(converted["int4"])
    eight = {name for name, b in bits.items() if b == 8}
    assert all(b in (4, 8) for b in bits.values()) and {b for b in bits.values()} == {4, 8}
    assert all(any(role in name for role in ("qkv_proj", "down_proj", "lm_head", "embed_tokens"))
               for name in eight)
    assert all(b == 8 for b in weight_bits(converted["int8"]).values())
    fast = weight_bits(converted["int4-fast"])  # every matmul, the head too (untied from the table)
    assert fast.pop("model.embed_tokens.weight.q8") == 8 and set(fast.values()) == {4}
    assert "lm_head.weight.q4" in fast


def test_awq_folding_keeps_the_fp32_function(tmp_path: Path) -> None:
    """AWQ's channel scales go into the weights and 1/s into norms and up rows: the fp32 graph with those
    changes computes the same logits (only quantization then differs)."""
    import onnx
    import onnxruntime as ort
    from edgeinfer_converters.to_onnx.quantize import RECIPES, _Rewriter
    from onnx import numpy_helper

    for arch in ("llama", "qwen3", "gemma3"):
        src = build_onnx(Checkpoint.open(tiny_checkpoint(arch)), tmp_path / arch)
        model = onnx.load(str(src / "model.onnx"), load_external_data=False)
        with open(tmp_path / f"{arch}.scratch", "wb") as data:
            rewriter = _Rewriter(model, src, data, RECIPES["int4-fast"], 32, 4)
            rewriter.untie_head()
            rewriter.calibrate(2)
            rewriter.awq()
        changed = dict(rewriter.overrides)
        assert any(name.endswith("layernorm.weight") for name in changed)  # gammas took 1/s
        full = onnx.load(str(src / "model.onnx"))
        for tensor in full.graph.initializer:
            if tensor.name in changed:
                tensor.CopyFrom(numpy_helper.from_array(changed[tensor.name], tensor.name))
        if not any(t.name == "lm_head.weight" for t in full.graph.initializer):  # tied: untie here too
            del full.graph.node[:]
            full.graph.node.extend(model.graph.node)
            head = numpy_helper.from_array(changed["lm_head.weight"], "lm_head.weight")
            full.graph.initializer.append(head)
        folded = tmp_path / f"{arch}-folded.onnx"
        onnx.save_model(full, str(folded))
        ids = np.array([[1, 5, 9, 14, 20, 33, 41, 7]], np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(8)[None],
                **empty_past(json.loads((src / "edgeinfer.json").read_text()))}
        runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
                for p in (src / "model.onnx", folded)]
        np.testing.assert_allclose(runs[1], runs[0], rtol=1e-3, atol=1e-3)


def test_ctrl_c_mid_quantization_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeinfer_converters.to_onnx import quantize

    def interrupted(self: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize._Rewriter, "rewrite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_checkpoint("llama"), tmp_path / "out", format="onnx", quant="int4")
    assert list(tmp_path.iterdir()) == []


def test_unknown_quant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="int8, int4"):
        convert(tiny_checkpoint("llama"), tmp_path / "out", format="onnx", quant="int3")
    assert list(tmp_path.iterdir()) == []


def test_smollm2_quality(tmp_path: Path) -> None:
    """SmolLM2-135M on the shipped text vs fp32: int8 KL < 0.01; int4 (GPTQ, QKV/down/head at 8 bits)
    within llama.cpp Q4_K_M's KL on the same model and text (0.051), and smaller than int8."""
    from edgeinfer_converters.to_onnx.quality import measure_onnx_quality
    from edgeinfer_converters.to_onnx.quantize import quantize_onnx

    src = build_onnx(Checkpoint.open(rebuilt_checkpoint("smollm2")), tmp_path / "fp32")
    metrics = {}
    for quant in ("int8", "int4"):
        folder = quantize_onnx(src, tmp_path / quant, quant)
        metrics[quant] = measure_onnx_quality(src, folder, n_threads=2)
        size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        print(f"\n{quant}: {metrics[quant]} size {size_mb:.1f} MB")
    assert metrics["int8"].mean_kl < 0.01 and metrics["int4"].mean_kl < 0.05
    assert np.isfinite(metrics["int4"].ppl_candidate)
    sizes = {q: (tmp_path / q / "model.onnx.data").stat().st_size for q in metrics}
    assert sizes["int4"] < sizes["int8"]


def test_fp16_halves_the_file_and_keeps_the_logits(tmp_path: Path) -> None:
    result = convert(tiny_checkpoint("qwen2"), tmp_path / "f16", format="onnx", quant="fp16", n_threads=2)
    fp32 = build_onnx(Checkpoint.open(tiny_checkpoint("qwen2")), tmp_path / "f32")
    ratio = (result.artifact / "model.onnx.data").stat().st_size / (fp32 / "model.onnx.data").stat().st_size
    assert 0.45 < ratio < 0.56
    assert result.quant == "fp16" and result.quality["mean_kl"] < 1e-4
    assert json.loads((result.artifact / "edgeinfer.json").read_text())["quantization"] == "fp16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f16", "f32"]


def test_auto_picks_the_smallest_type_within_max_kl(tmp_path: Path) -> None:
    src = tiny_checkpoint("llama")
    loose = convert(src, tmp_path / "loose", format="onnx", quant="auto", max_kl=10.0, n_threads=2)
    assert loose.quant == "int4-fast" and json.loads(loose.report.read_text())["requested_quant"] == "auto"
    strict = convert(src, tmp_path / "strict", format="onnx", quant="auto", max_kl=1e-9, n_threads=2)
    assert strict.quant == "fp32" and strict.quality is None  # nothing close enough: the lossless one
    assert json.loads((strict.artifact / "edgeinfer.json").read_text())["quantization"] == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loose", "strict"]  # no scratch folders left
    with pytest.raises(ConversionError, match="max-kl"):
        convert(src, tmp_path / "bad", format="onnx", quant="auto", max_kl=-1)
