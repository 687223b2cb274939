"""Routing quality-cost curve: a small and a larger local model on the shipped routing evaluation set.

Step 1 runs every item once on both tiers (small and large alternating, who goes first alternating
item by item, to spread machine drift): the small tier is SmolLM2-135M-Instruct as a chat model
(plain prompt, confidence on), the large one Gemma-3-270M as a base model (few-shot prompt, stopped at
the first newline); greedy, up to 32 tokens. Raw per-item results are cached under
~/.cache/edgeinfer-bench/routing/, keyed by a digest of the evaluation set, the few-shot examples,
the model names and the settings (``--rerun`` redoes them).

Step 2 evaluates routing policies from those per-item results. The routing decision depends only on
the request and the small model's answer (greedy, so the same on every run), so replaying it offline
over the same runs is exact. Cost is measured seconds times one rate for both local tiers
(``LocalCost(per_hour=1.0)``), reported relative to always-large; a cascade pays the small call always
and the large one when it escalates. Policies with anything learned (rules by task, cascade thresholds)
are fitted on one half of the items and evaluated on the other, then the halves swap (2-fold
cross-fit, halves stratified by task), so every item is scored once, by a policy that never saw it.

Step 3 runs ~20 items through a real ``ei.Router`` with the chosen cascade and checks its decisions
and answers against the simulation.

``--small-style few_shot`` gives the small tier the large tier's few-shot prompt instead (a fairer
pair: same prompt, same stop) and writes routing_fewshot.* instead.

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.routing [--rerun] [--e2e 20] [--small-style few_shot]
Writes benchmarks/results/routing.json, routing.md and routing.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, fmt, machine_info, markdown_table, quiet_logging, write_report

SMALL, LARGE = "smollm2-135m-instruct", "gemma-3-270m"
MAX_TOKENS = 32
TARGET_SHARES = [round(0.1 * k, 1) for k in range(1, 10)]
RANDOM_RATES = [round(0.05 * k, 2) for k in range(21)]
CACHE_DIR = Path.home() / ".cache" / "edgeinfer-bench" / "routing"
RATE = 1.0  # LocalCost(per_hour=1.0) for both tiers: only the ratio of costs matters
SMALL_STYLE = "chat"  # --small-style: "chat" (plain request) or "few_shot" (the large tier's prompt)


# --- step 1: raw per-item results -----------------------------------------------------------------
def cache_key(threads: int) -> str:
    from edgeinfer.routing.evalset import default_evalset_path, default_fewshot_path

    h = hashlib.sha256()
    for path in (default_evalset_path(), default_fewshot_path()):
        h.update(path.read_bytes())
    settings = [SMALL, LARGE, MAX_TOKENS, threads, SMALL_STYLE, "few_shot", "stop-newline"]
    h.update(json.dumps(settings).encode())
    return h.hexdigest()[:16]


def small_call(model: Any, item: Any) -> Any:
    from edgeinfer.routing.evalset import prompt_for

    if SMALL_STYLE == "few_shot":
        return model.generate(prompt_for(item, "few_shot"), max_tokens=MAX_TOKENS, temperature=0,
                              stop=["\n"], confidence=True)
    return model.complete_chat([{"role": "user", "content": prompt_for(item, "chat")}],
                               max_tokens=MAX_TOKENS, temperature=0, confidence=True)


def large_call(model: Any, item: Any) -> Any:
    from edgeinfer.routing.evalset import prompt_for

    return model.generate(prompt_for(item, "few_shot"), max_tokens=MAX_TOKENS, temperature=0, stop=["\n"])


def run_items(threads: int) -> list[dict[str, Any]]:
    import edgeinfer as ei
    from edgeinfer.routing.evalset import load_evalset, score
    from edgeinfer.routing.policies import CONFIDENCE_MEASURES, confidence_of

    items = load_evalset()
    small, large = ei.load(SMALL, n_threads=threads), ei.load(LARGE, n_threads=threads)
    try:
        small_call(small, items[0]), large_call(large, items[0])  # warm-up, not recorded
        rows = []
        for i, item in enumerate(items):
            order = ("small", "large") if i % 2 == 0 else ("large", "small")
            done = {}
            for tier in order:
                done[tier] = small_call(small, item) if tier == "small" else large_call(large, item)
            s, lg = done["small"], done["large"]
            rows.append({
                "id": item.id, "task": item.task, "difficulty": item.difficulty,
                "small": {"answer": s.text, "score": score(item, s.text), "seconds": s.stats.total_s,
                          "prompt_tokens": s.stats.prompt_tokens, "tokens": s.stats.completion_tokens,
                          "confidence": {m: confidence_of(s.confidence, m) for m in CONFIDENCE_MEASURES},
                          "per_token": [list(p) for p in s.confidence]},
                "large": {"answer": lg.text, "score": score(item, lg.text), "seconds": lg.stats.total_s,
                          "prompt_tokens": lg.stats.prompt_tokens, "tokens": lg.stats.completion_tokens,
                          "cached_tokens": lg.stats.cached_tokens},
            })
            if (i + 1) % 20 == 0:
                print(f"  {i + 1}/{len(items)} items", flush=True)
    finally:
        small.close()
        large.close()
    return rows


def load_or_run(threads: int, rerun: bool) -> tuple[list[dict[str, Any]], Path, float | None]:
    path = CACHE_DIR / f"{cache_key(threads)}.json"
    if path.is_file() and not rerun:
        return json.loads(path.read_text(encoding="utf-8")), path, None
    start = time.perf_counter()
    rows = run_items(threads)
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return rows, path, seconds


# --- step 2: policies, replayed from the per-item results ----------------------------------------
def folds(rows: Sequence[dict[str, Any]]) -> list[int]:
    """Fold (0/1) of each row: alternating within each task, in file order (stratified by task)."""
    seen: dict[str, int] = {}
    out = []
    for r in rows:
        k = seen.get(r["task"], 0)
        out.append(k % 2)
        seen[r["task"]] = k + 1
    return out


def point(rows: Sequence[dict[str, Any]], to_large: Sequence[bool], small_paid: Sequence[bool],
          totals: dict[str, float]) -> dict[str, float]:
    """(large share, quality, % of always-large, cost relative to always-large) of per-item choices."""
    n = len(rows)
    quality = sum(r["large"]["score"] if g else r["small"]["score"]
                  for r, g in zip(rows, to_large, strict=True)) / n
    seconds = sum((r["small"]["seconds"] if p else 0.0) + (r["large"]["seconds"] if g else 0.0)
                  for r, g, p in zip(rows, to_large, small_paid, strict=True))
    return {"large_share": sum(to_large) / n, "quality": quality,
            "pct_of_large": 100 * quality / totals["large_quality"],
            "rel_cost": seconds / totals["large_seconds"], "cost": seconds * RATE / 3600}


def random_at(share: float, totals: dict[str, float]) -> dict[str, float]:
    q = (1 - share) * totals["small_quality"] + share * totals["large_quality"]
    c = (1 - share) * totals["small_seconds"] + share * totals["large_seconds"]
    return {"large_share": share, "quality": q, "pct_of_large": 100 * q / totals["large_quality"],
            "rel_cost": c / totals["large_seconds"], "cost": c * RATE / 3600}


def rules_by_task(rows: Sequence[dict[str, Any]],
                  fold: Sequence[int]) -> tuple[list[bool], list[dict[str, Any]]]:
    """Per fold: tasks where large scores higher on the calibration half go to large (a Rules policy)."""
    from edgeinfer.routing import Rule, Rules
    from edgeinfer.routing.policies import RouteRequest

    to_large = [False] * len(rows)
    fitted = []
    for held in (0, 1):
        calib = [r for r, f in zip(rows, fold, strict=True) if f != held]
        tasks = sorted({r["task"] for r in calib})
        large_tasks = []
        for task in tasks:
            part = [r for r in calib if r["task"] == task]
            if sum(r["large"]["score"] for r in part) > sum(r["small"]["score"] for r in part):
                large_tasks.append(task)
        policy = Rules([Rule("large", tasks=frozenset(large_tasks))] if large_tasks else [], default="small")
        fitted.append({"evaluated_on_fold": held, "large_tasks": large_tasks})
        for i, (r, f) in enumerate(zip(rows, fold, strict=True)):
            if f == held:
                decision = policy.decide(RouteRequest("", 0, task=r["task"]), ["small", "large"])
                to_large[i] = decision.tier == "large"
    return to_large, fitted


def cascade_curve(rows: Sequence[dict[str, Any]], fold: Sequence[int], measure: str,
                  totals: dict[str, float]) -> list[dict[str, Any]]:
    from edgeinfer.routing import Cascade, calibrate_threshold

    out = []
    for target in TARGET_SHARES:
        escalated = [False] * len(rows)
        thresholds = []
        for held in (0, 1):
            calib = [r["small"]["confidence"][measure] for r, f in zip(rows, fold, strict=True) if f != held]
            threshold = calibrate_threshold(calib, target)
            thresholds.append(threshold)
            policy = Cascade("small", "large", threshold, measure)
            for i, (r, f) in enumerate(zip(rows, fold, strict=True)):
                if f == held:
                    escalated[i] = policy.escalate([tuple(p) for p in r["small"]["per_token"]]) is not None
        p = point(rows, escalated, [True] * len(rows), totals)
        out.append({"target_share": target, "thresholds": thresholds, **p})
    return out


def embed_requests(rows: Sequence[dict[str, Any]], threads: int) -> Any:
    """Each item's request as the Router sees it (the small tier's prompt), embedded by the default
    embedding model (all-MiniLM-L6-v2, converted to GGUF once, as `edgeinfer pull` does)."""
    from edgeinfer_converters import prepare

    import edgeinfer as ei
    from edgeinfer.routing.evalset import load_evalset, prompt_for
    from edgeinfer.routing.learned import DEFAULT_EMBEDDER

    items = {it.id: it for it in load_evalset()}
    prepare(DEFAULT_EMBEDDER)
    with ei.load(DEFAULT_EMBEDDER, n_threads=threads) as embedder:
        return embedder.embed([prompt_for(items[r["id"]], SMALL_STYLE) for r in rows], truncate=True)


def needs_large(rows: Sequence[dict[str, Any]]) -> list[bool]:
    """The training label: the large tier scored higher than the small one on this item."""
    return [r["large"]["score"] > r["small"]["score"] for r in rows]


def learned_curve(rows: Sequence[dict[str, Any]], fold: Sequence[int], x: Any,
                  totals: dict[str, float]) -> list[dict[str, Any]]:
    """A Learned policy per fold: classifier fitted (ridge strength by 5-fold CV) on the other half,
    threshold set on that half's out-of-fold probabilities for the target share, applied to this half.
    Only the chosen tier is paid."""
    import numpy as np

    from edgeinfer.routing.learned import RouteClassifier, auc, threshold_for_share

    y, f = np.array(needs_large(rows), dtype=float), np.asarray(fold)
    fitted, probability = [], np.zeros(len(rows))
    for held in (0, 1):
        classifier, held_out = RouteClassifier.fit_cv(x[f != held], y[f != held])
        probability[f == held] = classifier.probability(x[f == held])
        fitted.append((classifier, held_out))
    out = []
    for target in TARGET_SHARES:
        thresholds = [threshold_for_share(held_out, target) for _, held_out in fitted]
        to_large = [bool(probability[i] >= thresholds[f[i]]) for i in range(len(rows))]
        p = point(rows, to_large, [not g for g in to_large], totals)
        out.append({"target_share": target, "thresholds": thresholds, **p})
    for p in out:
        p["auc"] = auc(probability, y)
        p["l2"] = [c.l2 for c, _ in fitted]
    return out


def evaluate(rows: list[dict[str, Any]], x: Any) -> dict[str, Any]:
    from edgeinfer.routing.policies import CONFIDENCE_MEASURES

    n = len(rows)
    totals = {
        "small_quality": sum(r["small"]["score"] for r in rows) / n,
        "large_quality": sum(r["large"]["score"] for r in rows) / n,
        "small_seconds": sum(r["small"]["seconds"] for r in rows),
        "large_seconds": sum(r["large"]["seconds"] for r in rows),
    }
    totals.update({
        "small_tokens": sum(r["small"]["tokens"] for r in rows) / n,
        "large_tokens": sum(r["large"]["tokens"] for r in rows) / n,
        "small_at_cap": sum(r["small"]["tokens"] >= MAX_TOKENS for r in rows),
        "large_cached_share": sum(r["large"].get("cached_tokens", 0) for r in rows)
        / max(1, sum(r["large"]["prompt_tokens"] for r in rows)),
    })
    fold = folds(rows)
    always_small = point(rows, [False] * n, [True] * n, totals)
    always_large = point(rows, [True] * n, [False] * n, totals)
    oracle_large = [r["large"]["score"] > r["small"]["score"] for r in rows]
    oracle = point(rows, oracle_large, [not g for g in oracle_large], totals)
    rules_choice, rules_fitted = rules_by_task(rows, fold)
    rules = {**point(rows, rules_choice, [not g for g in rules_choice], totals), "fitted": rules_fitted}
    cascades = {m: cascade_curve(rows, fold, m, totals) for m in CONFIDENCE_MEASURES}
    learned = learned_curve(rows, fold, x, totals)
    random_curve = [random_at(r, totals) for r in RANDOM_RATES]

    # against random routing at the same realized large share, and against the best random mix that
    # costs no more (the large tier need not be the dearer one: then always-large is such a mix)
    grid = [random_at(k / 1000, totals) for k in range(1001)]

    def vs_random(p: dict[str, float]) -> dict[str, float]:
        rnd = random_at(p["large_share"], totals)
        affordable = [g for g in grid if g["rel_cost"] <= p["rel_cost"] + 1e-12]
        same_cost = max(affordable, key=lambda g: g["quality"]) if affordable else None
        return {"random_quality_same_share": rnd["quality"], "gain_same_share": p["quality"] - rnd["quality"],
                "random_share_same_cost": same_cost["large_share"] if same_cost else None,
                "random_quality_same_cost": same_cost["quality"] if same_cost else None,
                "gain_same_cost": p["quality"] - same_cost["quality"] if same_cost else None}

    curves = {**{f"cascade {m}": c for m, c in cascades.items()}, "learned (MiniLM)": learned}
    for curve in curves.values():
        for p in curve:
            p.update(vs_random(p))
    rules.update(vs_random(rules))

    candidates = [("rules by task", rules)] + [(f"{name} (target {p['target_share']})", p)
                                               for name, c in curves.items() for p in c]
    eligible = [(name, p) for name, p in candidates if p["large_share"] <= 0.5]
    best_name, best = max(eligible, key=lambda x: x[1]["quality"])
    beats = {m: {"points": len(c), "beat_same_share": sum(p["gain_same_share"] > 0 for p in c),
                 "beat_same_cost": sum((p["gain_same_cost"] or 0) > 0 for p in c)}
             for m, c in curves.items()}
    best_learned = max((p for p in learned if p["large_share"] <= 0.5), key=lambda p: p["quality"])
    best_cascade = max(((m, p) for m, c in cascades.items() for p in c if p["large_share"] <= 0.5),
                       key=lambda x: x[1]["quality"])

    per_task = {}
    for key in ("task", "difficulty"):
        for value in sorted({r[key] for r in rows}):
            part = [r for r in rows if r[key] == value]
            per_task[f"{key}={value}"] = {
                "n": len(part),
                "small": sum(r["small"]["score"] for r in part) / len(part),
                "large": sum(r["large"]["score"] for r in part) / len(part),
                "oracle": sum(max(r["small"]["score"], r["large"]["score"]) for r in part) / len(part),
                "small_s": sum(r["small"]["seconds"] for r in part) / len(part),
                "large_s": sum(r["large"]["seconds"] for r in part) / len(part),
                "large_wins": sum(r["large"]["score"] > r["small"]["score"] for r in part),
                "small_wins": sum(r["small"]["score"] > r["large"]["score"] for r in part),
            }
    return {"n": n, "totals": totals, "always_small": always_small, "always_large": always_large,
            "oracle": oracle, "rules_by_task": rules, "cascades": cascades, "learned": learned,
            "random": random_curve,
            "best_learned": {"target_share": best_learned["target_share"],
                             "large_share": best_learned["large_share"],
                             "pct_of_large": best_learned["pct_of_large"], "auc": best_learned["auc"]},
            "best_at_half": {"policy": best_name, **best}, "beats_random": beats,
            "best_cascade": {"measure": best_cascade[0], "target_share": best_cascade[1]["target_share"],
                             "large_share": best_cascade[1]["large_share"],
                             "pct_of_large": best_cascade[1]["pct_of_large"]},
            "per_group": per_task}


# --- step 3: a real Router over some items --------------------------------------------------------
class FewShotTier:
    """The large tier as a Router sees it: takes the chat request, sends the base model the item's
    few-shot prompt instead (the Router itself has one prompt for all tiers)."""

    def __init__(self, model: Any, items_by_prompt: dict[str, Any]) -> None:
        self.model, self.items = model, items_by_prompt

    def complete_chat(self, messages: Sequence[dict[str, str]], params: Any = None, **options: Any) -> Any:
        from edgeinfer.routing.evalset import prompt_for

        item = self.items[messages[-1]["content"]]
        options.pop("confidence", None)
        return self.model.generate(prompt_for(item, "few_shot"), params, **{**options, "stop": ["\n"]})


def write_labels(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """The items as a training file for ``edgeinfer router train`` (request text and both tiers' scores)."""
    from edgeinfer.routing.evalset import load_evalset, prompt_for

    items = {it.id: it for it in load_evalset()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": prompt_for(items[r["id"]], SMALL_STYLE),
                                        "small_score": r["small"]["score"],
                                        "large_score": r["large"]["score"]}) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def end_to_end(rows: list[dict[str, Any]], kind: str, share: float, count: int, threads: int,
               x: Any = None, measure: str = "mean_logprob") -> dict[str, Any]:
    """``count`` items through a real Router with a Cascade (``kind="cascade"``, threshold calibrated on
    all items) or a Learned policy (trained with ``train_router`` from the labels file, on all items),
    checking its decisions and answers against the replay."""
    from edgeinfer_converters import prepare

    import edgeinfer as ei
    from edgeinfer.routing import Cascade, Learned, LocalCost, Router, Tier, calibrate_threshold
    from edgeinfer.routing.evalset import load_evalset, prompt_for
    from edgeinfer.routing.learned import DEFAULT_EMBEDDER, read_labelled, train_router

    items = {it.id: it for it in load_evalset()}
    step = max(1, len(rows) // count)
    picked = list(range(len(rows)))[::step][:count]
    small, large = ei.load(SMALL, n_threads=threads), ei.load(LARGE, n_threads=threads)
    embedder = None
    if kind == "cascade":
        threshold = calibrate_threshold([r["small"]["confidence"][measure] for r in rows], share)
        policy: Any = Cascade("small", "large", threshold, measure)
        simulated = [policy.escalate([tuple(p) for p in rows[i]["small"]["per_token"]]) is not None
                     for i in picked]
        setup = {"measure": measure, "threshold": threshold}
    else:
        labels = write_labels(rows, CACHE_DIR / f"labels-{cache_key(threads)}.jsonl")
        prepare(DEFAULT_EMBEDDER)
        embedder = ei.load(DEFAULT_EMBEDDER, n_threads=threads)
        trained = train_router(read_labelled(labels), embedder, large_share=share)
        policy = Learned(embedder, trained)
        # the replay's decision, from the benchmark's batched embeddings (the Router embeds one at a time)
        simulated = [bool(trained.classifier.probability(x[i])[0] >= trained.threshold) for i in picked]
        setup = {"labels": str(labels), "threshold": trained.threshold, "summary": trained.summary}
    by_prompt = {prompt_for(items[rows[i]["id"]], "chat"): items[rows[i]["id"]] for i in picked}
    large_tier = FewShotTier(large, by_prompt) if SMALL_STYLE == "chat" else large
    as_given = (lambda prompt: prompt) if SMALL_STYLE == "few_shot" else None  # few-shot text, not chat
    router = Router([Tier("small", small, LocalCost(RATE), adapt=as_given),
                     Tier("large", large_tier, LocalCost(RATE))], policy)
    checks = []
    try:
        for i, sim in zip(picked, simulated, strict=True):
            r, item = rows[i], items[rows[i]["id"]]
            if SMALL_STYLE == "chat":
                done = router.complete_chat([{"role": "user", "content": prompt_for(item, "chat")}],
                                            max_tokens=MAX_TOKENS, temperature=0, task=item.task)
            else:  # one prompt for both tiers: the Router's own generate path
                done = router.generate(prompt_for(item, "few_shot"), max_tokens=MAX_TOKENS, temperature=0,
                                       stop=["\n"], task=item.task)
            real = done.stats.route.startswith("large")
            expected = r["large"]["answer"] if sim else r["small"]["answer"]
            checks.append({"id": r["id"], "simulated_large": sim, "router_large": real,
                           "route": done.stats.route, "same_answer": done.text == expected})
    finally:
        router.close()
        if embedder is not None:
            embedder.close()
    return {"policy": kind, "target_share": share, **setup, "n": len(checks),
            "decisions_agree": sum(c["simulated_large"] == c["router_large"] for c in checks),
            "answers_agree": sum(c["same_answer"] for c in checks),
            "to_large": sum(c["router_large"] for c in checks),
            "router_shares": router.stats.shares(), "saved": router.stats.saved,
            "router_cost": router.stats.cost, "checks": checks}


# --- report ---------------------------------------------------------------------------------------
def chart(ev: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, x, label in ((axes[0], "large_share", "share of requests sent to the large tier"),
                         (axes[1], "rel_cost", "cost relative to always-large (measured seconds)")):
        ax.plot([p[x] for p in ev["random"]], [p["quality"] for p in ev["random"]], "--", color="grey",
                label="random routing")
        for (measure, curve), color in zip(ev["cascades"].items(), ("tab:blue", "tab:orange", "tab:green"),
                                           strict=False):
            ax.plot([p[x] for p in curve], [p["quality"] for p in curve], "o-", color=color, ms=4,
                    label=f"cascade {measure}")
        ax.plot([p[x] for p in ev["learned"]], [p["quality"] for p in ev["learned"]], "s-", color="tab:brown",
                ms=4, lw=2, label="learned (MiniLM + logistic regression)")
        for key, marker, color, name in (("always_small", "s", "black", "always-small"),
                                         ("always_large", "D", "black", "always-large"),
                                         ("rules_by_task", "^", "tab:red", "rules by task"),
                                         ("oracle", "*", "tab:purple", "oracle (upper bound)")):
            ax.plot([ev[key][x]], [ev[key]["quality"]], marker, color=color, ms=10 if marker == "*" else 8,
                    label=name, linestyle="none")
        ax.axhline(0.95 * ev["totals"]["large_quality"], color="tab:red", lw=0.8, ls=":",
                   label="95% of always-large")
        if x == "large_share":
            ax.axvline(0.5, color="grey", lw=0.6, ls=":")
        ax.set_xlabel(label)
        ax.set_ylabel("quality (mean score)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Routing {SMALL} ({SMALL_STYLE}) -> {LARGE} (few-shot), {ev['n']} items "
                 "(thresholds and classifiers 2-fold cross-fit)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost_note(ev: dict[str, Any]) -> str:
    t, n = ev["totals"], ev["n"]
    note = (f"Measured seconds per item: small {t['small_seconds'] / n:.2f} s "
            f"({t['small_tokens']:.1f} tokens on average, {t['small_at_cap']}/{n} answers hit the "
            f"{MAX_TOKENS}-token cap), large {t['large_seconds'] / n:.2f} s ({t['large_tokens']:.1f} tokens, "
            f"stopped at the first newline; {100 * t['large_cached_share']:.0f}% of its few-shot prompt "
            "tokens were reused from the prompt cache, the examples being shared within a task).")
    if t["large_seconds"] < t["small_seconds"]:
        note += (" **So here the 'large' tier is the cheaper one per request: on cost, always-large "
                 "dominates every routing policy** (it is both better and cheaper), and the share of "
                 "requests sent to the large tier is the only meaningful budget (e.g. when the large tier is "
                 "scarce or remote). Cost columns are still reported as measured.")
    return note


def e2e_lines(e2e: dict[str, Any]) -> list[str]:
    """The end-to-end check of one policy, as Markdown."""
    how = ("`router.complete_chat`. The Router sends one prompt to every tier, so the large tier "
           "is a thin adapter that swaps in the item's few-shot prompt (and stop at newline) for the "
           "base model; the small tier is the plain Model." if SMALL_STYLE == "chat" else
           "`router.generate(few_shot_eval_prompt, stop=['\\n'])`: both tiers are plain Models given the "
           "same prompt.")
    if e2e["policy"] == "cascade":
        policy = (f"Cascade(measure={e2e['measure']!r}, threshold={e2e['threshold']:.4f})", "threshold "
                  f"calibrated on all items for a {e2e['target_share']} large share; the Router asks the "
                  "small tier for confidence and escalates")
    else:
        policy = (f"Learned(embedder, train_router(read_labelled(labels), embedder, large_share="
                  f"{e2e['target_share']}))", "trained on all items from the labels file the benchmark "
                  f"writes, threshold p >= {e2e['threshold']:.3f}; the replay decision uses the benchmark's "
                  "batched embeddings, the Router embeds each request alone")
    return ["", f"## End-to-end check (real Router, {e2e['policy']})", "",
            f"`Router([Tier('small', ...), Tier('large', ...)], {policy[0]})` ({policy[1]}), {e2e['n']} "
            "items spread over the set, via " + how, "",
            f"Decisions equal to the replayed ones: **{e2e['decisions_agree']}/{e2e['n']}**; final "
            f"answers identical to the cached runs: **{e2e['answers_agree']}/{e2e['n']}**; sent to large "
            f"{e2e['to_large']}/{e2e['n']}; the Router's own stats: shares {e2e['router_shares']}."]


def markdown(ev: dict[str, Any], e2e: list[dict[str, Any]] | None, info: dict[str, Any]) -> str:
    t, best = ev["totals"], ev["best_at_half"]

    def row(name: str, p: dict[str, Any]) -> list[str]:
        return [name, fmt(p["large_share"], 2), fmt(p["quality"], 3), fmt(p["pct_of_large"], 1),
                fmt(p["rel_cost"], 2),
                fmt(p.get("gain_same_share"), 3) if "gain_same_share" in p else "-",
                fmt(p.get("gain_same_cost"), 3) if "gain_same_cost" in p else "-"]

    rows = [row("always-small", ev["always_small"]), row("always-large", ev["always_large"]),
            row("rules by task (2-fold)", ev["rules_by_task"]), row("oracle (upper bound)", ev["oracle"])]
    for m, curve in ev["cascades"].items():
        rows += [row(f"cascade {m}, target {p['target_share']}", p) for p in curve]
    rows += [row(f"learned, target {p['target_share']}", p) for p in ev["learned"]]
    rnd = [row(f"random r={p['large_share']}", p) for p in ev["random"]
           if round(p["large_share"] * 10, 6) % 1 == 0]
    meets = best["pct_of_large"] >= 95
    beats = "; ".join(f"{m}: {b['beat_same_share']}/{b['points']} points above random at the same "
                      f"large share, {b['beat_same_cost']}/{b['points']} above the best random mix "
                      "costing no more"
                      for m, b in ev["beats_random"].items())
    groups = [[k.split("=", 1)[1], g["n"], fmt(g["small"], 3), fmt(g["large"], 3), fmt(g["oracle"], 3),
               g["small_wins"], g["large_wins"], fmt(g["small_s"], 2), fmt(g["large_s"], 2)]
              for k, g in ev["per_group"].items()]
    md = [f"# Routing quality-cost curve: {SMALL} (small, {SMALL_STYLE.replace('_', '-')}) -> "
          f"{LARGE} (large, few-shot)", "",
          f"**Headline:** best policy with <= 50% of requests sent to the large tier is "
          f"**{best['policy']}**: "
          f"{best['large_share'] * 100:.0f}% large calls, quality {best['quality']:.3f} = "
          f"**{best['pct_of_large']:.1f}% of always-large** ({t['large_quality']:.3f}), at "
          f"{best['rel_cost']:.2f}x always-large's cost. The >= 95% goal at <= 50% large calls is "
          f"{'met' if meets else 'NOT met'}.", "",
          f"Against random routing: {beats}.", "",
          f"always-small quality {t['small_quality']:.3f}, always-large {t['large_quality']:.3f}, "
          f"oracle {ev['oracle']['quality']:.3f}; the small tier costs "
          f"{t['small_seconds'] / t['large_seconds']:.2f}x the large one in measured seconds.", "",
          cost_note(ev), "",
          "## Policies", "",
          "Quality = mean score (chrF/100 for translation, 0/1 otherwise). Cost = measured seconds x one "
          "rate for both local tiers, relative to always-large; a cascade pays the small call always, a "
          "learned router only the tier it picks (plus one ~6 ms embedding, not counted). "
          "gain = quality minus random routing's at the same realized large share / minus the best random "
          "mix (share r of large calls) that costs no more.", "",
          markdown_table(["policy", "large share", "quality", "% of always-large", "rel. cost",
                          "gain vs random (same share)", "gain vs best random (<= cost)"], rows + rnd), "",
          f"Rules by task, fitted per fold: {ev['rules_by_task']['fitted']}.", "",
          "## Per task and difficulty", "",
          markdown_table(["group", "n", "small", "large", "oracle", "small better", "large better",
                          "small s/item", "large s/item"], groups), "",
          "## How it was measured", "",
          f"- Each of the {ev['n']} items ran once on each tier (alternating, who goes first alternating); "
          f"greedy, <= {MAX_TOKENS} tokens; small = "
          + ("chat prompt (plain request) with confidence=True" if SMALL_STYLE == "chat" else
             "the same 3-shot prompt as large, stopped at a newline, with confidence=True")
          + ", large = 3-shot 'Q:/A:' prompt stopped at a newline.",
          "- Policies are replayed offline from those runs. A routing decision depends only on the request "
          "and the small tier's (greedy, deterministic) answer, so the replay is exact; the end-to-end "
          "check below confirms it on real Router calls.",
          "- Rules and cascade thresholds are fitted on one half (stratified by task) and evaluated on the "
          "other, then swapped (2-fold cross-fit); each item is scored once by a policy that never saw it. "
          "The cascade's realized large share can differ from the target.",
          f"- Learned: all-MiniLM-L6-v2 (our GGUF conversion) embeds the small tier's prompt; a logistic "
          f"regression (ridge strength by 5-fold CV inside the fitting half: {ev['learned'][0]['l2']}) "
          f"predicts 'the large tier scores higher'; out-of-fold AUC {ev['best_learned']['auc']:.3f}. "
          "Its threshold is set on the fitting half's out-of-fold probabilities for the target share. The "
          "set's task types differ in wording, so much of what it learns is the task; 'rules by task' is "
          "the baseline that knows the task outright.",
          "- Random routing at rate r: expected quality and cost (1-r)*small + r*large.",
          "- Oracle: the better tier per item (ties to small), paying only that tier.",
          ]
    for check in e2e or []:
        md += e2e_lines(check)
    md += ["", f"Machine: {info['cpu_model']}, {info['cpu_affinity']} CPUs usable, load {info['loadavg']}; "
               f"2 threads per model. Chart: `benchmarks/results/{report_name()}.png`.", "",
           "Run: `EDGEINFER_HOME=/tmp/eihome python -m benchmarks.routing"
           + ("" if SMALL_STYLE == "chat" else " --small-style few_shot")
           + "` (`--rerun` to redo the model runs)"]
    return "\n".join(md) + "\n"


def report_name() -> str:
    return "routing" if SMALL_STYLE == "chat" else "routing_fewshot"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rerun", action="store_true", help="redo the model runs instead of using the cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--e2e", type=int, default=20, help="items for the real Router check (0: skip)")
    parser.add_argument("--small-style", choices=("chat", "few_shot"), default="chat",
                        help="prompt the small tier as a chat model (default) or with the large tier's "
                             "few-shot prompt (writes routing_fewshot.*)")
    args = parser.parse_args(argv)
    global SMALL_STYLE
    SMALL_STYLE = args.small_style
    quiet_logging()
    start = time.perf_counter()
    print("step 1: every item on both tiers", flush=True)
    rows, cache, run_s = load_or_run(args.threads, args.rerun)
    print(f"  {len(rows)} items ({'ran in ' + fmt(run_s, 0) + ' s' if run_s else 'from cache'}: {cache})")
    x = embed_requests(rows, args.threads)
    ev = evaluate(rows, x)
    e2e = None
    if args.e2e > 0:
        print("step 3: real Router checks", flush=True)
        cascade, learned = ev["best_cascade"], ev["best_learned"]
        e2e = [end_to_end(rows, "cascade", cascade["target_share"], args.e2e, args.threads,
                          measure=cascade["measure"]),
               end_to_end(rows, "learned", learned["target_share"], args.e2e, args.threads, x=x)]
    info = machine_info()
    png = RESULTS_DIR / f"{report_name()}.png"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    chart(ev, png)
    data = {"machine": info, "small": SMALL, "small_style": SMALL_STYLE, "large": LARGE,
            "max_tokens": MAX_TOKENS, "threads": args.threads,
            "raw_cache": str(cache), "model_run_s": run_s, **ev, "end_to_end": e2e,
            "items": [{k: v for k, v in r.items()} | {"small": {k: v for k, v in r["small"].items()
                                                                if k != "per_token"}} for r in rows],
            "total_s": time.perf_counter() - start}
    md = markdown(ev, e2e, info)
    paths = write_report(report_name(), data, md)
    print(md)
    print(f"wrote {paths[0]}, {paths[1]} and {png}")
    return data


if __name__ == "__main__":
    main()
