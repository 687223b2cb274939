"""Qwen2 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm): NeoX rope, so no Q/K permutation."""

from __future__ import annotations

import gguf

from .decoder import DecoderFamily


class Qwen2(DecoderFamily):
    arch = gguf.MODEL_ARCH.QWEN2
    supported_rope_scaling = ("linear", "yarn")

    def add_metadata(self, writer: gguf.GGUFWriter) -> None:
        super().add_metadata(writer)
        if self.scaling and self.scaling["rope_type"] == "yarn":
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(float(self.scaling["factor"]))
            writer.add_rope_scaling_orig_ctx_len(int(self.scaling["original_max_position_embeddings"]))


class Qwen3(Qwen2):
    arch = gguf.MODEL_ARCH.QWEN3
