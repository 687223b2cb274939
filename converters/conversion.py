"""``convert()``: one HF checkpoint in, one artifact plus its report.json out, or nothing at all.

GGUF flow: write the lossless reference (the checkpoint's own precision) to a temp file, make the
requested type from it (directly for F16/BF16/Q8_0, through llama.cpp's quantizer for K-quants,
or the smallest type within ``max_kl`` for ``auto``), measure quality against the reference, write
the report, and remove the reference.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import ConversionError, OutputExistsError
from edgeinfer.paths import scratch_dir, scratch_path

from .checkpoint import Checkpoint
from .options import DEFAULT_MAX_KL, FORMATS
from .self_check import check_gguf
from .to_gguf.families import family_for
from .to_gguf.writer import DIRECT_TYPES, write_gguf


@dataclass(frozen=True)
class ConversionResult:
    """What a conversion produced: the artifact, its report, the type chosen, and the quality."""

    artifact: Path
    report: Path | None
    quant: str
    quality: dict[str, Any] | None
    seconds: float


def quant_names() -> list[str]:
    """Every type ``--quant`` accepts for GGUF."""
    from .to_gguf.quantize import QUANT_TYPES

    return sorted(set(DIRECT_TYPES) | set(QUANT_TYPES)) + ["auto"]


def normalize_quant(quant: str) -> str:
    names = {name.upper(): name for name in quant_names()}
    try:
        return names[quant.strip().upper()]
    except KeyError:
        choices = ", ".join(quant_names())
        raise ConversionError(f"unknown quantization {quant!r}; choose one of: {choices}") from None


def reference_type(ckpt: Checkpoint) -> str:
    """The lossless GGUF type for this checkpoint: its largest tensor's dtype (F32, F16 or BF16)."""
    largest = max(ckpt.tensors.values(), key=lambda r: r.n_elements)
    return {"F16": "F16", "BF16": "BF16"}.get(largest.dtype, "F32")


def convert(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    format: str = "gguf",  # noqa: A002 - the CLI's word
    quant: str | None = None,
    max_kl: float = DEFAULT_MAX_KL,
    force: bool = False,
    quality: bool = True,
    progress: bool = False,
    n_threads: int | None = None,
    name: str = "",
) -> ConversionResult:
    """Convert an HF checkpoint folder to a GGUF file (or an ONNX folder) with its report.json; ``name``
    is the model's name in the GGUF (default: the folder's, which for a hub snapshot is a commit id).

    Raises a ConversionError subclass (nothing left behind) for bad input; see ``quant_names()``.
    """
    started = time.perf_counter()
    source, output = Path(source), Path(output)
    if format not in FORMATS:
        raise ConversionError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    if format == "onnx" and source.is_file() and source.suffix.lower() == ".gguf":
        return _convert_gguf_onnx(source, output, quant, force=force, progress=progress, quality=quality,
                                  n_threads=n_threads, started=started)
    if format == "onnx":
        return _convert_onnx(source, output, quant or "fp32", max_kl=max_kl, force=force, progress=progress,
                             quality=quality, n_threads=n_threads, started=started)
    quant = normalize_quant(quant or "F16")
    ckpt = Checkpoint.open(source)
    ckpt.name = name
    family = family_for(ckpt)  # refuses unknown architectures before anything is written
    if output.is_dir():
        raise ConversionError(f"{output} is a folder; name the output file, e.g. {output / 'model.gguf'}")
    if output.exists() and not force:
        raise OutputExistsError(output)
    if getattr(family, "is_encoder", False):  # no next-token logits: KL/perplexity mean nothing
        if quant == "auto":
            raise ConversionError(
                f"--quant auto picks a type by next-token quality, which the embedding model "
                f"{ckpt.architecture} does not have: choose a type (F16 or Q8_0 keep embeddings close)"
            )
        quality = False
    ref_type = reference_type(ckpt)
    metrics = None
    with scratch_path(output, "candidate") as candidate:  # renamed into place once it passes its check
        if quant == ref_type or (quant in DIRECT_TYPES and not quality):
            write_gguf(ckpt, candidate, quant, progress=progress, family=family, label=output.name)
            chosen = quant
        else:
            with scratch_path(output, "reference") as reference:
                write_gguf(ckpt, reference, ref_type, progress=progress, family=family,
                           label=f"{output.name} ({ref_type} reference)")
                chosen, metrics = _make_from_reference(ckpt, reference, candidate, quant, max_kl, quality,
                                                       n_threads)
        check_gguf(candidate, ckpt.root, causal=not getattr(family, "is_encoder", False))
        os.replace(candidate, output)
    try:
        from .report import write_report

        report = write_report(
            output, source=source, fmt="gguf", quant=chosen,
            quality=metrics, reference=f"{ref_type} GGUF of the same checkpoint",
            extra={"requested_quant": quant, "max_kl": max_kl if quant == "auto" else None,
                   "architecture": ckpt.architecture, "seconds": round(time.perf_counter() - started, 2)},
        )
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    return ConversionResult(output, report, chosen, metrics.to_dict() if metrics else None,
                            time.perf_counter() - started)


def _make_from_reference(ckpt: Checkpoint, reference: Path, output: Path, quant: str, max_kl: float,
                         quality: bool, n_threads: int | None):  # noqa: ANN202
    from .auto_quant import choose_quant
    from .quality import measure_quality
    from .to_gguf.quantize import quantize_gguf

    if quant == "auto":
        if not (np.isfinite(max_kl) and max_kl > 0):
            raise ConversionError(f"--max-kl must be a positive number, got {max_kl}")
        return choose_quant(reference, output, max_kl=max_kl, n_threads=n_threads)
    if quant in DIRECT_TYPES:
        write_gguf(ckpt, output, quant)
    else:
        quantize_gguf(reference, output, quant, n_threads=n_threads)
    if not quality:
        return quant, None
    try:
        return quant, measure_quality(reference, output, n_threads=n_threads)
    except BaseException:
        output.unlink(missing_ok=True)  # a conversion that fails leaves nothing behind
        raise


