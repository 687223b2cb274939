"""GGUF -> edgeinfer ONNX decoder folder, keeping the GGUF's quantized weights exactly (no torch, no HF).

The decoder graph is ``DecoderBuilder``'s (the one built from HF checkpoints); only where weights come
from and how a matmul is emitted differ. A GGUF opened here looks like a ``Checkpoint``: an HF config made
from the ``<arch>.*`` metadata, HF tensor names, and ``load`` handing out 1-D tensors as float32 and
matrices as ``BlockWeight``: per block of 32 input weights, unsigned codes, a scale and (Q4_1) an offset:

    w = scale * (code - 2**(bits-1)) + offset

which is what onnxruntime's ``MatMulNBits`` computes (its default zero point, 8 or 128) plus a per-block
offset. Q4_0 and Q8_0 need no offset; Q4_1 (w = d*q + m) has offset m + 8d. MatMulNBits cannot hold that
offset itself at a fast accuracy level: fractional zero points are accepted, but only as float tensors,
which send onnxruntime's CPU kernel to its unpacked path (matmul_nbits.cc: ``has_unquantized_zero_point_``
skips PrePack, so Compute dequantizes the whole matrix to fp32 on every run). So the offset becomes a
small second term, as llama.cpp's own Q4_1 dot product has one (``m * sum(x)`` per block):

    y = MatMulNBits(x; codes, scales) + blocksum(x) @ offsets^T,   blocksum(x) = x summed per block of 32

(a Reshape + ReduceSum shared by the matmuls reading the same x, a [K/32, N] MatMul, an Add). Other
tensor types (float, K-quants, ...) are dequantized and stored as 8-bit blocks (round to nearest).
The tied head reads the embedding's blocks (MatMulNBits), the lookup the same bytes
(GatherBlockQuantized) where the embedding has no offsets.

llama.cpp stores a llama model's q/k projection rows permuted for its rotary layout (convert_hf_to_gguf's
``permute``); rows are put back in HF order (a row permutation moves whole blocks: nothing is requantized),
so the graph's GroupQueryAttention (rotary_interleaved=0) sees HF layout.

The tokenizer.json is built from ``tokenizer.ggml.*`` with the ``tokenizers`` library: byte-level BPE
(``gpt2``) with llama.cpp's pre-tokenizer regexes for ``tokenizer.ggml.pre``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import CheckpointError, ConversionError, UnsupportedArchitectureError

from ..checkpoint import Checkpoint, _check_config
from ..gguf_fields import read_gguf
from .blocks import pack_blocks, quantize_blocks
from .decoder import DecoderBuilder, arch_spec
from .export import DATA_FILE, MODEL_FILE, staged_folder
from .graph import Graph, external_tensor

EMBEDDING = "model.embed_tokens.weight"
BLOCK = 32  # every GGUF type handled exactly here has blocks of 32 along the input dimension

# --- architectures -------------------------------------------------------------------------------------
# GGUF arch -> (HF architecture, q/k rows permuted by convert_hf_to_gguf)
GGUF_ARCHS: dict[str, tuple[str, bool]] = {"llama": ("LlamaForCausalLM", True)}

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {"token_embd.weight": EMBEDDING, "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")


def hf_name(gguf_name: str) -> str | None:
    """The HF tensor name of a llama GGUF tensor (None: not one the decoder knows)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLK.match(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


def unpermute_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row order undoing convert_hf_to_gguf's ``permute`` (as transformers' ``_reverse_permute_weights``):
    ``hf_rows = gguf_rows[index]``."""
    rows = np.arange(n_rows)
    return rows.reshape(n_head, n_rows // n_head // 2, 2).swapaxes(2, 1).reshape(n_rows)


# --- weights -------------------------------------------------------------------------------------------
@dataclass
class BlockWeight:
    """A [N, K] matrix in blocks of ``BLOCK`` input weights: w = scale * (code - 2**(bits-1)) + offset."""

    codes: np.ndarray  # uint8 [N, n_blocks, BLOCK], one code per weight
    scales: np.ndarray  # float32 [N, n_blocks]
    offsets: np.ndarray | None  # float32 [N, n_blocks], or None (no offset)
    bits: int
    source: str  # the GGUF type it came from, e.g. "Q4_1"

    @property
    def shape(self) -> tuple[int, int]:
        n, n_blocks, block = self.codes.shape
        return n, n_blocks * block

    @property
    def exact(self) -> bool:
        return self.source in EXACT_TYPES

    def take(self, rows: np.ndarray) -> BlockWeight:
        offsets = None if self.offsets is None else self.offsets[rows]
        return BlockWeight(self.codes[rows], self.scales[rows], offsets, self.bits, self.source)

    def dequantize(self) -> np.ndarray:
        """The float32 matrix the blocks stand for."""
        mid = np.float32(2 ** (self.bits - 1))
        w = self.scales[..., None] * (self.codes.astype(np.float32) - mid)
        if self.offsets is not None:
            w += self.offsets[..., None]
        return w.reshape(self.shape)

    def widened(self, bits: int, offsets: bool) -> BlockWeight:
        """The same values with ``bits``-bit codes (4 -> 8: codes + 120) and offsets (zeros) if asked."""
        codes = self.codes
        if bits != self.bits:
            codes = (codes.astype(np.int16) + (2 ** (bits - 1) - 2 ** (self.bits - 1))).astype(np.uint8)
        offs = self.offsets
        if offsets and offs is None:
            offs = np.zeros_like(self.scales)
        return BlockWeight(codes, self.scales, offs, bits, self.source)

    @staticmethod
    def concat(parts: list[BlockWeight]) -> BlockWeight:
        """Rows of several matrices stacked (fused QKV / gate+up), in one common layout."""
        bits = max(p.bits for p in parts)
        offsets = any(p.offsets is not None for p in parts)
        parts = [p.widened(bits, offsets) for p in parts]
        sources = sorted({p.source for p in parts})
        return BlockWeight(np.concatenate([p.codes for p in parts]),
                           np.concatenate([p.scales for p in parts]),
                           np.concatenate([p.offsets for p in parts]) if offsets else None, bits,
                           "+".join(sources))


def _f16(raw: np.ndarray) -> np.ndarray:
    """[..., 2] bytes -> float32 of the little-endian float16 they hold."""
    return np.ascontiguousarray(raw).view("<f2")[..., 0].astype(np.float32)


def _q4_0(raw: np.ndarray) -> BlockWeight:  # block: d (f16), 16 bytes: q[j] low nibble, q[j+16] high
    qs = raw[..., 2:]
    codes = np.concatenate([qs & 0xF, qs >> 4], axis=-1)
    return BlockWeight(codes, _f16(raw[..., 0:2]), None, 4, "Q4_0")


def _q4_1(raw: np.ndarray) -> BlockWeight:  # block: d, m (f16), 16 bytes; w = d*q + m = d*(q-8) + (m+8d)
    d, m = _f16(raw[..., 0:2]), _f16(raw[..., 2:4])
    qs = raw[..., 4:]
    codes = np.concatenate([qs & 0xF, qs >> 4], axis=-1)
    return BlockWeight(codes, d, m + np.float32(8) * d, 4, "Q4_1")


def _q8_0(raw: np.ndarray) -> BlockWeight:  # block: d (f16), 32 int8; w = d*q = d*((q+128) - 128)
    codes = (raw[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return BlockWeight(codes, _f16(raw[..., 0:2]), None, 8, "Q8_0")


EXACT_TYPES = {"Q4_0": (_q4_0, 18), "Q4_1": (_q4_1, 20), "Q8_0": (_q8_0, 34)}


def block_weight(tensor: Any) -> BlockWeight:
    """A GGUF matrix (``gguf_fields.Tensor``) as blocks: exact for Q4_0/Q4_1/Q8_0, else dequantized to
    float32 and rounded to 8-bit blocks of 32 (symmetric)."""
    import gguf

    kind = tensor.tensor_type.name
    data = np.asarray(tensor.data)
    if kind in EXACT_TYPES:
        parse, size = EXACT_TYPES[kind]
        return parse(data.reshape(data.shape[0], -1, size))
    # a float matrix, a K-quant, ...: dequantized, then 8-bit blocks
    matrix = np.asarray(gguf.quants.dequantize(data, tensor.tensor_type), dtype=np.float32)
    if matrix.shape[1] % BLOCK:
        raise ConversionError(f"{tensor.name}: {matrix.shape[1]} inputs is not a multiple of {BLOCK}")
    blocks = quantize_blocks(matrix, 8, BLOCK, symmetric=True)
    return BlockWeight(blocks.data, blocks.scales, None, 8, f"{kind}->8bit")


# --- the GGUF as a checkpoint --------------------------------------------------------------------------
class GgufCheckpoint(Checkpoint):
    """A GGUF file seen as ``DecoderBuilder`` sees an HF ``Checkpoint``: config, HF tensor names, load (the
    config lookups are Checkpoint's own)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        fields, tensors = read_gguf(self.path)
        self.meta: dict[str, Any] = {f.name: f.value for f in fields}
        arch = self.meta.get("general.architecture")
        if arch not in GGUF_ARCHS:
            raise UnsupportedArchitectureError(
                f"{self.path.name}: GGUF architecture {arch!r} has no ONNX converter; supported: "
                f"{', '.join(sorted(GGUF_ARCHS))}")
        self.gguf_arch = arch
        hf_arch, self.permuted = GGUF_ARCHS[arch]
        named: dict[str, Any] = {}
        unknown = []
        for tensor in tensors:
            name = hf_name(tensor.name)
            if name is None:
                unknown.append(tensor.name)
            else:
                named[name] = tensor
        if unknown:  # rope_freqs (llama 3.1 scaling), biases, ...: a variant this converter does not know
            raise UnsupportedArchitectureError(f"{self.path.name}: tensors {unknown[:3]} are not supported")
        self.tensors = named  # read by _config (tied head or not)
        config = self._config(hf_arch)
        _check_config(self.path.parent, config, named)
        super().__init__(root=self.path.parent, config=config, tensors=named,
                         name=str(self.meta.get("general.name") or self.path.stem))

    def _key(self, key: str, default: Any = None) -> Any:
        return self.meta.get(f"{self.gguf_arch}.{key}", default)

    def _config(self, hf_arch: str) -> dict[str, Any]:
        """The HF config this GGUF's metadata stands for (what DecoderBuilder reads)."""
        hidden = self._key("embedding_length")
        heads = self._key("attention.head_count")
        if isinstance(heads, list) or isinstance(self._key("attention.head_count_kv"), list):
            raise UnsupportedArchitectureError(f"{self.path.name}: per-layer head counts are not supported")
        for key in ("embedding_length", "attention.head_count", "block_count"):
            value = self._key(key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CheckpointError(f"{self.path.name}: {self.gguf_arch}.{key} = {value!r} is not a size "
                                      "(a damaged file?)")
        if self._key("attention.key_length") is None and hidden % heads:
            raise CheckpointError(f"{self.path.name}: embedding_length {hidden} is not a multiple of "
                                  f"head_count {heads} (a damaged file?)")
        head_dim = self._key("attention.key_length", hidden // heads)
        if self._key("rope.dimension_count", head_dim) != head_dim:
            raise UnsupportedArchitectureError(f"{self.path.name}: partial rotary is not supported")
        scaling = self._key("rope.scaling.type")
        config: dict[str, Any] = {
            "architectures": [hf_arch], "model_type": self.gguf_arch, "hidden_size": hidden,
            "num_hidden_layers": self._key("block_count"), "num_attention_heads": heads,
            "num_key_value_heads": self._key("attention.head_count_kv", heads), "head_dim": head_dim,
            "intermediate_size": self._key("feed_forward_length"),
            "vocab_size": self._key("vocab_size") or len(self.meta.get("tokenizer.ggml.tokens") or []),
            "rms_norm_eps": self._key("attention.layer_norm_rms_epsilon", 1e-5),
            "max_position_embeddings": self._key("context_length", 4096),
            "rope_theta": self._key("rope.freq_base", 10000.0), "hidden_act": "silu",
            "tie_word_embeddings": "lm_head.weight" not in self.tensors,
        }
        if scaling == "linear":
            config["rope_scaling"] = {"rope_type": "linear", "factor": self._key("rope.scaling.factor", 1.0)}
        elif scaling not in (None, "none"):
            raise UnsupportedArchitectureError(f"{self.path.name}: rope scaling {scaling!r} is not supported")
        return config

    @property
    def config_source(self) -> str:
        return f"{self.path.name} (its metadata)"

    def load(self, name: str) -> Any:
        """A 1-D tensor as float32; a matrix as ``BlockWeight`` (q/k rows back in HF order)."""
        import gguf

        try:
            tensor = self.tensors[name]
        except KeyError as exc:
            raise CheckpointError(f"{self.path.name} lacks tensor {name!r}") from exc
        if len(tensor.data.shape) == 1:
            return np.asarray(gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type), np.float32)
        weight = block_weight(tensor)
        if self.permuted and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = self.config["num_attention_heads" if "q_proj" in name else "num_key_value_heads"]
            weight = weight.take(unpermute_rows(weight.shape[0], heads))
        return weight

    def chat_template(self) -> str | None:
        template = self.meta.get("tokenizer.chat_template")
        return template if isinstance(template, str) else None


# --- the graph -----------------------------------------------------------------------------------------
class BlockGraph(Graph):
    """A Graph that takes ``BlockWeight``s too: stored as MatMulNBits blocks when a node reads them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.blocks: dict[str, BlockWeight] = {}
        self._stored: set[str] = set()

    def weight(self, name: str, array: Any) -> str:
        if isinstance(array, BlockWeight):  # stored by whichever node reads it (see GgufDecoderBuilder)
            self.blocks[name] = array
            return name
        return super().weight(name, array)

    def raw(self, name: str, array: np.ndarray) -> str:
        """Any-dtype initializer written as it is, once per name."""
        if name not in self._stored:
            self.initializers.append(external_tensor(self._data, self._data_name, name, array))
            self._stored.add(name)
        return name


class GgufDecoderBuilder(DecoderBuilder):
    """DecoderBuilder whose matmuls are MatMulNBits on the GGUF's own blocks (plus the offset term)."""

    def __init__(self, g: BlockGraph, ckpt: GgufCheckpoint, accuracy_level: int = 4) -> None:
        super().__init__(g, ckpt, arch_spec(ckpt))  # type: ignore[arg-type]
        self.accuracy_level = accuracy_level
        self._sums: dict[tuple[str, int], str] = {}
        self.types: dict[str, str] = {}  # HF weight -> how it is stored, for edgeinfer.json

    def _load(self, name: str) -> Any:
        value = super()._load(name)
        if isinstance(value, BlockWeight):
            self.types[name] = value.source
        return value

    def _rows(self, fused: str | None, parts: list[str]) -> Any:
        if fused is not None:
            return self._load(fused)
        loaded = [self._load(p) for p in parts]
        if all(isinstance(w, BlockWeight) for w in loaded):
            return BlockWeight.concat(loaded)
        return np.concatenate([w.dequantize() if isinstance(w, BlockWeight) else w for w in loaded], axis=0)

    def linear(self, x: str, name: str, weight: Any, bias: np.ndarray | None = None) -> str:
        if not isinstance(weight, BlockWeight):
            return super().linear(x, name, weight, bias)
        y = self.nbits(x, name, weight, rank=3)
        if bias is not None:
            y = self.g.op("Add", y, self.g.weight(f"{name}.bias", bias))
        return y

    def block_sums(self, x: str, k: int, rank: int) -> str:
        """x [..., K] summed per block of BLOCK inputs: [..., K/BLOCK] (one per x, shared)."""
        key = (x, k)
        if key not in self._sums:
            g = self.g
            shape = g.const([0] * (rank - 1) + [k // BLOCK, BLOCK])
            self._sums[key] = g.op("ReduceSum", g.op("Reshape", x, shape), g.const([-1]), keepdims=0)
        return self._sums[key]

    def nbits(self, x: str, name: str, weight: BlockWeight, rank: int, output: str | None = None) -> str:
        """x @ W^T as MatMulNBits on W's blocks (+ blocksum(x) @ offsets^T when W has offsets)."""
        g = self.g
        assert isinstance(g, BlockGraph)
        n, k = weight.shape
        packed = pack_blocks(weight.codes, weight.scales, np.zeros_like(weight.scales), weight.bits, True)
        data = g.raw(f"{name}.q{weight.bits}", packed.data)
        scales = g.raw(f"{name}.scales", packed.scales)
        attrs = dict(K=k, N=n, bits=weight.bits, block_size=BLOCK, accuracy_level=self.accuracy_level)
        if weight.offsets is None:
            return g.ms("MatMulNBits", x, data, scales, outputs=[output] if output else None, **attrs)
        y = g.ms("MatMulNBits", x, data, scales, **attrs)
        offsets = g.raw(f"{name}.offsets", np.ascontiguousarray(weight.offsets.T, dtype=np.float32))
        correction = g.op("MatMul", self.block_sums(x, k, rank), offsets)
        return g.op("Add", y, correction, outputs=[output] if output else None)

    def build(self, progress: bool = False) -> None:
        super().build(progress)
        self._quantized_embedding()

    def _quantized_embedding(self) -> None:
        """The embedding lookup and the tied head, which ``build`` wrote as Gather / Gemm(transB) on the
        table: GatherBlockQuantized on its blocks (or Gather on its dequantized table when it has
        offsets), and MatMulNBits."""
        g = self.g
        assert isinstance(g, BlockGraph)
        table = g.blocks.get(EMBEDDING)
        if table is None:
            return
        old, g.nodes = g.nodes, []
        for node in old:
            reads_table = len(node.input) > 1 and EMBEDDING in (node.input[0], node.input[1])
            if node.op_type == "Gather" and reads_table:
                self._lookup(table, node.input[1], node.output[0])
            elif node.op_type == "Gemm" and reads_table:
                self.nbits(node.input[0], "lm_head", table, rank=2, output=node.output[0])
            else:
                g.nodes.append(node)

    def _lookup(self, table: BlockWeight, ids: str, output: str) -> None:
        g = self.g
        assert isinstance(g, BlockGraph)
        n, k = table.shape
        if table.offsets is not None or table.bits != 8:  # GatherBlockQuantized: integer zero points
            # only (and 4-bit tables are untried here): the dequantized table
            g.nodes.append(_node("Gather", [g.raw(f"{EMBEDDING}.f32", table.dequantize()), ids], [output]))
            return
        packed = pack_blocks(table.codes, table.scales, np.zeros_like(table.scales), table.bits, True)
        data = g.raw(f"lm_head.q{table.bits}", packed.data)  # the head's bytes: one copy for both
        scales = g.raw(f"{EMBEDDING}.scales3d", packed.scales.reshape(n, k // BLOCK, 1))
        rows = g.ms("GatherBlockQuantized", data, ids, scales, gather_axis=0, quantize_axis=2,
                    block_size=BLOCK, bits=table.bits)
        g.op("Reshape", rows, g.const([0, 0, k]), outputs=[output])


def _node(op: str, inputs: list[str], outputs: list[str]) -> Any:
    from onnx import helper

    return helper.make_node(op, inputs, outputs, name=f"{outputs[0]}/{op.lower()}")


# --- tokenizer -----------------------------------------------------------------------------------------
# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp) per tokenizer.ggml.pre, applied in turn
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS: dict[str, list[str]] = {
    **{pre: [r"\p{N}", _GPT2] for pre in ("smollm", "starcoder", "refact", "command-r", "codeshell",
                                          "exaone", "minerva-7b")},
    **{pre: [_GPT2] for pre in ("gpt-2", "mpt", "olmo", "jais", "trillion")},
    **{pre: [_LLAMA3] for pre in ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx")},
    **{pre: [_QWEN2] for pre in ("qwen2", "deepseek-r1-qwen", "megrez")},
}
CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


def gguf_tokenizer(meta: dict[str, Any]) -> Any:
    """A ``tokenizers.Tokenizer`` for the GGUF's byte-level BPE vocabulary, splitting text as llama.cpp
    does."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if model != "gpt2":
        raise ConversionError(f"tokenizer {model!r}: only byte-level BPE (gpt2) vocabularies are supported")
    if pre not in PRE_TOKENIZERS:
        known = ", ".join(sorted(PRE_TOKENIZERS))
        raise ConversionError(f"pre-tokenizer {pre!r} is not known; supported: {known}")
    tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if not tokens or len(types) != len(tokens) or not all(isinstance(t, str) for t in tokens):
        raise ConversionError("the GGUF's tokenizer.ggml.tokens / token_type are missing or disagree "
                              "(a damaged file?)")
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {token: i for i, token in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types, strict=True) if kind == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, kind in zip(tokens, types, strict=True) if kind == USER_DEFINED])
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and isinstance(bos, int) and 0 <= bos < len(tokens):
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A $B", special_tokens=[(tokens[bos], bos)])
    return tok


def _tokenizer_config(meta: dict[str, Any]) -> dict[str, Any]:
    tokens = meta["tokenizer.ggml.tokens"]
    named = {key: tokens[i] for key, field in (("bos_token", "bos"), ("eos_token", "eos"),
                                               ("unk_token", "unknown"), ("pad_token", "padding"))
             if isinstance(i := meta.get(f"tokenizer.ggml.{field}_token_id"), int) and 0 <= i < len(tokens)}
    return {**named, "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
            "chat_template": meta.get("tokenizer.chat_template"),
            "tokenizer_class": "PreTrainedTokenizerFast"}


# --- the folder ----------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _summary(types: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in types.values():
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def gguf_to_onnx(gguf_path: str | Path, out_dir: str | Path, *, accuracy_level: int = 4, force: bool = False,
                 progress: bool = False) -> Path:
    """Write ``out_dir``: an edgeinfer ONNX decoder folder (model.onnx + data, edgeinfer.json,
    tokenizer.json, tokenizer_config.json) with the GGUF's own quantized weights; returns ``out_dir``."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    try:
        ckpt = GgufCheckpoint(gguf_path)
        tokenizer = gguf_tokenizer(ckpt.meta)  # refuses an unknown vocabulary before anything is written
    except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError) as exc:  # metadata that
        # disagrees with itself: the file is untrusted, so this is its fault, said as such
        raise CheckpointError(f"{gguf_path.name}: its metadata is inconsistent ({exc}); the file is damaged "
                              "or not a model this converter reads") from exc
    with staged_folder(out_dir, force=force) as staging:
        try:
            with open(staging / DATA_FILE, "wb") as data:
                graph = BlockGraph(data, DATA_FILE)
                builder = GgufDecoderBuilder(graph, ckpt, accuracy_level)
                builder.build(progress=progress)
        except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError) as exc:  # tensor shapes
            # that do not fit the metadata's sizes
            raise CheckpointError(f"{gguf_path.name}: its tensors do not fit its metadata ({exc}); the file "
                                  "is damaged or not a model this converter reads") from exc
        graph.save(staging / MODEL_FILE, ckpt.architecture)
        file_type = ckpt.meta.get("general.file_type")
        meta = {**builder.metadata(), "bos_token_id": ckpt.meta.get("tokenizer.ggml.bos_token_id"),
                "eos_token_id": ckpt.meta.get("tokenizer.ggml.eos_token_id"),
                "chat_template": ckpt.chat_template(), "quantization": f"gguf-{_file_type(file_type)}",
                "model_file": MODEL_FILE, "accuracy_level": accuracy_level,
                "source_gguf": {"file": gguf_path.name, "sha256": _sha256(gguf_path), "name": ckpt.name},
                "weights": _summary(builder.types)}
        (staging / "edgeinfer.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        tokenizer.save(str(staging / "tokenizer.json"))
        config = json.dumps(_tokenizer_config(ckpt.meta), indent=2) + "\n"
        (staging / "tokenizer_config.json").write_text(config, encoding="utf-8")
    return out_dir


def _file_type(value: Any) -> str:
    try:
        import gguf

        return gguf.LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    except (TypeError, ValueError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(description="GGUF -> edgeinfer ONNX folder, keeping the GGUF's weights")
    parser.add_argument("gguf")
    parser.add_argument("out")
    parser.add_argument("--accuracy-level", type=int, default=4)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    gguf_to_onnx(args.gguf, args.out, accuracy_level=args.accuracy_level, force=args.force, progress=True)
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
