"""fp32 ONNX decoder folder -> block-quantized weights as onnxruntime's ``MatMulNBits``, quantized here.

Which bits each weight gets is a small table by role (``RECIPES``), in the spirit of llama.cpp's
Q4_K_M mix: the projections of every layer at the recipe's bits, the output head (and the embedding,
which shares its quantized table when tied, read by ``GatherBlockQuantized``) at 8 bits. Blocks of 32
input weights get one fp32 scale (and, asymmetric, a uint zero point), chosen by a small search for the
least squared error rather than plain min/max rounding. Norms, rotary tables and biases stay fp32.
The folder is written to a hidden staging folder beside the target and renamed when complete.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeinfer.errors import ConversionError

from .awq import Fold, channel_scales
from .blocks import Blocks, quantize_blocks
from .calibrate import input_hessians
from .export import DATA_FILE, MODEL_FILE, TOKENIZER_FILES, staged_folder
from .gptq import gptq_blocks
from .graph import MS_DOMAIN, external_tensor, read_external

EMBEDDING = "model.embed_tokens.weight"
HEAD = "lm_head.weight"


@dataclass(frozen=True)
class Recipe:
    """Bits per weight role; ``sensitive`` names (regex on the weight name) get ``sensitive_bits``."""

    bits: int
    symmetric: bool
    head_bits: int = 8
    sensitive: str = ""
    sensitive_bits: int = 8
    calibrated: bool = False  # GPTQ for weights under 8 bits (8 bits: round-to-nearest is close enough)
    awq: bool = False  # activation-aware channel scales, folded into norms / up rows (needs calibrated)
    block8: int = 64  # block of 8-bit weights where the input size allows (fewer scale bytes to read)


RECIPES: dict[str, Recipe] = {
    "int8": Recipe(bits=8, symmetric=True, block8=32),  # blocks of 64: KL 0.0068 instead of 0.0040
    # SmolLM2-135M, mean KL vs fp32 on the quality text (block 32, asymmetric 4-bit):
    #   every matmul 4-bit (head 8), round-to-nearest 0.21 -> GPTQ 0.18 -> AWQ + GPTQ 0.096; head 4-bit 0.12
    #   QKV and down projections at 8 bits: round-to-nearest 0.063 -> GPTQ 0.042 (llama.cpp Q4_K_M: 0.051);
    #   8-bit blocks of 64 instead of 32: 0.044, 3% smaller, ~5% faster decode
    "int4": Recipe(bits=4, symmetric=False, sensitive=r"\.(qkv_proj|down_proj)\.", calibrated=True),
    "int4-fast": Recipe(bits=4, symmetric=False, head_bits=4, calibrated=True, awq=True),
}


def quant_label(quant: str, block_size: int, recipe: Recipe) -> str:
    """The ``quantization`` string stored in edgeinfer.json, e.g. ``int4-b32-asym-gptq``."""
    label = f"{quant}-b{block_size}-{'sym' if recipe.symmetric else 'asym'}"
    return label + "-awq" * recipe.awq + "-gptq" * recipe.calibrated


class _Rewriter:
    """The quantized graph: weight MatMul/Gemm -> MatMulNBits, embedding Gather -> GatherBlockQuantized."""

    def __init__(self, model: onnx.ModelProto, src: Path, data: BinaryIO, recipe: Recipe, block: int,
                 accuracy_level: int) -> None:
        self.model, self.src, self.data = model, src, data
        self.recipe, self.block, self.accuracy_level = recipe, block, accuracy_level
        self.inits = {t.name: t for t in model.graph.initializer}
        self.new_inits: list[TensorProto] = []
        self.quantized: dict[str, Blocks] = {}
        self.hessians: dict[str, np.ndarray] = {}
        self.sources: dict[str, str] = {}  # calibrated weight -> the graph value its matmul reads
        self.overrides: dict[str, np.ndarray] = {}  # fp32 initializers changed by AWQ folding

    def array(self, name: str) -> np.ndarray:
        """An fp32 initializer as written out (after AWQ folding); each is written once, so a changed one
        is handed over and dropped."""
        changed = self.overrides.pop(name, None)
        return changed if changed is not None else read_external(self.src, self.inits[name])

    def _changing(self, name: str) -> np.ndarray:
        """An fp32 initializer held in memory to be changed in place."""
        if name not in self.overrides:
            self.overrides[name] = read_external(self.src, self.inits[name])
        return self.overrides[name]

    def _put(self, name: str, array: np.ndarray) -> str:
        self.new_inits.append(external_tensor(self.data, DATA_FILE, name, array))
        return name

    def bits_for(self, name: str) -> int:
        if name == EMBEDDING:
            return 8  # read one row per token: its size costs file space, not decode time
        if name == HEAD:
            return self.recipe.head_bits
        if self.recipe.sensitive and re.search(self.recipe.sensitive, name):
            return self.recipe.sensitive_bits
        return self.recipe.bits

    def block_for(self, bits: int, k: int) -> int:
        """``block8`` for 8-bit weights whose input size it divides, else the recipe-wide block."""
        return self.recipe.block8 if bits == 8 and k % self.recipe.block8 == 0 else self.block

    def _blocks(self, name: str, weight_nk: np.ndarray) -> tuple[list[str], Blocks]:
        """Quantize once (a tied table serves head and embedding) and store data/scales/zero points."""
        bits = self.bits_for(name)
        symmetric = self.recipe.symmetric or bits == 8
        block = self.block_for(bits, weight_nk.shape[1])
        if name in self.hessians:
            blocks = gptq_blocks(weight_nk, self.hessians.pop(name), bits, block, symmetric)
        else:
            blocks = quantize_blocks(weight_nk, bits, block, symmetric)
        self.quantized[name] = blocks
        names = [self._put(f"{name}.q{bits}", blocks.data), self._put(f"{name}.scales", blocks.scales)]
        zeros = blocks.zero_points
        names.append(self._put(f"{name}.zero_points", zeros) if zeros is not None else "")
        return names, blocks

    def matmul(self, node: onnx.NodeProto, name: str, weight_nk: np.ndarray) -> onnx.NodeProto:
        inputs, blocks = self._blocks(name, weight_nk)
        n, k = weight_nk.shape
        return helper.make_node("MatMulNBits", [node.input[0], *inputs], list(node.output),
                                name=f"{node.name}/nbits", domain=MS_DOMAIN, K=k, N=n, bits=blocks.bits,
                                block_size=blocks.block, accuracy_level=self.accuracy_level)

    def gather(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """The embedding lookup from the 8-bit table (shared with a tied head), then back to [.., hidden]."""
        if EMBEDDING not in self.quantized:
            self._blocks(EMBEDDING, read_external(self.src, self.inits[EMBEDDING]))
        blocks = self.quantized[EMBEDDING]
        n, n_blocks = blocks.scales.shape  # the hidden size is a whole number of blocks (see rewrite)
        scales = self._put(f"{EMBEDDING}.scales3d", blocks.scales.reshape(n, n_blocks, 1))
        hidden = int(self.inits[EMBEDDING].dims[1])
        rows = f"{node.output[0]}/blocks"
        shape = f"{node.output[0]}/shape"
        self.new_inits.append(numpy_helper.from_array(np.array([0, 0, hidden], np.int64), shape))  # inline
        return [
            helper.make_node("GatherBlockQuantized", [f"{EMBEDDING}.q8", node.input[1], scales], [rows],
                             name=f"{rows}/node", domain=MS_DOMAIN, gather_axis=0, quantize_axis=2,
                             block_size=blocks.block, bits=8),
            helper.make_node("Reshape", [rows, shape], list(node.output), name=f"{rows}/reshape"),
        ]

    def untie_head(self) -> None:
        """A tied head (Gemm reading the embedding) becomes a MatMul on its own [hidden, vocab] copy, so it
        can be quantized (and AWQ-scaled) apart from the embedding table the lookup reads."""
        for node in self.model.graph.node:
            if (node.op_type == "Gemm" and node.input[1] == EMBEDDING
                    and any(a.name == "transB" and a.i == 1 for a in node.attribute)):
                table = read_external(self.src, self.inits[EMBEDDING])
                self.overrides[HEAD] = np.ascontiguousarray(table.T)
                placeholder = TensorProto(name=HEAD, data_type=TensorProto.FLOAT)  # data: in overrides
                placeholder.dims.extend(table.T.shape)
                self.inits[HEAD] = placeholder
                node.op_type, node.input[1] = "MatMul", HEAD
                del node.attribute[:]

    def calibrate(self, n_threads: int | None) -> None:
        """Input Hessians of the weights the recipe quantizes below 8 bits (for GPTQ)."""
        self.sources = {n.input[1]: n.input[0] for n in self.model.graph.node if n.op_type == "MatMul"
                        and len(n.input) > 1 and n.input[1] in self.inits and self.bits_for(n.input[1]) < 8}
        if self.sources:
            self.hessians = input_hessians(self.src, self.sources, n_threads=n_threads)

    def awq(self) -> None:
        """Scale each calibrated weight's input channels (AWQ), folding 1/s into their producer: down
        projections first (into the up rows of gate+up), then those fed by a norm (into its gamma)."""
        producers = {out: node for node in self.model.graph.node for out in node.output}
        folds = [f for f in (self._fold(w, producers) for w in self.hessians) if f is not None]
        for fold in sorted(folds, key=lambda f: f.gamma is not None):
            weight = self._changing(fold.weight)  # [K, N]
            hessian = self.hessians[fold.weight]
            scales = channel_scales(weight.T, hessian, self.bits_for(fold.weight), self.block)
            weight *= scales[:, None]
            self.hessians[fold.weight] = hessian / scales[:, None] / scales[None, :]
            if fold.gamma is not None:
                self._changing(fold.gamma)[...] /= scales
            else:
                self._changing(fold.producer)[:, fold.start:fold.stop] /= scales[None, :]

    def _fold(self, weight: str, producers: dict[str, onnx.NodeProto]) -> Fold | None:
        """Where ``weight``'s input comes from (``producers``: value -> node), when 1/s can be folded."""
        source = producers.get(self.sources[weight])
        while source is not None and source.op_type in ("Reshape", "Slice"):  # channels kept as they are
            source = producers.get(source.input[0])
        if source is None:
            return None
        if source.op_type == "SimplifiedLayerNormalization":
            return Fold(weight, gamma=source.input[1])
        if source.op_type == "SkipSimplifiedLayerNormalization":  # output 0, the normed sum
            return Fold(weight, gamma=source.input[2])
        if source.op_type == "Mul":  # act(gate) * up: the up half of the gate+up weight
            split = producers.get(source.input[1])
            matmul = producers.get(split.input[0]) if split is not None and split.op_type == "Split" else None
            if matmul is not None and matmul.op_type == "MatMul" and split.output[1] == source.input[1]:
                half = int(self.inits[matmul.input[1]].dims[1]) // 2
                return Fold(weight, producer=matmul.input[1], start=half, stop=2 * half)
        return None

    def rewrite(self) -> None:
        """Replace the weight nodes, then keep (re-written) only the initializers still referenced."""
        graph = self.model.graph
        nodes = []
        embedding_gathers = []
        for node in graph.node:
            weight = node.input[1] if len(node.input) > 1 else ""
            if node.op_type == "MatMul" and weight.endswith(".weight") and weight in self.inits:
                nodes.append(self.matmul(node, weight, self.array(weight).T))  # stored [K, N]
            elif (node.op_type == "Gemm" and weight == EMBEDDING
                  and any(a.name == "transB" and a.i == 1 for a in node.attribute)):
                nodes.append(self.matmul(node, EMBEDDING, read_external(self.src, self.inits[EMBEDDING])))
            elif (node.op_type == "Gather" and node.input[0] == EMBEDDING
                  and self.inits[EMBEDDING].dims[1] % self.block_for(8, self.inits[EMBEDDING].dims[1]) == 0):
                embedding_gathers.append(len(nodes))
                nodes.append(node)
            else:
                nodes.append(node)
        for index in reversed(embedding_gathers):
            nodes[index:index + 1] = self.gather(nodes[index])
        used = {i for node in nodes for i in node.input}
        kept = [self._copy(t) for t in graph.initializer if t.name in used]
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.initializer[:]
        graph.initializer.extend(kept + self.new_inits)

    def _copy(self, tensor: TensorProto) -> TensorProto:
        if tensor.data_location != TensorProto.EXTERNAL:
            return tensor
        return external_tensor(self.data, DATA_FILE, tensor.name, self.array(tensor.name))


