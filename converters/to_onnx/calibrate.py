"""Input statistics for GPTQ: H = X^T X / n of each weight MatMul's input, over a shipped calibration text
(chat turns, code, letters, facts; distinct from the quality text so quality is not measured on it),
run through the fp32 ONNX model by onnxruntime with those inputs exposed as extra graph outputs."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from .export import MODEL_FILE
from .quality import tokenize_text

CALIBRATION_RESOURCE = "data/calibration_text.txt"
WINDOW = 512  # tokens per run, each from an empty cache


def calibration_text() -> str:
    """The shipped calibration text."""
    return resources.files("edgeinfer_converters").joinpath(CALIBRATION_RESOURCE).read_text(encoding="utf-8")


def input_hessians(folder: Path, source: dict[str, str], *, text: str | None = None,
                   n_threads: int | None = None) -> dict[str, np.ndarray]:
    """{weight: [K, K] float32 X^T X / n} where ``source`` maps each weight to the graph value its matmul
    reads, run through the fp32 ``folder`` (weights sharing an input share the array)."""
    import onnxruntime as ort

    folder = Path(folder)
    model = onnx.load(str(folder / MODEL_FILE), load_external_data=False)
    for name in sorted(set(source.values())):
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    probe = folder / "calibrate.onnx"  # beside the weights, so external data resolves; removed at once
    probe.write_bytes(model.SerializeToString())
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if n_threads:
            options.intra_op_num_threads = n_threads
        session = ort.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"])
    finally:
        probe.unlink(missing_ok=True)
    past = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    names = sorted(set(source.values()))
    sums: dict[str, np.ndarray] = {}
    tokens = tokenize_text(folder, calibration_text() if text is None else text)
    for start in range(0, len(tokens), WINDOW):
        ids = np.asarray([tokens[start:start + WINDOW]], np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None]}
        for item in past:
            feed[item.name] = np.zeros((1, item.shape[1], 0, item.shape[3]), np.float32)
        for name, x in zip(names, session.run(names, feed), strict=True):
            x = x.reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0) + x.T @ x
    return {weight: sums[act] / len(tokens) for weight, act in source.items()}
