"""Models that share a process, and a machine that others share: decode speed side by side.

Scenarios, each in a fresh process (SmolLM2-135M Q4_1 as the chat model, Gemma 3 270M Q4_K_M as the
larger one; raw completions of 96 tokens, greedy):
  alone       each model alone in its process (the reference for the others)
  turns       both in one Router (two local tiers), requests alternating between them
  together    both decoding at once (two threads); compared as the time for both vs both alone
  translator  ei.Translator (Gemma) and a SmolLM2 chat in one process, used in turn
  busy        SmolLM2 with one core held by a competing busy process: the defaults (adaptive threads)
              vs n_threads=1 and n_threads=2 fixed, in the same conditions
"before" is a checkout of the tree before the shared compute queue (``--before DIR``, e.g. made with
``git worktree add /tmp/ei-before 0e22476``); "after" is this tree. Within a round every variant runs
once, in an order rotated each round; the report gives medians and medians of per-round ratios.

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.shared_compute --before /tmp/ei-before [--rounds 5]
Writes benchmarks/results/shared_compute.json and .md and prints the Markdown report.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import (
    fmt,
    machine_info,
    markdown_table,
    median_summary,
    paired_ratios,
    run_in_tree,
    steal_ticks,
    write_report,
)

ROOT = Path(__file__).resolve().parent.parent
TOKENS = 96
WORKER = r"""
import json, sys, threading, time
import edgeinfer as ei
SMALL, LARGE, TOKENS = "smollm2-135m-instruct", "gemma-3-270m", {tokens}
PROMPT = "Once upon a time, in a small village by the sea, there lived"
mode, threads = sys.argv[1], (None if sys.argv[2] == "auto" else int(sys.argv[2]))
def load(name):
    return ei.load(name, backend="llama.cpp", n_ctx=512, n_threads=threads, speculation=None,
                   kv=ei.KVOptions(settle=False))
def run(model, prompt=PROMPT):
    model.engine.reset()  # no reuse between requests: every one prefills and decodes the same
    s = model.generate(prompt, max_tokens=TOKENS, temperature=0).stats
    return {{"tok_s": s.decode_tok_s, "tokens": s.completion_tokens, "s": s.total_s}}
out = {{}}
if mode == "alone":
    for name in (SMALL, LARGE):
        with load(name) as m:
            run(m)
            out[name] = [run(m) for _ in range(3)]
elif mode == "turns":
    small, large = load(SMALL), load(LARGE)
    router = ei.Router([ei.Tier("small", small), ei.Tier("large", large)],
                       ei.Rules([ei.Rule("large", tasks=frozenset({{"big"}}))]))
    run(small), run(large)
    out = {{SMALL: [], LARGE: []}}
    for _ in range(3):
        for name, task in ((SMALL, None), (LARGE, "big")):
            (small if name == SMALL else large).engine.reset()
            s = router.generate(PROMPT, max_tokens=TOKENS, temperature=0, task=task).stats
            out[name].append({{"tok_s": s.decode_tok_s, "tokens": s.completion_tokens, "s": s.total_s}})
elif mode == "together":
    models = {{SMALL: load(SMALL), LARGE: load(LARGE)}}
    for m in models.values():
        run(m)
    out = {{n: [] for n in models}}
    for _ in range(3):
        started = time.perf_counter()
        workers = [threading.Thread(target=lambda n=n, m=m: out[n].append(run(m)))
                   for n, m in models.items()]
        for t in workers: t.start()
        for t in workers: t.join()
        out.setdefault("wall", []).append(time.perf_counter() - started)
elif mode == "translator":
    chat = load(SMALL)
    tr = ei.Translator(LARGE, memory=False, n_threads=threads)
    tr.translate("Good morning.", to="fr", source="en"); run(chat)
    out = {{SMALL: [], "translate_s": []}}
    for i in range(3):
        t = time.perf_counter()
        tr.translate(f"The train to the coast leaves at {{7 + i}} in the morning from platform four.",
                     to="fr", source="en")
        out["translate_s"].append(time.perf_counter() - t)
        out[SMALL].append(run(chat))
elif mode == "translator-alone":
    tr = ei.Translator(LARGE, memory=False, n_threads=threads)
    tr.translate("Good morning.", to="fr", source="en")
    out = {{"translate_s": []}}
    for i in range(3):
        t = time.perf_counter()
        tr.translate(f"The train to the coast leaves at {{7 + i}} in the morning from platform four.",
                     to="fr", source="en")
        out["translate_s"].append(time.perf_counter() - t)
elif mode == "busy":
    with load(SMALL) as m:
        out[SMALL] = [run(m) for _ in range(3)]
        out["threads_end"] = getattr(m.backend, "threads", threads)
