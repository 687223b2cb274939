"""Quantize an F16/F32 GGUF with llama.cpp's own quantizer (K-quants and the legacy block types)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edgeinfer.errors import ConversionError
from edgeinfer.paths import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantType:
    """One output type: the llama.cpp ftype constant and its nominal bits per weight."""

    ftype: str  # attribute of llama_cpp holding the LLAMA_FTYPE value
    bpw: float  # nominal bits/weight of the 2D weights (llama.cpp's figures); orders `--quant auto`


# name -> llama.cpp ftype. Nominal bits/weight: block size in bits / 256 (K) or 32 (legacy) weights;
# the _S/_M mixes keep some tensors (attn_v, ffn_down, output) at a higher type, hence the fractions.
QUANT_TYPES: dict[str, QuantType] = {
    "Q2_K": QuantType("LLAMA_FTYPE_MOSTLY_Q2_K", 2.96),
    "Q3_K_M": QuantType("LLAMA_FTYPE_MOSTLY_Q3_K_M", 3.91),
    "Q4_0": QuantType("LLAMA_FTYPE_MOSTLY_Q4_0", 4.5),
    "Q4_K_S": QuantType("LLAMA_FTYPE_MOSTLY_Q4_K_S", 4.58),
    "Q4_K_M": QuantType("LLAMA_FTYPE_MOSTLY_Q4_K_M", 4.85),
    "Q4_1": QuantType("LLAMA_FTYPE_MOSTLY_Q4_1", 5.0),
    "Q5_0": QuantType("LLAMA_FTYPE_MOSTLY_Q5_0", 5.5),
    "Q5_K_S": QuantType("LLAMA_FTYPE_MOSTLY_Q5_K_S", 5.54),
    "Q5_K_M": QuantType("LLAMA_FTYPE_MOSTLY_Q5_K_M", 5.69),
    "Q5_1": QuantType("LLAMA_FTYPE_MOSTLY_Q5_1", 6.0),
    "Q6_K": QuantType("LLAMA_FTYPE_MOSTLY_Q6_K", 6.56),
    "Q8_0": QuantType("LLAMA_FTYPE_MOSTLY_Q8_0", 8.5),
    # unquantized targets: the reference for quality checks, and a requantized test fixture
    "BF16": QuantType("LLAMA_FTYPE_MOSTLY_BF16", 16.0),
    "F16": QuantType("LLAMA_FTYPE_MOSTLY_F16", 16.0),
    "F32": QuantType("LLAMA_FTYPE_ALL_F32", 32.0),
}
UNQUANTIZED = ("F32", "F16", "BF16")


def quant_type(name: str) -> QuantType:
    """The table row for ``name`` (case-insensitive), or a ConversionError listing valid names."""
    row = QUANT_TYPES.get(name.strip().upper())
    if row is None:
        raise ConversionError(
            f"unknown quantization {name!r}; choose one of {', '.join(QUANT_TYPES)} "
            "(or `auto` to pick the smallest within a quality budget)"
        )
    return row


def canonical_quant(name: str) -> str:
    """The table's spelling of ``name`` ('q4_k_m' -> 'Q4_K_M'); ConversionError when unknown."""
    quant_type(name)
    return name.strip().upper()


def gguf_file_type(path: Path) -> str | None:
    """The GGUF's ``general.file_type`` as a name ('F16', 'Q4_K_M'), or None when it has none."""
    from edgeinfer.errors import CorruptModelError
    from edgeinfer.gguf_check import file_type_name, read_gguf_header

    try:
        value = read_gguf_header(path).metadata.get("general.file_type")
    except CorruptModelError as exc:
        raise ConversionError(str(exc)) from exc
    return file_type_name(int(value)) if value is not None else None


def quantize_gguf(
    src: Path, dst: Path, quant: str, *, n_threads: int | None = None, allow_requantize: bool = False
) -> None:
    """Write ``src`` (an F16/F32/BF16 GGUF) quantized to ``quant`` at ``dst``, via llama.cpp's quantizer.

    ``allow_requantize`` lets an already-quantized source through (quality suffers; tests use it to
    make an F16 file from the bundled Q4_1 model). The output is complete at ``dst`` or absent.
    """
    src, dst = Path(src), Path(dst)
    row = quant_type(quant)
    if not src.is_file():
        raise ConversionError(f"{src}: no such file; pass the F16/F32 GGUF to quantize")
    with open(src, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ConversionError(f"{src} is not a GGUF file; convert the checkpoint to F16 GGUF first")
    source_type = gguf_file_type(src)
    if not allow_requantize and source_type is not None and source_type not in UNQUANTIZED:
        raise ConversionError(
            f"{src.name} is already quantized ({source_type}); quantize from the F16/F32 GGUF "
            "(`edgeinfer convert ... --quant F16`), since requantizing loses quality"
        )
    if src.resolve() == dst.resolve():
        raise ConversionError(f"{dst}: the output must not overwrite the input")

    import llama_cpp as ll

    from edgeinfer.backends.llamacpp import ensure_initialized

    ensure_initialized()  # route llama.cpp's log lines to Python logging
    params = ll.llama_model_quantize_default_params()
    params.ftype = getattr(ll, row.ftype)
    params.nthread = n_threads or 0  # 0: llama.cpp uses every hardware thread
    params.allow_requantize = allow_requantize
    # Runs synchronously in C: Ctrl-C is raised once the call returns, and the temp file goes then.
    with atomic_path(dst) as tmp:
        log.info("quantizing %s -> %s (%s)", src, dst, canonical_quant(quant))
        rc = ll.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise ConversionError(
                f"llama.cpp could not quantize {src.name} to {canonical_quant(quant)} (code {rc}); "
                "run with -v to see llama.cpp's log, and check the input is a complete F16/F32 GGUF"
            )
