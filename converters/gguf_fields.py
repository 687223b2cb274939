"""Read a GGUF's metadata and tensors fast, for rewriting it with ``gguf.GGUFWriter``.

``gguf.GGUFReader`` builds a numpy view per array item: on Gemma 3's 262,144-token vocabulary that takes
~30 s, which was nearly all of the time a vocabulary shortlist took to build. Here a string array is
read in one pass over the bytes and a numeric array is one ``np.frombuffer``; tensors are views into a
memory map, shaped as GGUFReader shapes them (quantized rows as bytes), so ``GGUFWriter`` takes them
as it takes GGUFReader's. Little-endian files only (every file llama.cpp writes on the machines we
support); anything malformed is a ConversionError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import ConversionError
from edgeinfer.gguf_check import ARRAY_TYPE, GGUF_MAGIC, SCALAR_FORMATS, STRING_TYPE, ByteCursor

MAX_ITEMS = 1 << 26  # more array items than any vocabulary has: the file is damaged
_BOOL = 7
# tensor types GGUFReader reads as typed arrays; every other (quantized) type is read as bytes
_TYPED = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8, "I16": np.int16,
          "I32": np.int32, "I64": np.int64}


@dataclass(frozen=True)
class Field:
    """One metadata key: its value (a list for an array) and gguf value type (and item type)."""

    name: str
    value: Any
    kind: int
    sub_kind: int | None = None


@dataclass(frozen=True)
class Tensor:
    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    data: np.ndarray  # shaped as gguf.GGUFReader shapes it


class _Fields(ByteCursor):
    """ByteCursor reading array items too (it skips them: the checks need only their length)."""

    def text(self) -> str:
        return bytes(self.string()).decode("utf-8", errors="replace")

    def field(self, kind: int) -> tuple[Any, int | None]:
        """A value and, for an array, its item type."""
        if kind == STRING_TYPE:
            return self.text(), None
        if kind != ARRAY_TYPE:
            return self.value(kind), None  # a scalar (ValueError for an unknown type)
        sub, count = self.take("I"), self.take("Q")
        if count > MAX_ITEMS:
            raise ConversionError(f"a GGUF array claims {count} items")
        if sub == STRING_TYPE:
            return [self.text() for _ in range(count)], sub
        if sub not in SCALAR_FORMATS:
            raise ConversionError(f"unsupported GGUF array item type {sub}")
        dtype = np.dtype("<" + SCALAR_FORMATS[sub]) if sub != _BOOL else np.dtype(np.bool_)
        end = self.pos + count * dtype.itemsize
        if end > len(self.data):
            raise EOFError(f"array runs past the end at byte {self.pos}")
        items = np.frombuffer(self.data[self.pos:end], dtype=dtype).tolist()
        self.pos = end
        return items, sub


def read_gguf(path: str | Path) -> tuple[list[Field], list[Tensor]]:
    """The metadata fields (in file order) and the tensors of the GGUF at ``path``."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        return _read(path, data, _Fields(memoryview(data)))
    except EOFError as exc:
        raise ConversionError(f"{path}: {exc} (a truncated file?)") from exc
    except ValueError as exc:
        raise ConversionError(f"{path} is not a readable GGUF file: {exc}") from exc


def _read(path: str | Path, data: np.ndarray, cur: _Fields) -> tuple[list[Field], list[Tensor]]:
    import gguf

    if bytes(cur.data[:4]) != GGUF_MAGIC:
        raise ConversionError(f"{path} is not a GGUF file")
    cur.pos = 4
    version = cur.take("I")
    if not 2 <= version <= 3:
        raise ConversionError(f"{path}: GGUF version {version} (a big-endian file?) is not supported")
    n_tensors, n_kv = cur.take("Q"), cur.take("Q")
    fields = []
    for _ in range(n_kv):
        name = cur.text()
        kind = cur.take("I")
        value, sub = cur.field(kind)
        fields.append(Field(name, value, kind, sub))
    alignment = next((f.value for f in fields if f.name == "general.alignment"), gguf.GGUF_DEFAULT_ALIGNMENT)
    infos = []
    for _ in range(n_tensors):
        name = cur.text()
        dims = [cur.take("Q") for _ in range(cur.take("I"))]
        infos.append((name, dims, gguf.GGMLQuantizationType(cur.take("I")), cur.take("Q")))
    start = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, dims, qtype, offset in infos:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n = int(np.prod(dims))
        shape = tuple(reversed(dims))
        dtype = _TYPED.get(qtype.name)
        count = n if dtype is not None else n * type_size // block
        if dtype is None:
            dtype, shape = np.uint8, gguf.quant_shape_to_byte_shape(shape, qtype)
        begin = start + offset
        end = begin + count * np.dtype(dtype).itemsize
        if end > len(data):
            raise ConversionError(f"{path}: tensor {name} runs past the end of the file (truncated?)")
        tensors.append(Tensor(name, qtype, data[begin:end].view(dtype).reshape(shape)))
    return fields, tensors
