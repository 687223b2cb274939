"""BERT encoders (sentence-transformers models such as all-MiniLM-L6-v2) as plain ONNX ops, pooled in-graph.

Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64 [batch, seq], padding on the right);
outputs ``last_hidden_state`` [batch, seq, hidden] and ``sentence_embedding`` [batch, hidden], pooled as
the folder's sentence-transformers Pooling module says (mean, CLS or last token) and not normalised
(``Model.embed`` normalises). Per layer: fused QKV MatMul -> bidirectional attention with the padding
masked -> output projection -> residual + LayerNorm -> erf GELU MLP -> residual + LayerNorm (post-norm).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto
from tqdm import tqdm

from edgeinfer.errors import CheckpointError, UnsupportedArchitectureError

from ..checkpoint import Checkpoint
from ..to_gguf.families import FAMILIES
from ..to_gguf.families.bert import Bert, pooling_type
from .graph import Graph

F32, I64 = TensorProto.FLOAT, TensorProto.INT64
MASKED = float(np.finfo(np.float32).min)
POOLINGS = {"MEAN": "mean", "CLS": "cls", "LAST": "last"}  # gguf.PoolingType name -> edgeinfer.json
NORMALIZE_MODULE = "sentence_transformers.models.Normalize"
SKIPPED_PREFIXES = ("pooler.", "cls.")  # task heads: not part of a sentence embedding


def is_bert(ckpt: Checkpoint) -> bool:
    """True for the BERT architectures the GGUF converter accepts (BertModel, BertForMaskedLM)."""
    return FAMILIES.get(ckpt.architecture) == "bert:Bert"


def normalizes(ckpt: Checkpoint) -> bool:
    """True when the sentence-transformers pipeline ends with a Normalize module (unit vectors)."""
    path = ckpt.root / "modules.json"
    try:
        modules = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        return any(m.get("type") == NORMALIZE_MODULE for m in modules)
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc})") from exc


def bert_pooling(ckpt: Checkpoint) -> str:
    """'mean', 'cls' or 'last' from the folder's Pooling module; refused when it has none or another."""
    try:
        kind = pooling_type(ckpt)
    except UnsupportedArchitectureError as exc:
        raise UnsupportedArchitectureError(f"{exc}; the ONNX converter supports the same three") from None
    if kind is None:
        raise UnsupportedArchitectureError(
            f"{ckpt.root} has no sentence-transformers Pooling module (modules.json + its config.json): "
            "edgeinfer serves BERT as a sentence-embedding model and needs to know how to pool"
        )
    return POOLINGS[kind.name]


@dataclass(frozen=True)
class BertDims:
    """Hyperparameters read once from the config."""

    hidden: int
    n_layers: int
    n_heads: int
    intermediate: int
    vocab: int
    eps: float
    max_positions: int
    type_vocab: int

    @classmethod
    def of(cls, ckpt: Checkpoint) -> BertDims:
        hidden, n_heads = int(ckpt.require("hidden_size")), int(ckpt.require("num_attention_heads"))
        if hidden % n_heads:
            raise CheckpointError(f"hidden_size {hidden} is not a multiple of num_attention_heads {n_heads}")
        return cls(hidden=hidden, n_layers=int(ckpt.require("num_hidden_layers")), n_heads=n_heads,
                   intermediate=int(ckpt.require("intermediate_size")), vocab=int(ckpt.require("vocab_size")),
                   eps=float(ckpt.get("layer_norm_eps", default=1e-12)),
                   max_positions=int(ckpt.get("max_position_embeddings", default=512)),
                   type_vocab=int(ckpt.get("type_vocab_size", default=2)))


def check_bert(ckpt: Checkpoint) -> str:
    """Refuse what this builder cannot convert (before any output exists); returns the pooling."""
    Bert(ckpt)  # the GGUF family's checks: activation, absolute positions, no decoder variants
    BertDims.of(ckpt)
    return bert_pooling(ckpt)


