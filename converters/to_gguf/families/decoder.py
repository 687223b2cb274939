"""Llama-style decoders: the shared hyperparameters, and the Llama / Mistral modules themselves."""

from __future__ import annotations

import math
from collections.abc import Iterator

import gguf
import numpy as np

from edgeinfer.errors import CheckpointError, UnsupportedArchitectureError

from .base import Family, TensorPlan, rope_scaling, rope_theta

FILE_TYPES = {  # GGUF general.file_type for the types we write directly
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}


class DecoderFamily(Family):
    """A causal LM with RMSNorm, RoPE and grouped-query attention."""

    output_required = False  # llama.cpp needs output.weight even when the embeddings are tied
    supported_rope_scaling: tuple[str, ...] = ("linear",)

    def __init__(self, ckpt) -> None:  # noqa: ANN001
        super().__init__(ckpt)
        self.hidden = int(ckpt.require("hidden_size"))
        self.n_head = int(ckpt.require("num_attention_heads"))
        self.n_head_kv = int(ckpt.get("num_key_value_heads", default=self.n_head))
        self.head_dim = int(ckpt.get("head_dim", default=self.hidden // self.n_head))
        embed = next((r for n, r in ckpt.tensors.items() if n.endswith("embed_tokens.weight")), None)
        if embed is not None and embed.shape[-1] != self.hidden:
            raise CheckpointError(
                f"{ckpt.root}/config.json says hidden_size={self.hidden} but {embed.name} has rows of "
                f"{embed.shape[-1]}; the config does not belong to these weights"
            )
        self.scaling = rope_scaling(ckpt)
        if self.scaling and self.scaling["rope_type"] not in self.supported_rope_scaling:
            raise UnsupportedArchitectureError(
                f"{ckpt.architecture}: rope scaling {self.scaling['rope_type']!r} is not supported "
                f"(supported: {', '.join(self.supported_rope_scaling)})"
            )

    def add_metadata(self, writer: gguf.GGUFWriter) -> None:
        ck = self.ckpt
        writer.add_context_length(int(ck.get("max_position_embeddings", default=2048)))
        writer.add_embedding_length(self.hidden)
        writer.add_block_count(self.n_layers)
        writer.add_feed_forward_length(int(ck.require("intermediate_size")))
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_head_kv)
        writer.add_key_length(self.head_dim)
        writer.add_value_length(self.head_dim)
        writer.add_rope_dimension_count(self.rope_dims())
        writer.add_rope_freq_base(rope_theta(ck))
        writer.add_layer_norm_rms_eps(float(ck.get("rms_norm_eps", default=1e-5)))
        writer.add_vocab_size(int(ck.require("vocab_size")))
        if self.scaling and self.scaling["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(self.scaling["factor"]))

    def rope_dims(self) -> int:
        params = self.ckpt.get("rope_parameters") or {}
        factor = self.ckpt.get("partial_rotary_factor", default=params.get("partial_rotary_factor", 1.0))
        return int(self.head_dim * float(factor))

    def plans(self) -> Iterator[TensorPlan]:
        yield from super().plans()
        tensors = self.ckpt.tensors
        if self.output_required and "lm_head.weight" not in tensors:
            embed = "model.embed_tokens.weight"
            yield TensorPlan("output.weight", tensors[embed].shape, lambda: self.ckpt.load(embed),
                             chunks=lambda: self.ckpt.rows(embed))

    def gguf_name(self, hf_name: str) -> str | None:
        tied = self.ckpt.get("tie_word_embeddings", default=False)
        if hf_name == "lm_head.weight" and tied and not self.output_required:
            return None  # llama.cpp reuses token_embd; writing it twice only costs disk
        return super().gguf_name(hf_name)


def permute_rope(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half Q/K layout -> the interleaved pairs llama.cpp's Llama rope expects."""
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


class Llama(DecoderFamily):
    """Llama 1/2/3, SmolLM, TinyLlama: Q/K rows permuted for llama.cpp's normal-mode rope."""

    arch = gguf.MODEL_ARCH.LLAMA
    supported_rope_scaling = ("linear", "llama3")

    def transform(self, gguf_name: str, array: np.ndarray) -> np.ndarray:
        if ".attn_q." in gguf_name:
            return permute_rope(array, self.n_head)
        if ".attn_k." in gguf_name:
            return permute_rope(array, self.n_head_kv)
        return array

    def row_local(self, gguf_name: str) -> bool:
        return ".attn_q." not in gguf_name and ".attn_k." not in gguf_name  # permuted per head

    def plans(self) -> Iterator[TensorPlan]:
        yield from super().plans()
        if self.scaling and self.scaling["rope_type"] == "llama3":
            factors = llama3_rope_factors(self.scaling, rope_theta(self.ckpt), self.head_dim)
            yield TensorPlan("rope_freqs.weight", factors.shape, lambda: factors, keep_f32=True)


def llama3_rope_factors(scaling: dict, base: float, dim: int) -> np.ndarray:
    """Llama 3.1's per-frequency rope factors, as llama.cpp reads them from rope_freqs."""
    factor = float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    out = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


class Mistral(Llama):
    """Mistral: Llama's layout; a sliding window (when set) is not implemented by llama.cpp's llama."""

    unsupported_if = {"sliding_window": lambda v: v is not None and int(v) < 1 << 20}
