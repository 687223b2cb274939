"""Seeded fuzzing of edgeinfer's own parsers of untrusted bytes: a mutated GGUF header, safetensors
header, lock file, KV-state file or HTTP body gives that parser's specific error (or parses), and
never another exception. Deterministic: the seeds are fixed, so a failure reproduces."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest

from edgeinfer.disk_cache import DiskCache
from edgeinfer.errors import CheckpointError, CorruptModelError, LockFileError
from edgeinfer.gguf_check import check_gguf_metadata
from edgeinfer.lock import ModelLock

CASES = 200


def mutate(data: bytes, rng: random.Random, limit: int | None = None) -> bytes:
    """Flip, overwrite, insert or cut a few bytes (within the first ``limit`` bytes)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(max(1, min(len(out), limit or len(out))))
        kind = rng.random()
        if kind < 0.4 and out:
            out[at] ^= 1 << rng.randrange(8)
        elif kind < 0.7 and out:
            out[at] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif kind < 0.85:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            del out[at:at + rng.randint(1, 64)]
    return bytes(out)


def test_mutated_gguf_headers(smollm2_path: Path, tmp_path: Path) -> None:
    head = smollm2_path.read_bytes()[: 2 << 20]  # metadata, vocabulary and the start of the tensor infos
    rng = random.Random(17)
    for i in range(CASES):
        path = tmp_path / f"m{i % 4}.gguf"
        path.write_bytes(mutate(head, rng, limit=64 << 10))
        try:
            check_gguf_metadata(path)
        except CorruptModelError:
            pass


def test_mutated_safetensors_headers(tmp_path: Path) -> None:
    from edgeinfer_converters.safetensors_io import read_header
    from test_convert_gguf import copy_of

    src = copy_of("llama", tmp_path / "ck") / "model.safetensors"
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    rng = random.Random(18)
    for i in range(CASES):
        path = tmp_path / f"s{i % 4}.safetensors"
        path.write_bytes(mutate(data[: 8 + n], rng) + data[8 + n:])
        try:
            read_header(path)
        except CheckpointError:
            pass


def test_mutated_lock_files(tmp_path: Path) -> None:
    shipped = (Path(__file__).resolve().parents[1] / "models.lock").read_bytes()
    rng = random.Random(19)
    for _ in range(CASES):
        path = tmp_path / "models.lock"
        path.write_bytes(mutate(shipped, rng))
        try:
            ModelLock.load(path)
        except LockFileError:
            pass


def test_mutated_kv_state_files(tmp_path: Path) -> None:
    binding = {"model_sha256": "ab" * 32, "backend": "fake", "n_ctx": 512}
    disk = DiskCache(tmp_path, binding=binding)
    good = disk.save([5] * 40, bytes(range(200)), prefill_end=40, exact_end=32)
    data = good.read_bytes()
    rng = random.Random(20)
    for i in range(CASES):
        path = disk.folder / f"f{i}.kv"
        path.write_bytes(mutate(data, rng))
        for entry in disk.entries():  # damaged ones are dropped (with a warning), the rest load or not
            disk.load(entry)


@pytest.mark.skipif(pytest.importorskip("fastapi") is None, reason="needs the server extra")
def test_mutated_request_bodies() -> None:
    from edgeinfer.server.errors import APIError
    from edgeinfer.server.schemas import ChatRequest, CompletionRequest, parse

    bodies = [json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stop": ["\n"],
                          "temperature": 0.5, "stream": True}).encode(),
              json.dumps({"prompt": [1, 2, 3], "max_tokens": 4, "seed": 7}).encode()]
    rng = random.Random(21)
    for i in range(CASES):
        schema = (ChatRequest, CompletionRequest)[i % 2]
        try:
            parse(schema, mutate(bodies[i % 2], rng))
        except APIError as exc:
            assert 400 <= exc.status < 500
