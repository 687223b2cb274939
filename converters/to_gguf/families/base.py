"""What every architecture module provides: GGUF metadata and a plan of tensors to write.

A family maps HF tensor names to GGUF names with gguf-py's own TensorNameMap (the mapping tables
are data that llama.cpp's converter also uses) and applies the few per-architecture transforms
(Q/K permutation, norm offsets, fused projections) tensor by tensor.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import gguf
import numpy as np

from edgeinfer.errors import CheckpointError, UnsupportedArchitectureError

from ...checkpoint import Checkpoint

Loader = Callable[[], np.ndarray]
LAYER_RE = re.compile(r"\.(\d+)\.")


@dataclass
class TensorPlan:
    """One GGUF tensor: its name, its (row-major, numpy) shape, and how to produce it as float32."""

    name: str
    shape: tuple[int, ...]
    load: Loader
    keep_f32: bool = False  # norms, biases and other small tensors stay float32
    chunks: Callable[[], Iterator[np.ndarray]] | None = None  # the same tensor in blocks of rows


class Family(ABC):
    """Base of every architecture module; subclasses set ``arch`` and override the hooks."""

    arch: ClassVar[gguf.MODEL_ARCH]
    skip_patterns: ClassVar[tuple[str, ...]] = (r"rotary_emb\.inv_freq$",)
    # HF config keys that change the math in ways this module does not implement -> refuse them
    unsupported_if: ClassVar[dict[str, Callable[[Any], bool]]] = {}

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.n_layers = int(ckpt.require("num_hidden_layers", "n_layer", "num_layers"))
        self.name_map = gguf.get_tensor_name_map(self.arch, self.n_layers)
        for key, is_bad in self.unsupported_if.items():
            value = ckpt.get(key)
            if value is not None and is_bad(value):
                raise UnsupportedArchitectureError(
                    f"{ckpt.architecture} with {key}={value!r} is not supported by this converter"
                )

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    # --- metadata ------------------------------------------------------------------------------
    @abstractmethod
    def add_metadata(self, writer: gguf.GGUFWriter) -> None:
        """Hyperparameters llama.cpp reads for this architecture."""

    # --- tensors -------------------------------------------------------------------------------
    def gguf_name(self, hf_name: str) -> str | None:
        """GGUF name of an HF tensor, or None to skip it."""
        if any(re.search(p, hf_name) for p in self.skip_patterns):
            return None
        name = self.name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UnsupportedArchitectureError(
                f"{self.ckpt.architecture}: tensor {hf_name!r} has no GGUF counterpart; this checkpoint "
                "is a variant the converter does not know"
            )
        return name

    def transform(self, gguf_name: str, array: np.ndarray) -> np.ndarray:
        """Per-architecture change to one tensor (default: none)."""
        return array

    def row_local(self, gguf_name: str) -> bool:
        """True when ``transform`` may be applied to blocks of rows (so the tensor can stream)."""
        return True

    def plans(self) -> Iterator[TensorPlan]:
        """Every tensor to write, in a stable order (by layer, then name)."""
        names = sorted(self.ckpt.tensors, key=_layer_order)
        seen: set[str] = set()
        for hf_name in names:
            target = self.gguf_name(hf_name)
            if target is None:
                continue
            if target in seen:
                raise CheckpointError(f"two tensors map to {target!r}; the checkpoint is inconsistent")
            seen.add(target)
            yield from self.plans_for(hf_name, target)

    def plans_for(self, hf_name: str, target: str) -> Iterator[TensorPlan]:
        """Plans produced from one HF tensor (subclasses split fused tensors here)."""
        record = self.ckpt.tensors[hf_name]
        streams = len(record.shape) >= 2 and self.row_local(target)

        def chunks() -> Iterator[np.ndarray]:
            return (self.transform(target, rows) for rows in self.ckpt.rows(hf_name))

        yield TensorPlan(
            name=target,
            shape=record.shape,
            load=lambda: self.transform(target, self.ckpt.load(hf_name)),
            keep_f32=len(record.shape) <= 1,
            chunks=chunks if streams else None,
        )


def _layer_order(name: str) -> tuple[int, str]:
    match = LAYER_RE.search(name)
    return (int(match.group(1)) if match else -1, name)


def rope_theta(ckpt: Checkpoint, default: float = 10000.0) -> float:
    """rope_theta from either config layout (transformers < 5: rope_theta; >= 5: rope_parameters)."""
    value = ckpt.get("rope_theta")
    params = ckpt.get("rope_parameters") or {}
    if value is None and isinstance(params, dict):
        value = params.get("rope_theta")
        if value is None and isinstance(params.get("full_attention"), dict):
            value = params["full_attention"].get("rope_theta")
    return float(value if value is not None else default)


def rope_scaling(ckpt: Checkpoint) -> dict[str, Any] | None:
    """The rope scaling dict, or None for plain RoPE (either config layout)."""
    for key in ("rope_scaling", "rope_parameters"):
        value = ckpt.get(key)
        if isinstance(value, dict):
            if "full_attention" in value:  # per-layer-type layout (Gemma 3): the global layers'
                value = value["full_attention"]
            kind = value.get("rope_type") or value.get("type") or "default"
            if kind != "default":
                return {**value, "rope_type": kind}
    return None
