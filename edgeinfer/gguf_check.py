"""Cheap GGUF sanity checks before llama.cpp sees a file, and a diagnosis when it refuses one."""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CorruptModelError, EdgeInferError, ModelLoadError, ModelNotAvailableError

GGUF_MAGIC = b"GGUF"
_REFETCH = "re-download it (`edgeinfer pull NAME --force`) or convert it again"


def require_gguf_magic(path: Path) -> None:
    """Refuse a missing, empty or non-GGUF file with a message that says which."""
    if not path.is_file():
        raise ModelNotAvailableError(f"model file not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) < 8:
        raise CorruptModelError(f"{path.name} is empty or truncated ({len(head)} bytes); {_REFETCH}")
    if head[:4] != GGUF_MAGIC:
        raise CorruptModelError(
            f"{path.name} is not a GGUF file (magic {head[:4]!r}, expected {GGUF_MAGIC!r}); "
            "pass a .gguf file or an ONNX model folder"
        )


_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Little-endian reader over a file's bytes that raises EOFError past the end."""

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str):  # noqa: ANN201
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise EOFError(f"header ends early at byte {self.pos}")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> bytes:
        n = self.take("Q")
        if self.pos + n > len(self.data):
            raise EOFError(f"string runs past the end at byte {self.pos}")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def value(self, vtype: int):  # noqa: ANN201
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.take("I"), self.take("Q")
            if item_type in _SCALAR and item_type != _STRING:
                self.pos += count * struct.calcsize(_SCALAR[item_type])
                return None
            for _ in range(count):
                self.value(item_type)
            return None
        if vtype not in _SCALAR:
            raise ValueError(f"unknown metadata value type {vtype}")
        return self.take(_SCALAR[vtype])


def gguf_data_end(path: Path) -> int:
    """Bytes a GGUF file must have to hold every tensor its header lists."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _data_end(_Cursor(data))


def _data_end(cur: _Cursor) -> int:
    import gguf

    if cur.take("4s") != GGUF_MAGIC:
        raise ValueError("bad magic")
    cur.take("I")  # version
    n_tensors, n_kv = cur.take("Q"), cur.take("Q")
    alignment = 32
    for _ in range(n_kv):
        key = cur.string()
        value = cur.value(cur.take("I"))
        if key == b"general.alignment" and isinstance(value, int):
            alignment = value
    end = 0
    for _ in range(n_tensors):
        cur.string()
        dims = [cur.take("Q") for _ in range(cur.take("I"))]
        qtype, offset = cur.take("I"), cur.take("Q")
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
        n = 1
        for d in dims:
            n *= d
        end = max(end, offset + n // block * type_size)
    data_start = -(-cur.pos // alignment) * alignment
    return data_start + end


def diagnose_gguf(path: Path, llama_errors: list[str]) -> EdgeInferError:
    """Explain why llama.cpp refused ``path``: truncated/inconsistent file, or something else."""
    detail = " | ".join(llama_errors[-3:])
    size = path.stat().st_size
    try:
        need = gguf_data_end(path)
        if need > size:
            return CorruptModelError(
                f"{path.name} is truncated: its header lists {need} bytes of data but the file has "
                f"{size}; {_REFETCH}"
            )
    except EOFError as exc:
        return CorruptModelError(f"{path.name} is truncated inside its header ({exc}); {_REFETCH}")
    except (ValueError, KeyError, struct.error) as exc:
        return CorruptModelError(f"{path.name} has a damaged GGUF header ({exc}); {_REFETCH}")
    if "unknown model architecture" in detail:
        return ModelLoadError(
            f"this llama.cpp build does not know the architecture of {path.name}: upgrade "
            f"llama-cpp-python. llama.cpp said: {detail}"
        )
    if any(w in detail for w in ("corrupted", "incomplete", "out of bounds", "not within")):
        return CorruptModelError(f"{path.name} is corrupted or incomplete; {_REFETCH}. ({detail})")
    return ModelLoadError(f"llama.cpp could not load {path.name}: {detail or 'no reason given'}")


@dataclass(frozen=True)
class GGUFHeader:
    """Scalar metadata (strings decoded; arrays left out) and (name, n_elements, n_bytes) per tensor."""

    metadata: dict[str, Any]
    tensors: tuple[tuple[str, int, int], ...]

    @property
    def n_params(self) -> int:
        return sum(n for _, n, _ in self.tensors)

    @property
    def weight_bytes(self) -> int:
        return sum(b for _, _, b in self.tensors)


def read_gguf_header(path: Path) -> GGUFHeader:
    """The header of the GGUF at ``path`` (gguf.GGUFReader parses the whole vocabulary: seconds);
    CorruptModelError when it is not a readable GGUF."""
    import gguf

    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            cur = _Cursor(data)
            if cur.take("4s") != GGUF_MAGIC:
                raise ValueError("no GGUF magic")
            cur.take("I")  # version
            n_tensors, n_kv = cur.take("Q"), cur.take("Q")
            metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = cur.string().decode("utf-8", errors="replace")
                value = cur.value(cur.take("I"))
                if isinstance(value, bytes):
                    value = value.decode("utf-8", errors="replace")
                if value is not None:
                    metadata[key] = value
            tensors = []
            for _ in range(n_tensors):
                name = cur.string().decode("utf-8", errors="replace")
                dims = [cur.take("Q") for _ in range(cur.take("I"))]
                qtype = gguf.GGMLQuantizationType(cur.take("I"))
                cur.take("Q")  # offset
                block, type_size = gguf.GGML_QUANT_SIZES[qtype]
                n = 1
                for d in dims:
                    n *= d
                tensors.append((name, n, n // block * type_size))
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise CorruptModelError(f"{path} is not a readable GGUF file ({exc}); pass a complete .gguf") from exc
    return GGUFHeader(metadata, tuple(tensors))


def file_type_name(value: int) -> str:
    """llama.cpp's LLAMA_FTYPE value as a name: 1 -> 'F16', 15 -> 'Q4_K_M'."""
    import gguf

    try:
        return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return str(value)
