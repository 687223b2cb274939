"""Speculative decoding with prompt-lookup drafts: decode speed with and without, and against
llama-cpp-python's ``LlamaPromptLookupDecoding`` on the same tasks.

Four variants on the same GGUF, threads, context, flash attention (on: edgeinfer speculates by
default only then) and prompt token ids (the model's chat template),
greedy, cold prefill each time; variants alternate task by task, who goes first rotating:
  plain       edgeinfer, speculation off
  spec        edgeinfer, prompt-lookup speculation (adaptive draft length)
  llama       llama-cpp-python ``Llama.generate`` (no draft)
  llama-pld   llama-cpp-python ``Llama(draft_model=LlamaPromptLookupDecoding())``
Tasks: input-grounded (rewrite, extract, translate, code edit over a long input) and open-ended.
Decode tok/s = (generated tokens - 1) / (last token time - first token time).

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.speculative [--rounds 3] [--tokens 128]
Writes benchmarks/results/speculative.json and speculative.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from benchmarks.common import fmt, machine_info, markdown_table, paired_ratios, quiet_logging, write_report

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
TASKS = {
    "rewrite": ("grounded", f"Fix the spelling mistakes in this text and write it out in full:\n\n{TYPOS}"),
    "extract": (
        "grounded",
        f"{REPORT}\n\nCopy, word for word, the sentences of the text above that "
        "mention the council asking or approving something.",
    ),
    "translate": ("grounded", f"Translate this text into French:\n\n{REPORT}"),
    "code edit": ("grounded", f"Add type hints to every function below. Write the whole file.\n\n{CODE}"),
    "story": ("open", "Write a short story about a lighthouse keeper who finds a message in a bottle."),
    "explain": ("open", "Explain to a child why the sky is blue and why sunsets are red."),
    "advice": ("open", "Give me some advice for learning to play the guitar as an adult."),
}
VARIANTS = ("plain", "spec", "llama", "llama-pld")


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    quiet_logging()
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    import edgeinfer as ei
    from edgeinfer.loader import locate_model

    path = locate_model(args.model, offline=True).path
    common = dict(
        model_path=str(path), n_ctx=2048, n_threads=args.threads, n_batch=512, flash_attn=True, verbose=False
    )
    ours = dict(n_ctx=2048, n_threads=args.threads, kv=ei.KVOptions(settle=False), flash_attn=True)
    runners = {
        # flash attention on for all four: with it, checking a draft gives exactly the plain logits
        "plain": (ei.load(path, speculation=None, **ours), run_ours),
        "spec": (ei.load(path, speculation="prompt-lookup", **ours), run_ours),
        "llama": (Llama(**common), run_llama),
        "llama-pld": (Llama(**common, draft_model=LlamaPromptLookupDecoding()), run_llama),
    }
    model = runners["plain"][0]
    prompts = {
        name: model.chat_prompt([{"role": "user", "content": text}]) for name, (_, text) in TASKS.items()
    }
    samples: dict[str, dict[str, list[dict]]] = {t: {v: [] for v in VARIANTS} for t in TASKS}
    turn = 0
    for rnd in range(args.rounds):
        for task, tokens in prompts.items():
            order = VARIANTS[turn % 4 :] + VARIANTS[: turn % 4]
            turn += 1
            for v in order:
                obj, fn = runners[v]
                samples[task][v].append(fn(obj, tokens, args.tokens))
            print(
                f"round {rnd + 1} {task}: "
                + ", ".join(f"{v} {samples[task][v][-1]['tok_s']:.1f}" for v in VARIANTS),
                flush=True,
            )
    for v in ("plain", "spec"):
        runners[v][0].close()

    def tok_s(task: str, v: str) -> list[float]:
        return [s["tok_s"] for s in samples[task][v]]

    results = {}
    for task, (kind, _) in TASKS.items():
        s = samples[task]
        results[task] = {
            "kind": kind,
            "tok_s": {v: statistics.median(tok_s(task, v)) for v in VARIANTS},
            "spec_vs_plain": paired_ratios(tok_s(task, "spec"), tok_s(task, "plain"))["median"],
            "pld_vs_llama": paired_ratios(tok_s(task, "llama-pld"), tok_s(task, "llama"))["median"],
            "spec_vs_pld": paired_ratios(tok_s(task, "spec"), tok_s(task, "llama-pld"))["median"],
            "identical_greedy": all(
                a["tokens"] == b["tokens"] for a, b in zip(s["spec"], s["plain"], strict=True)
            ),
            "acceptance": sum(x["accepted"] for x in s["spec"])
            / max(1, sum(x["drafted"] for x in s["spec"])),
            "tokens": len(s["plain"][0]["tokens"]),
        }
    groups = {
        kind: {
            key: statistics.median(r[key] for r in results.values() if r["kind"] == kind)
            for key in ("spec_vs_plain", "pld_vs_llama", "spec_vs_pld")
        }
        for kind in ("grounded", "open")
    }
    data = {
        "model": path.name,
        "threads": args.threads,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "tasks": results,
        "groups": groups,
        "machine": machine_info(),
    }
    rows = [
        [
            task,
            r["kind"],
            r["tokens"],
            *[fmt(r["tok_s"][v]) for v in VARIANTS],
            fmt(r["spec_vs_plain"], 2),
            fmt(r["pld_vs_llama"], 2),
            fmt(r["spec_vs_pld"], 2),
            fmt(r["acceptance"], 2),
            "yes" if r["identical_greedy"] else "NO",
        ]
        for task, r in results.items()
    ]
    md = "\n".join(
        [
            f"# Prompt-lookup speculation — {path.name}, {args.threads} threads, greedy, up to {args.tokens} "
            f"tokens, {args.rounds} rounds",
            "",
            markdown_table(
                [
                    "task",
                    "kind",
                    "tokens",
                    "ours plain tok/s",
                    "ours spec tok/s",
                    "llama-cpp-python tok/s",
                    "LlamaPromptLookupDecoding tok/s",
                    "spec/plain",
                    "PLD/llama",
                    "spec/PLD",
                    "draft acceptance",
                    "greedy identical",
                ],
                rows,
            ),
            "",
            markdown_table(
                ["tasks", "spec/plain", "PLD/llama", "spec/PLD"],
                [
                    [k, fmt(g["spec_vs_plain"], 2), fmt(g["pld_vs_llama"], 2), fmt(g["spec_vs_pld"], 2)]
                    for k, g in groups.items()
                ],
            ),
            "",
            "Ratios are medians of same-round ratios (paired).",
            f"Machine: {data['machine']['cpu_model']}, load {data['machine']['loadavg']}.",
            "",
        ]
    )
    write_report("speculative", data, md)
    print(md)
    return data


if __name__ == "__main__":
    main()