class BertBuilder:
    """Builds the encoder into ``g``, loading (and dropping) one tensor at a time."""

    def __init__(self, g: Graph, ckpt: Checkpoint) -> None:
        self.pooling = check_bert(ckpt)
        self.g, self.ckpt = g, ckpt
        self.d = BertDims.of(ckpt)
        self.act = str(ckpt.get("hidden_act", default="gelu"))
        self.normalize = normalizes(ckpt)
        # HF names without the "bert." prefix of task heads, TF-style gamma/beta renamed
        self.names = {Bert.hf_key(name): name for name in ckpt.tensors}
        self.used: set[str] = set()

    # --- weights ------------------------------------------------------------------------------
    def _load(self, key: str) -> np.ndarray:
        name = self.names.get(key)
        if name is None:
            raise CheckpointError(f"{self.ckpt.root} lacks tensor {key!r}; the checkpoint is incomplete")
        self.used.add(name)
        return self.ckpt.load(name)

    def _param(self, key: str, array: np.ndarray | None = None) -> str:
        return self.g.weight(key, self._load(key) if array is None else array)

    def linear(self, x: str, prefix: str) -> str:
        """x @ W^T + b, W stored transposed [in, out] (a MatMul the int8/int4 quantizer can take)."""
        y = self.g.op("MatMul", x, self._param(f"{prefix}.weight", self._load(f"{prefix}.weight").T))
        return self.g.op("Add", y, self._param(f"{prefix}.bias"))

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.g.op("LayerNormalization", x, self._param(f"{prefix}.weight"),
                         self._param(f"{prefix}.bias"), axis=-1, epsilon=self.d.eps)

    # --- graph ----------------------------------------------------------------------------------
    def build(self, *, progress: bool = False) -> None:
        g, d = self.g, self.d
        ids = g.input("input_ids", I64, ["batch", "seq"])
        mask = g.input("attention_mask", I64, ["batch", "seq"])
        types = g.input("token_type_ids", I64, ["batch", "seq"])
        x = self.embeddings(ids, types)
        mask_f = g.op("Cast", mask, to=F32)
        # [batch, 1, 1, seq]: 0 where attended, float32 min on padding
        bias = g.op("Mul", g.op("Sub", g.const(1.0, np.float32), mask_f), g.const(MASKED, np.float32))
        bias = g.op("Unsqueeze", bias, g.const([1, 2]))
        for i in tqdm(range(d.n_layers), desc="layers", disable=not progress, leave=False):
            x = self.layer(x, bias, f"encoder.layer.{i}")
        g.output(x, "last_hidden_state", F32, ["batch", "seq", d.hidden])
        g.output(self.pool(x, mask_f), "sentence_embedding", F32, ["batch", d.hidden])
        unused = sorted(n for n in set(self.ckpt.tensors) - self.used
                        if not Bert.hf_key(n).startswith(SKIPPED_PREFIXES) and not n.endswith("position_ids"))
        if unused:
            raise UnsupportedArchitectureError(
                f"{self.ckpt.architecture}: tensors {unused[:4]} are not used by the ONNX encoder; this "
                "checkpoint is a variant the converter does not know"
            )

    def embeddings(self, ids: str, types: str) -> str:
        """Word + absolute position + token type embeddings, then LayerNorm."""
        g = self.g
        seq = g.op("Gather", g.op("Shape", ids), g.const(1))
        positions = g.op("Unsqueeze", g.op("Range", g.const(0), seq, g.const(1)), g.const([0]))  # [1, seq]
        x = g.op("Gather", self._param("embeddings.word_embeddings.weight"), ids)
        x = g.op("Add", x, g.op("Gather", self._param("embeddings.position_embeddings.weight"), positions))
        x = g.op("Add", x, g.op("Gather", self._param("embeddings.token_type_embeddings.weight"), types))
        return self.layer_norm(x, "embeddings.LayerNorm")

    def layer(self, x: str, bias: str, p: str) -> str:
        g, d = self.g, self.d
        head_dim = d.hidden // d.n_heads
        parts = [f"{p}.attention.self.{n}" for n in ("query", "key", "value")]
        qkv_w = np.concatenate([self._load(f"{part}.weight") for part in parts])
        qkv_b = np.concatenate([self._load(f"{part}.bias") for part in parts])
        qkv = g.op("Add", g.op("MatMul", x, g.weight(f"{p}.attention.self.qkv.weight", qkv_w.T)),
                   g.weight(f"{p}.attention.self.qkv.bias", qkv_b))
        del qkv_w, qkv_b
        heads = g.const([0, 0, d.n_heads, head_dim])  # [batch, seq, heads, head_dim]
        split = g.op("Split", qkv, g.const([d.hidden] * 3), axis=-1, n_out=3)
        q, k, v = (g.op("Reshape", t, heads) for t in split)
        q = g.op("Transpose", q, perm=[0, 2, 1, 3])  # [batch, heads, seq, head_dim]
        k = g.op("Transpose", k, perm=[0, 2, 3, 1])  # [batch, heads, head_dim, seq]
        v = g.op("Transpose", v, perm=[0, 2, 1, 3])
        scores = g.op("Mul", g.op("MatMul", q, k), g.const(1.0 / math.sqrt(head_dim), np.float32))
        probs = g.op("Softmax", g.op("Add", scores, bias), axis=-1)
        ctx = g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", ctx, g.const([0, 0, d.hidden]))
        x = self.layer_norm(g.op("Add", self.linear(ctx, f"{p}.attention.output.dense"), x),
                            f"{p}.attention.output.LayerNorm")
        h = self.gelu(self.linear(x, f"{p}.intermediate.dense"))
        return self.layer_norm(g.op("Add", self.linear(h, f"{p}.output.dense"), x), f"{p}.output.LayerNorm")

    def gelu(self, x: str) -> str:
        """GELU as the config names it: exact (erf; onnxruntime fuses it into one Gelu kernel) or tanh."""
        g = self.g
        if self.act == "gelu":
            inner = g.op("Erf", g.op("Div", x, g.const(math.sqrt(2.0), np.float32)))
        else:  # gelu_new / gelu_pytorch_tanh
            cube = g.op("Mul", g.op("Mul", x, x), x)
            poly = g.op("Add", x, g.op("Mul", cube, g.const(0.044715, np.float32)))
            inner = g.op("Tanh", g.op("Mul", poly, g.const(math.sqrt(2.0 / math.pi), np.float32)))
        half = g.op("Mul", x, g.const(0.5, np.float32))
        return g.op("Mul", half, g.op("Add", inner, g.const(1.0, np.float32)))

    def pool(self, x: str, mask_f: str) -> str:
        """The sentence vector: masked mean, the [CLS] row, or the last unpadded row."""
        g = self.g
        if self.pooling == "cls":
            return g.op("Gather", x, g.const(0), axis=1)
        if self.pooling == "last":
            last = g.op("Sub", g.op("ReduceSum", mask_f, g.const([1]), keepdims=1), g.const(1.0, np.float32))
            index = g.op("Expand", g.op("Unsqueeze", g.op("Cast", last, to=I64), g.const([2])),
                         g.const([1, 1, self.d.hidden]))  # [batch, 1, hidden]
            return g.op("Squeeze", g.op("GatherElements", x, index, axis=1), g.const([1]))
        weights = g.op("Unsqueeze", mask_f, g.const([2]))  # [batch, seq, 1]
        total = g.op("ReduceSum", g.op("Mul", x, weights), g.const([1]), keepdims=0)
        count = g.op("Max", g.op("ReduceSum", mask_f, g.const([1]), keepdims=1), g.const(1e-9, np.float32))
        return g.op("Div", total, count)

    def metadata(self) -> dict[str, Any]:
        """edgeinfer.json fields of this encoder."""
        d = self.d
        return {"arch": "bert", "architecture": self.ckpt.architecture, "embedding": True,
                "n_embd": d.hidden, "n_layers": d.n_layers, "n_heads": d.n_heads, "vocab_size": d.vocab,
                "pooling": self.pooling, "normalize": self.normalize, "context_length": d.max_positions,
                "pad_token_id": int(self.ckpt.get("pad_token_id", default=0))}
