"""Learned routing: a tiny logistic-regression classifier on on-device sentence embeddings predicts
whether the large tier would answer a request better than the small one (RouteLLM's idea, on a CPU).

Deciding costs one embedding (about 6 ms for all-MiniLM-L6-v2 on two cores) instead of a whole small-tier
answer, so unlike a Cascade nothing is paid twice. ``train_router`` fits it from a labelled JSONL file
(``edgeinfer router train``); the result is a small JSON file that ``Learned`` loads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidRequestError
from ..paths import atomic_write
from .evalset import read_jsonl
from .policies import Decision, RouteRequest, prompt_text

ROUTER_FORMAT = "edgeinfer-router"
ROUTER_VERSION = 1
DEFAULT_EMBEDDER = "all-minilm-l6-v2"
L2_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)  # ridge strengths tried by cross-validation
CV_FOLDS = 5
MIN_PER_CLASS = 4  # fewer examples of either label than this cannot train anything


# --- training data ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelledPrompt:
    """A request and whether the large tier should serve it."""

    text: str
    large: bool


def _labelled_from(row: Any) -> LabelledPrompt:
    if not isinstance(row, dict):
        raise ValueError("each line must be a JSON object")
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise ValueError("'prompt' must be a non-empty string")
        text = row["prompt"]
    elif "messages" in row:
        messages = row["messages"]
        if (not isinstance(messages, list) or not messages
                or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)):
            raise ValueError("'messages' must be a non-empty list of {'role', 'content'} objects")
        text = prompt_text(messages)
    else:
        raise ValueError("a line needs 'prompt' (text) or 'messages' (chat)")
    if "label" in row:
        if row["label"] not in ("small", "large"):
            raise ValueError(f"'label' must be \"small\" or \"large\", got {row['label']!r}")
        return LabelledPrompt(text, row["label"] == "large")
    scores = [row.get("small_score"), row.get("large_score")]
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
        raise ValueError("a line needs 'label' (\"small\" or \"large\"), or numeric 'small_score' and "
                         "'large_score' (the large tier is needed when it scores higher)")
    return LabelledPrompt(text, scores[1] > scores[0])


def read_labelled(path: str | Path) -> list[LabelledPrompt]:
    """A labelled JSONL file: one request a line (``prompt`` or ``messages``) with ``label`` ("small" or
    "large") or both tiers' ``small_score`` / ``large_score``; blank lines are skipped."""
    return [example for _, example in read_jsonl(path, _labelled_from)]


# --- the classifier ----------------------------------------------------------------------------------
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def _newton(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 50) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (the bias is not penalised)."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = _sigmoid(xb @ w)
        grad = xb.T @ (p - y) + penalty * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w[:-1], float(w[-1])


def _fold_ids(y: np.ndarray, folds: int) -> np.ndarray:
    """Fold of each example, stratified by label, in file order."""
    ids = np.zeros(len(y), dtype=int)
    for label in (0, 1):
        where = np.flatnonzero(y == label)
        ids[where] = np.arange(len(where)) % folds
    return ids


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (ties count half): 0.5 is a coin, 1.0 ranks every positive first."""
    pos, neg = scores[y == 1], scores[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


@dataclass
class RouteClassifier:
    """p(large tier needed | request embedding): standardised features, one logistic layer."""

    weights: np.ndarray
    bias: float
    mean: np.ndarray
    scale: np.ndarray
    l2: float = 1.0

    def probability(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return _sigmoid(((x - self.mean) / self.scale) @ self.weights + self.bias)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> RouteClassifier:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        weights, bias = _newton((x - mean) / scale, y, l2)
        return cls(weights, bias, mean, scale, l2)

    @staticmethod
    def out_of_fold(x: np.ndarray, y: np.ndarray, l2: float, folds: int = CV_FOLDS) -> np.ndarray:
        """Each example's probability from a classifier fitted without its fold."""
        ids, p = _fold_ids(y, folds), np.zeros(len(y))
        for k in range(folds):
            held = ids == k
            if held.any():
                p[held] = RouteClassifier.fit(x[~held], y[~held], l2).probability(x[held])
        return p

    @classmethod
    def fit_cv(cls, x: np.ndarray, y: np.ndarray,
               grid: Sequence[float] = L2_GRID) -> tuple[RouteClassifier, np.ndarray]:
        """The ridge strength with the best cross-validated log-loss; returns the classifier fitted on
        everything and the out-of-fold probabilities at that strength (honest estimates of how it does)."""
        best: tuple[float, float, np.ndarray] | None = None
        for l2 in grid:
            p = np.clip(cls.out_of_fold(x, y, l2), 1e-6, 1 - 1e-6)
            loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
            if best is None or loss < best[0]:
                best = (loss, l2, p)
        assert best is not None
        return cls.fit(x, y, best[1]), best[2]


