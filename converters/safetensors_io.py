"""Read safetensors files tensor by tensor, without trusting their headers.

Each tensor is read through its own short-lived mmap window, so peak memory holds one tensor (plus
its converted copy), never the whole model. The header is checked before any data is touched:
offsets inside the file, sizes that match dtype x shape, no overlaps.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeinfer.errors import CheckpointError
from edgeinfer.untrusted import is_count, relative_path

HEADER_LIMIT = 100 << 20  # safetensors' own limit on the JSON header
# safetensors dtype -> (numpy dtype used to read the raw bytes, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),  # numpy has no bfloat16: read the bits, widen to float32 on demand
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U8": ("u1", 1),
    "BOOL": ("?", 1),
}


@dataclass(frozen=True)
class TensorRecord:
    """Where one tensor lives: file, dtype, shape, absolute byte range."""

    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)  # Python integers: a lying shape cannot overflow


def read_header(path: Path) -> dict[str, TensorRecord]:
    """Parse and validate one safetensors file's header; raise CheckpointError on any lie."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) < 8:
                raise CheckpointError(f"{path} is not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > HEADER_LIMIT or 8 + header_len > size:
                raise CheckpointError(
                    f"{path}: header length {header_len} does not fit in the {size}-byte file; "
                    "the file is truncated or not safetensors. Re-download or re-save the checkpoint."
                )
            header = json.loads(handle.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({exc})") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    data_start = 8 + header_len
    records: dict[str, TensorRecord] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        records[name] = _record(path, name, info, data_start, size)
    spans = sorted((r.start, r.end, r.name) for r in records.values())
    for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:], strict=False):
        if start_b < end_a:
            raise CheckpointError(f"{path}: tensors {name_a!r} and {name_b!r} overlap; the header is corrupt")
    return records


def _record(path: Path, name: str, info: object, data_start: int, size: int) -> TensorRecord:
    try:
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry") from exc
    if dtype not in DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
    offsets_ok = is_count(begin) and is_count(end) and begin <= end
    if len(shape) > 8 or not all(is_count(d) for d in shape) or not offsets_ok:
        raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape or offsets")
    n = math.prod(shape)  # Python integers: [2**62 + 1, 4] cannot wrap around to a small size
    if end - begin != n * DTYPES[dtype][1]:
        raise CheckpointError(
            f"{path}: tensor {name!r} claims {end - begin} bytes but {dtype}{list(shape)} needs "
            f"{n * DTYPES[dtype][1]}; the header is corrupt"
        )
    if data_start + end > size:
        raise CheckpointError(
            f"{path}: tensor {name!r} ends at byte {data_start + end} but the file has {size} bytes; "
            "the file is truncated. Re-download or re-save the checkpoint."
        )
    return TensorRecord(path, name, dtype, shape, data_start + begin, data_start + end)


CHUNK_BYTES = 8 << 20  # rows read per step when a tensor is streamed in pieces


def load_tensor(record: TensorRecord) -> np.ndarray:
    """Read one tensor as float32 (floats) or its own integer type, through a temporary mmap."""
    return _read(record, record.start, record.n_elements, record.shape)


def iter_rows(record: TensorRecord, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """A 2-D+ tensor in blocks of whole rows (first axis), each read through its own mmap window."""
    rows = record.shape[0]
    row_elems = record.n_elements // rows if rows else 0
    row_bytes = row_elems * DTYPES[record.dtype][1]
    step = max(1, chunk_bytes // max(1, row_bytes))
    for first in range(0, rows, step):
        n = min(step, rows - first)
        yield _read(record, record.start + first * row_bytes, n * row_elems, (n, *record.shape[1:]))


def _read(record: TensorRecord, start: int, count: int, shape: tuple[int, ...]) -> np.ndarray:
    np_dtype, itemsize = DTYPES[record.dtype]
    if count == 0:
        return np.zeros(shape, dtype=np.float32 if record.dtype in ("F16", "BF16") else np_dtype)
    page = mmap.ALLOCATIONGRANULARITY
    offset = start - start % page
    length = start + count * itemsize - offset
    with record.file.open("rb") as handle:
        window = mmap.mmap(handle.fileno(), length, offset=offset, access=mmap.ACCESS_READ)
    try:
        if hasattr(window, "madvise"):
            window.madvise(mmap.MADV_SEQUENTIAL)
        out = _widen(np.frombuffer(window, dtype=np_dtype, count=count, offset=start - offset), record.dtype)
    finally:
        try:
            window.close()
        except BufferError:  # interrupted while a view was alive (Ctrl-C): it unmaps once collected
            pass
    return out.reshape(shape)


def _widen(raw: np.ndarray, dtype: str) -> np.ndarray:
    """A copy detached from the mmap window: floats as float32, integers as they are."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype in ("F16", "F64"):
        return raw.astype(np.float32)
    return raw.copy()


def index_files(root: Path) -> dict[str, TensorRecord]:
    """All tensors of a checkpoint folder: model.safetensors or the shards its index lists."""
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index ({exc})") from exc
        files = sorted(set(weight_map.values()))
        for rel in files:
            if not isinstance(rel, str) or not relative_path(rel):
                raise CheckpointError(f"{index} points outside the checkpoint folder: {rel!r}")
    else:
        files = sorted(p.name for p in root.glob("*.safetensors"))
    records: dict[str, TensorRecord] = {}
    for rel in files:
        path = root / rel
        if not path.is_file():
            raise CheckpointError(f"{path} is listed in the index but missing; the checkpoint is incomplete")
        for name, record in read_header(path).items():
            if name in records:
                first = records[name].file.name
                raise CheckpointError(f"tensor {name!r} appears in two shards ({first}, {rel})")
            records[name] = record
    if index.is_file():
        missing = sorted(set(weight_map) - set(records))
        if missing:
            raise CheckpointError(f"{index} lists tensors that no shard holds: {missing[:5]}")
    return records
