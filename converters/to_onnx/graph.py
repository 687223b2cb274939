"""A small ONNX graph builder: nodes by name, small constants inline, weights streamed to one
external-data file (so a multi-GB model is never held in memory or in the protobuf)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MS_DOMAIN = "com.microsoft"
ALIGN = 4096  # offsets page-aligned, so runtimes can mmap each weight


class Graph:
    """Collects nodes, initializers and I/O; ``op`` returns output names so code reads like math."""

    def __init__(self, data: BinaryIO, data_name: str, *, fp16_weights: bool = False) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._data = data
        self._data_name = data_name
        self.fp16_weights = fp16_weights
        self._count = 0
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, n_out: int = 1, name: str | None = None,
           domain: str | None = None, skip: tuple[int, ...] = (), outputs: list[str] | None = None,
           **attrs: Any) -> Any:
        """Add one node; returns its output name (or a list of names when ``n_out`` > 1).

        ``outputs`` names them explicitly (e.g. graph outputs); those listed in ``skip`` are left unnamed
        (optional outputs the runtime then need not compute).
        """
        base = name or self._name(op_type)
        if outputs is None:
            outputs = [base] if n_out == 1 else [f"{base}:{k}" for k in range(n_out)]
        wired = ["" if k in skip else out for k, out in enumerate(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), wired, name=f"{base}/node",
                                           domain=domain, **attrs))
        return outputs[0] if n_out == 1 else outputs

    def ms(self, op_type: str, *inputs: str, **kwargs: Any) -> Any:
        """An onnxruntime contrib op (``com.microsoft`` domain)."""
        return self.op(op_type, *inputs, domain=MS_DOMAIN, **kwargs)

    def const(self, value: Any, dtype: type = np.int64) -> str:
        """A small constant stored inline (shapes, scalars, axes); identical ones are shared."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.tobytes(), array.shape)
        if key not in self._consts:
            name = self._name("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def weight(self, name: str, array: np.ndarray) -> str:
        """A float32 weight written now to the external-data file (the caller then drops the array).

        With ``fp16_weights`` it is stored as float16 and cast back by a node onnxruntime folds at load:
        half the file, the same fp32 arithmetic (for GPUs an fp16-compute graph would be the next step).
        """
        if not self.fp16_weights:
            self.initializers.append(external_tensor(self._data, self._data_name, name,
                                                     np.asarray(array, dtype=np.float32)))
            return name
        stored = f"{name}.fp16"
        self.initializers.append(external_tensor(self._data, self._data_name, stored,
                                                 np.asarray(array, dtype=np.float16)))
        self.nodes.append(helper.make_node("Cast", [stored], [name], name=f"{name}/cast",
                                           to=TensorProto.FLOAT))
        return name

    def input(self, name: str, elem: int, shape: list[Any], default: Any = None) -> str:
        """A graph input; with ``default`` it is optional (an initializer of that name the caller may
        override)."""
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        if default is not None:
            self.initializers.append(numpy_helper.from_array(np.asarray(default), name))
        return name

    def output(self, value: str, name: str, elem: int, shape: list[Any]) -> None:
        """Expose ``value`` as graph output ``name`` (via Identity when the names differ; name the node's
        output itself where the runtime must write straight into a bound buffer)."""
        if value != name:
            self.nodes.append(helper.make_node("Identity", [value], [name], name=f"{name}/identity"))
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def save(self, path: Path, graph_name: str) -> None:
        """Write the model protobuf (weights stay in the external-data file)."""
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                                  helper.make_opsetid(MS_DOMAIN, 1)],
                                  producer_name="edgeinfer")
        model.ir_version = 8
        path.write_bytes(model.SerializeToString())


def external_tensor(data: BinaryIO, data_name: str, name: str, array: np.ndarray) -> TensorProto:
    """Append ``array`` (any dtype) to the open external-data file at a page-aligned offset; returns the
    initializer that points at it."""
    array = np.ascontiguousarray(array)
    offset = data.tell()
    pad = -offset % ALIGN
    if pad:
        data.write(b"\0" * pad)
        offset += pad
    data.write(array.tobytes())
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    for key, value in (("location", data_name), ("offset", offset), ("length", array.nbytes)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    tensor.data_location = TensorProto.EXTERNAL
    return tensor


def read_external(folder: Path, tensor: TensorProto) -> np.ndarray:
    """An initializer's array: inline, or read from its external-data file in ``folder`` (a copy)."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = {entry.key: entry.value for entry in tensor.external_data}
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    with open(folder / info["location"], "rb") as handle:
        handle.seek(int(info.get("offset", 0)))
        raw = handle.read(int(info["length"]))
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(tensor.dims)).copy()
