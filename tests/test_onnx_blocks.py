"""Block quantization for MatMulNBits: what onnxruntime computes from our packed blocks equals the
dequantized weight's product, for 4 and 8 bits, symmetric and not, K a whole number of blocks or not;
GPTQ's output error is below round-to-nearest's when inputs are correlated."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from edgeinfer_converters.to_onnx.blocks import Blocks, quantize_blocks  # noqa: E402
from edgeinfer_converters.to_onnx.gptq import gptq_blocks  # noqa: E402


def dequantize(blocks: Blocks, k: int) -> np.ndarray:
    """The [N, K] weight the blocks stand for, unpacked independently of the packing code."""
    data = blocks.data
    if blocks.bits == 4:
        codes = np.stack([data & 0x0F, data >> 4], axis=-1).reshape(data.shape[0], data.shape[1], -1)
    else:
        codes = data
    n, n_blocks = blocks.scales.shape
    if blocks.zero_points is None:
        zeros = np.full((n, n_blocks), 2 ** (blocks.bits - 1))
    elif blocks.bits == 4:
        packed = blocks.zero_points
        zeros = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)[:, :n_blocks]
    else:
        zeros = blocks.zero_points
    weight = (codes.astype(np.float32) - zeros[..., None]) * blocks.scales[..., None]
    return weight.reshape(n, -1)[:, :k]


def run_matmulnbits(blocks: Blocks, x: np.ndarray, n: int, k: int) -> np.ndarray:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(blocks.data, "b"), numpy_helper.from_array(blocks.scales, "s")]
    inputs = ["x", "b", "s"]
    if blocks.zero_points is not None:
        inits.append(numpy_helper.from_array(blocks.zero_points, "z"))
        inputs.append("z")
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=blocks.bits,
                            block_size=blocks.block, accuracy_level=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("k", [96, 80])
def test_onnxruntime_reads_our_blocks(bits: int, symmetric: bool, k: int) -> None:
    rng = np.random.default_rng(bits + k)
    n = 48
    weight = rng.standard_normal((n, k)).astype(np.float32) * rng.uniform(0.1, 2, (n, 1)).astype(np.float32)
    blocks = quantize_blocks(weight, bits, 32, symmetric)
    approx = dequantize(blocks, k)
    rel = np.abs(approx - weight).max() / np.abs(weight).max()
    assert rel < (0.1 if bits == 4 else 0.006)  # a real quantization, not a copy, and not garbage
    assert rel > 0
    x = rng.standard_normal((5, k)).astype(np.float32)
    np.testing.assert_allclose(run_matmulnbits(blocks, x, n, k), x @ approx.T, rtol=1e-4, atol=1e-4)


def test_gptq_beats_round_to_nearest_on_the_layer_output() -> None:
    rng = np.random.default_rng(0)
    n, k, tokens = 64, 128, 1024
    mixing = rng.standard_normal((k, k)).astype(np.float32) * 0.3 + np.eye(k, dtype=np.float32)
    x = rng.standard_normal((tokens, k)).astype(np.float32) @ mixing  # correlated input channels
    weight = rng.standard_normal((n, k)).astype(np.float32)
    hessian = x.T @ x / tokens

    def output_error(blocks: Blocks) -> float:
        return float(np.linalg.norm(x @ (dequantize(blocks, k) - weight).T))

    rtn = output_error(quantize_blocks(weight, 4, 32, False))
    gptq = output_error(gptq_blocks(weight, hessian, 4, 32, False))
    assert gptq < 0.8 * rtn


def test_awq_scales_cut_the_output_error_when_some_channels_are_loud() -> None:
    from edgeinfer_converters.to_onnx.awq import channel_scales

    rng = np.random.default_rng(1)
    n, k, tokens = 64, 128, 2048
    loudness = np.ones(k, np.float32)
    loudness[rng.choice(k, 6, replace=False)] = 25.0  # a few outlier channels, as in real activations
    x = rng.standard_normal((tokens, k)).astype(np.float32) * loudness
    weight = rng.standard_normal((n, k)).astype(np.float32)
    hessian = x.T @ x / tokens
    scales = channel_scales(weight, hessian, 4, 32)
    plain = dequantize(quantize_blocks(weight, 4, 32, False), k)
    scaled = dequantize(quantize_blocks(weight * scales, 4, 32, False), k) / scales
    assert np.linalg.norm(x @ (scaled - weight).T) < 0.8 * np.linalg.norm(x @ (plain - weight).T)
