"""fp32 ONNX decoder folder -> int8 / int4 weights as ``com.microsoft`` MatMulNBits (onnxruntime's quantizer).

Every MatMul with a constant weight (Q/K/V/O, MLP, an untied lm_head) becomes a block-quantized
MatMulNBits; embeddings, norms and a tied lm_head (``Gemm(transB=1)`` reading the embedding) stay fp32.
The folder is written to a hidden staging folder beside the target and renamed when complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from edgeinfer.errors import ConversionError

from .export import DATA_FILE, MODEL_FILE, TOKENIZER_FILES, staged_folder

BITS = {"int8": 8, "int4": 4}
LM_HEAD = "lm_head.weight"


def quant_label(quant: str, block_size: int, symmetric: bool) -> str:
    """The ``quantization`` string stored in edgeinfer.json, e.g. ``int4-b32-sym``."""
    return f"{quant}-b{block_size}-{'sym' if symmetric else 'asym'}"


def _lm_head_nodes(graph: object) -> list[str]:
    """Names of the MatMul nodes whose weight is an untied lm_head (to exclude them on request)."""
    return [n.name for n in graph.node if n.op_type == "MatMul" and LM_HEAD in n.input]  # type: ignore[attr-defined]


def _quantizer_class() -> type:
    """onnxruntime's MatMulNBitsQuantizer, imported without letting it reconfigure logging.

    The module calls ``logging.basicConfig(level=INFO)`` on import and logs every node at INFO:
    the root logger is restored and the module's logger kept at WARNING.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer as mnq
    except ImportError as exc:  # onnxruntime's quantizer needs onnx-ir (not a dependency of onnxruntime)
        raise ConversionError(f"ONNX int8/int4 needs onnxruntime's quantizer ({exc}); "
                              "pip install onnx-ir") from exc
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    mnq.logger.setLevel(logging.WARNING)
    return mnq.MatMulNBitsQuantizer


def quantize_onnx(src_dir: Path, out_dir: Path, quant: str, *, block_size: int = 32, symmetric: bool = True,
                  keep_lm_head: bool = False, accuracy_level: int = 4, force: bool = False) -> Path:
    """Write ``out_dir``: the fp32 folder ``src_dir`` with its MatMul weights quantized; returns ``out_dir``.

    ``quant`` is "int8" or "int4" (MatMulNBits bits=8 / 4, one fp32 scale per ``block_size`` input rows,
    symmetric or with uint zero points). ``keep_lm_head`` leaves an untied lm_head MatMul in fp32; a tied
    head is a Gemm on the embedding and is never quantized. ``accuracy_level`` is MatMulNBits' attribute:
    4 (default) computes with int8 activations; 0 computes in fp32, a little closer to fp32 but far slower
    on CPU (SmolLM2 int8 decode: 2.4 vs 28-35 tok/s with onnxruntime 1.32, 2 threads).
    """
    import onnx

    MatMulNBitsQuantizer = _quantizer_class()  # noqa: N806
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if quant not in BITS:
        raise ConversionError(f"ONNX quantization {quant!r} is not supported; choose {', '.join(BITS)}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ConversionError(f"block_size must be a power of two >= 16 (MatMulNBits), got {block_size}")
    meta_path = src_dir / "edgeinfer.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{src_dir} is not an edgeinfer ONNX folder ({exc})") from exc
    if meta.get("quantization") != "fp32":
        raise ConversionError(f"{src_dir} is {meta.get('quantization')!r}; quantize from the fp32 folder")
    with staged_folder(out_dir, force=force) as staging:
        model = onnx.load(str(src_dir / meta.get("model_file", MODEL_FILE)))  # external data loaded too
        exclude = _lm_head_nodes(model.graph) if keep_lm_head else []
        quantizer = MatMulNBitsQuantizer(model, bits=BITS[quant], block_size=block_size,
                                         is_symmetric=symmetric, accuracy_level=accuracy_level,
                                         nodes_to_exclude=exclude)
        del model
        quantizer.process()
        model = quantizer.model.model
        del quantizer
        onnx.save_model(model, str(staging / MODEL_FILE), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=DATA_FILE)
        del model
        meta.update(quantization=quant_label(quant, block_size, symmetric), model_file=MODEL_FILE,
                    accuracy_level=accuracy_level)
        (staging / "edgeinfer.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for name in TOKENIZER_FILES:
            if (src_dir / name).is_file():
                shutil.copyfile(src_dir / name, staging / name)
    return out_dir
