"""Shared by the embedding tests (GGUF and ONNX): the sentences, sentence-transformers' own embeddings
of them, cosine similarity, and a per-session converter cache."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hf_fixtures import minilm_dir

SENTENCES = [
    "A man is playing a guitar on the street.",
    "The quick brown fox jumps over the lazy dog.",
    "Où est la bibliothèque ? Je voudrais lire un livre sur l'économie française.",
    "Mañana vamos a la playa con nuestros niños y el perro.",
    "東京は日本の首都です。",
    "我喜欢在周末喝茶和看书。",
    "I love pizza 🍕 and sunny days ☀️!",
    "",
    "Hi",
    " ".join(["Sentence embeddings map texts of any length to one vector, and similar meanings end "
              "up close together, which is what semantic search and clustering rely on."] * 4),
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@functools.lru_cache(maxsize=1)
def sentence_transformers_embeddings() -> np.ndarray:
    """sentence-transformers' own (normalised) embeddings of SENTENCES."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    return st.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)


def converted_once(root: Path, fmt: str, name: Callable[[str], str]) -> Callable[[str], Path]:
    """quant -> MiniLM converted to ``fmt`` under ``root / name(quant)``, each converted once."""
    from converters import convert

    made: dict[str, Path] = {}

    def get(quant: str) -> Path:
        if quant not in made:
            result = convert(minilm_dir(), root / name(quant), format=fmt, quant=quant)
            assert result.quant == quant and result.quality is None  # no KL/PPL for an encoder
            made[quant] = result.artifact
        return made[quant]

    return get