def quantize_onnx(src_dir: Path, out_dir: Path, quant: str, *, block_size: int = 32,
                  recipe: Recipe | None = None, accuracy_level: int = 4, force: bool = False,
                  n_threads: int | None = None) -> Path:
    """Write ``out_dir``: the fp32 folder ``src_dir`` with its weights block-quantized; returns ``out_dir``.

    ``quant`` is "int8" or "int4" (see ``RECIPES``; ``recipe`` overrides it). ``accuracy_level`` is
    MatMulNBits' attribute: 4 (default) multiplies with int8 activations; 0 computes in fp32, a little
    closer to fp32 but far slower on CPU (SmolLM2 int8 decode: 2.4 vs 28-35 tok/s, onnxruntime 1.32).
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if quant not in RECIPES:
        raise ConversionError(f"ONNX quantization {quant!r} is not supported; choose {', '.join(RECIPES)}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ConversionError(f"block_size must be a power of two >= 16 (MatMulNBits), got {block_size}")
    recipe = recipe or RECIPES[quant]
    try:
        meta = json.loads((src_dir / "edgeinfer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{src_dir} is not an edgeinfer ONNX folder ({exc})") from exc
    if meta.get("quantization") != "fp32":
        raise ConversionError(f"{src_dir} is {meta.get('quantization')!r}; quantize from the fp32 folder")
    with staged_folder(out_dir, force=force) as staging:
        model = onnx.load(str(src_dir / meta.get("model_file", MODEL_FILE)), load_external_data=False)
        with open(staging / DATA_FILE, "wb") as data:
            rewriter = _Rewriter(model, src_dir, data, recipe, block_size, accuracy_level)
            if recipe.head_bits < 8:
                rewriter.untie_head()
            if recipe.calibrated:
                rewriter.calibrate(n_threads)
            if recipe.awq:
                rewriter.awq()
            rewriter.rewrite()
        (staging / MODEL_FILE).write_bytes(model.SerializeToString())
        meta.update(quantization=quant_label(quant, block_size, recipe), model_file=MODEL_FILE,
                    accuracy_level=accuracy_level, quant_recipe=asdict(recipe))
        (staging / "edgeinfer.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for name in TOKENIZER_FILES:
            if (src_dir / name).is_file():
                shutil.copyfile(src_dir / name, staging / name)
    return out_dir
