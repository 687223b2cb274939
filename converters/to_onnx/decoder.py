"""Llama-family decoders (Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 3) as an ONNX graph with a KV cache,
built from onnxruntime's fused CPU/GPU ops, as onnxruntime-genai's model builder does.

Per layer, about ten nodes: SkipSimplifiedLayerNormalization (residual add + RMSNorm) -> one QKV MatMul
(optional bias, optional per-head q/k norm) -> GroupQueryAttention (rotary, KV cache, causal and
sliding-window mask, grouped heads; past and present may share one preallocated buffer) -> output
MatMul -> norm -> one gate+up MatMul -> SiLU/GELU -> down MatMul. Few nodes matter: a small model's
decode step is bound by per-node overhead, not arithmetic. Gemma 3 adds norms after attention and MLP,
(1 + w) norm weights, scaled embeddings, GELU, and per-layer sliding windows with their own rope tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto
from tqdm import tqdm

from edgeinfer.errors import UnsupportedArchitectureError

from ..checkpoint import Checkpoint
from .graph import Graph
from .rope import cos_sin, inv_freq

F32, I64, I32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32


@dataclass(frozen=True)
class ArchSpec:
    """What differs between the supported decoders (everything else is detected from tensor names)."""

    arch: str
    fused_qkv: bool = False  # Phi-3: one qkv_proj, one gate_up_proj
    sliding_window: bool = False  # config.sliding_window (when set) limits every layer's attention
    layer_types: bool = False  # Gemma 3: config.layer_types picks sliding (local rope) or full per layer
    norm_offset: float = 0.0  # Gemma: RMSNorm scales by (1 + weight)
    sandwich_norms: bool = False  # Gemma 3: norms after attention/MLP too (pre/post_feedforward_layernorm)
    scale_embeddings: bool = False  # Gemma: embeddings times sqrt(hidden_size)


ARCHS: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec("llama"),
    "MistralForCausalLM": ArchSpec("mistral", sliding_window=True),
    "Qwen2ForCausalLM": ArchSpec("qwen2"),
    "Qwen3ForCausalLM": ArchSpec("qwen3"),
    "Phi3ForCausalLM": ArchSpec("phi3", fused_qkv=True, sliding_window=True),
    "Gemma3ForCausalLM": ArchSpec("gemma3", layer_types=True, norm_offset=1.0, sandwich_norms=True,
                                  scale_embeddings=True),
}
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def arch_spec(ckpt: Checkpoint) -> ArchSpec:
    """The spec for this checkpoint, or UnsupportedArchitectureError naming what is supported."""
    spec = ARCHS.get(ckpt.architecture)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"{ckpt.architecture} has no ONNX converter; supported: {', '.join(sorted(ARCHS))}"
        )
    if ckpt.get("use_sliding_window"):
        raise UnsupportedArchitectureError(f"{ckpt.architecture} with use_sliding_window is not supported")
    act = ckpt.get("hidden_activation", "hidden_act", default="silu")
    if act not in ACTIVATIONS:
        raise UnsupportedArchitectureError(f"{ckpt.architecture} with hidden_act={act!r} is not supported")
    if ckpt.get("attn_logit_softcapping") or ckpt.get("use_bidirectional_attention"):
        raise UnsupportedArchitectureError(f"{ckpt.architecture}: attention softcapping or bidirectional "
                                           "attention is not supported")
    return spec


@dataclass
class Dims:
    """Hyperparameters read once from the config."""

    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    max_positions: int
    window: int | None
    act: str
    sliding: list[bool]  # per layer: windowed attention (and local rope for Gemma 3)
    query_scale: float
    final_softcap: float | None

    @classmethod
    def of(cls, ckpt: Checkpoint, spec: ArchSpec) -> Dims:
        hidden = int(ckpt.require("hidden_size"))
        n_heads = int(ckpt.require("num_attention_heads"))
        window = ckpt.get("sliding_window") if spec.sliding_window or spec.layer_types else None
        n_layers = int(ckpt.require("num_hidden_layers"))
        head_dim = int(ckpt.get("head_dim", default=hidden // n_heads))
        if spec.layer_types:
            sliding = [t == "sliding_attention" for t in ckpt.require("layer_types")]
        else:
            sliding = [bool(window)] * n_layers
        return cls(
            hidden=hidden, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=int(ckpt.get("num_key_value_heads", default=n_heads)), head_dim=head_dim,
            intermediate=int(ckpt.require("intermediate_size")), vocab=int(ckpt.require("vocab_size")),
            eps=float(ckpt.get("rms_norm_eps", default=1e-6)),
            max_positions=int(ckpt.get("max_position_embeddings", default=4096)),
            window=int(window) if window else None,
            act=str(ckpt.get("hidden_activation", "hidden_act", default="silu")), sliding=sliding,
            query_scale=float(ckpt.get("query_pre_attn_scalar", default=head_dim)) ** -0.5,
            final_softcap=ckpt.get("final_logit_softcapping"),
        )


class DecoderBuilder:
    """Builds the graph into ``g``, loading (and dropping) one tensor at a time."""

    def __init__(self, g: Graph, ckpt: Checkpoint, spec: ArchSpec) -> None:
        self.g, self.ckpt, self.spec = g, ckpt, spec
        self.d = Dims.of(ckpt, spec)
        self.used: set[str] = set()

    # --- weights ------------------------------------------------------------------------------
    def _load(self, name: str) -> np.ndarray:
        self.used.add(name)
        return self.ckpt.load(name)

    def _has(self, name: str) -> bool:
        return name in self.ckpt.tensors

    def _rows(self, fused: str | None, parts: list[str]) -> np.ndarray:
        """A [sum(sizes), in] weight: the checkpoint's fused one, or its parts stacked."""
        if fused is not None:
            return self._load(fused)
        return np.concatenate([self._load(p) for p in parts], axis=0)

    def linear(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray | None = None) -> str:
        """x @ W^T (+ b); W stored transposed [in, out], the layout MatMul (and its quantizer) expects."""
        y = self.g.op("MatMul", x, self.g.weight(f"{name}.weight", weight.T))
        if bias is not None:
            y = self.g.op("Add", y, self.g.weight(f"{name}.bias", bias))
        return y

    def gamma(self, hf: str) -> str:
        return self.g.weight(hf, self._load(hf) + np.float32(self.spec.norm_offset))

    def norm(self, x: str, hf: str) -> str:
        """RMSNorm over the last axis (onnxruntime's SimplifiedLayerNormalization)."""
        return self.g.op("SimplifiedLayerNormalization", x, self.gamma(hf), axis=-1, epsilon=self.d.eps)

    def add_norm(self, residual: str, delta: str | None, hf: str) -> tuple[str, str]:
        """``residual + delta`` and its RMSNorm in one SkipSimplifiedLayerNormalization; returns
        (normed, new residual). With no delta pending it is a plain norm."""
        if delta is None:
            return self.norm(residual, hf), residual
        normed, total = self.g.ms("SkipSimplifiedLayerNormalization", delta, residual, self.gamma(hf),
                                  n_out=4, skip=(1, 2), epsilon=self.d.eps)[::3]
        return normed, total

    # --- graph pieces -------------------------------------------------------------------------
    def head_norm(self, x: str, n: int, hf: str) -> str:
        """Qwen3 / Gemma 3 per-head RMSNorm on [batch, seq, n*head_dim] (before rotary)."""
        g = self.g
        y = self.norm(g.op("Reshape", x, g.const([0, 0, n, self.d.head_dim])), hf)
        return g.op("Reshape", y, g.const([0, 0, n * self.d.head_dim]))

    def attention(self, x: str, i: int, cache: dict[str, str], rope: tuple[str, str]) -> str:
        """Fused QKV projection, then GroupQueryAttention: rotary, the KV cache (past and present may
        share one preallocated buffer), causal and sliding-window masking, grouped heads, all in one op."""
        g, d, pre = self.g, self.d, f"model.layers.{i}.self_attn"
        sizes = [d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim, d.n_kv_heads * d.head_dim]
        parts = [f"{pre}.{p}_proj" for p in "qkv"]
        weight = self._rows(f"{pre}.qkv_proj.weight" if self.spec.fused_qkv else None,
                            [f"{p}.weight" for p in parts])
        bias = None
        if self._has(f"{pre}.q_proj.bias"):
            bias = np.concatenate([self._load(f"{p}.bias") for p in parts])
        qkv = self.linear(x, f"{pre}.qkv_proj", weight, bias)
        del weight
        if self._has(f"{pre}.q_norm.weight"):
            q, k, v = g.op("Split", qkv, g.const(sizes), axis=-1, n_out=3)
            q = self.head_norm(q, d.n_heads, f"{pre}.q_norm.weight")
            k = self.head_norm(k, d.n_kv_heads, f"{pre}.k_norm.weight")
        else:
            q, k, v = qkv, "", ""  # packed: GroupQueryAttention splits it itself
        past_k = g.input(f"past_key_values.{i}.key", F32, ["batch", d.n_kv_heads, "past_seq", d.head_dim])
        past_v = g.input(f"past_key_values.{i}.value", F32, ["batch", d.n_kv_heads, "past_seq", d.head_dim])
        window = d.window if d.sliding[i] and d.window else -1
        present = [f"present.{i}.key", f"present.{i}.value"]  # named directly: no copy between buffers
        out = g.ms("GroupQueryAttention", q, k, v, past_k, past_v, cache["seqlens_k"], cache["total"], *rope,
                   n_out=3, outputs=[f"layers.{i}.attn", *present], num_heads=d.n_heads,
                   kv_num_heads=d.n_kv_heads, do_rotary=1, rotary_interleaved=0, local_window_size=window,
                   scale=d.query_scale)[0]
        return self.linear(out, f"{pre}.o_proj", self._load(f"{pre}.o_proj.weight"))

    def mlp(self, x: str, i: int) -> str:
        """Gated MLP with gate and up in one matmul."""
        g, pre, n = self.g, f"model.layers.{i}.mlp", self.d.intermediate
        weight = self._rows(f"{pre}.gate_up_proj.weight" if self.spec.fused_qkv else None,
                            [f"{pre}.gate_proj.weight", f"{pre}.up_proj.weight"])
        gate, up = g.op("Split", self.linear(x, f"{pre}.gate_up_proj", weight), g.const([n, n]), axis=-1,
                        n_out=2)
        del weight
        if self.d.act == "silu":
            act = g.op("Mul", gate, g.op("Sigmoid", gate))
        else:  # GELU, tanh approximation
            act = g.ms("FastGelu", gate)
        return self.linear(g.op("Mul", act, up), f"{pre}.down_proj", self._load(f"{pre}.down_proj.weight"))

    def layer(self, residual: str, delta: str | None, i: int, cache: dict[str, str],
              rope: tuple[str, str]) -> tuple[str, str]:
        """One decoder block; takes and returns (residual stream, delta not yet added to it), so each
        residual add shares a node with the norm that follows it. Gemma 3 norms the attention and MLP
        outputs too (sandwich norms)."""
        pre = f"model.layers.{i}"
        h, residual = self.add_norm(residual, delta, f"{pre}.input_layernorm.weight")
        h = self.attention(h, i, cache, rope)
        if self.spec.sandwich_norms:
            h = self.norm(h, f"{pre}.post_attention_layernorm.weight")
            h, residual = self.add_norm(residual, h, f"{pre}.pre_feedforward_layernorm.weight")
            return residual, self.norm(self.mlp(h, i), f"{pre}.post_feedforward_layernorm.weight")
        h, residual = self.add_norm(residual, h, f"{pre}.post_attention_layernorm.weight")
        return residual, self.mlp(h, i)

    def cache_inputs(self, mask: str) -> dict[str, str]:
        """GroupQueryAttention's view of the cache: per-row valid length - 1, and the total length."""
        g = self.g
        lengths = g.op("ReduceSum", mask, g.const([1]), keepdims=0)
        seqlens_k = g.op("Cast", g.op("Sub", lengths, g.const(1)), to=I32)
        total = g.op("Cast", g.op("Squeeze", g.op("Shape", mask, start=1, end=2), g.const([0])), to=I32)
        return {"seqlens_k": seqlens_k, "total": total}

    def rope_tables(self, local: bool) -> tuple[str, str]:
        """[max_positions, head_dim/2] cos and sin tables (GroupQueryAttention's cos_cache/sin_cache)."""
        prefix = "rotary_local" if local else "rotary"
        cos, sin = cos_sin(inv_freq(self.ckpt, self.d.head_dim, local), self.d.max_positions)
        return self.g.weight(f"{prefix}.cos_cache", cos), self.g.weight(f"{prefix}.sin_cache", sin)

    def build(self, progress: bool = False) -> None:
        """The whole graph: inputs, layers, final norm, logits, presents."""
        g, d = self.g, self.d
        ids = g.input("input_ids", I64, ["batch", "seq"])
        mask = g.input("attention_mask", I64, ["batch", "total_seq"])
        g.input("position_ids", I64, ["batch", "seq"])  # part of the contract; positions follow the mask
        cache = self.cache_inputs(mask)
        ropes = {local: self.rope_tables(local) for local in {s and self.spec.layer_types for s in d.sliding}}
        embed_name = "model.embed_tokens.weight"
        embed = g.weight(embed_name, self._load(embed_name))
        x = g.op("Gather", embed, ids)
        if self.spec.scale_embeddings:
            x = g.op("Mul", x, g.const(np.float32(d.hidden) ** np.float32(0.5), np.float32))
        residual, delta = x, None
        for i in tqdm(range(d.n_layers), desc="layers", disable=not progress):
            rope = ropes[d.sliding[i] and self.spec.layer_types]
            residual, delta = self.layer(residual, delta, i, cache, rope)
        x, _ = self.add_norm(residual, delta, "model.norm.weight")
        # logits of the last ``num_logits_to_keep`` positions only (0, the default: all): a prompt's
        # prefill needs one row, and the head is a large matmul per row
        keep = g.input("num_logits_to_keep", I64, [], default=np.int64(0))
        start = g.op("Neg", g.op("Reshape", keep, g.const([1])))
        x = g.op("Slice", x, start, g.const([np.iinfo(np.int64).max]), g.const([1]))
        if self._has("lm_head.weight"):
            logits = self.linear(x, "lm_head", self._load("lm_head.weight"))
        else:  # tied: Gemm with transB reads the [vocab, hidden] embedding as it is, no second copy
            flat = g.op("Reshape", x, g.const([-1, d.hidden]))
            out_shape = g.op("Concat", g.op("Shape", x, start=0, end=2), g.const([d.vocab]), axis=0)
            logits = g.op("Reshape", g.op("Gemm", flat, embed, transB=1), out_shape)
        if d.final_softcap:
            cap = g.const(float(d.final_softcap), np.float32)
            logits = g.op("Mul", g.op("Tanh", g.op("Div", logits, cap)), cap)
        g.output(logits, "logits", F32, ["batch", "kept_seq", d.vocab])
        for i in range(d.n_layers):
            for kv in ("key", "value"):
                g.output(f"present.{i}.{kv}", f"present.{i}.{kv}", F32,
                         ["batch", d.n_kv_heads, "total_seq", d.head_dim])
        self._check_all_used()

    def _check_all_used(self) -> None:
        left = sorted(n for n in self.ckpt.tensors if n not in self.used and not n.endswith(IGNORED_SUFFIXES))
        if left:
            raise UnsupportedArchitectureError(
                f"{self.ckpt.architecture}: tensors {left[:3]} are not used by the ONNX decoder; this "
                "checkpoint is a variant the converter does not know"
            )

    def metadata(self) -> dict[str, Any]:
        d = self.d
        return dict(arch=self.spec.arch, architecture=self.ckpt.architecture, n_layers=d.n_layers,
                    n_heads=d.n_heads, n_kv_heads=d.n_kv_heads, head_dim=d.head_dim, hidden_size=d.hidden,
                    vocab_size=d.vocab, context_length=d.max_positions)
