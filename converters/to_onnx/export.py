"""Write the ONNX model folder: model.onnx + model.onnx.data, edgeinfer.json, tokenizer files.

The folder is assembled in a hidden staging folder beside the target and renamed into place only when
complete, so a failed or interrupted conversion leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeinfer.errors import CheckpointError, ConversionError, OutputExistsError
from edgeinfer.paths import atomic_folder

from ..checkpoint import Checkpoint
from .bert import BertBuilder, check_bert, is_bert
from .decoder import DecoderBuilder, arch_spec
from .graph import Graph

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DTYPES = ("fp32", "fp16")  # fp16: weights stored as float16, computed in float32


def _special_ids(ckpt: Checkpoint) -> dict[str, Any]:
    """bos/eos ids from config.json, falling back to generation_config.json."""
    ids = {key: ckpt.get(key) for key in ("bos_token_id", "eos_token_id")}
    gen_path = ckpt.root / "generation_config.json"
    if gen_path.is_file():
        try:
            gen = json.loads(gen_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{gen_path} is not valid JSON ({exc})") from exc
        for key in ids:
            if ids[key] is None:
                ids[key] = gen.get(key)
    return ids


def _write_folder(ckpt: Checkpoint, folder: Path, dtype: str, progress: bool) -> None:
    with open(folder / DATA_FILE, "wb") as data:
        graph = Graph(data, DATA_FILE, fp16_weights=dtype == "fp16")
        builder = BertBuilder(graph, ckpt) if is_bert(ckpt) else DecoderBuilder(graph, ckpt, arch_spec(ckpt))
        builder.build(progress=progress)
    graph.save(folder / MODEL_FILE, ckpt.architecture)
    meta = {**builder.metadata(), **_special_ids(ckpt), "chat_template": ckpt.chat_template(),
            "quantization": dtype, "model_file": MODEL_FILE}
    (folder / "edgeinfer.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for name in TOKENIZER_FILES:
        if (ckpt.root / name).is_file():
            shutil.copyfile(ckpt.root / name, folder / name)


def build_onnx(ckpt: Checkpoint, out_dir: Path, *, dtype: str = "fp32", progress: bool = False,
               force: bool = False) -> Path:
    """Convert ``ckpt`` to an ONNX folder (no torch): a decoder with a KV cache, or a pooling BERT
    encoder; returns ``out_dir``."""
    out_dir = Path(out_dir)
    if dtype not in DTYPES:
        raise ConversionError(f"ONNX dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    if is_bert(ckpt):  # refuse what cannot be converted before touching the output
        check_bert(ckpt)
    else:
        arch_spec(ckpt)
    with staged_folder(out_dir, force=force) as staging:
        _write_folder(ckpt, staging, dtype, progress)
    return out_dir


@contextlib.contextmanager
def staged_folder(out_dir: Path, *, force: bool) -> Iterator[Path]:
    """A hidden folder that becomes ``out_dir`` when the block completes; a non-empty ``out_dir`` is
    refused unless ``force``."""
    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())) and not force:
        raise OutputExistsError(out_dir, "already exists and is not empty")
    with atomic_folder(out_dir) as staging:
        yield staging
