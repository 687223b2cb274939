"""HF architecture name -> the module and class that converts it (a table, extended by adding a row)."""

from __future__ import annotations

import importlib

from edgeinfer.errors import UnsupportedArchitectureError

from ...checkpoint import Checkpoint
from .base import Family, TensorPlan

FAMILIES: dict[str, str] = {
    "LlamaForCausalLM": "decoder:Llama",
    "MistralForCausalLM": "decoder:Mistral",
    "Qwen2ForCausalLM": "qwen:Qwen2",
    "Qwen3ForCausalLM": "qwen:Qwen3",
    "Phi3ForCausalLM": "phi3:Phi3",
    "Gemma3ForCausalLM": "gemma3:Gemma3",
    "BertModel": "bert:Bert",
    "BertForMaskedLM": "bert:Bert",
}


def family_for(ckpt: Checkpoint) -> Family:
    """The converter for this checkpoint's architecture, or a clear refusal."""
    arch = ckpt.architecture
    try:
        module_name, class_name = FAMILIES[arch].split(":")
    except KeyError:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {arch}; supported: {', '.join(sorted(FAMILIES))}"
        ) from None
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)(ckpt)


__all__ = ["FAMILIES", "Family", "TensorPlan", "family_for"]
