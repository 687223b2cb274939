"""Activation-aware scaling (AWQ, Lin et al., 2023) folded into the graph for free: before a weight is
quantized, its input channels are scaled by s (W·diag(s)), and 1/s goes into whatever produces that
input - the RMSNorm gamma before a QKV or gate+up projection, the up rows before a down projection - so
the fp32 function is unchanged and salient channels get finer steps. s = rms(x)^alpha per channel, alpha
picked per weight by the layer-output error tr(dW H dW^T) of a quick round-to-nearest, H = X^T X.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHAS = np.linspace(0.0, 1.0, 11)


def _rtn_error(weight: np.ndarray, hessian: np.ndarray, bits: int, block: int) -> float:
    """Layer-output error of plain min/max asymmetric rounding (fast: only ranks alphas)."""
    n, k = weight.shape
    x = weight.reshape(n, k // block, block)
    lo, hi = np.minimum(x.min(axis=-1, keepdims=True), 0), np.maximum(x.max(axis=-1, keepdims=True), 0)
    levels = 2**bits - 1
    scale = np.where(hi > lo, (hi - lo) / levels, 1)
    zero = np.rint(-lo / scale)
    delta = ((np.clip(np.rint(x / scale) + zero, 0, levels) - zero) * scale - x).reshape(n, k)
    return float(np.einsum("nk,kj,nj->", delta, hessian, delta, optimize=True))


def channel_scales(weight_nk: np.ndarray, hessian: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Per input channel s (mean 1 in log space) minimizing the output error; all ones when no alpha
    beats plain rounding."""
    k = weight_nk.shape[1]
    if k % block:
        return np.ones(k, np.float32)
    rms = np.sqrt(np.maximum(np.diag(hessian), 1e-12))
    best, best_err = np.ones(k, np.float32), None
    for alpha in ALPHAS:
        s = rms**alpha
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        # quantizing W·diag(s) then dividing by s: the error seen by the original inputs
        h_scaled = hessian / s[:, None] / s[None, :]
        err = _rtn_error(weight_nk * s[None, :], h_scaled, bits, block)
        if best_err is None or err < best_err:
            best, best_err = s, err
    return best


@dataclass
class Fold:
    """Where a weight's input channels come from: ``gamma`` (a norm's scale, divided by s) or the
    ``rows`` [start, stop) of a producing weight's output (stored [in, out]: columns divided by s)."""

    weight: str
    gamma: str | None = None
    producer: str | None = None
    start: int = 0
    stop: int = 0