ONNX_TYPES = ("fp32", "fp16", "int8", "int4", "int4-fast", "auto")
ONNX_AUTO_ORDER = ("int4-fast", "int4", "int8")  # fastest first; fp32 (the reference) when none is close


def _convert_onnx(source: Path, output: Path, quant: str, *, max_kl: float, force: bool, progress: bool,
                  quality: bool, n_threads: int | None, started: float) -> ConversionResult:
    from .report import write_report
    from .to_onnx import build_onnx
    from .to_onnx.bert import is_bert
    from .to_onnx.export import staged_folder

    dtype = {"f32": "fp32", "f16": "fp16"}.get(quant.strip().lower(), quant.strip().lower())
    if dtype not in ONNX_TYPES:
        raise ConversionError(
            f"ONNX {quant!r} is not available; ONNX artifacts are {', '.join(ONNX_TYPES)} "
            "(for other types use --format gguf)"
        )
    if dtype == "auto" and not (np.isfinite(max_kl) and max_kl > 0):
        raise ConversionError(f"--max-kl must be a positive number, got {max_kl}")
    ckpt = Checkpoint.open(source)
    if is_bert(ckpt):  # an encoder has no next-token logits: KL/perplexity mean nothing
        if dtype == "auto":
            raise ConversionError(f"--quant auto picks a type by next-token quality, which the embedding "
                                  f"model {ckpt.architecture} does not have: choose fp32, fp16 or int8")
        quality = False
    metrics, chosen = None, dtype
    if dtype == "fp32" or (dtype == "fp16" and not quality):
        build_onnx(ckpt, output, dtype=dtype, progress=progress, force=force)
    else:
        if output.exists() and not (output.is_dir() and not any(output.iterdir())) and not force:
            raise OutputExistsError(output, "already exists and is not empty")
        with scratch_dir(output, "fp32") as scratch:
            reference = build_onnx(ckpt, scratch / "fp32", progress=progress)
            candidates = ONNX_AUTO_ORDER if dtype == "auto" else (dtype,)
            for chosen in candidates:
                folder = _onnx_candidate(ckpt, reference, scratch / chosen, chosen, n_threads)
                metrics = _onnx_quality(reference, folder, quality or dtype == "auto", n_threads)
                if dtype != "auto" or metrics.mean_kl <= max_kl:
                    break
            else:  # nothing within max_kl: the lossless reference
                chosen, folder, metrics = "fp32", reference, None
            with staged_folder(output, force=force) as staging:
                for item in folder.iterdir():
                    os.replace(item, staging / item.name)
    reference_name = "itself (lossless)" if chosen == "fp32" else "fp32 ONNX of the same checkpoint"
    try:
        report = write_report(output, source=source, fmt="onnx", quant=chosen, quality=metrics,
                              reference=reference_name,
                              extra={"requested_quant": dtype, "max_kl": max_kl if dtype == "auto" else None,
                                     "architecture": ckpt.architecture,
                                     "seconds": round(time.perf_counter() - started, 2)})
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)  # a conversion that fails leaves nothing behind
        raise
    return ConversionResult(output, report, chosen, metrics.to_dict() if metrics else None,
                            time.perf_counter() - started)


def _convert_gguf_onnx(source: Path, output: Path, quant: str | None, *, force: bool, progress: bool,
                       quality: bool, n_threads: int | None, started: float) -> ConversionResult:
    """A GGUF file to an ONNX folder with the GGUF's own weights (``to_onnx.from_gguf``), its report
    comparing it with the GGUF run by llama.cpp."""
    from .report import write_report
    from .to_onnx.from_gguf import gguf_to_onnx
    from .to_onnx.quality import measure_against_gguf

    if quant not in (None, "gguf"):
        raise ConversionError(f"--quant {quant} does not apply to a GGUF source: its ONNX folder keeps the "
                              "GGUF's own quantized weights (convert the HF checkpoint for another type)")
    gguf_to_onnx(source, output, force=force, progress=progress)
    try:
        metrics = measure_against_gguf(source, output, n_threads=n_threads) if quality else None
        chosen = json.loads((output / "edgeinfer.json").read_text(encoding="utf-8"))["quantization"]
        report = write_report(output, source=source, fmt="onnx", quant=chosen, quality=metrics,
                              reference=f"{source.name} run by llama.cpp",
                              extra={"requested_quant": "gguf", "max_kl": None,
                                     "seconds": round(time.perf_counter() - started, 2)})
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)  # a conversion that fails leaves nothing behind
        raise
    return ConversionResult(output, report, chosen, metrics.to_dict() if metrics else None,
                            time.perf_counter() - started)


def _onnx_candidate(ckpt: Checkpoint, reference: Path, folder: Path, dtype: str,
                    n_threads: int | None) -> Path:
    """``dtype`` made from the fp32 ``reference`` (fp16 rebuilt from the checkpoint) into ``folder``."""
    from .to_onnx import build_onnx
    from .to_onnx.quantize import quantize_onnx

    if dtype == "fp16":
        return build_onnx(ckpt, folder, dtype="fp16")
    return quantize_onnx(reference, folder, dtype, n_threads=n_threads)


def _onnx_quality(reference: Path, folder: Path, quality: bool, n_threads: int | None) -> Any:
    from .to_onnx.quality import measure_onnx_quality

    return measure_onnx_quality(reference, folder, n_threads=n_threads) if quality else None
