"""Llama-family decoders (Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 3) as plain ONNX ops with a KV cache.

Per layer: RMSNorm -> Q/K/V (optional bias, optional per-head q/k norm) -> rotary from cos/sin tables
gathered by ``position_ids`` -> concat with the past -> grouped attention (queries reshaped to
[batch, kv_heads, rep*seq, head_dim], so KV heads are never copied) -> output projection -> gated MLP.
Gemma 3 adds norms after attention and MLP, (1 + w) norm weights, scaled embeddings, GELU, and per-layer
sliding windows with their own rope tables. The cache keeps every position; windows are masks.
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

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
MASKED = float(np.finfo(np.float32).min)


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

    def linear(self, x: str, hf: str, rows: np.ndarray | None = None) -> str:
        """x @ W^T (+ b); W stored transposed [in, out]. ``rows`` is a slice of a fused weight."""
        weight = self._load(f"{hf}.weight") if rows is None else rows
        y = self.g.op("MatMul", x, self.g.weight(f"{hf}.weight", weight.T))
        if self._has(f"{hf}.bias"):
            y = self.g.op("Add", y, self.g.weight(f"{hf}.bias", self._load(f"{hf}.bias")))
        return y

    def rms_norm(self, x: str, hf: str) -> str:
        g = self.g
        mean_sq = g.op("ReduceMean", g.op("Mul", x, x), axes=[-1], keepdims=1)
        inv = g.op("Reciprocal", g.op("Sqrt", g.op("Add", mean_sq, g.const(self.d.eps, np.float32))))
        weight = self._load(hf) + np.float32(self.spec.norm_offset)
        return g.op("Mul", g.op("Mul", x, inv), g.weight(hf, weight))

    # --- graph pieces -------------------------------------------------------------------------
    def attention_bias(self, mask: str, seq: str, total: str, window: int | None) -> str:
        """[batch, 1, seq, total] additive mask: causal by cache position, padding from attention_mask."""
        g = self.g
        past = g.op("Squeeze", g.op("Sub", total, seq), g.const([0]))
        end = g.op("Squeeze", total, g.const([0]))
        one = g.const(1)
        q_pos = g.op("Unsqueeze", g.op("Range", past, end, one), g.const([1]))  # [seq, 1]
        k_pos = g.op("Unsqueeze", g.op("Range", g.const(0), end, one), g.const([0]))  # [1, total]
        allowed = g.op("LessOrEqual", k_pos, q_pos)
        if window:
            start = g.op("Sub", q_pos, g.const(window))
            allowed = g.op("And", allowed, g.op("Greater", k_pos, start))
        padding = g.op("Cast", g.op("Unsqueeze", mask, g.const([1, 2])), to=BOOL)  # [batch, 1, 1, total]
        allowed = g.op("And", allowed, padding)
        return g.op("Where", allowed, g.const(0.0, np.float32), g.const(MASKED, np.float32))

    def rotary_tables(self, position_ids: str, local: bool = False) -> tuple[str, str]:
        """cos and sin for each position: [batch, 1, seq, head_dim] (halves repeated, as HF does)."""
        g, prefix = self.g, "rotary_local" if local else "rotary"
        cos, sin = cos_sin(inv_freq(self.ckpt, self.d.head_dim, local), self.d.max_positions)
        out = []
        for name, table in ((f"{prefix}.cos_cache", cos), (f"{prefix}.sin_cache", sin)):
            half = g.op("Gather", g.weight(name, table), position_ids)  # [batch, seq, head_dim/2]
            out.append(g.op("Unsqueeze", g.op("Concat", half, half, axis=-1), g.const([1])))
        return out[0], out[1]

    def rotate(self, x: str, cos: str, sin: str) -> str:
        g, half = self.g, self.d.head_dim // 2
        axis = g.const([-1])
        x1 = g.op("Slice", x, g.const([0]), g.const([half]), axis)
        x2 = g.op("Slice", x, g.const([half]), g.const([self.d.head_dim]), axis)
        rotated = g.op("Concat", g.op("Neg", x2), x1, axis=-1)
        return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin))

    def heads(self, x: str, n: int, norm: str | None) -> str:
        """[batch, seq, n*head_dim] -> [batch, n, seq, head_dim], with the optional per-head norm."""
        x = self.g.op("Reshape", x, self.g.const([0, 0, n, self.d.head_dim]))
        if norm is not None and self._has(norm):
            x = self.rms_norm(x, norm)
        return self.g.op("Transpose", x, perm=[0, 2, 1, 3])

    def attention(self, x: str, i: int, bias: str, rope: tuple[str, str]) -> str:
        g, d, pre = self.g, self.d, f"model.layers.{i}.self_attn"
        if self.spec.fused_qkv:
            fused = self._load(f"{pre}.qkv_proj.weight")
            q_rows, kv_rows = d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim
            q = self.linear(x, f"{pre}.q_proj", fused[:q_rows])
            k = self.linear(x, f"{pre}.k_proj", fused[q_rows:q_rows + kv_rows])
            v = self.linear(x, f"{pre}.v_proj", fused[q_rows + kv_rows:])
            del fused
        else:
            q, k, v = (self.linear(x, f"{pre}.{p}_proj") for p in "qkv")
        q = self.rotate(self.heads(q, d.n_heads, f"{pre}.q_norm.weight"), *rope)
        k = self.rotate(self.heads(k, d.n_kv_heads, f"{pre}.k_norm.weight"), *rope)
        v = self.heads(v, d.n_kv_heads, None)
        past_k = g.input(f"past_key_values.{i}.key", F32, ["batch", d.n_kv_heads, "past_seq", d.head_dim])
        past_v = g.input(f"past_key_values.{i}.value", F32, ["batch", d.n_kv_heads, "past_seq", d.head_dim])
        k = g.op("Concat", past_k, k, axis=2, name=f"present.{i}.key")
        v = g.op("Concat", past_v, v, axis=2, name=f"present.{i}.value")
        q = g.op("Reshape", q, g.const([0, d.n_kv_heads, -1, d.head_dim]))  # [b, kv, rep*seq, hd]
        scores = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
        scores = g.op("Mul", scores, g.const(d.query_scale, np.float32))
        scores = g.op("Add", g.op("Reshape", scores, g.const([0, d.n_heads, -1, 0])), bias)
        probs = g.op("Reshape", g.op("Softmax", scores, axis=-1), g.const([0, d.n_kv_heads, -1, 0]))
        ctx = g.op("Reshape", g.op("MatMul", probs, v), g.const([0, d.n_heads, -1, d.head_dim]))
        ctx = g.op("Transpose", ctx, perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", ctx, g.const([0, 0, d.n_heads * d.head_dim]))
        return self.linear(ctx, f"{pre}.o_proj")

    def mlp(self, x: str, i: int) -> str:
        g, pre = self.g, f"model.layers.{i}.mlp"
        if self.spec.fused_qkv:
            fused = self._load(f"{pre}.gate_up_proj.weight")
            gate = self.linear(x, f"{pre}.gate_proj", fused[: self.d.intermediate])
            up = self.linear(x, f"{pre}.up_proj", fused[self.d.intermediate:])
            del fused
        else:
            gate, up = self.linear(x, f"{pre}.gate_proj"), self.linear(x, f"{pre}.up_proj")
        act = self.activation(gate)
        return self.linear(g.op("Mul", act, up), f"{pre}.down_proj")

    def activation(self, x: str) -> str:
        """SiLU, or GELU with the tanh approximation (opset 17 has no Gelu op)."""
        g = self.g
        if self.d.act == "silu":
            return g.op("Mul", x, g.op("Sigmoid", x))
        cube = g.op("Mul", g.const(0.044715, np.float32), g.op("Mul", x, g.op("Mul", x, x)))
        inner = g.op("Mul", g.const((2 / np.pi) ** 0.5, np.float32), g.op("Add", x, cube))
        half_x = g.op("Mul", g.const(0.5, np.float32), x)
        return g.op("Mul", half_x, g.op("Add", g.const(1.0, np.float32), g.op("Tanh", inner)))

    def layer(self, x: str, i: int, bias: str, rope: tuple[str, str]) -> str:
        """One decoder block (with Gemma 3's extra norms around attention and MLP when it has them)."""
        g, pre = self.g, f"model.layers.{i}"
        h = self.attention(self.rms_norm(x, f"{pre}.input_layernorm.weight"), i, bias, rope)
        if self.spec.sandwich_norms:
            h = self.rms_norm(h, f"{pre}.post_attention_layernorm.weight")
            x = g.op("Add", x, h)
            h = self.mlp(self.rms_norm(x, f"{pre}.pre_feedforward_layernorm.weight"), i)
            return g.op("Add", x, self.rms_norm(h, f"{pre}.post_feedforward_layernorm.weight"))
        x = g.op("Add", x, h)
        return g.op("Add", x, self.mlp(self.rms_norm(x, f"{pre}.post_attention_layernorm.weight"), i))

    def build(self, progress: bool = False) -> None:
        """The whole graph: inputs, layers, final norm, logits, presents."""
        g, d = self.g, self.d
        ids = g.input("input_ids", I64, ["batch", "seq"])
        mask = g.input("attention_mask", I64, ["batch", "total_seq"])
        positions = g.input("position_ids", I64, ["batch", "seq"])
        seq = g.op("Shape", ids, start=1, end=2)
        total = g.op("Shape", mask, start=1, end=2)
        biases = {w: self.attention_bias(mask, seq, total, w if w else None)
                  for w in {d.window if s else 0 for s in d.sliding}}
        ropes = {local: self.rotary_tables(positions, local)
                 for local in {s and self.spec.layer_types for s in d.sliding}}
        embed_name = "model.embed_tokens.weight"
        embed = g.weight(embed_name, self._load(embed_name))
        x = g.op("Gather", embed, ids)
        if self.spec.scale_embeddings:
            x = g.op("Mul", x, g.const(np.float32(d.hidden) ** np.float32(0.5), np.float32))
        for i in tqdm(range(d.n_layers), desc="layers", disable=not progress):
            sliding = d.sliding[i]
            x = self.layer(x, i, biases[d.window if sliding else 0], ropes[sliding and self.spec.layer_types])
        x = self.rms_norm(x, "model.norm.weight")
        if self._has("lm_head.weight"):
            logits = self.linear(x, "lm_head")
        else:  # tied: Gemm with transB reads the [vocab, hidden] embedding as it is, no second copy
            flat = g.op("Reshape", x, g.const([-1, d.hidden]))
            out_shape = g.op("Concat", g.op("Shape", ids), g.const([d.vocab]), axis=0)
            logits = g.op("Reshape", g.op("Gemm", flat, embed, transB=1), out_shape)
        if d.final_softcap:
            cap = g.const(float(d.final_softcap), np.float32)
            logits = g.op("Mul", g.op("Tanh", g.op("Div", logits, cap)), cap)
        g.output(logits, "logits", F32, ["batch", "seq", d.vocab])
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
