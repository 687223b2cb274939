"""Phi-3 / Phi-3.5 / Phi-4-mini: fused qkv and gate_up projections, which llama.cpp keeps fused."""

from __future__ import annotations

import gguf

from .decoder import DecoderFamily


class Phi3(DecoderFamily):
    arch = gguf.MODEL_ARCH.PHI3
    output_required = True
    supported_rope_scaling = ()  # longrope ("su") needs the long/short factor tensors: not yet

    def add_metadata(self, writer: gguf.GGUFWriter) -> None:
        super().add_metadata(writer)
        orig = self.ckpt.get("original_max_position_embeddings")
        if orig:
            writer.add_rope_scaling_orig_ctx_len(int(orig))
        writer.add_sliding_window(int(self.ckpt.get("sliding_window") or 0))
