"""Speculative decoding with prompt-lookup drafts: decode speed with and without, and against
llama-cpp-python's ``LlamaPromptLookupDecoding`` on the same tasks.

Variants on the same GGUF, threads, context and prompt token ids (the model's chat template), greedy,
cold prefill each time; variants alternate task by task, who goes first rotating:
  plain       edgeinfer, speculation off, flash attention on
  spec        edgeinfer, prompt-lookup speculation (adaptive draft length), flash attention on
  default     edgeinfer as loaded by default: flash attention off, so speculation off ("auto" drafts
              only where a check is exact, which llama.cpp's attention is only with flash attention)
  llama       llama-cpp-python ``Llama.generate`` (no draft), flash attention on
  llama-pld   llama-cpp-python ``Llama(draft_model=LlamaPromptLookupDecoding())``, flash attention on
Tasks (12): input-grounded (rewrite, extract, translate), JSON (reformat, CSV to JSON, a new object),
code (an edit of a given file, a new function) and open-ended. Decode tok/s = (generated tokens - 1) /
(last token time - first token time). Per evidence class (the length of the prompt-lookup match
behind a draft) the drafts checked and accepted are counted, to calibrate the cost model's priors.

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.speculative [--rounds 3] [--tokens 128]
Writes benchmarks/results/speculative.json and speculative.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from benchmarks.common import (
    fmt,
    machine_info,
    markdown_table,
    paired_ratios,
    publish,
    quiet_logging,
    without_weight_repacking,
)

REPORT = (
    "The town council met on Tuesday evening to review the budget for the coming year. After a long "
    "debate, it approved new funding for the public library, which will open on Sundays from April. "
    "The decision on the swimming pool was postponed until the engineers finish their report on the "
    "state of the roof. The council also asked the mayor to present a revised plan for the bus network "
    "by the end of March, after many residents complained about the early end of the evening service. "
    "Finally, the council thanked the volunteers who cleaned the river banks last month."
)
TYPOS = (
    REPORT.replace("budget", "budgett")
    .replace("library", "libary")
    .replace("engineers", "enginers")
    .replace("residents", "residants")
    .replace("volunteers", "volonteers")
)
CODE = """def load_users(path):
    users = []
    with open(path) as handle:
        for line in handle:
            name, email, age = line.strip().split(",")
            users.append({"name": name, "email": email, "age": int(age)})
    return users


def adults(users):
    return [user for user in users if user["age"] >= 18]


def emails(users):
    return sorted(user["email"] for user in users)
