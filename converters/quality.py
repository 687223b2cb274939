"""Quality of a quantized artifact against the unquantized one, on a fixed English text.

Backend-neutral part: ``compare_logits`` / ``QualityAccumulator`` take logits as arrays (rows are
positions) so the ONNX path can feed its own. llama.cpp part: ``gguf_logits`` and ``measure_quality``.
Metrics: mean KL(reference || candidate) of the next-token distributions, top-1 agreement, and the
perplexity of both models on the text's next tokens.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np

from edgeinfer.errors import ConversionError

TEXT_RESOURCE = "data/quality_text.txt"
# Elements per float64 work array: rows are processed in chunks of this many logits (32 MiB each),
# so a 262k-token vocabulary never needs more than a few such arrays at once.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class QualityMetrics:
    """How closely a candidate's next-token distributions follow the reference's."""

    mean_kl: float  # mean over positions of KL(reference || candidate), in nats
    top1_agreement: float  # fraction of positions where both models' argmax agree
    ppl_reference: float  # exp(mean negative log-likelihood of the text's next tokens)
    ppl_candidate: float
    n_tokens: int  # positions scored

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def quality_text() -> str:
    """The fixed English text shipped with the project (plain, original, license-free prose)."""
    return resources.files("edgeinfer_converters").joinpath(TEXT_RESOURCE).read_text(encoding="utf-8")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class QualityAccumulator:
    """Running sums over windows of logits, so only one window per model is ever in memory."""

    def __init__(self) -> None:
        self.kl_sum = 0.0
        self.agree = 0
        self.nll_reference = 0.0
        self.nll_candidate = 0.0
        self.n = 0

    def add(self, reference: np.ndarray, candidate: np.ndarray, target_ids: np.ndarray) -> None:
        """Add rows of logits (positions x vocab) and the token each row should predict."""
        reference, candidate = np.asarray(reference), np.asarray(candidate)
        target_ids = np.asarray(target_ids, dtype=np.int64).reshape(-1)
        if reference.ndim != 2 or reference.shape != candidate.shape:
            raise ConversionError(
                f"logits shapes differ: reference {reference.shape}, candidate {candidate.shape}; "
                "both models must share the tokenizer and see the same tokens"
            )
        n, vocab = reference.shape
        if target_ids.shape[0] != n:
            raise ConversionError(f"{n} logit rows but {target_ids.shape[0]} target ids")
        if n and (target_ids.min() < 0 or target_ids.max() >= vocab):
            raise ConversionError(f"a target id is outside the vocabulary (0..{vocab - 1})")
        step = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
        for a in range(0, n, step):
            b = min(n, a + step)
            log_p = _log_softmax(reference[a:b])
            log_q = _log_softmax(candidate[a:b])
            rows = np.arange(b - a)
            # KL(p||q) = sum p (log p - log q); terms where p underflows to 0 contribute 0
            self.kl_sum += float((np.exp(log_p) * (log_p - log_q)).sum())
            self.agree += int((reference[a:b].argmax(axis=1) == candidate[a:b].argmax(axis=1)).sum())
            self.nll_reference -= float(log_p[rows, target_ids[a:b]].sum())
            self.nll_candidate -= float(log_q[rows, target_ids[a:b]].sum())
        self.n += n

    def result(self) -> QualityMetrics:
        if self.n == 0:
            raise ConversionError("no positions to score: the text is too short (needs 2+ tokens)")
        return QualityMetrics(
            mean_kl=max(0.0, self.kl_sum / self.n),  # rounding can give -1e-17 for identical inputs
            top1_agreement=self.agree / self.n,
            ppl_reference=math.exp(self.nll_reference / self.n),
            ppl_candidate=math.exp(self.nll_candidate / self.n),
            n_tokens=self.n,
        )


def compare_logits(reference: np.ndarray, candidate: np.ndarray, target_ids: np.ndarray) -> QualityMetrics:
    """Metrics for float logits of both models (rows = positions) and each row's next token."""
    acc = QualityAccumulator()
    acc.add(reference, candidate, target_ids)
    return acc.result()


# --- llama.cpp -----------------------------------------------------------------------------------
def _threads(n_threads: int | None) -> int:
    if n_threads:
        return n_threads
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class _GGUFScorer:
    """One GGUF model on CPU that returns the logits of every position of a token window."""

    def __init__(self, path: Path, *, n_ctx: int, n_threads: int | None) -> None:
        from edgeinfer.backends.llamacpp import LlamaCppBackend
        from edgeinfer.errors import EdgeInferError

        try:
            # edgeinfer's own backend: CPU, no weight repacking, so logits are deterministic
            self.backend = LlamaCppBackend(path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=_threads(n_threads),
                                           max_sequences=1, n_outputs=n_ctx)  # every row's logits
        except EdgeInferError as exc:
            raise ConversionError(f"cannot load {path} to measure quality: {exc}") from exc
        # llama.cpp may round the context up; one window must also fit one batch (all rows output)
        self.window = min(self.backend.caps.n_ctx, self.backend.caps.n_batch)
        self.n_vocab = self.backend.caps.n_vocab

    def tokenize(self, text: str) -> list[int]:
        return self.backend.tokenize(text, add_special=True)

    def logits(self, tokens: list[int]) -> np.ndarray:
        """(len(tokens), n_vocab) float32 logits of one window, evaluated from an empty context."""
        from edgeinfer.backends.base import EvalItem

        be = self.backend
        be.kv_drop(0)
        rows = be.eval([EvalItem(0, tokens, n_outputs=len(tokens))])
        out = np.empty((len(tokens), self.n_vocab), dtype=np.float32)
        for i, row in enumerate(rows):
            out[i] = be.logits(row)
        be.kv_drop(0)
        return out

    def close(self) -> None:
        self.backend.close()


