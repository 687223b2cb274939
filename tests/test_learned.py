"""Learned routing: logistic regression on real all-MiniLM-L6-v2 embeddings (our GGUF conversion of the
packaged checkpoint), the labelled-file reader and its errors, the router file, and the policy in a Router."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgeinfer_converters import prepare
from test_router import toy

import edgeinfer as ei
from edgeinfer.routing import Learned, Router, Tier, read_labelled, train_router
from edgeinfer.routing.evalset import load_evalset, prompt_for
from edgeinfer.routing.learned import (
    DEFAULT_EMBEDDER,
    LabelledPrompt,
    RouteClassifier,
    TrainedRouter,
    auc,
    threshold_for_share,
)

LARGE_TASKS = {"translation", "arithmetic"}


# --- the classifier on synthetic data ---------------------------------------------------------------
def _blobs(n: int = 200, d: int = 16, shift: float = 1.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(float)
    x = rng.normal(size=(n, d))
    x[:, 0] += shift * (2 * y - 1)  # one informative direction among noise
    return x, y


def test_logistic_regression_learns_a_signal_and_not_noise():
    x, y = _blobs()
    classifier, held_out = RouteClassifier.fit_cv(x, y)
    assert auc(held_out, y) > 0.9
    assert abs(classifier.weights[0]) > 3 * np.abs(classifier.weights[1:]).max()
    shuffled = np.random.default_rng(1).permutation(y)
    _, noise = RouteClassifier.fit_cv(x[:, 1:], shuffled)  # the informative column removed
    assert 0.3 < auc(noise, shuffled) < 0.7


def test_strong_ridge_shrinks_towards_the_base_rate():
    x, y = _blobs(n=100)
    y[:20] = 1  # 60% positives
    p = RouteClassifier.fit(x, y, l2=1e9).probability(x)
    np.testing.assert_allclose(p, y.mean(), atol=1e-3)


def test_auc_and_threshold_for_share():
    y = np.array([0, 0, 1, 1])
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert auc(np.array([0.5, 0.5, 0.5, 0.5]), y) == 0.5
    p = np.linspace(0.0, 1.0, 10)
    for share in (0.0, 0.3, 0.5, 1.0):
        assert np.mean(p >= threshold_for_share(p, share)) == pytest.approx(share)
    with pytest.raises(ei.InvalidRequestError, match=r"large_share must be in \[0, 1\]"):
        threshold_for_share(p, 1.5)


# --- the labelled file ---------------------------------------------------------------------------------
def test_read_labelled_accepts_prompts_messages_labels_and_scores(tmp_path: Path):
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "What is 2+2?", "label": "large"}),
        "",
        json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Hi"}], "label": "small"}),
        json.dumps({"prompt": "Capital of Peru?", "small_score": 0.0, "large_score": 1.0}),
        json.dumps({"prompt": "Tie goes small", "small_score": 1, "large_score": 1}),
    ]), encoding="utf-8")
    assert read_labelled(path) == [
        LabelledPrompt("What is 2+2?", True), LabelledPrompt("Be brief.\nHi", False),
        LabelledPrompt("Capital of Peru?", True), LabelledPrompt("Tie goes small", False)]


@pytest.mark.parametrize("line, message", [
    ("{not json", "invalid JSON"),
    ('["a list"]', "must be a JSON object"),
    ('{"label": "large"}', "needs 'prompt'"),
    ('{"prompt": "  ", "label": "large"}', "non-empty string"),
    ('{"messages": [], "label": "small"}', "'messages' must be"),
    ('{"prompt": "x", "label": "medium"}', "'label' must be"),
    ('{"prompt": "x", "small_score": "high", "large_score": 1}', "numeric 'small_score'"),
    ('{"prompt": "x", "small_score": NaN, "large_score": 1}', "numeric 'small_score'"),
    ('{"prompt": "x"}', "needs 'label'"),
])
def test_bad_lines_name_the_file_and_line(tmp_path: Path, line: str, message: str):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "label": "small"}) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ei.InvalidDatasetError, match=message) as info:
        read_labelled(path)
    assert info.value.line == 3 and str(info.value).startswith(f"{path}:3:")


def test_unreadable_file(tmp_path: Path):
    with pytest.raises(ei.InvalidDatasetError, match="cannot read"):
        read_labelled(tmp_path / "missing.jsonl")


# --- real embeddings --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    prepare(DEFAULT_EMBEDDER)  # what `edgeinfer pull all-minilm-l6-v2` does: the GGUF conversion, once
    with ei.load(DEFAULT_EMBEDDER, n_threads=2) as model:
        yield model


def _task_labelled() -> tuple[list[LabelledPrompt], list[LabelledPrompt]]:
    """The shipped routing set, labelled 'large' for translation and arithmetic requests: a rule the
    classifier can only learn from the request's wording. Every 4th item is held out."""
    items = load_evalset()
    examples = [LabelledPrompt(prompt_for(it, "chat"), it.task in LARGE_TASKS) for it in items]
    return [e for i, e in enumerate(examples) if i % 4], examples[::4]


def test_the_packaged_hf_embedder_loads_through_a_cached_gguf_conversion(minilm):
    assert minilm.path.suffix == ".gguf" and minilm.path.parent.name == "converted"
    stamp = minilm.path.stat().st_mtime_ns
    assert prepare(DEFAULT_EMBEDDER) == [minilm.path]  # converted once, then reused
    with ei.load(DEFAULT_EMBEDDER, n_threads=1) as again:
        assert again.path == minilm.path
    assert minilm.path.stat().st_mtime_ns == stamp
    assert minilm.embed(["hello"]).shape == (1, 384)