"""
RECORDS = (
    '[{"id": 17, "name": "Ana Silva", "city": "Porto", "active": true, "tags": ["admin", "editor"]}, '
    '{"id": 18, "name": "Jonas Berg", "city": "Malmo", "active": false, "tags": ["viewer"]}, '
    '{"id": 21, "name": "Mei Chen", "city": "Taipei", "active": true, "tags": ["editor"]}]'
)
CSV = "name,price,stock\nkettle,24.90,12\ntoaster,39.00,4\nblender,59.50,0\nlamp,18.75,31\n"
# (kind, user message): grounded tasks copy from their input, open ones do not; json and code tasks
# are both (a reformatting copies, a fresh object or function does not)
TASKS = {
    "rewrite": ("grounded", f"Fix the spelling mistakes in this text and write it out in full:\n\n{TYPOS}"),
    "extract": (
        "grounded",
        f"{REPORT}\n\nCopy, word for word, the sentences of the text above that "
        "mention the council asking or approving something.",
    ),
    "translate": ("grounded", f"Translate this text into French:\n\n{REPORT}"),
    "code edit": ("code", f"Add type hints to every function below. Write the whole file.\n\n{CODE}"),
    "json reformat": ("json", "Rewrite this JSON with one key per line, indented by two spaces:"
                      f"\n\n{RECORDS}"),
    "csv to json": ("json", f"Convert this CSV into a JSON array of objects:\n\n{CSV}"),
    "json object": ("json", "Write a JSON object describing a fictional book: title, author, year, "
                    "genres (a list) and a one-sentence summary."),
    "code new": ("code", "Write a Python function that checks whether a string is a palindrome, "
                 "ignoring case and punctuation, with a docstring and three examples."),
    "story": ("open", "Write a short story about a lighthouse keeper who finds a message in a bottle."),
    "explain": ("open", "Explain to a child why the sky is blue and why sunsets are red."),
    "advice": ("open", "Give me some advice for learning to play the guitar as an adult."),
    "summary": ("open", f"{REPORT}\n\nIn your own words, what is the most important decision above, "
                "and why?"),
}
KINDS = ("grounded", "json", "code", "open")
VARIANTS = ("plain", "spec", "plain-again", "default", "llama", "llama-pld")


def run_ours(model: Any, tokens: list[int], n: int) -> dict[str, Any]:
    model.engine.reset()
    c = model.generate(tokens, max_tokens=n, temperature=0)
    return {
        "tok_s": c.stats.decode_tok_s,
        "tokens": c.tokens,
        "drafted": c.stats.draft_tokens,
        "accepted": c.stats.accepted_tokens,
    }


def run_llama(llm: Any, tokens: list[int], n: int) -> dict[str, Any]:
    import llama_cpp

    llm.reset()
    out, times = [], []
    for tok in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
        times.append(time.perf_counter())
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok) or len(out) == n:
            break
        out.append(tok)
    steps = len(out) - 1
    return {"tok_s": steps / (times[len(out) - 1] - times[0]) if steps > 0 else 0.0, "tokens": out}


class EvidenceLog:
    """Counts, per prompt-lookup match length, the draft tokens checked and accepted (wraps
    ``DraftLength.update`` for the benchmark's process)."""

    def __init__(self) -> None:
        from edgeinfer import speculative

        self.counts: dict[int, list[int]] = {}
        original = speculative.DraftLength.update

        def update(policy: Any, drafted: int, accepted: int, evidence: int | None = None) -> None:
            if drafted > 0 and evidence is not None:
                c = self.counts.setdefault(evidence, [0, 0, 0])
                c[0] += 1
                c[1] += drafted
                c[2] += accepted
            original(policy, drafted, accepted, evidence)

        speculative.DraftLength.update = update

    def table(self) -> list[list[object]]:
        return [[n, c[0], c[1], c[2], fmt(c[2] / max(1, c[1]), 2)] for n, c in sorted(self.counts.items())]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    args = parser.parse_args(argv)
    quiet_logging()
    without_weight_repacking()  # as edgeinfer loads (repacked AMX kernels kill the process on some VMs)
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    import edgeinfer as ei
    from edgeinfer.loader import locate_model

    tasks = {name: TASKS[name] for name in args.tasks.split(",")}
    evidence = EvidenceLog()
    path = locate_model(args.model, offline=True).path
    common = dict(
        model_path=str(path), n_ctx=2048, n_threads=args.threads, n_batch=512, flash_attn=True, verbose=False
    )
    ours = dict(n_ctx=2048, n_threads=args.threads, kv=ei.KVOptions(settle=False))
    runners = {
        # flash attention on for four: with it, checking a draft gives exactly the plain logits
        "plain": (ei.load(path, speculation=None, flash_attn=True, **ours), run_ours),
        "spec": (ei.load(path, speculation="prompt-lookup", flash_attn=True, **ours), run_ours),
        # the control: plain again, as a model of its own; plain-again / plain is the run's noise
        "plain-again": (ei.load(path, speculation=None, flash_attn=True, **ours), run_ours),
        "default": (ei.load(path, **ours), run_ours),
        "llama": (Llama(**common), run_llama),
        "llama-pld": (Llama(**common, draft_model=LlamaPromptLookupDecoding()), run_llama),
    }
    model = runners["plain"][0]
    prompts = {name: model.chat_prompt([{"role": "user", "content": text}])
               for name, (_, text) in tasks.items()}
    samples: dict[str, dict[str, list[dict]]] = {t: {v: [] for v in VARIANTS} for t in tasks}
    turn = 0
    for rnd in range(args.rounds):
        for task, tokens in prompts.items():
            order = VARIANTS[turn % len(VARIANTS) :] + VARIANTS[: turn % len(VARIANTS)]
            turn += 1
            for v in order:
                obj, fn = runners[v]
                samples[task][v].append(fn(obj, tokens, args.tokens))
            print(f"round {rnd + 1} {task}: " + ", ".join(
                f"{v} {samples[task][v][-1]['tok_s']:.1f}" for v in VARIANTS), flush=True)
    step_costs = runners["spec"][0].engine.step_costs.measured()
    for v in ("plain", "spec", "plain-again", "default"):
        runners[v][0].close()

    def tok_s(task: str, v: str) -> list[float]:
        return [s["tok_s"] for s in samples[task][v]]

    def paired(task: str, a: str, b: str) -> float | None:
        return paired_ratios(tok_s(task, a), tok_s(task, b))["median"]

    results = {}
    for task, (kind, _) in tasks.items():
        s = samples[task]
        results[task] = {
            "kind": kind,
            "tok_s": {v: statistics.median(tok_s(task, v)) for v in VARIANTS},
            "spec_vs_plain": paired(task, "spec", "plain"),
            "control": paired(task, "plain-again", "plain"),
            "spec_vs_default": paired(task, "spec", "default"),
            "pld_vs_llama": paired(task, "llama-pld", "llama"),
            "spec_vs_pld": paired(task, "spec", "llama-pld"),
            "identical_greedy": all(a["tokens"] == b["tokens"]
                                    for a, b in zip(s["spec"], s["plain"], strict=True)),
            "drafted": sum(x["drafted"] for x in s["spec"]) / len(s["spec"]),
            "acceptance": sum(x["accepted"] for x in s["spec"])
            / max(1, sum(x["drafted"] for x in s["spec"])),
            "tokens": len(s["plain"][0]["tokens"]),
        }
    keys = ("spec_vs_plain", "control", "spec_vs_default", "pld_vs_llama", "spec_vs_pld")
    groups = {kind: {key: statistics.median(r[key] for r in results.values() if r["kind"] == kind)
                     for key in keys}
              for kind in KINDS if any(r["kind"] == kind for r in results.values())}
    lowest = min(results.values(), key=lambda r: r["spec_vs_plain"])
    controls = [r["control"] for r in results.values()]
    data = {"model": path.name, "threads": args.threads, "tokens": args.tokens, "rounds": args.rounds,
            "tasks": results, "groups": groups, "min_spec_vs_plain": lowest["spec_vs_plain"],
            "control_range": [min(controls), max(controls)],
            "step_costs": step_costs,
            "evidence": {str(n): dict(zip(("drafts", "drafted", "accepted"), c, strict=True))
                         for n, c in sorted(evidence.counts.items())},
            "machine": machine_info()}
    rows = [[task, r["kind"], r["tokens"], *[fmt(r["tok_s"][v]) for v in VARIANTS],
             *[fmt(r[key], 2) for key in keys], fmt(r["drafted"], 0), fmt(r["acceptance"], 2),
             "yes" if r["identical_greedy"] else "NO"] for task, r in results.items()]
    md = "\n".join([
        f"# Prompt-lookup speculation — {path.name}, {args.threads} threads, greedy, up to {args.tokens} "
        f"tokens, {args.rounds} rounds",
        "",
        markdown_table(["task", "kind", "tokens", "plain tok/s (flash)", "spec tok/s (flash)",
                        "plain-again tok/s (flash)", "default tok/s (no flash)", "llama-cpp-python tok/s",
                        "LlamaPromptLookupDecoding tok/s",
                        "spec/plain", "plain-again/plain", "spec/default", "PLD/llama", "spec/PLD",
                        "drafted per run",
                        "draft acceptance", "greedy identical"], rows),
        "",
        markdown_table(["tasks", "spec/plain", "plain-again/plain", "spec/default", "PLD/llama", "spec/PLD"],
                       [[k, *[fmt(g[key], 2) for key in keys]] for k, g in groups.items()]),
        "",
        f"Lowest spec/plain over the tasks: {fmt(data['min_spec_vs_plain'], 2)}; the control (plain-again / "
        f"plain, the same settings twice) spans {fmt(data['control_range'][0], 2)}-"
        f"{fmt(data['control_range'][1], 2)} in this run: a task where nothing is drafted decodes as plain "
        "does, within that noise.",
        "",
        "Step cost by tokens per step, as the spec engine measured it (relative to a one-token step): "
        + ", ".join(f"{k}: {fmt(v, 2)}" for k, v in step_costs.items())
        + ". A check of d drafted tokens pays only if the tokens it yields beat that cost.",
        "",
        "Draft tokens checked per prompt-lookup match length (all tasks and rounds):",
        "",
        markdown_table(["match length", "drafts", "tokens drafted", "accepted", "acceptance"],
                       evidence.table()),
        "",
        "Ratios are medians of same-round ratios (paired). Machine: "
        f"{data['machine']['cpu_model']}, load {data['machine']['loadavg']}.",
        "",
    ])
    publish("speculative", data, md)
    return data


if __name__ == "__main__":
    main()
