"""The "onnx" backend entry: an ONNX folder opens as an embedding encoder or a decoder, as its
edgeinfer.json says (``embedding: true`` -> OnnxEmbeddingBackend, else OnnxBackend)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .base import Backend


def is_embedding_folder(path: str | os.PathLike[str]) -> bool:
    """True when the folder's edgeinfer.json marks an embedding model (unreadable: False, and the
    decoder backend reports the problem)."""
    try:
        meta = json.loads((Path(path) / "edgeinfer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("embedding") is True


def open_onnx(path: str | os.PathLike[str], **options: Any) -> Backend:
    """The backend that runs this ONNX folder (same keyword options as OnnxBackend)."""
    if is_embedding_folder(path):
        from .onnx_embed import OnnxEmbeddingBackend

        return OnnxEmbeddingBackend(path, **options)
    from .onnx import OnnxBackend

    return OnnxBackend(path, **options)
