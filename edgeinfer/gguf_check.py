"""Cheap GGUF sanity checks before llama.cpp sees a file, and a diagnosis when it refuses one."""

from __future__ import annotations

import math
import mmap
import re
import struct
from dataclasses import dataclass, field
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


# GGUF metadata value types: the struct format of each scalar, and the string and array type ids
SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING_TYPE, ARRAY_TYPE = 8, 9
_U64 = struct.Struct("<Q")


class ByteCursor:
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
        """A scalar or string; for an array, an ``ArrayInfo`` (its items are skipped, not kept)."""
        if vtype == STRING_TYPE:
            return self.string()
        if vtype == ARRAY_TYPE:
            item_type, count = self.take("I"), self.take("Q")
            if item_type == ARRAY_TYPE:  # llama.cpp reads no nested arrays either; recursion is unbounded
                raise ValueError("nested metadata arrays are not supported")
            if item_type in SCALAR_FORMATS:
                end = self.pos + count * struct.calcsize(SCALAR_FORMATS[item_type])
                if end > len(self.data):
                    raise EOFError(f"array runs past the end at byte {self.pos}")
                self.pos = end
            elif item_type == STRING_TYPE:  # a vocabulary: 10^5 strings, skipped in a tight loop
                pos, size, unpack = self.pos, len(self.data), _U64.unpack_from
                for _ in range(count):
                    if pos + 8 > size:
                        raise EOFError(f"array runs past the end at byte {pos}")
                    pos += 8 + unpack(self.data, pos)[0]
                if pos > size:
                    raise EOFError(f"array runs past the end at byte {pos}")
                self.pos = pos
            else:
                raise ValueError(f"unknown metadata array type {item_type}")
            return ArrayInfo(item_type, count)
        if vtype not in SCALAR_FORMATS:
            raise ValueError(f"unknown metadata value type {vtype}")
        return self.take(SCALAR_FORMATS[vtype])


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array, as far as the checks need it: its item type and length."""

    item_type: int
    count: int


def _alignment(value: object) -> int:
    if not isinstance(value, int) or value <= 0 or value & (value - 1) or value > 1 << 20:
        raise ValueError(f"general.alignment {value!r} is not a power of two")
    return value


def gguf_data_end(path: Path) -> int:
    """Bytes a GGUF file must have to hold every tensor its header lists."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _data_end(ByteCursor(data))


