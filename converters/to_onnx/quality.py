"""Quality of a quantized ONNX folder against its fp32 folder, through onnxruntime, on the shipped text.

Same metrics and windows as the GGUF path (``converters.quality``): the tokens are cut into consecutive
windows, each run as one prefill from an empty cache, and one window of logits per model is held at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgeinfer.errors import ConversionError

from ..quality import QualityAccumulator, QualityMetrics, quality_text


class OnnxScorer:
    """One ONNX decoder folder on CPU that returns the logits of every position of a token window."""

    def __init__(self, folder: Path, *, n_threads: int | None = None) -> None:
        import onnxruntime as ort

        from edgeinfer.onnx_check import load_checked

        folder = Path(folder)
        try:
            self.meta = json.loads((folder / "edgeinfer.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConversionError(f"{folder} is not an edgeinfer ONNX folder ({exc})") from exc
        self.n_layers = int(self.meta["n_layers"])
        load_checked(folder, n_layers=self.n_layers)  # external data stays inside the folder
        options = ort.SessionOptions()
        if n_threads:
            options.intra_op_num_threads = n_threads
        self.session = ort.InferenceSession(str(folder / self.meta.get("model_file", "model.onnx")), options,
                                            providers=["CPUExecutionProvider"])
        past = next(i for i in self.session.get_inputs() if i.name == "past_key_values.0.key")
        kv_dtype = np.float16 if "float16" in past.type else np.float32
        self.empty = np.zeros((1, int(self.meta["n_kv_heads"]), 0, int(self.meta["head_dim"])), kv_dtype)
        self.n_vocab = int(self.meta["vocab_size"])

    def logits(self, tokens: list[int]) -> np.ndarray:
        """(len(tokens), vocab) float32 logits of one window, evaluated from an empty cache."""
        n = len(tokens)
        feed = {"input_ids": np.asarray([tokens], np.int64), "attention_mask": np.ones((1, n), np.int64),
                "position_ids": np.arange(n, dtype=np.int64)[None]}
        for i in range(self.n_layers):
            feed[f"past_key_values.{i}.key"] = feed[f"past_key_values.{i}.value"] = self.empty
        (logits,) = self.session.run(["logits"], feed)
        return logits[0].astype(np.float32, copy=False)


def _windows(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def onnx_logits(folder: Path, token_ids: list[int], *, window: int = 512,
                n_threads: int | None = None) -> Iterator[np.ndarray]:
    """Per-window logits (float32, window x vocab) of ``token_ids`` from an ONNX folder, in order.

    Each window of ``window`` tokens is one prefill from an empty cache (its first positions see little
    context; both models compared see the same), so memory stays one window of logits.
    """
    scorer = OnnxScorer(folder, n_threads=n_threads)
    for a, b in _windows(len(token_ids), window):
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
    ref, cand = OnnxScorer(reference_dir, n_threads=n_threads), OnnxScorer(candidate_dir, n_threads=n_threads)
    if ref.n_vocab != cand.n_vocab:
        raise ConversionError(f"the models' vocabularies differ ({ref.n_vocab} vs {cand.n_vocab} tokens)")
    acc = QualityAccumulator()
    targets = np.asarray(tokens[1:], dtype=np.int64)
    for a, b in _windows(len(tokens), window):
        n_scored = min(b, len(targets)) - a  # the text's last position has no next token
        if n_scored <= 0:
            break
        acc.add(ref.logits(tokens[a:b])[:n_scored], cand.logits(tokens[a:b])[:n_scored],
                targets[a:a + n_scored])
    return acc.result()


__all__ = ["OnnxScorer", "measure_onnx_quality", "onnx_logits", "tokenize_text"]
