"""What kind of artifact a path holds ('gguf', 'onnx', 'hf' or 'unknown'), read from what is on disk."""

from __future__ import annotations

from pathlib import Path


def artifact_format(path: Path) -> str:
    """'gguf', 'onnx' or 'hf' from what is on disk."""
    if path.is_dir():
        if (path / "model.onnx").is_file():
            return "onnx"
        if (path / "config.json").is_file():
            return "hf"
        return "unknown"
    with open(path, "rb") as handle:
        return "gguf" if handle.read(4) == b"GGUF" or path.suffix == ".gguf" else "unknown"
