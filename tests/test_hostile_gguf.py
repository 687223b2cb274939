"""A GGUF file is untrusted: metadata that would make llama.cpp abort the process (GGML_ASSERT, no
exception to catch) is refused first with a CorruptModelError. Each load runs in a child process, so a
check that misses kills the child (and fails the test), never the test run."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from edgeinfer.gguf_check import SCALAR_FORMATS, ByteCursor, check_gguf_metadata, gguf_data_end

pytestmark = pytest.mark.slow

LOAD = """
import sys
import edgeinfer as ei
try:
    ei.load(sys.argv[1], n_ctx=256, n_threads=1).close()
    print("LOADED")
except ei.EdgeInferError as exc:
    print(type(exc).__name__, exc)
"""


def value_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Metadata key -> (byte offset of its value, value type), for scalar values."""
    data = path.read_bytes()
    cur = ByteCursor(data)
    cur.take("4s"), cur.take("I")
    _, n_kv = cur.take("Q"), cur.take("Q")
    out = {}
    for _ in range(n_kv):
        key = cur.string().decode()
        vtype = cur.take("I")
        out[key] = (cur.pos, vtype)
        cur.value(vtype)
    return out


def patched(source: Path, dest: Path, **values: int) -> Path:
    """A copy of ``source`` with scalar metadata values replaced in place (``a__b`` for ``a.b``)."""
    shutil.copyfile(source, dest)
    offsets = value_offsets(source)
    with dest.open("r+b") as handle:
        for key, value in values.items():
            offset, vtype = offsets[key.replace("__", ".")]
            handle.seek(offset)
            handle.write(struct.pack("<" + SCALAR_FORMATS[vtype], value))
    return dest


def load_in_child(path: Path) -> str:
    done = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"the child died (exit {done.returncode}): {done.stderr[-2000:]}"
    return done.stdout.strip()


PATCHES = {
    "a hundred thousand layers": (dict(llama__block_count=100000), "block_count is 100000"),
    "zero layers": (dict(llama__block_count=0), "block_count is 0"),
    "fewer layers than tensors": (dict(llama__block_count=29), "tensors for 30 layers"),
    "zero heads": (dict(llama__attention__head_count=0), "head_count"),
    "kv heads that do not divide the heads": (dict(llama__attention__head_count_kv=7), "head_count_kv"),
    "zero embedding length": (dict(llama__embedding_length=0), "embedding_length"),
}
# (without these checks the first two abort the process: exit -6 from llama.cpp's GGML_ASSERT)


@pytest.mark.parametrize("case", list(PATCHES))
def test_metadata_llama_cpp_would_abort_on_is_refused(smollm2_path, tmp_path, case):
    values, message = PATCHES[case]
    bad = patched(smollm2_path, tmp_path / "bad.gguf", **values)
    said = load_in_child(bad)
    assert said.startswith("CorruptModelError") and message in said, said
    assert load_in_child(smollm2_path) == "LOADED"  # the real file still loads: the checks are not too strict


def tiny_gguf(path: Path, kv: bytes, n_kv: int, n_tensors: int = 0) -> Path:
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kv)
    return path


def string(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


HANDMADE = {
    "nested arrays": lambda p: tiny_gguf(p, string("x") + struct.pack("<IIQ", 9, 9, 1)
                                         + struct.pack("<IQ", 9, 1) * 1000, 1),
    "alignment zero": lambda p: tiny_gguf(p, string("general.alignment") + struct.pack("<II", 4, 0), 1),
    "a billion keys": lambda p: tiny_gguf(p, b"", 10**9),
    "a string past the end": lambda p: tiny_gguf(p, struct.pack("<Q", 10**12), 1),
    "an array past the end": lambda p: tiny_gguf(p, string("x") + struct.pack("<IIQ", 9, 8, 10**12), 1),
}


@pytest.mark.parametrize("case", list(HANDMADE))
def test_a_handmade_header_is_a_clear_error(tmp_path, case):
    from edgeinfer.errors import CorruptModelError

    path = HANDMADE[case](tmp_path / "bad.gguf")
    with pytest.raises(CorruptModelError):
        check_gguf_metadata(path)
    try:
        gguf_data_end(path)  # the diagnosis path too: a ValueError or EOFError, never a crash
    except (ValueError, EOFError):
        pass
    said = load_in_child(path)
    assert said.startswith("CorruptModelError"), said