@contextmanager
def gguf_scorer(path: Path, *, n_ctx: int, n_threads: int | None) -> Iterator[_GGUFScorer]:
    scorer = _GGUFScorer(Path(path), n_ctx=n_ctx, n_threads=n_threads)
    try:
        yield scorer
    finally:
        scorer.close()


def token_windows(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def gguf_logits(
    path: Path, token_ids: list[int], *, n_ctx: int = 512, n_threads: int | None = None
) -> np.ndarray:
    """Logits at every position of ``token_ids`` (float32, tokens x vocab) from a GGUF via llama.cpp.

    The tokens are cut into consecutive windows of ``n_ctx``, each evaluated from an empty
    context (the first positions of a window see little context; both models see the same).
    """
    with gguf_scorer(path, n_ctx=n_ctx, n_threads=n_threads) as scorer:
        out = np.empty((len(token_ids), scorer.n_vocab), dtype=np.float32)
        for a, b in token_windows(len(token_ids), scorer.window):
            out[a:b] = scorer.logits(list(token_ids[a:b]))
        return out


class Scorer(Protocol):
    """A model that gives every position's logits of a token window (llama.cpp's or onnxruntime's)."""

    n_vocab: int
    window: int

    def logits(self, tokens: list[int]) -> np.ndarray: ...


def score_windows(reference: Scorer, candidate: Scorer, tokens: list[int]) -> QualityMetrics:
    """Window by window: one window of logits per model in memory, metrics accumulated."""
    if reference.n_vocab != candidate.n_vocab:
        raise ConversionError(
            f"the models' vocabularies differ ({reference.n_vocab} vs {candidate.n_vocab} tokens): "
            "compare a quantized file only with the unquantized file it was made from"
        )
    acc = QualityAccumulator()
    window = min(reference.window, candidate.window)
    targets = np.asarray(tokens[1:], dtype=np.int64)
    for a, b in token_windows(len(tokens), window):
        n_scored = min(b, len(targets)) - a  # the text's last position has no next token
        if n_scored <= 0:
            break
        ref = reference.logits(tokens[a:b])[:n_scored]
        cand = candidate.logits(tokens[a:b])[:n_scored]
        acc.add(ref, cand, targets[a : a + n_scored])
        del ref, cand
    return acc.result()


def measure_quality(
    reference: Path,
    candidate: Path,
    *,
    text: str | None = None,
    max_tokens: int = 1024,
    n_ctx: int = 512,
    n_threads: int | None = None,
) -> QualityMetrics:
    """Compare ``candidate`` with ``reference`` (both GGUF) on ``text`` (default: the shipped text).

    The text is tokenized with the reference model and cut to ``max_tokens`` tokens.
    """
    if max_tokens < 2:
        raise ConversionError(f"max_tokens must be at least 2 (got {max_tokens})")
    with ExitStack() as stack:
        ref = stack.enter_context(gguf_scorer(reference, n_ctx=n_ctx, n_threads=n_threads))
        tokens = ref.tokenize(quality_text() if text is None else text)[:max_tokens]
        cand = stack.enter_context(gguf_scorer(candidate, n_ctx=n_ctx, n_threads=n_threads))
        return score_windows(ref, cand, tokens)


class ReferenceScorer:
    """The reference model kept loaded and its text tokenized, to measure several candidates."""

    def __init__(self, reference: Path, *, text: str | None = None, max_tokens: int = 1024,
                 n_ctx: int = 512, n_threads: int | None = None) -> None:
        self._n_ctx, self._n_threads = n_ctx, n_threads
        self._ref = _GGUFScorer(Path(reference), n_ctx=n_ctx, n_threads=n_threads)
        self.tokens = self._ref.tokenize(quality_text() if text is None else text)[:max_tokens]

    def measure(self, candidate: Path) -> QualityMetrics:
        """Metrics of ``candidate`` against the loaded reference."""
        with gguf_scorer(candidate, n_ctx=self._n_ctx, n_threads=self._n_threads) as cand:
            return score_windows(self._ref, cand, self.tokens)

    def close(self) -> None:
        self._ref.close()

    def __enter__(self) -> ReferenceScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "QualityAccumulator",
    "QualityMetrics",
    "ReferenceScorer",
    "compare_logits",
    "gguf_logits",
    "measure_quality",
    "quality_text",
]
