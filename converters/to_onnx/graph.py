"""A small ONNX graph builder: nodes by name, small constants inline, weights streamed to one
external-data file (so a multi-GB model is never held in memory or in the protobuf)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
ALIGN = 4096  # offsets page-aligned, so runtimes can mmap each weight


class Graph:
    """Collects nodes, initializers and I/O; ``op`` returns output names so code reads like math."""

    def __init__(self, data: BinaryIO, data_name: str) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._data = data
        self._data_name = data_name
        self._count = 0
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, n_out: int = 1, name: str | None = None,
           domain: str | None = None, **attrs: Any) -> Any:
        """Add one node; returns its output name (or a list of names when ``n_out`` > 1)."""
        base = name or self._name(op_type)
        outputs = [base] if n_out == 1 else [f"{base}:{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=f"{base}/node",
                                           domain=domain, **attrs))
        return outputs[0] if n_out == 1 else outputs

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
        """A float32 weight written now to the external-data file (the caller then drops the array)."""
        array = np.ascontiguousarray(array, dtype=np.float32)
        offset = self._data.tell()
        pad = -offset % ALIGN
        if pad:
            self._data.write(b"\0" * pad)
            offset += pad
        self._data.write(array.tobytes())
        tensor = TensorProto()
        tensor.name = name
        tensor.data_type = TensorProto.FLOAT
        tensor.dims.extend(array.shape)
        for key, value in (("location", self._data_name), ("offset", offset), ("length", array.nbytes)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        tensor.data_location = TensorProto.EXTERNAL
        self.initializers.append(tensor)
        return name

    def input(self, name: str, elem: int, shape: list[Any]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, value: str, name: str, elem: int, shape: list[Any]) -> None:
        """Expose ``value`` as graph output ``name`` (via Identity when the names differ)."""
        if value != name:
            self.nodes.append(helper.make_node("Identity", [value], [name], name=f"{name}/identity"))
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def save(self, path: Path, graph_name: str) -> None:
        """Write the model protobuf (weights stay in the external-data file)."""
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="edgeinfer")
        model.ir_version = 8
        path.write_bytes(model.SerializeToString())
