"""report.json beside every converted artifact: what it is, its checksum, size and measured quality."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeinfer import __version__
from edgeinfer.gguf_check import read_gguf_header
from edgeinfer.hashing import sha256_file, sha256_tree
from edgeinfer.paths import atomic_write
from edgeinfer.reports import folder_files, read_report, report_path

from .quality import QualityMetrics


def gguf_weight_stats(path: Path) -> tuple[int, int]:
    """(n_params, weight bytes) of a GGUF: every tensor counts, norms and embeddings included;
    the header, metadata and tokenizer do not."""
    header = read_gguf_header(path)
    return header.n_params, header.weight_bytes


def bits_per_weight(path: Path) -> float:
    """Average stored bits per parameter of a GGUF: 8 x (bytes of all tensors) / (their elements).

    Counts every tensor (embeddings, output, norms, biases), so small models, whose embeddings
    and unquantizable 1D tensors weigh more, show more than the quant type's nominal figure.
    """
    n_params, n_bytes = gguf_weight_stats(path)
    return 8.0 * n_bytes / n_params if n_params else 0.0


def write_report(
    artifact: Path,
    *,
    source: Path,
    fmt: str,
    quant: str,
    quality: QualityMetrics | None,
    reference: str | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the artifact's report (atomically) and return its path; ``quality`` None = the reference."""
    artifact = Path(artifact)
    if artifact.is_dir():
        files = folder_files(artifact)
        size = sum((artifact / f).stat().st_size for f in files)
        sha = sha256_tree(artifact, files)
        n_params = bpw = None  # ONNX: filled in by its converter through ``extra``
    else:
        files = None
        size = artifact.stat().st_size
        sha = sha256_file(artifact)
        n_params, bpw = None, None
        if fmt == "gguf":
            n_params, n_bytes = gguf_weight_stats(artifact)
            bpw = round(8.0 * n_bytes / n_params, 4) if n_params else None
    report: dict[str, Any] = {
        "artifact": artifact.name,
        "format": fmt,
        "quant": quant,
        "size_bytes": size,
        "sha256": sha,
        "n_params": n_params,
        "bits_per_weight": bpw,
        "quality": quality.to_dict() if quality is not None else None,
        "reference": reference,
        "source": str(Path(source).resolve()),
        "edgeinfer_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if files is not None:
        report["files"] = files
    report.update(extra or {})
    target = report_path(artifact)
    with atomic_write(target, "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    return target


__all__ = ["bits_per_weight", "read_report", "report_path", "write_report"]