print(json.dumps(out))
"""


def _run(tree: Path, mode: str, threads: str = "auto") -> dict:
    return run_in_tree(tree, WORKER.format(tokens=TOKENS), mode, threads)


def _median_tok_s(runs: list[dict]) -> float:
    return median_summary([r["tok_s"] for r in runs])["median"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout before the queue")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": ROOT}
    quiet = [(tree, mode) for tree in trees for mode in ("alone", "turns", "together", "translator",
                                                       "translator-alone")]
    busy = [("after", "auto"), ("after", "1"), ("after", "2"), ("before", "2")]
    info, steal = machine_info(), steal_ticks()
    raw: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        order = quiet[r % len(quiet):] + quiet[:r % len(quiet)]
        for tree, mode in order:
            raw.setdefault(f"{tree}/{mode}", []).append(_run(trees[tree], mode))
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # one core held
        try:
            for tree, threads in busy[r % len(busy):] + busy[:r % len(busy)]:
                raw.setdefault(f"{tree}/busy/{threads}", []).append(_run(trees[tree], "busy", threads))
        finally:
            hog.kill()
    info["steal_ticks_during_run"] = steal_ticks() - steal
    info["loadavg_end"] = os.getloadavg()
    small, large = "smollm2-135m-instruct", "gemma-3-270m"

    def tok_s(key: str, model: str) -> list[float]:  # per round: the median over the requests
        return [_median_tok_s(x[model]) for x in raw[key]]

    def seconds(key: str, field: str) -> list[float]:
        return [median_summary([v if isinstance(v, float) else v["s"] for v in x[field]])["median"]
                for x in raw[key]]

    rows, summary = [], {}

    def add(tree: str, scenario: str, what: str, alone: list[float], shared: list[float]) -> None:
        ratio = paired_ratios(shared, alone)
        summary[f"{tree} {scenario} {what}"] = ratio
        rows.append([tree, scenario, what, fmt(_median(alone)), fmt(_median(shared)),
                     fmt(ratio["median"], 2)])

    for tree in trees:
        for model in (small, large):
            add(tree, "turns (Router, two local tiers)", f"{model} decode tok/s",
                tok_s(f"{tree}/alone", model), tok_s(f"{tree}/turns", model))
        both_alone = [a + b for a, b in zip(seconds(f"{tree}/alone", small), seconds(f"{tree}/alone", large),
                                            strict=True)]
        add(tree, "together (both at once)", "both requests: 1 / seconds", [1 / x for x in both_alone],
            [1 / x for x in seconds(f"{tree}/together", "wall")])
        add(tree, "translator + chat", f"{small} decode tok/s", tok_s(f"{tree}/alone", small),
            tok_s(f"{tree}/translator", small))
        add(tree, "translator + chat", "translations: 1 / seconds",
            [1 / x for x in seconds(f"{tree}/translator-alone", "translate_s")],
            [1 / x for x in seconds(f"{tree}/translator", "translate_s")])
    quiet_table = markdown_table(["tree", "scenario", "measure", "alone", "shared",
                                  "shared / alone (median of per-round ratios)"], rows)
    alone_after = {m: paired_ratios(tok_s("after/alone", m), tok_s("before/alone", m))
                   for m in (small, large)}
    summary["quiet alone after/before"] = alone_after
    best_fixed = [max(a, b) for a, b in zip(tok_s("after/busy/1", small), tok_s("after/busy/2", small),
                                           strict=True)]
    busy_rows = []
    for key, label in (("after/busy/auto", "defaults (adaptive threads)"), ("after/busy/1", "n_threads=1"),
                       ("after/busy/2", "n_threads=2"), ("before/busy/2", "before: defaults (2 threads)")):
        ratio = summary[key] = paired_ratios(tok_s(key, small), best_fixed)
        busy_rows.append([label, fmt(_median(tok_s(key, small))), fmt(ratio["median"], 2)])
    busy_table = markdown_table(["SmolLM2, one core busy", "decode tok/s (median)",
                                 "/ best fixed count (median of per-round ratios)"], busy_rows)
    threads_end = [x["threads_end"] for x in raw["after/busy/auto"]]
    markdown = (
        f"# Shared compute: models that share a process, a machine that others share\n\n"
        f"{args.rounds} rounds, {TOKENS}-token greedy completions, each scenario in a fresh process. Load "
        f"average at the start {info['loadavg']}, at the end {info['loadavg_end']}; steal ticks during "
        f"the run {info['steal_ticks_during_run']}.\n\n## Two models in one process (quiet machine)\n\n"
        f"{quiet_table}\n\nEach model alone, after / before: SmolLM2 {fmt(alone_after[small]['median'], 3)}, "
        f"Gemma {fmt(alone_after[large]['median'], 3)} (median of per-round ratios).\n\n"
        f"## One core held by another process\n\n{busy_table}\n\n"
        f"Threads the defaults ended on, per round: {threads_end}.\n\n"
        "Run: `EDGEINFER_HOME=/tmp/eihome python -m benchmarks.shared_compute --before DIR`\n")
    write_report("shared_compute", {"machine": info, "rounds": args.rounds, "tokens": TOKENS,
                                    "summary": summary, "runs": raw}, markdown)
    print(markdown)
    return 0


def _median(values: list[float]) -> float:
    return median_summary(values)["median"]


if __name__ == "__main__":
    raise SystemExit(main())