def threshold_for_share(probabilities: Sequence[float], large_share: float) -> float:
    """The probability at or above which about ``large_share`` of these requests go to the large tier."""
    if not 0.0 <= large_share <= 1.0:
        raise InvalidRequestError(f"large_share must be in [0, 1], got {large_share}")
    values = np.sort(np.asarray(probabilities, dtype=np.float64))[::-1]
    count = round(large_share * len(values))
    if count == 0:
        return float(np.nextafter(values[0], np.inf)) if len(values) else 1.0
    return float(values[count - 1])


# --- the router file ---------------------------------------------------------------------------------
@dataclass
class TrainedRouter:
    """What ``edgeinfer router train`` writes: the classifier, its threshold, the embedder it needs, and
    how it did under cross-validation."""

    classifier: RouteClassifier
    threshold: float
    embedder: dict[str, Any]  # {"name", "sha256", "dim"}
    summary: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        c = self.classifier
        data = {"format": ROUTER_FORMAT, "version": ROUTER_VERSION, "embedder": self.embedder,
                "threshold": self.threshold, "l2": c.l2, "bias": c.bias, "weights": c.weights.tolist(),
                "mean": c.mean.tolist(), "scale": c.scale.tolist(), "summary": self.summary}
        with atomic_write(path, "w") as handle:
            json.dump(data, handle)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainedRouter:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequestError(f"{path} is not a router file (edgeinfer router train writes one): "
                                      f"{exc}") from exc
        if not isinstance(data, dict) or data.get("format") != ROUTER_FORMAT:
            raise InvalidRequestError(f"{path} is not a router file (edgeinfer router train writes one)")
        if data.get("version") != ROUTER_VERSION:
            raise InvalidRequestError(f"{path} is router file version {data.get('version')}; this edgeinfer "
                                      f"reads version {ROUTER_VERSION}: train it again")
        try:
            vectors = [np.asarray(data[k], dtype=np.float64) for k in ("weights", "mean", "scale")]
            dim = int(data["embedder"]["dim"])
            if any(v.shape != (dim,) for v in vectors) or not np.all(vectors[2] > 0):
                raise ValueError(f"vectors must all have the embedder's {dim} dimensions")
            classifier = RouteClassifier(*vectors[:1], float(data["bias"]), *vectors[1:],
                                         l2=float(data["l2"]))
            return cls(classifier, float(data["threshold"]), dict(data["embedder"]), data.get("summary", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequestError(f"{path} is a damaged router file ({exc}): train it again") from exc


def embedder_identity(embedder: Any, dim: int | None = None) -> dict[str, Any]:
    """Name, checksum and width of an embedding model, recorded so a router is used with the same one
    (the width is measured with one embedding unless already known)."""
    dim = int(embedder.embed(["x"]).shape[1]) if dim is None else dim
    return {"name": getattr(embedder, "name", None), "sha256": getattr(embedder, "sha256", None), "dim": dim}


def train_router(examples: Sequence[LabelledPrompt], embedder: Any, *,
                 large_share: float | None = None) -> TrainedRouter:
    """Fit a router on labelled requests. The threshold sends ``large_share`` of the (cross-validated)
    training requests to the large tier, or, when None, those more likely than not to need it."""
    y = np.array([e.large for e in examples], dtype=np.float64)
    positives = int(y.sum())
    if min(positives, len(y) - positives) < MIN_PER_CLASS:
        raise InvalidRequestError(
            f"training needs at least {MIN_PER_CLASS} requests labelled 'small' and {MIN_PER_CLASS} "
            f"labelled 'large'; got {len(y) - positives} and {positives}")
    x = embedder.embed([e.text for e in examples], truncate=True)
    classifier, held_out = RouteClassifier.fit_cv(x, y)
    threshold = 0.5 if large_share is None else threshold_for_share(held_out, large_share)
    routed = held_out >= threshold
    summary = {
        "examples": len(y), "large_labels": positives, "cv_folds": CV_FOLDS, "l2": classifier.l2,
        "cv_auc": auc(held_out, y), "cv_accuracy": float(np.mean(routed == (y == 1))),
        "cv_large_share": float(np.mean(routed)), "target_large_share": large_share,
        # of the requests that need the large tier, the share the router sends there
        "cv_large_recall": float(np.mean(routed[y == 1])),
    }
    return TrainedRouter(classifier, threshold, embedder_identity(embedder, x.shape[1]), summary)


# --- the policy ----------------------------------------------------------------------------------------
class Learned:
    """Send a request to ``large`` when the trained classifier's p(large tier needed) for its embedding
    is at least ``threshold`` (default: the one saved at training), else to ``small``."""

    def __init__(self, embedder: Any, router: TrainedRouter | str | Path, small: str = "small",
                 large: str = "large", threshold: float | None = None) -> None:
        self.router = router if isinstance(router, TrainedRouter) else TrainedRouter.load(router)
        want = self.router.embedder
        have = embedder_identity(embedder)
        if have["dim"] != want["dim"] or (want.get("sha256") and have["sha256"]
                                          and have["sha256"] != want["sha256"]):
            raise InvalidRequestError(
                f"this router was trained on embeddings from {want.get('name')} ({want['dim']} dims, sha256 "
                f"{str(want.get('sha256'))[:12]}); load that embedding model, not {have['name']}")
        threshold = self.router.threshold if threshold is None else threshold
        if not 0.0 <= threshold <= 1.0:
            raise InvalidRequestError(f"a learned router's threshold is a probability in [0, 1], "
                                      f"got {threshold}")
        self.embedder, self.small, self.large, self.threshold = embedder, small, large, threshold

    def probability(self, text: str) -> float:
        """p(the large tier is needed) for one request text."""
        return float(self.router.classifier.probability(self.embedder.embed([text], truncate=True))[0])

    def decide(self, request: RouteRequest, tiers: Sequence[str]) -> Decision:
        for tier in (self.small, self.large):
            if tier not in tiers:
                raise InvalidRequestError(f"learned router tier {tier!r} is not one of {', '.join(tiers)}")
        p = self.probability(request.text)
        if p >= self.threshold:
            return Decision(self.large, f"learned: p(large needed) {p:.2f} >= {self.threshold:.2f}")
        return Decision(self.small, f"learned: p(large needed) {p:.2f} < {self.threshold:.2f}")


def summary_lines(router: TrainedRouter) -> list[str]:
    """A few lines saying how a trained router did under cross-validation (for the CLI)."""
    s = router.summary
    return [
        f"trained on {s['examples']} requests ({s['large_labels']} need the large tier), "
        f"embeddings from {router.embedder['name']} ({router.embedder['dim']} dims), l2 {s['l2']:g}",
        f"{s['cv_folds']}-fold cross-validated: AUC {s['cv_auc']:.3f}, accuracy {s['cv_accuracy']:.1%}, "
        f"{s['cv_large_share']:.1%} sent to the large tier (threshold p >= {router.threshold:.3f}), "
        f"catching {s['cv_large_recall']:.1%} of the requests that need it",
    ]


__all__ = ["Learned", "LabelledPrompt", "RouteClassifier", "TrainedRouter", "auc", "read_labelled",
           "threshold_for_share", "train_router"]
