"""Block quantization in MatMulNBits' layout: codes, one fp32 scale per block of input weights and
(asymmetric) an integer zero point, chosen per block by least squared error over shrunk ranges."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHRINKS = np.linspace(1.0, 0.7, 13, dtype=np.float32)  # range shrink factors tried per block


@dataclass
class Blocks:
    """A [N, K] weight in MatMulNBits layout: data [N, n_blocks, block*bits/8], scales [N, n_blocks],
    zero points packed per row (None: the symmetric default, 2^(bits-1))."""

    data: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    bits: int
    block: int


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes -> bytes, two 4-bit codes per byte (low nibble first) as MatMulNBits reads them."""
    if bits == 8:
        return q.astype(np.uint8)
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros(q.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


Candidate = tuple[np.ndarray, np.ndarray]  # per-block scale and zero point


def _fit(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, levels: int,
         rounds: int = 2) -> tuple[np.ndarray, ...]:
    """Codes for ``x`` at (scale, zero), then the least-squares scale for those codes, ``rounds`` times;
    returns codes, scale and the squared error per block."""
    for _ in range(rounds):
        safe = np.where(scale == 0, 1, scale)
        q = np.clip(np.rint(x / safe[..., None]) + zero[..., None], 0, levels)
        centred = q - zero[..., None]
        norm = np.square(centred).sum(axis=-1)
        fitted = (x * centred).sum(axis=-1) / np.where(norm == 0, 1, norm)
        scale = np.where(norm == 0, scale, fitted)
    err = np.square((q - zero[..., None]) * scale[..., None] - x).sum(axis=-1)
    return q, scale, err


def _best(x: np.ndarray, candidates: list[Candidate], levels: int) -> tuple[np.ndarray, ...]:
    """Per block, the (scale, zero point) candidate with the least squared error after refitting its
    scale; returns codes, scale, zero point."""
    best_err = best_q = best_s = best_z = None
    for scale, zero in candidates:
        q, scale, err = _fit(x, scale, zero, levels)
        if best_err is None:
            best_err, best_q, best_s, best_z = err, q, scale, zero
            continue
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_q = np.where(better[..., None], q, best_q)
        best_s, best_z = np.where(better, scale, best_s), np.where(better, zero, best_z)
    return best_q.astype(np.uint8), best_s.astype(np.float32), best_z.astype(np.uint8)


def block_params(x: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes, scale and zero point of each block of ``x`` [rows, n_blocks, block], by least squared error
    over shrunk ranges: symmetric keeps the zero point at 2^(bits-1), asymmetric picks an integer one."""
    levels = 2**bits - 1
    mid = 2 ** (bits - 1)
    if symmetric:  # scale from the signed extreme, shrunk
        lo, hi = x.min(axis=-1), x.max(axis=-1)
        extreme = np.where(-lo > hi, lo, hi)
        zero = np.full(extreme.shape, mid, np.float32)
        candidates = [(extreme / -mid * t, zero) for t in SHRINKS]
    else:  # both ends shrunk toward the middle
        lo, hi = np.minimum(x.min(axis=-1), 0), np.maximum(x.max(axis=-1), 0)
        candidates = []
        for t in SHRINKS:
            scale = (hi - lo) * t / levels
            zero = np.clip(np.rint(-lo * t / np.where(scale == 0, 1, scale)), 0, levels)
            candidates.append((scale, zero))
    return _best(x, candidates, levels)


def pack_blocks(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int, symmetric: bool) -> Blocks:
    """Codes [N, n_blocks, block] with their scales and zero points, in MatMulNBits layout."""
    zero_points = None
    if not symmetric:
        zero_points = _pack(zeros.astype(np.uint8), bits) if bits == 4 else zeros.astype(np.uint8)
    return Blocks(_pack(q.astype(np.uint8), bits), scales.astype(np.float32), zero_points, bits, q.shape[-1])


def padded_blocks(weight: np.ndarray, block: int) -> np.ndarray:
    """``weight`` [N, K] as [N, n_blocks, block], the last block zero-padded."""
    n, k = weight.shape
    n_blocks = -(-k // block)
    x = np.zeros((n, n_blocks * block), np.float32)
    x[:, :k] = weight
    return x.reshape(n, n_blocks, block)


def quantize_blocks(weight: np.ndarray, bits: int, block: int, symmetric: bool) -> Blocks:
    """Round-to-nearest block quantization of ``weight`` [N, K] along K (scales searched per block)."""
    x = padded_blocks(weight, block)
    q, scales, zeros = block_params(x, bits, symmetric)
    return pack_blocks(q, scales, zeros, bits, symmetric)
