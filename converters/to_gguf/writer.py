"""Stream an HF checkpoint into one GGUF file: metadata, vocabulary, then tensor by tensor.

Tensor infos are declared up front (sizes are known from the safetensors headers), so each tensor
is read, transformed, encoded and written before the next one is read, in blocks of rows where the
transform allows it: peak memory is a few MB plus the largest per-head-permuted tensor, never the
model. The file appears under its final name only when complete.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tqdm import tqdm

from edgeinfer.errors import CheckpointError, ConversionError
from edgeinfer.paths import atomic_path

from ..checkpoint import Checkpoint
from .families import Family, TensorPlan, family_for
from .families.decoder import FILE_TYPES
from .vocab import add_vocab

Q = gguf.GGMLQuantizationType
DIRECT_TYPES: dict[str, Q] = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16, "Q8_0": Q.Q8_0}


def tensor_type(plan: TensorPlan, out_type: str) -> Q:
    """The GGML type one tensor is stored as: small/1-D tensors stay F32; blocks must divide rows."""
    qtype = DIRECT_TYPES[out_type]
    if plan.keep_f32 or len(plan.shape) < 2:
        return Q.F32
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if plan.shape[-1] % block:
        return Q.F16  # as llama.cpp does for rows that do not fill whole blocks
    return qtype


def encode(array: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype == Q.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape, dtype=np.int64)) // block * size


def write_tensor(
    writer: gguf.GGUFWriter, plan: TensorPlan, qtype: Q, progress: Callable[[int], Any]
) -> None:
    """Append one tensor's data (aligned as GGUF requires), block by block when the plan streams."""
    fout = writer.fout[0]
    writer.write_padding(fout, fout.tell())
    written = 0
    for block in plan.chunks() if plan.chunks else [plan.load()]:
        if tuple(block.shape[1:]) != tuple(plan.shape[1:]):
            raise CheckpointError(f"tensor {plan.name}: expected {plan.shape}, got {block.shape}")
        encode(block, qtype).tofile(fout)
        written += nbytes(block.shape, qtype)
        progress(nbytes(block.shape, qtype))
    if written != nbytes(plan.shape, qtype):
        raise CheckpointError(f"tensor {plan.name}: expected {plan.shape}, got fewer rows")
    writer.write_padding(fout, written)


PHI3_NAME = re.compile(r"(?i)(phi)-?(3)")
PHI3_RULE_TOKENS = ("</s>", "<unk>", "<s>", "<|endoftext|>")


def general_name(name: str, tok: dict | None) -> str:
    """The model's name for general.name. llama.cpp gives a model whose name contains "phi3" or "phi-3"
    Phi-3's special-token rules, which look up "</s>", "<unk>", "<s>" and "<|endoftext|>" by text: on a
    vocabulary without them (Phi-4-mini's byte-level BPE) the load fails ("unordered_map::at"). Such a
    name is written with the digit apart ("Phi 3"), so the rules apply only where they can."""
    if tok is None or not PHI3_NAME.search(name):
        return name
    vocab = (tok.get("model") or {}).get("vocab") or {}
    known = {v[0] if isinstance(v, list) and v else v for v in vocab} | {  # BPE: a dict; Unigram: pairs
        t.get("content") for t in tok.get("added_tokens") or [] if isinstance(t, dict)}
    return name if all(t in known for t in PHI3_RULE_TOKENS) else PHI3_NAME.sub(r"\1 \2", name)


def write_gguf(ckpt: Checkpoint, out: Path, out_type: str, *, progress: bool = False,
               family: Family | None = None, label: str | None = None) -> None:
    """Write ``ckpt`` as a GGUF of ``out_type`` (F32, F16, BF16 or Q8_0) at ``out``, atomically;
    ``label`` names it on the progress bar (default: the file's name)."""
    if out_type not in DIRECT_TYPES:
        raise ConversionError(f"cannot write {out_type} directly; direct types: {', '.join(DIRECT_TYPES)}")
    family = family or family_for(ckpt)
    writer = gguf.GGUFWriter(path=None, arch=family.arch_name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(general_name(ckpt.model_name, ckpt.tokenizer_json))
    writer.add_file_type(FILE_TYPES[out_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    family.add_metadata(writer)
    plans = list(family.plans())
    embed = next((p for p in plans if p.name == "token_embd.weight"), None)
    if embed is None:
        raise CheckpointError(f"{ckpt.root}: no token embedding tensor found; the checkpoint is incomplete")
    add_vocab(writer, ckpt, n_vocab=embed.shape[0])
    types = [tensor_type(p, out_type) for p in plans]
    for plan, qtype in zip(plans, types, strict=True):
        writer.add_tensor_info(plan.name, plan.shape, np.dtype(np.float32), nbytes(plan.shape, qtype), qtype)
    total = sum(nbytes(p.shape, t) for p, t in zip(plans, types, strict=True))
    try:
        with atomic_path(out) as tmp, tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
                                           desc=label or out.name) as bar:
            try:
                writer.write_header_to_file(tmp)
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
                for plan, qtype in zip(plans, types, strict=True):
                    write_tensor(writer, plan, qtype, bar.update)
                writer.flush()
            finally:
                writer.close()
    except OSError as exc:
        hint = " (the disk is full: free some space)" if exc.errno in (errno.ENOSPC, errno.EFBIG) else ""
        raise ConversionError(f"writing {out} failed: {exc}{hint}; nothing was written") from exc
