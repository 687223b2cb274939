"""Shared by the embedding tests (GGUF and ONNX): the sentences, sentence-transformers' own embeddings
of them, cosine similarity, and a per-session converter cache."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hf_fixtures import minilm_dir

from edgeinfer.errors import ContextOverflowError, InvalidRequestError

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
    from edgeinfer_converters import convert

    made: dict[str, Path] = {}

    def get(quant: str) -> Path:
        if quant not in made:
            result = convert(minilm_dir(), root / name(quant), format=fmt, quant=quant)
            assert result.quant == quant and result.quality is None  # no KL/PPL for an encoder
            made[quant] = result.artifact
        return made[quant]

    return get


def check_over_context(model: Any) -> None:
    """A text over the context: a clear error naming the fix, or truncated on request."""
    long_text = "word " * 600
    with pytest.raises(ContextOverflowError, match="truncate=True") as info:
        model.embed(["short", long_text])
    assert info.value.n_ctx == 512 and info.value.prompt_tokens > 512
    (vector,) = model.embed(long_text, truncate=True)
    assert np.isfinite(vector).all()


def check_cannot_generate(model: Any) -> None:
    """An embedding model refuses every generation call and KV access, and keeps embedding."""
    for call in (lambda: model.generate("hello"), lambda: model.stream("hello"),
                 lambda: model.chat().send("hello"), lambda: model.complete_chat(
                     [{"role": "user", "content": "hi"}])):
        with pytest.raises(InvalidRequestError, match="embedding model"):
            call()
    with pytest.raises(InvalidRequestError, match="embedding model"):  # nor touch KV directly
        model.backend.seq_length(0)
    assert model.embed("still works").shape == (1, 384)
