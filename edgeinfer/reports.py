"""Where an artifact's report.json lives and how it is read back (the converters write it; the runtime and
the CLI read the type and quality it records)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPORT_NAME = "report.json"  # inside a folder artifact (ONNX); a file X.gguf gets X.report.json


def report_path(artifact: Path) -> Path:
    """Where the report of ``artifact`` lives: ``X.report.json`` for ``X.gguf``, ``folder/report.json``."""
    artifact = Path(artifact)
    if artifact.is_dir():
        return artifact / REPORT_NAME
    return artifact.with_name(f"{artifact.stem}.report.json")


def folder_files(folder: Path) -> list[str]:
    """The files of a folder artifact, relative and sorted, without its own report."""
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() != REPORT_NAME
    )


def read_report(artifact: Path) -> dict[str, Any] | None:
    """The artifact's report as a dict, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(report_path(artifact).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
