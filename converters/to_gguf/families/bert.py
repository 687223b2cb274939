"""BERT encoders (sentence-transformers models such as all-MiniLM-L6-v2), as llama.cpp's converter
writes them: bidirectional attention, the pooling of the sentence-transformers Pooling module, and
no pooler / MLM / NSP heads (llama.cpp only embeds with BERT)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import gguf

from edgeinfer.errors import CheckpointError, UnsupportedArchitectureError

from ...checkpoint import Checkpoint
from .base import Family, TensorPlan

# Pooling module config key -> GGUF pooling type, in the order llama.cpp's converter checks them
POOLING_MODES: tuple[tuple[str, gguf.PoolingType], ...] = (
    ("pooling_mode_mean_tokens", gguf.PoolingType.MEAN),
    ("pooling_mode_cls_token", gguf.PoolingType.CLS),
    ("pooling_mode_lasttoken", gguf.PoolingType.LAST),
)
POOLING_MODULE = "sentence_transformers.models.Pooling"
# 2-D tensors llama.cpp keeps in F32 whatever the file type (its converter's "always F32" list)
F32_TENSORS = ("position_embd.weight", "token_types.weight")


def pooling_type(ckpt: Checkpoint) -> gguf.PoolingType | None:
    """The sentence-transformers pooling of the checkpoint (modules.json -> Pooling config), or None."""
    modules_file = ckpt.root / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        path = next((m.get("path") for m in modules if m.get("type") == POOLING_MODULE), None)
        if path is None:
            return None
        config: dict[str, Any] = json.loads((ckpt.root / path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{ckpt.root}: sentence-transformers modules unreadable ({exc})") from exc
    for key, kind in POOLING_MODES:
        if config.get(key):
            return kind
    enabled = sorted(k for k, v in config.items() if k.startswith("pooling_mode") and v)
    raise UnsupportedArchitectureError(
        f"{ckpt.root}: pooling {enabled or 'none'} is not supported by llama.cpp (MEAN, CLS or LAST only)"
    )


class Bert(Family):
    """BertModel / BertForMaskedLM: an encoder whose GGUF makes sentence embeddings."""

    arch = gguf.MODEL_ARCH.BERT
    is_encoder: ClassVar[bool] = True  # convert() measures no next-token quality for it
    skip_patterns = (
        r"^embeddings\.position_ids$",
        r"^pooler\.",
        r"^cls\.(predictions|seq_relationship)\.",
    )
    unsupported_if = {
        "position_embedding_type": lambda v: v != "absolute",
        "is_decoder": bool,
        "add_cross_attention": bool,
    }

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt)
        act = ckpt.get("hidden_act", default="gelu")
        if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise UnsupportedArchitectureError(f"{ckpt.architecture} with hidden_act={act!r} is unsupported")
        self.pooling = pooling_type(ckpt)

    @staticmethod
    def hf_key(hf_name: str) -> str:
        """The name without the ``bert.`` prefix of task heads, TF-style gamma/beta renamed."""
        name = hf_name.removeprefix("bert.")
        if name.endswith(".gamma"):
            name = name[: -len(".gamma")] + ".weight"
        elif name.endswith(".beta"):
            name = name[: -len(".beta")] + ".bias"
        return name

    def add_metadata(self, writer: gguf.GGUFWriter) -> None:
        ck = self.ckpt
        writer.add_context_length(int(ck.get("max_position_embeddings", default=512)))
        writer.add_embedding_length(int(ck.require("hidden_size")))
        writer.add_feed_forward_length(int(ck.require("intermediate_size")))
        writer.add_block_count(self.n_layers)
        writer.add_head_count(int(ck.require("num_attention_heads")))
        writer.add_layer_norm_eps(float(ck.get("layer_norm_eps", default=1e-12)))
        writer.add_causal_attention(False)
        # llama.cpp sizes token_types.weight from this key (vocab-side in its converter; it is here
        # because the tensor is ours)
        writer.add_token_type_count(int(ck.get("type_vocab_size", default=1)))
        if self.pooling is not None:
            writer.add_pooling_type(self.pooling)
        writer.add_vocab_size(int(ck.require("vocab_size")))

    def gguf_name(self, hf_name: str) -> str | None:
        return super().gguf_name(self.hf_key(hf_name))

    def plans_for(self, hf_name: str, target: str) -> Iterator[TensorPlan]:
        for plan in super().plans_for(hf_name, target):
            yield TensorPlan(plan.name, plan.shape, plan.load, plan.keep_f32 or plan.name in F32_TENSORS)
