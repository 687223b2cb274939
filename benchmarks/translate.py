"""Translation quality and latency: a plain few-shot prompt through llama-cpp-python vs ei.Translator.

Variants, all on Gemma 3 270M Q4_K_M, greedy, stopped at the first newline, 2 threads:
  (a) llama-cpp-python, plain 2-shot prompt, no reuse (``Llama.reset()`` before every sentence);
  (a') llama-cpp-python, the same prompt with its automatic prefix reuse;
  (b) ``ei.Translator()`` as shipped: the vocabulary shortlisted to the six languages, its 8-shot
      block kept in the prompt cache (and each pair's block on disk when requests switch pairs), stopping
      on the sentence's final mark; a translation memory that starts empty (no sentence repeats);
  (b-ram) ``ei.Translator(memory=False)``: the same, but nothing on disk: a pair's block is recomputed
      when requests switching among more pairs than sequences have evicted it;
  (b-similar) (b) with the 2 bank sentences most like the request (BM25) added for every sentence, not
      only for inputs of up to 4 words as shipped (``prompts.SIMILAR_MAX_WORDS`` raised);
  (b-full) ``ei.Translator(shortlist=False)``: (b) without the shortlist (what the shortlist buys).
Each variant lives in its own worker process (two llama.cpp models in one process slow each other
down); the driver hands every sentence to each worker in turn, in an order that rotates, so machine
drift hits all variants alike. Only one worker computes at a time; every worker starts with an empty
disk cache of its own.

Slices (``--slice``):
  tuning   the project's 72-sentence set (edgeinfer/data/translation_eval.jsonl), each pair its own
           slice, pairs one after the other (what the settings were chosen on);
  heldout  the first 20 of 36 sentences nobody tuned on (translation_heldout.jsonl), each translated
           en->fr/es/de and back, the six pairs interleaved (every request switches pair).
Quality: chrF (sacrebleu, corpus level) against the references. Latency: wall seconds per sentence,
median, and the median of per-sentence ratios to (a).

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.translate [--slice heldout] [--variants a,b,...]
Writes benchmarks/results/translate[-heldout].json and .md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    fmt,
    machine_info,
    markdown_table,
    paired_ratios,
    publish,
    quiet_logging,
    steal_ticks,
    without_weight_repacking,
)

MODEL = "gemma-3-270m"
PAIRS = {"tuning": ["en-fr", "en-es", "en-de", "en-it", "en-pt", "fr-en", "es-en", "de-en"],
         "heldout": ["en-fr", "fr-en", "en-es", "es-en", "en-de", "de-en"]}
DATA = Path(__file__).resolve().parent.parent / "edgeinfer" / "data"
SLICES = {"tuning": "translation_eval.jsonl", "heldout": "translation_heldout.jsonl"}
BASELINE_SHOTS = 2
VARIANTS = {
    "llama_no_reuse": "(a) llama-cpp-python, 2-shot, no reuse",
    "llama_reuse": "(a') llama-cpp-python, 2-shot, automatic prefix reuse",
    "translator": "(b) ei.Translator (shortlist + cached few-shot prefix)",
    "translator_ram": "(b-ram) ei.Translator(memory=False): no disk cache",
    "translator_similar": "(b-similar) similar examples for every sentence",
    "translator_full_vocab": "(b-full) ei.Translator(shortlist=False)",
}
DEFAULT_VARIANTS = ["llama_no_reuse", "llama_reuse", "translator", "translator_ram", "translator_similar"]


def plain_prompt(text: str, source: str, target: str) -> str:
    from edgeinfer.translate.prompts import few_shot_prompt

    return few_shot_prompt(text, source, target, shots=BASELINE_SHOTS)


def worker(variant: str, threads: int, conn: Any) -> None:
    """Set up one variant, then translate each (text, source, target) received; answer (text, seconds)."""
    quiet_logging()
    if variant.startswith("llama"):
        from llama_cpp import Llama

        from edgeinfer.loader import locate_model

        without_weight_repacking()
        llm = Llama(model_path=str(locate_model(MODEL).path), n_ctx=2048, n_threads=threads, n_batch=512,
                    verbose=False)

        def translate(text: str, source: str, target: str) -> str:
            if variant == "llama_no_reuse":
                llm.reset()
            out = llm.create_completion(plain_prompt(text, source, target), max_tokens=128, temperature=0.0,
                                        stop=["\n"])
            return out["choices"][0]["text"].strip()
    else:
        import tempfile

        from edgeinfer_converters import prepare

        import edgeinfer as ei
        from edgeinfer.translate.translator import KV_DISK_BYTES

        prepare(MODEL)  # the shortlisted GGUF, built once (what `edgeinfer pull` does)
        if variant == "translator_similar":
            from edgeinfer.translate import prompts

            prompts.SIMILAR_MAX_WORDS = 10**6
        scratch = Path(tempfile.mkdtemp(prefix=f"bench-{variant}-"))
        options: dict[str, Any] = {"memory": scratch / "memory.sqlite3", "n_threads": threads,
                                   "shortlist": variant != "translator_full_vocab"}
        if variant == "translator_ram":
            options["memory"] = False
        else:  # the shipped KV settings, with an empty disk cache of this worker's own
            options["kv"] = ei.KVOptions(settle=False, keep_sequences=True, disk=scratch / "kv",
                                         disk_bytes=KV_DISK_BYTES)
        translator = ei.Translator(MODEL, **options)

        def translate(text: str, source: str, target: str) -> str:
            return translator.translate(text, to=target, source=source).text
    conn.send(("ready", None))
    while True:
        job = conn.recv()
        if job is None:
            break
        start = time.perf_counter()
        text = translate(*job)
        conn.send((text, time.perf_counter() - start))


def jobs_for(slice_name: str, pairs: list[str], per_pair: int) -> list[dict[str, Any]]:
    """The requests of a slice, in the order they are sent."""
    from edgeinfer.translate.prompts import example_bank, examples

    rows = [json.loads(line) for line in (DATA / SLICES[slice_name]).read_text(encoding="utf-8").splitlines()
            if line.strip()]
    shown = {ex["en"] for ex in examples()} | {ex["en"] for ex in example_bank()}
    assert not shown & {r["en"] for r in rows}, "the prompt examples overlap the evaluation sentences"

    def job(r: dict[str, str], pair: str) -> dict[str, Any]:
        source, target = pair.split("-")
        return {"id": r["id"], "pair": pair, "source": source, "target": target, "text": r[source],
                "reference": r[target]}

    if slice_name == "heldout":  # every sentence in every pair, pairs interleaved
        return [job(r, pair) for r in rows[:per_pair] for pair in pairs]
    step = max(1, len(rows) // per_pair)
    return [job(r, pair) for k, pair in enumerate(pairs)
            for r in rows[k % step::step][:per_pair]]  # each pair its own slice of the set


def run(slice_name: str, pairs: list[str], per_pair: int, threads: int,
        variants: list[str]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    workers = {}
    for v in variants:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(v, threads, child), daemon=True)
        proc.start()
        workers[v] = (proc, parent)
    for v, (_, conn) in workers.items():
        assert conn.recv()[0] == "ready", v
    jobs = jobs_for(slice_name, pairs, per_pair)
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    try:
        for i, job in enumerate(jobs):
            order = variants[i % len(variants):] + variants[:i % len(variants)]
            for v in order:
                conn = workers[v][1]
                conn.send((job["text"], job["source"], job["target"]))
                text, seconds = conn.recv()
                results[v].append({"id": job["id"], "pair": job["pair"], "output": text, "seconds": seconds})
            if (i + 1) % 20 == 0:
                print(f"  {i + 1}/{len(jobs)} sentences", flush=True)
    finally:
        for proc, conn in workers.values():
            conn.send(None)
            proc.join(timeout=30)
    return {"jobs": jobs, "results": results}


def summarize(jobs: list[dict[str, Any]], results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    out: dict[str, Any] = {}
    for v, rows in results.items():
        hyps, refs = [r["output"] for r in rows], [j["reference"] for j in jobs]
        per_pair = {}
        for pair in dict.fromkeys(j["pair"] for j in jobs):
            idx = [i for i, j in enumerate(jobs) if j["pair"] == pair]
            per_pair[pair] = {
                "chrf": chrf.corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]]).score,
                "median_s": statistics.median(rows[i]["seconds"] for i in idx)}
        out[v] = {"chrf": chrf.corpus_score(hyps, [refs]).score,
                  "median_s": statistics.median(r["seconds"] for r in rows),
                  "mean_s": statistics.fmean(r["seconds"] for r in rows), "per_pair": per_pair}
    base = out.get("llama_no_reuse")
    secs = {v: [r["seconds"] for r in rows] for v, rows in results.items()}
    for v, s in out.items():
        s["latency_vs_no_reuse"] = s["median_s"] / base["median_s"] if base else None
        if base:  # per-sentence ratios, paired (robust to drift)
            s["paired_latency_ratio_median"] = paired_ratios(secs[v], secs["llama_no_reuse"])["median"]
        if "translator" in secs:
            s["translator_paired_ratio"] = paired_ratios(secs["translator"], secs[v])["median"]
    same = {v: sum(a["output"] == b["output"] for a, b in zip(results[v], results["translator_full_vocab"],
                                                             strict=True))
            for v in results if "translator_full_vocab" in results}
    return {"sentences": len(jobs), "variants": out, "same_output_as_full_vocab": same}


def markdown(summary: dict[str, Any], args: argparse.Namespace, n: int, info: dict[str, Any]) -> str:
    v = summary["variants"]
    rows = [[VARIANTS[k], fmt(s["chrf"], 1), fmt(s["median_s"], 3), fmt(s["latency_vs_no_reuse"], 2),
             fmt(s.get("paired_latency_ratio_median"), 2)] for k, s in v.items()]
    pairs = list(next(iter(v.values()))["per_pair"])
    per_pair = [[pair] + [f"{fmt(s['per_pair'][pair]['chrf'], 1)} / "
                          f"{fmt(s['per_pair'][pair]['median_s'], 2)} s" for s in v.values()]
                for pair in pairs]
    b, a = v.get("translator"), v.get("llama_no_reuse")
    head = ""
    if a and b:
        head = (f"**Headline ({args.slice} slice):** ei.Translator scores chrF **{b['chrf']:.1f}** (plain "
                f"2-shot: {a['chrf']:.1f}) at a median of **{b['median_s']:.3f} s** per sentence; the median "
                f"of per-sentence ratios to the plain 2-shot prompt without reuse is "
                f"**{b['paired_latency_ratio_median']:.2f}x** (ratio of medians "
                f"{b['latency_vs_no_reuse']:.2f}x, {a['median_s']:.3f} s).")
    same = summary["same_output_as_full_vocab"]
    where = (f"the {args.per_pair} held-out sentences of `edgeinfer/data/translation_heldout.jsonl` (no "
             "setting was chosen on them), each in every pair, the pairs interleaved so that every request "
             "switches pair" if args.slice == "heldout" else
             f"{args.per_pair} per pair, each pair its own slice of the project's 72-sentence six-language "
             "set (`edgeinfer/data/translation_eval.jsonl`), pairs one after the other")
    return "\n".join([
        f"# Translation: plain few-shot prompt vs ei.Translator ({args.slice} slice)", "", head, "",
        markdown_table(["variant", "chrF", "median s/sentence", "vs (a) (medians)", "vs (a) (paired median)"],
                       rows), "",
        "## Per pair (chrF / median seconds)", "",
        markdown_table(["pair"] + [VARIANTS[k].split(" ", 1)[0] for k in v], per_pair), "",
        (f"Output identical to the full-vocabulary Translator (b-full) on {same.get('translator', '-')}/{n} "
         "sentences.") if same else "",
        "",
        "## How it was measured", "",
        f"- {n} requests: pairs {', '.join(args.pairs)}; {where}. Few-shot examples come from separate "
        "files (`translation_examples.jsonl`, `translation_bank.jsonl`), checked not to overlap.",
        "- Every variant in its own process; sentences handed to the variants in rotating order, one "
        "computing at a time; wall seconds per sentence measured in the worker around the call.",
        f"- Greedy, stop at newline, {args.threads} threads. (a) resets llama-cpp-python before each "
        "sentence; (b) is `ei.Translator()` with its defaults (8-shot block, shortlisted vocabulary, pair "
        "blocks kept on disk) and an empty translation memory.",
        f"- Machine: {info['cpu_model']}, {info['cpu_affinity']} CPUs usable; load {summary['load_before']} "
        f"before, {info['loadavg']} after; {summary['steal_ticks']} steal ticks during the run.", "",
        f"Run: `EDGEINFER_HOME=/tmp/eihome python -m benchmarks.translate --slice {args.slice}`",
    ]) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slice", choices=list(SLICES), default="tuning")
    parser.add_argument("--per-pair", type=int, default=None, help="default: 24 (tuning), 20 (heldout)")
    parser.add_argument("--pairs", type=lambda s: s.split(","), default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", type=lambda s: s.split(","), default=DEFAULT_VARIANTS)
    args = parser.parse_args(argv)
    args.pairs = args.pairs or PAIRS[args.slice]
    args.per_pair = args.per_pair or (20 if args.slice == "heldout" else 24)
    quiet_logging()
    started, load_before, steal = time.perf_counter(), machine_info()["loadavg"], steal_ticks()
    raw = run(args.slice, args.pairs, args.per_pair, args.threads, args.variants)
    summary = {**summarize(raw["jobs"], raw["results"]), "load_before": load_before,
               "steal_ticks": steal_ticks() - steal}
    info = machine_info()
    data = {"machine": info, "model": MODEL, "slice": args.slice, "pairs": args.pairs,
            "per_pair": args.per_pair, "threads": args.threads, **summary, **raw,
            "total_s": time.perf_counter() - started}
    md = markdown(summary, args, len(raw["jobs"]), info)
    publish("translate" if args.slice == "tuning" else f"translate-{args.slice}", data, md)
    return data


if __name__ == "__main__":
    main()
