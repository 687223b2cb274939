"""Gemma 3 text models: (1 + w) RMSNorm weights, sandwich norms, local/global attention layers."""

from __future__ import annotations

import gguf
import numpy as np

from edgeinfer.errors import CheckpointError, UnsupportedArchitectureError
from edgeinfer.untrusted import is_count

from .decoder import DecoderFamily

SWA_PATTERN = 6  # llama.cpp hard-codes Gemma 3's five local layers then one global layer


class Gemma3(DecoderFamily):
    arch = gguf.MODEL_ARCH.GEMMA3
    skip_patterns = (r"rotary_emb\.inv_freq$", r"^(vision_tower|multi_modal_projector)\.")
    unsupported_if = {
        "final_logit_softcapping": lambda v: v is not None,
        "attn_logit_softcapping": lambda v: v is not None,
        "use_bidirectional_attention": bool,
    }

    def __init__(self, ckpt) -> None:  # noqa: ANN001
        super().__init__(ckpt)
        scalar = ckpt.get("query_pre_attn_scalar", default=self.head_dim)
        if int(scalar) != self.head_dim:
            raise UnsupportedArchitectureError(
                f"Gemma 3 with query_pre_attn_scalar={scalar} (head_dim {self.head_dim}) is not supported: "
                "llama.cpp scales attention by 1/sqrt(head_dim) for these sizes"
            )
        types = ckpt.get("layer_types")
        expected = ["full_attention" if (i + 1) % SWA_PATTERN == 0 else "sliding_attention"
                    for i in range(self.n_layers)]
        pattern = ckpt.get("sliding_window_pattern", "_sliding_window_pattern")  # configs without layer_types
        if types is None and pattern is not None:
            if not is_count(pattern) or pattern < 1:
                raise CheckpointError(f"{ckpt.root}/config.json: sliding_window_pattern={pattern!r} is not a "
                                      "whole number of layers; the config is damaged")
            types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                     for i in range(self.n_layers)]
        if types is not None and list(types) != expected:
            raise UnsupportedArchitectureError(
                "Gemma 3 with a layer pattern other than 5 local + 1 global is not supported by llama.cpp"
            )

    def add_metadata(self, writer: gguf.GGUFWriter) -> None:
        super().add_metadata(writer)
        local = (self.ckpt.get("rope_parameters") or {}).get("sliding_attention") or {}
        local_base = local.get("rope_theta", self.ckpt.get("rope_local_base_freq", default=1e4))
        writer.add_rope_freq_base_swa(float(local_base))
        writer.add_sliding_window(int(self.ckpt.get("sliding_window", default=4096)))

    def transform(self, gguf_name: str, array: np.ndarray) -> np.ndarray:
        if gguf_name.endswith("norm.weight"):
            return array + np.float32(1.0)  # HF computes x * (1 + w); llama.cpp multiplies by w
        return array