def test_load_never_converts_it_names_the_command_that_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path))
    with pytest.raises(ei.ModelNotPreparedError, match="edgeinfer pull all-minilm-l6-v2"):
        ei.load(DEFAULT_EMBEDDER)
    assert not (tmp_path / "converted").exists()


def test_train_router_learns_from_real_embeddings_and_routes_held_out_requests(minilm, tmp_path: Path):
    train, held = _task_labelled()
    trained = train_router(train, minilm)
    assert trained.summary["cv_auc"] > 0.95 and trained.summary["examples"] == len(train)
    assert trained.embedder == {"name": DEFAULT_EMBEDDER, "sha256": minilm.sha256, "dim": 384}
    policy = Learned(minilm, trained.save(tmp_path / "router.json"))
    probabilities = np.array([policy.probability(e.text) for e in held])
    labels = np.array([e.large for e in held], dtype=float)
    assert auc(probabilities, labels) > 0.95
    accuracy = np.mean((probabilities >= policy.threshold) == labels.astype(bool))
    assert accuracy > 0.9, accuracy
    # the same classifier, read back from disk, gives the same numbers
    again = TrainedRouter.load(tmp_path / "router.json")
    np.testing.assert_allclose(again.classifier.probability(minilm.embed([held[0].text])),
                               trained.classifier.probability(minilm.embed([held[0].text])))


def test_large_share_sets_the_threshold(minilm):
    train, _ = _task_labelled()
    trained = train_router(train, minilm, large_share=0.2)
    assert trained.summary["cv_large_share"] == pytest.approx(0.2, abs=0.03)
    assert trained.threshold > train_router(train, minilm, large_share=0.5).threshold


def test_training_needs_both_labels(minilm):
    only_small = [LabelledPrompt(f"question {i}", False) for i in range(10)]
    with pytest.raises(ei.InvalidRequestError, match="labelled 'large'"):
        train_router(only_small + [LabelledPrompt("x", True)], minilm)


def test_router_with_a_learned_policy_says_why(minilm):
    train, _ = _task_labelled()
    small, large = toy(1, "small"), toy(3, "large")  # toy tiers: the routing decision is under test here
    policy = Learned(minilm, train_router(train, minilm))
    router = Router([Tier("small", small), Tier("large", large)], policy)
    try:
        done = router.generate("Translate to German: Good morning, friends.", max_tokens=2)
        assert done.stats.model == "large"
        assert done.stats.route.startswith("large: learned: p(large needed) 0.")
        done = router.generate("Who wrote Romeo and Juliet?", max_tokens=2)
        assert done.stats.model == "small"
        assert done.stats.route.startswith("small: learned: p(large needed) 0.")
        assert router.stats.tiers["large"].requests == 1 and router.stats.tiers["small"].requests == 1
    finally:
        router.close()


def test_learned_refuses_a_mismatched_embedder_and_damaged_files(minilm, tmp_path: Path):
    train, _ = _task_labelled()
    path = train_router(train[::4], minilm).save(tmp_path / "router.json")

    class Narrow:
        name, sha256 = "narrow", None

        def embed(self, texts, *, normalize=True, truncate=False):
            return np.zeros((len(texts), 8), dtype=np.float32)

    with pytest.raises(ei.InvalidRequestError, match="trained on embeddings from all-minilm-l6-v2"):
        Learned(Narrow(), path)
    with pytest.raises(ei.InvalidRequestError, match="threshold is a probability"):
        Learned(minilm, path, threshold=1.5)
    data = json.loads(path.read_text())
    for damage, message in ((lambda d: d.update(version=99), "version 99"),
                            (lambda d: d.update(weights=d["weights"][:5]), "damaged router file"),
                            (lambda d: d.update(format="x"), "not a router file")):
        broken = json.loads(json.dumps(data))
        damage(broken)
        (tmp_path / "broken.json").write_text(json.dumps(broken))
        with pytest.raises(ei.InvalidRequestError, match=message):
            TrainedRouter.load(tmp_path / "broken.json")
    (tmp_path / "cut.json").write_text(path.read_text()[:100])
    with pytest.raises(ei.InvalidRequestError, match="not a router file"):
        TrainedRouter.load(tmp_path / "cut.json")


# --- the command line ---------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeinfer", *args], capture_output=True, text=True,
                          timeout=300)


def test_router_train_and_run_with_it(tmp_path: Path):
    train, _ = _task_labelled()
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"prompt": e.text, "label": "large" if e.large else "small"}) + "\n"
                              for e in train), encoding="utf-8")
    out = tmp_path / "router.json"
    done = _cli("router", "train", str(labels), "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["cv_auc"] > 0.95 and out.is_file()
    ran = _cli("run", "smollm2-135m-instruct", "Translate to French: The cat sleeps.", "--temperature", "0",
               "--max-tokens", "4", "--escalate-to", "gemma-3-270m", "--router", str(out), "--json")
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["route"].startswith("large: learned: p(large needed)")
    assert result["router"]["small"]["requests"] == 0 and result["router"]["large"]["requests"] == 1

    labels.write_text(labels.read_text() + '{"prompt": "x", "label": "huge"}\n', encoding="utf-8")
    bad = _cli("router", "train", str(labels), "-o", str(tmp_path / "other.json"))
    assert bad.returncode == 1 and f"{labels}:{len(train) + 1}: 'label' must be" in bad.stderr
    assert not (tmp_path / "other.json").exists()
    alone = _cli("run", "smollm2-135m-instruct", "hi", "--router", str(out))
    assert alone.returncode == 2 and "give --escalate-to" in alone.stderr
