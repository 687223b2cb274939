"""ONNX backend batching: aggregate decode tok/s at 1, 2, 4, 8 concurrent streams, batched vs one by one.

One artifact: SmolLM2-135M-Instruct converted to edgeinfer's ONNX int4 (``convert(format="onnx",
quant="int4")`` of the HF checkpoint rebuilt from the bundled GGUF, cached under the same name and key as
``benchmarks/onnx.py`` uses, so either benchmark reuses the other's conversion). Two variants of it,
loaded side by side in this process with the same threads, n_ctx and max_sequences (8):

  batched     the onnx backend as loaded by default: the engine's decode step for n streams is one
              eval, whose one-token items share one onnxruntime run (``OnnxBackend(batch=None)``)
  one-by-one  the same eval run item by item, one onnxruntime run per stream per step
              (``OnnxBackend(batch=False)``: the backend before batching)

n threads call ``Model.generate`` at once (greedy, ``--tokens`` each, cold prompt cache: the engine is
reset before every sample). Per sample: aggregate tok/s = completion tokens of all streams / wall;
aggregate decode tok/s = (completion tokens - 1 per stream) / (first token of any stream -> last token
of all), i.e. the decode phase with the prompts' prefills (one eval each, interleaved) inside it; the
onnxruntime runs per decode step. The variants alternate round by round (A B, then B A, ...); the
summary is the median over rounds and the median of the per-round ratios batched / one-by-one. Every
sample first waits (``--quiet-wait``) until other processes keep at most ``--max-foreign`` cores busy
and is redone (``--retries``) if they kept more busy during it; each records that load, and the report
the load averages. Greedy outputs of the batched variant are checked against the one-by-one ones.

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.onnx_batching [--rounds 5] [--tokens 64]
Writes benchmarks/results/onnx_batching.json and onnx_batching.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.batching import LEVELS, PROMPTS
from benchmarks.common import (
    fmt,
    machine_info,
    markdown_table,
    median_summary,
    paired_ratios,
    publish,
    quiet_logging,
)
from benchmarks.onnx import BENCH_CACHE, CpuWatch, cached, converter_key, wait_quiet

VARIANTS = {"batched": None, "one-by-one": False}  # name -> the backend's ``batch`` option


def int4_artifact(cache: Path, threads: int, rebuild: bool) -> Path:
    """SmolLM2 int4 ONNX (converted once; shared with benchmarks/onnx.py's cache entry)."""
    from edgeinfer_converters import convert

    from tests.hf_fixtures import rebuilt_checkpoint

    src = rebuilt_checkpoint("smollm2")

    def build(tmp: Path) -> None:
        convert(src, tmp / "model", format="onnx", quant="int4", quality=False, force=True, n_threads=threads)

    key = converter_key("onnx", src)
    return cached(cache / "onnx-bench", "smollm2-onnx-int4", key, build, rebuild) / "model"


def load_variants(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Both variants of the artifact, loaded alike but for the backend's ``batch`` option."""
    import edgeinfer as ei

    return {name: ei.load(path, n_ctx=args.n_ctx, n_threads=args.threads, max_sequences=max(LEVELS),
                          kv=ei.KVOptions(settle=False), speculation=None, batch=batch)
            for name, batch in VARIANTS.items()}


def run_streams(model: Any, prompts: list[str], n_tokens: int) -> dict[str, Any]:
    """The prompts as concurrent greedy requests from a cold cache; throughput and the runs they took."""
    model.engine.reset()
    backend = model.backend
    results: list[Any] = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts) + 1)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = model.generate(prompts[i], max_tokens=n_tokens, temperature=0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    runs, padding = backend.session_runs, backend.padding_rows
    barrier.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    stats = [r.stats for r in results]
    first_token = min(s.ttft_s for s in stats)
    steps = sum(s.completion_tokens - 1 for s in stats)
    decode_runs = backend.session_runs - runs - len(prompts)  # each short prompt: one prefill run
    return {
        "wall_s": wall,
        "tokens": [r.tokens for r in results],
        "agg_tok_s": sum(s.completion_tokens for s in stats) / wall,
        "decode_agg_tok_s": steps / (wall - first_token) if wall > first_token else None,
        "stream_decode_tok_s": statistics.median(s.decode_tok_s for s in stats),
        "runs_per_step": decode_runs / max(1, max(s.completion_tokens for s in stats) - 1),
        "padding_rows": backend.padding_rows - padding,
    }


def sample(model: Any, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One measured run, after the machine is quiet; redone if other processes were busy during it."""
    pids = [os.getpid()]
    for attempt in range(1 + args.retries):
        time.sleep(0.1)
        wait_quiet(pids, args.max_foreign, args.quiet_wait)
        with CpuWatch(pids) as watch:
            run = run_streams(model, prompts, args.tokens)
        run.update(foreign_cores=watch.foreign_cores, attempts=attempt + 1)
        if watch.foreign_cores is None or watch.foreign_cores <= args.max_foreign:
            break
    return run


def measure(models: dict[str, Any], args: argparse.Namespace) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """Samples per level and variant, the variants alternating (who goes first flips every round)."""
    samples: dict[int, dict[str, list[dict[str, Any]]]] = {n: {v: [] for v in models} for n in LEVELS}
    for model in models.values():  # warm-up: first runs allocate buffers and bindings
        run_streams(model, PROMPTS[:2], 4)
    for rnd in range(args.rounds):
        for n in LEVELS:
            order = list(models) if rnd % 2 == 0 else list(reversed(models))
            for name in order:
                samples[n][name].append(sample(models[name], PROMPTS[:n], args))
            print(f"round {rnd + 1} n={n}: " + ", ".join(
                f"{v} {samples[n][v][-1]['decode_agg_tok_s']:.1f} decode tok/s "
                f"(others {fmt(samples[n][v][-1]['foreign_cores'], 2)} cores)" for v in order), flush=True)
    return samples


def summarize(samples: dict[int, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Medians per level and variant, paired ratios, and greedy outputs that differ between variants."""
    levels, mismatches = {}, 0
    for n, by_variant in samples.items():
        a, b = by_variant["batched"], by_variant["one-by-one"]
        mismatches += sum(x != y for ra, rb in zip(a, b, strict=True)
                          for x, y in zip(ra["tokens"], rb["tokens"], strict=True))
        levels[n] = {
            **{key: {v: median_summary([s[key] for s in runs if s[key] is not None])
                     for v, runs in by_variant.items()}
               for key in ("decode_agg_tok_s", "agg_tok_s", "stream_decode_tok_s", "runs_per_step",
                           "foreign_cores")},
            "batched_vs_one_by_one": paired_ratios([s["decode_agg_tok_s"] for s in a],
                                                   [s["decode_agg_tok_s"] for s in b]),
            "padding_rows": sum(s["padding_rows"] for s in a),
            "samples": {v: [{k: x for k, x in s.items() if k != "tokens"} for s in runs]
                        for v, runs in by_variant.items()},
        }
    return {"levels": levels, "outputs_differing": mismatches}


def render(data: dict[str, Any]) -> str:
    """The Markdown report."""
    rows = []
    for n, r in data["results"]["levels"].items():
        dec, agg, runs = r["decode_agg_tok_s"], r["agg_tok_s"], r["runs_per_step"]
        rows.append([n, fmt(dec["batched"]["median"]), fmt(dec["one-by-one"]["median"]),
                     fmt(r["batched_vs_one_by_one"]["median"], 2), fmt(agg["batched"]["median"]),
                     fmt(agg["one-by-one"]["median"]), fmt(runs["batched"]["median"], 2),
                     fmt(runs["one-by-one"]["median"], 2)])
    machine = data["machine"]
    return "\n".join([
        f"# ONNX backend batching — {data['model']}, {data['threads']} threads, {data['tokens']} tokens per "
        f"stream, {data['rounds']} rounds",
        "",
        markdown_table(["streams", "decode tok/s batched", "decode tok/s one-by-one", "batched / one-by-one "
                        "(paired)", "end-to-end tok/s batched", "end-to-end tok/s one-by-one",
                        "runs per step batched", "runs per step one-by-one"], rows),
        "",
        "Greedy outputs of the batched variant differing from one-by-one: "
        f"{data['results']['outputs_differing']}.",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpu_affinity']} cores; load average before "
        f"{data['loadavg_before']}, after {data['loadavg_after']}.",
    ]) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens per stream")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--cache-dir", type=Path, default=BENCH_CACHE, help="where the artifact is cached")
    parser.add_argument("--rebuild", action="store_true", help="convert the artifact again")
    parser.add_argument("--max-foreign", type=float, default=0.25,
                        help="redo a sample during which other processes kept more cores than this busy")
    parser.add_argument("--retries", type=int, default=2, help="extra attempts of a contended sample")
    parser.add_argument("--quiet-wait", type=float, default=20.0,
                        help="before each sample, wait at most this many seconds for other processes to calm")
    args = parser.parse_args(argv)
    quiet_logging()
    path = int4_artifact(args.cache_dir, args.threads, args.rebuild)
    models = load_variants(path, args)
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        samples = measure(models, args)
    finally:
        for model in models.values():
            model.close()
    data: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct ONNX int4", "artifact": str(path),
        "threads": args.threads, "tokens": args.tokens, "rounds": args.rounds, "n_ctx": args.n_ctx,
        "machine": machine_info(), "loadavg_before": load_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "results": summarize(samples),
    }
    publish("onnx_batching", data, render(data))
    return data


if __name__ == "__main__":
    main()
