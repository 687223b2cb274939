"""GPTQ (Frantar et al., 2022): quantize a weight column by column, spreading each column's rounding error
onto the columns not yet quantized through the inverse Hessian of the layer's inputs (H = X^T X over
calibration tokens), so the layer's output, not each weight, stays close. Same MatMulNBits blocks and
per-block parameter search as round-to-nearest; only the codes (and so the error) differ.
"""

from __future__ import annotations

import numpy as np

from .blocks import Blocks, block_params, pack_blocks, quantize_blocks

DAMPING = 0.01  # share of the mean diagonal added to H, as the paper does
LAZY = 128  # columns updated together before the rest of the weight (a multiple of the block size)


def gptq_blocks(weight: np.ndarray, hessian: np.ndarray, bits: int, block: int, symmetric: bool) -> Blocks:
    """Quantize ``weight`` [N, K] given ``hessian`` [K, K] of its inputs; round-to-nearest when K is not a
    whole number of blocks or H cannot be inverted."""
    n, k = weight.shape
    if k % block or LAZY % block:
        return quantize_blocks(weight, bits, block, symmetric)
    w = np.array(weight, dtype=np.float32)
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices(k)] += DAMPING * np.mean(np.diag(h))
    try:
        upper = np.linalg.cholesky(np.linalg.inv(h)).T.astype(np.float32)  # H^-1 = U^T U
    except np.linalg.LinAlgError:
        return quantize_blocks(weight, bits, block, symmetric)
    levels = 2**bits - 1
    codes = np.zeros((n, k), np.float32)
    scales = np.zeros((n, k // block), np.float32)
    zeros = np.zeros((n, k // block), np.float32)
    for b0 in range(0, k, LAZY):
        b1 = min(b0 + LAZY, k)
        part = w[:, b0:b1].copy()
        errors = np.zeros_like(part)
        for j in range(b1 - b0):
            col = b0 + j
            if col % block == 0:  # the block's scale and zero point from its weights as updated so far
                _, s, z = block_params(part[:, None, j:j + block], bits, symmetric)
                scales[:, col // block], zeros[:, col // block] = s[:, 0], z[:, 0]
                scale, zero = s[:, 0].astype(np.float32), z[:, 0].astype(np.float32)
            q = np.clip(np.rint(part[:, j] / np.where(scale == 0, 1, scale)) + zero, 0, levels)
            codes[:, col] = q
            err = (part[:, j] - (q - zero) * scale) / upper[col, col]
            part[:, j + 1:] -= np.outer(err, upper[col, col + 1:b1])
            errors[:, j] = err
        w[:, b1:] -= errors @ upper[b0:b1, b1:]
    return pack_blocks(codes.reshape(n, k // block, block), scales, zeros, bits, symmetric)
