"""ONNX folder checks: external data must stay inside the folder and fit its file; decoder I/O names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import edgeinfer as ei  # noqa: E402
from edgeinfer.onnx_check import load_checked  # noqa: E402


def external_model(folder: Path, location: str, data: bytes | None = None, length: int = 64) -> Path:
    """model.onnx with one 4x4 float32 weight stored externally at ``location`` (Y = X @ W)."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])], [weight])
    (folder / "model.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    if data is not None and not os.path.isabs(location) and ".." not in location:
        (folder / location).write_bytes(data)
    return folder


def test_inside_data_is_accepted(tmp_path: Path) -> None:
    folder = external_model(tmp_path / "m", "model.onnx.data", np.eye(4, dtype=np.float32).tobytes())
    assert load_checked(folder).graph.node[0].op_type == "MatMul"


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_data_outside_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    (tmp_path / "secret.bin").write_bytes(b"x" * 64)
    folder = external_model(tmp_path / "m", location)
    with pytest.raises(ei.CorruptModelError, match="outside the model folder"):
        load_checked(folder)


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"x" * 64)
    folder = external_model(tmp_path / "m", "model.onnx.data")
    (folder / "model.onnx.data").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ei.CorruptModelError, match="link"):
        load_checked(folder)


def test_truncated_data_is_refused(tmp_path: Path) -> None:
    folder = external_model(tmp_path / "m", "model.onnx.data", b"\0" * 40)
    with pytest.raises(ei.CorruptModelError, match="truncated"):
        load_checked(folder)


def test_missing_data_file_and_garbage_model(tmp_path: Path) -> None:
    with pytest.raises(ei.CorruptModelError, match="missing"):
        load_checked(external_model(tmp_path / "m", "model.onnx.data"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.onnx").write_bytes(b"\x00\xffnot a protobuf" * 10)
    with pytest.raises(ei.CorruptModelError, match="not a valid ONNX"):
        load_checked(tmp_path / "bad")


def test_decoder_io_names_are_checked(tmp_path: Path) -> None:
    def decoder(inputs: list[str], outputs: list[str]) -> Path:
        folder = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        nodes = [helper.make_node("Identity", [inputs[0]], [name]) for name in outputs]
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs])
        (folder / "model.onnx").write_bytes(helper.make_model(graph).SerializeToString())
        return folder

    good_in = ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key",
               "past_key_values.0.value"]
    good_out = ["logits", "present.0.key", "present.0.value"]
    load_checked(decoder(good_in, good_out), n_layers=1)
    with pytest.raises(ei.ModelLoadError, match=r"missing inputs \['position_ids'\]"):
        load_checked(decoder([n for n in good_in if n != "position_ids"], good_out), n_layers=1)
    with pytest.raises(ei.ModelLoadError, match=r"unexpected outputs \['hidden'\]"):
        load_checked(decoder(good_in, [*good_out, "hidden"]), n_layers=1)
    with pytest.raises(ei.ModelLoadError, match="present.1.key"):
        load_checked(decoder(good_in, good_out), n_layers=2)
