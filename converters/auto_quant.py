"""`--quant auto`: the smallest quantization whose quality stays within a KL budget.

Decision when no candidate qualifies: the output is the reference itself (copied, F16/F32/BF16 as it
was), never a quantization that misses the budget; the returned choice says so (``fallback``).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from edgeinfer.errors import ConversionError
from edgeinfer.paths import atomic_path, scratch_path

from .quality import QualityMetrics, ReferenceScorer
from .to_gguf.quantize import (
    QUANT_TYPES,
    UNQUANTIZED,
    canonical_quant,
    gguf_file_type,
    quantize_gguf,
)

log = logging.getLogger(__name__)

# Tried in order of nominal bits/weight (QUANT_TYPES). Legacy Q4_0/Q4_1/Q5_x are left out: a
# K-quant of about the same size is more accurate. Q2_K/Q3_K_M are left out: on the small models
# this project targets they rarely pass a useful budget, and each try costs a quantize and a score.
DEFAULT_AUTO_ORDER: tuple[str, ...] = ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
# The default budget lives in options.DEFAULT_MAX_KL (the CLI reads it without importing this).
# Measured on SmolLM2-135M (F16 requantized from Q4_1, 1023 tokens): Q8_0 0.004, Q6_K 0.009,
# Q4_K_M 0.051 nats/token; rebuilt float32 checkpoint vs its F32 GGUF: Q4_0 0.27.


class AutoQuantChoice(NamedTuple):
    """The chosen quantization and its quality; ``quant`` is the reference's type on fallback."""

    quant: str
    quality: QualityMetrics

    @property
    def fallback(self) -> bool:
        """True when no candidate met the budget and the unquantized reference was kept."""
        return self.quant in UNQUANTIZED


def _ordered(candidates: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(canonical_quant(c) for c in candidates))
    if not names:
        raise ConversionError("no candidate quantizations to try; pass at least one (e.g. Q4_K_M)")
    unquantized = [n for n in names if n in UNQUANTIZED]
    if unquantized:
        raise ConversionError(
            f"{', '.join(unquantized)} is not a quantization; auto tries quantized types only"
        )
    return sorted(names, key=lambda n: QUANT_TYPES[n].bpw)


def choose_quant(
    reference: Path,
    dst: Path,
    *,
    max_kl: float,
    candidates: Sequence[str] = DEFAULT_AUTO_ORDER,
    n_threads: int | None = None,
    max_tokens: int = 1024,
    on_trial: Callable[[str, QualityMetrics], None] | None = None,
) -> AutoQuantChoice:
    """Quantize ``reference`` (F16/F32 GGUF) to the smallest candidate with mean KL <= ``max_kl`` at ``dst``.

    Candidates are tried from the fewest bits/weight up, each written to a temp file beside ``dst``
    and scored against the reference on the fixed text; the first that passes becomes ``dst`` and
    the others are deleted. ``on_trial(quant, metrics)`` is called after each try (progress,
    reports). None passes: the reference is copied to ``dst`` (see the module docstring).
    """
    reference, dst = Path(reference), Path(dst)
    if not isinstance(max_kl, (int, float)) or not math.isfinite(max_kl) or max_kl <= 0:
        raise ConversionError(f"max_kl must be a positive finite number of nats (got {max_kl!r}); e.g. 0.05")
    order = _ordered(candidates)
    if dst.resolve() == reference.resolve():
        raise ConversionError(f"{dst}: the output must not overwrite the reference")
    if not reference.is_file():
        raise ConversionError(f"{reference}: no such file; pass the F16/F32 GGUF to quantize")
    ref_type = gguf_file_type(reference)
    if ref_type not in UNQUANTIZED:
        raise ConversionError(
            f"{reference.name} is {ref_type or 'of unknown type'}, not F16/F32/BF16: quality is measured "
            "against the unquantized model, so convert with --quant F16 first"
        )
    best: QualityMetrics | None = None
    with ReferenceScorer(reference, max_tokens=max_tokens, n_threads=n_threads) as scorer:
        for quant in order:
            with scratch_path(dst, quant) as tmp:  # a rejected candidate goes, on error / Ctrl-C too
                quantize_gguf(reference, tmp, quant, n_threads=n_threads)
                best = scorer.measure(tmp)
                log.info("auto: %s mean KL %.5f (budget %.5f), top-1 %.3f", quant, best.mean_kl,
                         max_kl, best.top1_agreement)
                if on_trial is not None:
                    on_trial(quant, best)
                if best.mean_kl <= max_kl:  # NaN (a broken candidate) never passes
                    os.replace(tmp, dst)
                    return AutoQuantChoice(quant, best)
    assert best is not None  # order is never empty
    log.warning("auto: no quantization of %s met mean KL <= %g (tried %s); keeping %s",
                reference.name, max_kl, ", ".join(order), ref_type)
    with atomic_path(dst) as tmp:
        shutil.copyfile(reference, tmp)
    same = QualityMetrics(mean_kl=0.0, top1_agreement=1.0, ppl_reference=best.ppl_reference,
                          ppl_candidate=best.ppl_reference, n_tokens=best.n_tokens)
    return AutoQuantChoice(ref_type, same)
