"""Quality of a quantized ONNX folder against its fp32 folder, through onnxruntime, on the shipped text.

Same metrics and windows as the GGUF path (``edgeinfer_converters.quality``): the tokens are cut into
consecutive windows, each run as one prefill from an empty cache, and one window of logits per model is
held at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgeinfer.backends.base import EvalItem
from edgeinfer.errors import ConversionError, EdgeInferError

from ..quality import QualityMetrics, gguf_scorer, quality_text, score_windows, token_windows


class OnnxScorer:
    """Every position's logits of a token window, from an ONNX folder run by edgeinfer's onnx backend."""

    def __init__(self, folder: Path, *, window: int = 512, n_threads: int | None = None) -> None:
        from edgeinfer.backends.onnx import OnnxBackend

        try:
            self.backend = OnnxBackend(Path(folder), n_ctx=window, n_threads=n_threads, max_sequences=1)
        except EdgeInferError as exc:
            raise ConversionError(f"{folder} is not a usable edgeinfer ONNX folder ({exc})") from exc
        self.n_vocab = self.backend.caps.n_vocab
        self.window = self.backend.caps.n_ctx  # at most the model's context

    def logits(self, tokens: list[int]) -> np.ndarray:
        """(len(tokens), vocab) float32 logits of one window, evaluated from an empty cache."""
        self.backend.kv_drop(0)
        rows = self.backend.eval([EvalItem(0, tokens, n_outputs=len(tokens))])
        return np.stack([self.backend.logits(r) for r in rows]).astype(np.float32, copy=False)


def onnx_logits(folder: Path, token_ids: list[int], *, window: int = 512,
                n_threads: int | None = None) -> Iterator[np.ndarray]:
    """Per-window logits (float32, window x vocab) of ``token_ids`` from an ONNX folder, in order.

    Each window of ``window`` tokens is one prefill from an empty cache (its first positions see little
    context; both models compared see the same), so memory stays one window of logits.
    """
    scorer = OnnxScorer(folder, window=window, n_threads=n_threads)
    for a, b in token_windows(len(token_ids), window):
        yield scorer.logits(list(token_ids[a:b]))


def tokenize_text(folder: Path, text: str) -> list[int]:
    """``text`` as token ids with the folder's tokenizer.json (special tokens added as the engine does)."""
    from edgeinfer.backends.onnx_tokens import TokenizerJson

    return list(TokenizerJson(Path(folder) / "tokenizer.json").encode(text, add_special=True))


def measure_onnx_quality(reference_dir: Path, candidate_dir: Path, *, text: str | None = None,
                         max_tokens: int = 1024, window: int = 512,
                         n_threads: int | None = None) -> QualityMetrics:
    """Compare ``candidate_dir`` with ``reference_dir`` (ONNX folders) on ``text`` (default: shipped text)."""
    if max_tokens < 2:
        raise ConversionError(f"max_tokens must be at least 2 (got {max_tokens})")
    tokens = tokenize_text(reference_dir, quality_text() if text is None else text)[:max_tokens]
    ref = OnnxScorer(reference_dir, window=window, n_threads=n_threads)
    cand = OnnxScorer(candidate_dir, window=window, n_threads=n_threads)
    return score_windows(ref, cand, tokens)


def measure_against_gguf(gguf: Path, candidate_dir: Path, *, max_tokens: int = 1024, window: int = 512,
                         n_threads: int | None = None) -> QualityMetrics:
    """Compare an ONNX folder made from a GGUF (``from_gguf``) with that GGUF run by llama.cpp, on the
    shipped text, window by window."""
    tokens = tokenize_text(candidate_dir, quality_text())[:max_tokens]
    cand = OnnxScorer(candidate_dir, window=window, n_threads=n_threads)
    with gguf_scorer(Path(gguf), n_ctx=window, n_threads=n_threads) as ref:
        return score_windows(ref, cand, tokens)


__all__ = ["OnnxScorer", "measure_against_gguf", "measure_onnx_quality", "onnx_logits", "tokenize_text"]
