"""Rotary embedding tables (cos/sin per position), computed the way transformers does in float32."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeinfer.errors import UnsupportedArchitectureError

from ..checkpoint import Checkpoint
from ..to_gguf.families.base import rope_scaling, rope_theta


def _llama3(inv_freq: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Llama 3.1's frequency-dependent scaling (transformers' ``_compute_llama3_parameters``)."""
    factor = float(params["factor"])
    low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
    old_len = float(params["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(factor), inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _linear(inv_freq: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    return (inv_freq / np.float32(params["factor"])).astype(np.float32)


SCALINGS = {"llama3": _llama3, "linear": _linear}


def _local_params(ckpt: Checkpoint) -> tuple[float, dict[str, Any] | None]:
    """Theta and scaling of Gemma 3's sliding-window layers (either config layout)."""
    per_type = ckpt.get("rope_parameters") or {}
    local = per_type.get("sliding_attention") if isinstance(per_type, dict) else None
    if not isinstance(local, dict):
        return float(ckpt.get("rope_local_base_freq", default=10000.0)), None
    kind = local.get("rope_type") or local.get("type") or "default"
    scaling = None if kind == "default" else {**local, "rope_type": kind}
    return float(local.get("rope_theta", 10000.0)), scaling


def inv_freq(ckpt: Checkpoint, head_dim: int, local: bool = False) -> np.ndarray:
    """Inverse frequencies for ``head_dim`` with the checkpoint's rope scaling applied (``local``:
    the sliding-window layers' own rope, as Gemma 3 has)."""
    if float(ckpt.get("partial_rotary_factor", default=1.0)) != 1.0:
        raise UnsupportedArchitectureError(f"{ckpt.architecture}: partial rotary is not supported")
    theta, params = _local_params(ckpt) if local else (rope_theta(ckpt), rope_scaling(ckpt))
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    freqs = (np.float32(1.0) / np.float32(theta) ** exponents).astype(np.float32)
    if params is None:
        return freqs
    scale = SCALINGS.get(params["rope_type"])
    if scale is None:
        raise UnsupportedArchitectureError(
            f"{ckpt.architecture}: rope scaling {params['rope_type']!r} is not supported for ONNX"
        )
    return scale(freqs, params)


def cos_sin(freqs: np.ndarray, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """[max_positions, head_dim/2] cos and sin tables (float32 products, as transformers computes)."""
    angles = np.arange(max_positions, dtype=np.float32)[:, None] * freqs[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
