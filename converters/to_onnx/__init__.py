"""HF checkpoint -> ONNX decoder with a KV cache, built with onnx.helper straight from safetensors."""

from __future__ import annotations

from .decoder import ARCHS
from .export import build_onnx

__all__ = ["ARCHS", "build_onnx"]
