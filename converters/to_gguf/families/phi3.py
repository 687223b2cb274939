"""Phi-3 / Phi-3.5 / Phi-4-mini: fused qkv and gate_up projections, which llama.cpp keeps fused, and
longrope ("su") scaling, written as llama.cpp's converter writes it: the short and long per-frequency
factors as rope_factors_short/long tensors and the attention factor as rope.scaling.attn_factor.

llama.cpp uses the short factors while a sequence's context (n_ctx per sequence) is within
original_max_position_embeddings and the long ones beyond; transformers switches on the actual sequence
length, so past that length the two agree only when the context is sized to the text."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import gguf
import numpy as np

from edgeinfer.errors import CheckpointError
from edgeinfer.untrusted import is_count

from .base import TensorPlan
from .decoder import DecoderFamily

LONGROPE = ("longrope", "su")  # "su": the name in the first Phi-3 configs


class Phi3(DecoderFamily):
    arch = gguf.MODEL_ARCH.PHI3
    output_required = True
    supported_rope_scaling = LONGROPE

    def __init__(self, ckpt) -> None:  # noqa: ANN001
        super().__init__(ckpt)
        self.factors = longrope_factors(self.scaling, self.rope_dims(), ckpt.root) if self.scaling else None

    def original_context(self) -> int | None:
        """original_max_position_embeddings (top level, or in the rope dict of newer configs)."""
        value = self.ckpt.get("original_max_position_embeddings")
        if value is None and self.scaling:
            value = self.scaling.get("original_max_position_embeddings")
        if value is not None and not (is_count(value) and 1 < value <= 1 << 24):
            raise CheckpointError(f"{self.ckpt.root}/config.json: original_max_position_embeddings={value!r} "
                                  "is not a context length; the config is damaged")
        return value

    def add_metadata(self, writer: gguf.GGUFWriter) -> None:
        super().add_metadata(writer)
        orig = self.original_context()
        if orig:
            writer.add_rope_scaling_orig_ctx_len(orig)
        writer.add_sliding_window(int(self.ckpt.get("sliding_window") or 0))
        if self.factors is not None:
            writer.add_rope_scaling_attn_factors(self.attention_factor())

    def attention_factor(self) -> float:
        """transformers' longrope attention scaling: the config's attention_factor, else
        sqrt(1 + ln s / ln orig) for the extension s (the config's factor, else max / original context)."""
        assert self.scaling is not None
        given = self.scaling.get("attention_factor")
        if given is not None:
            return self.positive(given, "attention_factor")
        orig = self.original_context()
        if not orig:
            raise CheckpointError(f"{self.ckpt.root}/config.json: longrope scaling without "
                                  "original_max_position_embeddings; the config is incomplete")
        factor = self.scaling.get("factor")
        if factor is None:
            factor = int(self.ckpt.get("max_position_embeddings", default=orig)) / orig
        scale = self.positive(factor, "factor")
        return math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0

    def positive(self, value: object, key: str) -> float:
        """``value`` (the rope dict's ``key``) as a float, or a CheckpointError when it is not a sane one."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
            raise CheckpointError(f"{self.ckpt.root}/config.json: longrope {key}={value!r} is not a positive "
                                  "number; the config is damaged")
        return float(value)

    def plans(self) -> Iterator[TensorPlan]:
        yield from super().plans()
        if self.factors is not None:
            kinds = (gguf.MODEL_TENSOR.ROPE_FACTORS_LONG, gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT)
            for kind, values in zip(kinds, self.factors, strict=True):
                yield TensorPlan(f"{gguf.TENSOR_NAMES[kind]}.weight", values.shape, lambda v=values: v,
                                 keep_f32=True)


def longrope_factors(scaling: dict[str, Any], rope_dims: int, root: object) -> tuple[np.ndarray, np.ndarray]:
    """(long, short) factor arrays, one per rotary frequency (rope_dims / 2 each), or a CheckpointError."""
    arrays = []
    for kind in ("long", "short"):
        values = scaling.get(f"{kind}_factor")
        try:
            array = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            array = np.zeros(0, dtype=np.float32)
        if array.shape != (rope_dims // 2,) or not (np.isfinite(array).all() and (array > 0).all()):
            raise CheckpointError(
                f"{root}/config.json: longrope {kind}_factor must be {rope_dims // 2} positive numbers (one "
                f"per frequency of {rope_dims} rotary dimensions), got {values!r:.80}; the config is damaged")
        arrays.append(array)
    return arrays[0], arrays[1]
