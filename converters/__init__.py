"""Converters from Hugging Face checkpoints to quantized GGUF and ONNX artifacts (see docs/ARCHITECTURE.md).

Attributes load lazily, so ``import edgeinfer_converters`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

from .options import DEFAULT_MAX_KL, FORMATS

_LAZY = {
    "Checkpoint": "checkpoint",
    "ConversionResult": "conversion",
    "convert": "conversion",
    "prepare": "preparation",
    "pull": "hub_pull",
    "quant_names": "conversion",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = ["DEFAULT_MAX_KL", "FORMATS", "Checkpoint", "ConversionResult", "convert", "prepare", "pull",
           "quant_names"]
