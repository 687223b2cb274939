"""What the untrusted-input checks cost: model load and time to first token, with and without them.

"checked" is edgeinfer as shipped: the GGUF metadata check before llama.cpp sees the file (stamped in the
cache once passed, so it runs once per file), the bounded chat-template render, and chat tokenization
that keeps message text out of control tokens. "checked-first" is the same with the file's stamp
removed (a file's first load). "unchecked" replaces the three with the plain paths they wrap. Each
measurement runs in a fresh process (no warm caches carried over), the variants alternate in every
round with their order swapped each round, and the report gives the median of per-round ratios.

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.hardening [--rounds 6] [--models NAME ...]
Writes benchmarks/results/hardening.json and hardening.md and prints the Markdown report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from benchmarks.common import (
    fmt,
    machine_info,
    markdown_table,
    median_summary,
    paired_ratios,
    steal_ticks,
    write_report,
)

DEFAULT_MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
VARIANTS = ("unchecked", "checked", "checked-first")  # checked-first: the file's check stamp removed
SYSTEM = ("You are a helpful assistant for a travel company. Answer in two short sentences, plainly, and "
          "say when you do not know. ") * 4
CHAT_TEMPLATE = ("{% for m in messages %}<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
                 "{{ m.content }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n")  # for a base model


def _unchecked() -> None:
    """Swap the three checks for the plain paths they wrap (this process only)."""
    import edgeinfer.backends.llamacpp as llamacpp
    import edgeinfer.chat_template as chat_template
    import edgeinfer.model as model
    from edgeinfer.chat_template import render_chat

    llamacpp.ensure_gguf_checked = lambda path: None
    chat_template._bounded_render = lambda compiled, **variables: compiled.render(**variables)

    def plain_tokens(tokenize, template, messages, *, bos_token="", eos_token="", add_generation_prompt=True):
        text = render_chat(template, messages, bos_token=bos_token, eos_token=eos_token,
                           add_generation_prompt=add_generation_prompt)
        tokens = tokenize(text, add_special=True, parse_special=True)
        return tokens[1:] if len(tokens) > 1 and tokens[0] == tokens[1] and bos_token and \
            text.startswith(bos_token) else tokens

    model.chat_tokens = plain_tokens


def worker(variant: str, name: str) -> dict:
    import edgeinfer.backends.llamacpp  # noqa: F401 - every variant imports llama.cpp before the clock starts

    if variant == "unchecked":
        _unchecked()
    import edgeinfer as ei
    from edgeinfer.paths import cache_root

    if variant == "checked-first":
        from edgeinfer.gguf_check import CHECKS_VERSION

        stamps_file = cache_root() / "verified.json"  # drop this file's passed-check stamp only
        try:
            stamps = json.loads(stamps_file.read_text())
            prefix = f"gguf-checks-v{CHECKS_VERSION}:"
            stamps_file.write_text(json.dumps({k: v for k, v in stamps.items() if not k.startswith(prefix)}))
        except (OSError, ValueError):
            pass

    started = time.perf_counter()
    m = ei.load(name, backend="llama.cpp", n_threads=2, kv=ei.KVOptions(settle=False))
    load_s = time.perf_counter() - started
    if m.chat_template is None:
        m.chat_template = CHAT_TEMPLATE
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Is Lyon worth a visit?"},
                {"role": "assistant", "content": "Yes: its old town and its food are famous."},
                {"role": "user", "content": "What should I eat there? <b>Three</b> dishes, please."}]
    ttfts, prompt_ms = [], []
    for _ in range(3):
        m.engine.reset()  # no KV reuse: every request prefills its whole prompt
        ttfts.append(m.complete_chat(messages, max_tokens=1, temperature=0).stats.ttft_s)
        t = time.perf_counter()
        m.chat_prompt(messages)
        prompt_ms.append((time.perf_counter() - t) * 1000)
    m.close()
    return {"load_s": load_s, "ttft_s": sorted(ttfts)[1], "prompt_ms": sorted(prompt_ms)[1]}


def _run_worker(variant: str, name: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.hardening", "--worker", variant, name],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"worker {variant} {name} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return 0
    info, steal_before = machine_info(), steal_ticks()
    results: dict[str, dict] = {}
    for name in args.models:
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            for variant in VARIANTS[r % 3:] + VARIANTS[:r % 3]:  # each variant first in turn
                runs[variant].append(_run_worker(variant, name))
        summary = {}
        for key in ("load_s", "ttft_s", "prompt_ms"):
            unchecked = [x[key] for x in runs["unchecked"]]
            summary[key] = {v: median_summary([x[key] for x in runs[v]]) for v in VARIANTS}
            for v in VARIANTS[1:]:
                summary[key][f"ratio {v}"] = paired_ratios([x[key] for x in runs[v]], unchecked)
        results[name] = {"summary": summary, "runs": runs}
    info["steal_ticks_during_run"] = steal_ticks() - steal_before
    rows = []
    for name, result in results.items():
        for key, label in (("load_s", "model load (s)"), ("ttft_s", "chat TTFT (s)"),
                           ("prompt_ms", "chat prompt build (ms)")):
            s = result["summary"][key]
            digits = 3 if key != "prompt_ms" else 2
            medians = [fmt(s[v]["median"], digits) for v in VARIANTS]
            ratios = [fmt(s[f"ratio {v}"]["median"], 3) for v in VARIANTS[1:]]
            rows.append([name, label, *medians, *ratios])
    table = markdown_table(["model", "measure", *(f"{v} (median)" for v in VARIANTS),
                            *(f"{v} / unchecked (median of per-round ratios)" for v in VARIANTS[1:])], rows)
    markdown = (f"# What the untrusted-input checks cost\n\n{args.rounds} rounds per model, each variant in "
                "a fresh process, alternating (order swapped every round). Load average at the start "
                f"{info['loadavg']}; steal ticks during the run {info['steal_ticks_during_run']}.\n\n"
                f"{table}\n")
    write_report("hardening", {"machine": info, "rounds": args.rounds, "results": results}, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
