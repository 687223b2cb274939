"""The conversion half of ``edgeinfer pull hf:ORG/REPO`` for a safetensors repo: ``edgeinfer.pull`` downloads
and pins, this converts the checkpoint into the cache with ``--quant auto`` and its quality report.

    from edgeinfer_converters import pull
    pull("hf:HuggingFaceTB/SmolLM2-360M-Instruct")   # downloaded, converted, pinned in your models.lock
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeinfer.hub import HubSpec
from edgeinfer.lock import ModelEntry
from edgeinfer.paths import atomic_write, scratch_dir
from edgeinfer.prepared import checkpoint_target
from edgeinfer.pull import PullResult
from edgeinfer.pull import pull as hub_pull
from edgeinfer.reports import read_report, report_path

from .options import DEFAULT_MAX_KL
from .to_gguf.families import FAMILIES

ENCODERS = ("BertModel", "BertForMaskedLM")  # no next-token logits: converted to F16, pinned as embedding


@dataclass
class CheckpointConverter:
    """Converts a pulled checkpoint into the cache (``edgeinfer.pull.Converter``)."""

    max_kl: float = DEFAULT_MAX_KL
    progress: bool = True
    n_threads: int | None = None
    quality: bool = True  # measure the quality report (``auto`` always does: it chooses by it)
    report: dict[str, Any] | None = None  # the report of the last conversion

    def refuse(self, config: dict[str, Any]) -> str | None:
        archs = config.get("architectures")
        arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
        if arch is None:
            return "its config.json names no architecture"
        if arch not in FAMILIES:
            return f"unsupported architecture {arch}; edgeinfer converts {', '.join(sorted(FAMILIES))}"
        return None

    def is_encoder(self, config: dict[str, Any]) -> bool:
        return (config.get("architectures") or [None])[0] in ENCODERS

    def convert(self, folder: Path, entry: ModelEntry, quant: str, on_progress: Callable[[str], None]) -> str:
        """Convert into a scratch file beside the cache's GGUFs, then rename it (and its report) to the
        name of the type made; nothing is left behind on failure."""
        from .conversion import convert

        target = checkpoint_target(entry, "pull")
        target.parent.mkdir(parents=True, exist_ok=True)
        on_progress(f"{entry.name}: converting to GGUF ({quant}; quality measured against the checkpoint)")
        with scratch_dir(target, "convert") as work:
            scratch = work / f"{entry.name}.gguf"  # the name its progress bars show
            result = convert(folder, scratch, quant=quant, max_kl=self.max_kl, progress=self.progress,
                             n_threads=self.n_threads, name=entry.file, quality=self.quality)
            final = checkpoint_target(replace(entry, quantization=result.quant), result.quant)
            self.report = read_report(scratch)
            if self.report is not None:
                self.report.update(artifact=final.name, source=f"{entry.description} ({folder})")
                with atomic_write(report_path(final), "w") as handle:
                    json.dump(self.report, handle, indent=2)
            os.replace(scratch, final)
        return result.quant


def pull(spec: HubSpec | str, *, max_kl: float = DEFAULT_MAX_KL, progress: bool = True,
         n_threads: int | None = None, quality: bool = True, **options: Any) -> PullResult:
    """``edgeinfer.pull.pull`` with the converters: a safetensors repo is converted (``quant`` "auto" by
    default: the smallest type within ``max_kl``) and pinned; a GGUF repo is downloaded and pinned.
    ``quality=False`` skips the quality report of a named type (about half the time of a small model)."""
    converter = CheckpointConverter(max_kl=max_kl, progress=progress, n_threads=n_threads, quality=quality)
    return hub_pull(spec, converter=converter, progress=progress, **options)
