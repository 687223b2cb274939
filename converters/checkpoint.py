"""A Hugging Face checkpoint folder, opened for conversion: config, tokenizer files, safetensors.

We read only what cannot run code: JSON configs, tokenizer.json and safetensors. Pickled weights
(.bin/.pt/.pth/.ckpt) and models that need ``trust_remote_code`` are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import CheckpointError
from edgeinfer.untrusted import is_count

from .safetensors_io import TensorRecord, index_files, iter_rows, load_tensor

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path.parent} has no {path.name}; {what}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); {what}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object; {what}")
    return data


# Sizes a config may give, and their largest sane value: a config is untrusted, and a value such as
# num_hidden_layers = 10**9 would otherwise make a converter loop or allocate without bound.
CONFIG_LIMITS: dict[str, int] = {
    "num_hidden_layers": 4096, "n_layer": 4096, "num_layers": 4096,
    "hidden_size": 1 << 17, "n_embd": 1 << 17, "intermediate_size": 1 << 20, "n_inner": 1 << 20,
    "num_attention_heads": 4096, "n_head": 4096, "num_key_value_heads": 4096, "head_dim": 1 << 14,
    "vocab_size": 1 << 24, "max_position_embeddings": 1 << 24, "n_positions": 1 << 24,
    "sliding_window": 1 << 24, "type_vocab_size": 1 << 16,
}
LAYER_INDEX = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")


def _check_config(root: Path, config: dict[str, Any], tensors: dict[str, TensorRecord]) -> None:
    """Sizes in config.json are whole numbers within CONFIG_LIMITS, and the layer count is no more
    than the weights hold: checked before anything is converted or written."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for cfg in (config, text):
        for key, limit in CONFIG_LIMITS.items():
            value = cfg.get(key)
            if value is None:
                continue
            if not is_count(value) or not 0 < value <= limit:
                raise CheckpointError(f"{root}/config.json: {key} = {value!r} is not a size between 1 and "
                                      f"{limit:,}; the config is damaged")
    layers = {int(m.group(1)) for name in tensors for m in [LAYER_INDEX.search(name)] if m}
    claimed = next((cfg[k] for cfg in (text, config) for k in ("num_hidden_layers", "n_layer", "num_layers")
                    if cfg.get(k) is not None), None)
    if layers and claimed is not None and claimed > len(layers):
        raise CheckpointError(f"{root}/config.json says {claimed} layers but the weights hold {len(layers)}; "
                              "the config does not belong to these weights")


@dataclass
class Checkpoint:
    """An opened HF checkpoint folder. ``tensors`` maps HF tensor names to where their bytes are."""

    root: Path
    config: dict[str, Any]
    tensors: dict[str, TensorRecord] = field(repr=False)
    name: str = ""  # the model's name (general.name); default: config's _name_or_path, else the folder's

    @property
    def model_name(self) -> str:
        return self.name or str(self.config.get("_name_or_path") or self.root.name)

    @classmethod
    def open(cls, root: str | Path) -> Checkpoint:
        """Open and validate a checkpoint folder (raises CheckpointError with what to do)."""
        root = Path(root)
        if not root.is_dir():
            raise CheckpointError(f"{root} is not a folder; give the folder holding config.json")
        config = _read_json(root / "config.json", "a Hugging Face checkpoint folder needs its config.json")
        if config.get("auto_map"):
            raise CheckpointError(
                f"{root} needs trust_remote_code (its config.json has auto_map): edgeinfer does not run "
                "code shipped with a checkpoint. Use a model whose architecture is built into transformers."
            )
        tensors = index_files(root)
        _check_config(root, config, tensors)
        if not tensors:
            pickled = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickled:
                raise CheckpointError(
                    f"{root} holds only pickled weights ({', '.join(pickled[:3])}); pickles can run code, "
                    "so edgeinfer reads safetensors only. Re-save with "
                    "model.save_pretrained(dir, safe_serialization=True)."
                )
            raise CheckpointError(f"{root} has no *.safetensors weights")
        return cls(root=root, config=config, tensors=tensors)

    @property
    def config_source(self) -> str:
        """Where the config came from, for error messages."""
        return f"{self.root}/config.json"

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        if not archs or not isinstance(archs, list):
            model_type = self.config.get("model_type", "?")
            raise CheckpointError(
                f"{self.config_source} names no 'architectures' (model_type {model_type!r})"
            )
        return str(archs[0])

    def text_config(self) -> dict[str, Any]:
        """The language-model part of the config (nested ``text_config`` for multimodal wrappers)."""
        return self.config.get("text_config") or self.config

    def get(self, *keys: str, default: Any = None) -> Any:
        """The first of ``keys`` present in the text config."""
        cfg = self.text_config()
        for key in keys:
            if cfg.get(key) is not None:
                return cfg[key]
        return default

    def require(self, *keys: str) -> Any:
        value = self.get(*keys)
        if value is None:
            raise CheckpointError(f"{self.config_source} lacks {keys[0]!r}, which this architecture needs")
        return value

    def record(self, name: str) -> TensorRecord:
        try:
            return self.tensors[name]
        except KeyError as exc:
            raise CheckpointError(f"{self.root} lacks tensor {name!r}; the checkpoint is incomplete") from exc

    def load(self, name: str) -> np.ndarray:
        """One tensor, as float32 for float dtypes."""
        return load_tensor(self.record(name))

    def rows(self, name: str) -> Iterator[np.ndarray]:
        """One tensor in blocks of whole rows (float32), for streaming conversions."""
        return iter_rows(self.record(name))

    @cached_property
    def tokenizer_json(self) -> dict[str, Any] | None:
        path = self.root / "tokenizer.json"
        return _read_json(path, "tokenizer.json is unreadable") if path.is_file() else None

    @cached_property
    def tokenizer_config(self) -> dict[str, Any]:
        path = self.root / "tokenizer_config.json"
        return _read_json(path, "tokenizer_config.json is unreadable") if path.is_file() else {}

    def chat_template(self) -> str | None:
        """The chat template from tokenizer_config.json or chat_template.jinja/json, if any."""
        template = self.tokenizer_config.get("chat_template")
        jinja = self.root / "chat_template.jinja"
        if template is None and jinja.is_file():
            template = jinja.read_text(encoding="utf-8")
        as_json = self.root / "chat_template.json"
        if template is None and as_json.is_file():
            template = _read_json(as_json, "chat_template.json is unreadable").get("chat_template")
        if isinstance(template, list):  # named templates: keep the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        return template if isinstance(template, str) else None
