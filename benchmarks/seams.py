"""What the architecture seams cost on the paths a user waits on: `import edgeinfer`, `ei.load`, and a
routed chat's time to first token and decode speed (a Router tier dispatching through LanguageModel).

"before" is a checkout of the tree before the seams (``--before DIR``, e.g. made with
``git worktree add /tmp/ei-before 5798816``); "after" is this tree. Each measurement runs in a fresh
process with that tree first on ``sys.path``; the two alternate in every round, the order swapped each
round, and the report gives the median of per-round ratios (after / before).

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.seams --before /tmp/ei-before [--rounds 8]
Writes benchmarks/results/seams.json and seams.md and prints the Markdown report.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks.common import (
    fmt,
    machine_info,
    markdown_table,
    median_summary,
    paired_ratios,
    run_in_tree,
    write_report,
)

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
MEASURES = (("import_s", "import edgeinfer (s)", 3), ("load_s", "ei.load (s)", 3),
            ("ttft_s", "routed chat TTFT (s)", 3), ("decode_tok_s", "routed chat decode (tok/s)", 1))
WORKER = """
import json, time
t = time.perf_counter()
import edgeinfer as ei
imported = time.perf_counter() - t
t = time.perf_counter()
model = ei.load({model!r}, backend="llama.cpp", n_ctx=1024, n_threads=2, speculation=None)
loaded = time.perf_counter() - t
router = ei.Router([ei.Tier("small", model)])
messages = [{{"role": "user", "content": "Name three rivers of Europe and say where each one flows."}}]
router.complete_chat(messages, max_tokens=4, temperature=0)  # warm: first-call allocations
model.engine.reset()
done = router.complete_chat(messages, max_tokens=48, temperature=0)
print(json.dumps({{"import_s": imported, "load_s": loaded, "ttft_s": done.stats.ttft_s,
                  "decode_tok_s": done.stats.decode_tok_s}}))
model.close()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the tree before the seams")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": ROOT}
    info = machine_info()
    runs: dict[str, list[dict]] = {v: [] for v in trees}
    for r in range(args.rounds):
        for variant in (("before", "after") if r % 2 == 0 else ("after", "before")):
            runs[variant].append(run_in_tree(trees[variant], WORKER.format(model=MODEL)))
    info["loadavg_end"] = os.getloadavg()
    summary = {key: {"before": median_summary([x[key] for x in runs["before"]]),
                     "after": median_summary([x[key] for x in runs["after"]]),
                     "ratio": paired_ratios([x[key] for x in runs["after"]],
                                            [x[key] for x in runs["before"]])}
               for key, _, _ in MEASURES}
    rows = [[label, fmt(summary[key]["before"]["median"], d), fmt(summary[key]["after"]["median"], d),
             fmt(summary[key]["ratio"]["median"], 3)] for key, label, d in MEASURES]
    table = markdown_table(["measure", "before (median)", "after (median)",
                            "after / before (median of per-round ratios)"], rows)
    markdown = (f"# What the architecture seams cost\n\n{args.rounds} rounds, {MODEL}, each measurement in a "
                "fresh process, before and after alternating (order swapped every round). Load average at "
                f"the start {info['loadavg']}, at the end {info['loadavg_end']}.\n\n{table}\n\n"
                "Run: `EDGEINFER_HOME=/tmp/eihome python -m benchmarks.seams --before DIR`\n")
    write_report("seams", {"machine": info, "rounds": args.rounds, "summary": summary, "runs": runs,
                           "command": "python -m benchmarks.seams --before DIR"}, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