def _data_end(cur: ByteCursor) -> int:
    import gguf

    if cur.take("4s") != GGUF_MAGIC:
        raise ValueError("bad magic")
    cur.take("I")  # version
    n_tensors, n_kv = cur.take("Q"), cur.take("Q")
    alignment = 32
    for _ in range(n_kv):
        key = cur.string()
        value = cur.value(cur.take("I"))
        if key == b"general.alignment":
            alignment = _alignment(value)
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
    arrays: dict[str, ArrayInfo] = field(default_factory=dict)  # metadata arrays: item type and length
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # tensor name -> ggml dims (ne)
    types: dict[str, str] = field(default_factory=dict)  # tensor name -> ggml type ("Q4_K", "F32", ...)

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
            cur = ByteCursor(data)
            if cur.take("4s") != GGUF_MAGIC:
                raise ValueError("no GGUF magic")
            cur.take("I")  # version
            n_tensors, n_kv = cur.take("Q"), cur.take("Q")
            if n_kv > MAX_KV or n_tensors > MAX_TENSORS:
                raise ValueError(f"{n_kv} metadata keys and {n_tensors} tensors is more than any model has")
            metadata: dict[str, Any] = {}
            arrays: dict[str, ArrayInfo] = {}
            for _ in range(n_kv):
                key = cur.string().decode("utf-8", errors="replace")
                value = cur.value(cur.take("I"))
                if isinstance(value, bytes):
                    value = value.decode("utf-8", errors="replace")
                if isinstance(value, ArrayInfo):
                    arrays[key] = value
                else:
                    metadata[key] = value
            if "general.alignment" in metadata:
                _alignment(metadata["general.alignment"])
            tensors, shapes, types = [], {}, {}
            for _ in range(n_tensors):
                name = cur.string().decode("utf-8", errors="replace")
                n_dims = cur.take("I")
                if not 1 <= n_dims <= 4:  # GGML_MAX_DIMS
                    raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
                dims = [cur.take("Q") for _ in range(n_dims)]
                qtype = gguf.GGMLQuantizationType(cur.take("I"))
                cur.take("Q")  # offset
                block, type_size = gguf.GGML_QUANT_SIZES[qtype]
                n = math.prod(dims)
                if not all(dims) or n > 1 << 40 or dims[0] % block:
                    raise ValueError(f"tensor {name!r} has impossible dimensions {dims}")
                tensors.append((name, n, n // block * type_size))
                shapes[name] = tuple(dims)
                types[name] = qtype.name
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise CorruptModelError(f"{path} is not a readable GGUF file ({exc}); pass a complete .gguf") from exc
    return GGUFHeader(metadata, tuple(tensors), arrays, shapes, types)


# llama.cpp aborts the process (GGML_ASSERT) on some metadata instead of refusing the file; these
# are checked here first. LLAMA_MAX_LAYERS in llama.cpp is 512.
MAX_LAYERS = 512
MAX_KV, MAX_TENSORS = 1 << 16, 1 << 20
_LAYER = re.compile(r"blk\.(\d+)\.")


CHECKS_VERSION = 1  # bump when the checks change: files stamped by older checks are checked again


def ensure_gguf_checked(path: Path) -> None:
    """``check_gguf_metadata``, skipped for a file that passed before and is unchanged since (the
    cache's fingerprint stamps, as for sha256 digests), so a model's second load costs no more than a
    load without the check."""
    from .hashing import cached_digest

    def passed(p: Path) -> str:
        check_gguf_metadata(p)
        return f"gguf-checks-v{CHECKS_VERSION}"

    cached_digest(Path(path), [Path(path)], passed, kind=f"gguf-checks-v{CHECKS_VERSION}")


def check_gguf_metadata(path: Path) -> GGUFHeader:
    """Refuse (CorruptModelError) a GGUF whose metadata llama.cpp would assert on: a layer count that
    is out of range or disagrees with the tensors, zero or inconsistent head counts and sizes, a
    vocabulary that disagrees with the embedding matrix. Returns the header."""
    path = Path(path)
    header = read_gguf_header(path)
    arch = header.metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        problems = ["general.architecture is missing"]
    else:
        problems = _layer_problems(header, arch) + _size_problems(header.metadata, arch)
    tokens = header.arrays.get("tokenizer.ggml.tokens")
    embedding = header.shapes.get("token_embd.weight")
    if tokens is not None and embedding is not None and len(embedding) == 2 and tokens.count > embedding[1]:
        problems.append(f"the vocabulary has {tokens.count} tokens but token_embd.weight has rows for "
                        f"{embedding[1]}")
    if problems:
        raise CorruptModelError(f"{path.name} has metadata llama.cpp cannot use: {'; '.join(problems)}. "
                                f"{_REFETCH}")
    return header


def _layer_problems(header: GGUFHeader, arch: str) -> list[str]:
    layers = {int(m.group(1)) for name in header.shapes for m in [_LAYER.match(name)] if m}
    blocks = header.metadata.get(f"{arch}.block_count")
    if blocks is None and not layers:
        return []
    if not isinstance(blocks, int) or not 1 <= blocks <= MAX_LAYERS:
        return [f"{arch}.block_count is {blocks!r} (llama.cpp supports 1 to {MAX_LAYERS})"]
    if layers and max(layers) >= blocks:
        return [f"{arch}.block_count is {blocks} but the file has tensors for {max(layers) + 1} layers"]
    return []


def _size_problems(meta: dict[str, Any], arch: str) -> list[str]:
    problems = []
    for key in ("embedding_length", "attention.head_count", "context_length"):
        value = meta.get(f"{arch}.{key}")
        if value is not None and (not isinstance(value, int) or not 0 < value <= 1 << 24):
            problems.append(f"{arch}.{key} is {value!r}")
    heads = meta.get(f"{arch}.attention.head_count")
    kv_heads = meta.get(f"{arch}.attention.head_count_kv")
    if not isinstance(heads, int) or heads <= 0:
        return problems
    kv_ok = isinstance(kv_heads, int) and 0 < kv_heads <= heads and heads % kv_heads == 0
    if kv_heads is not None and not kv_ok:
        problems.append(f"{arch}.attention.head_count_kv is {kv_heads!r} for {heads} heads")
    embd = meta.get(f"{arch}.embedding_length")
    if isinstance(embd, int) and embd % heads and f"{arch}.attention.key_length" not in meta:
        problems.append(f"{arch}.embedding_length {embd} is not a multiple of the {heads} heads")
    return problems


def file_type_name(value: int) -> str:
    """llama.cpp's LLAMA_FTYPE value as a name: 1 -> 'F16', 15 -> 'Q4_K_M'."""
    import gguf

    try:
        return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return str(value)
