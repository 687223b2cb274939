"""HF -> GGUF conversion: our converter vs llama.cpp's convert_hf_to_gguf.py, and a quality table.

Part 1, side by side in one run (variants alternate round by round, who goes first rotating): convert
SmolLM2-135M-Instruct (rebuilt as an HF float32 checkpoint from its bundled GGUF; cached) to F16, each
in a fresh process; wall time and peak RSS (the child's own ru_maxrss from wait4). The two F16 files
are then compared tensor by tensor.

Part 2: ``edgeinfer_converters.convert`` to F16, Q8_0, Q6_K, Q5_K_M, Q4_K_M and Q4_0; size, bits per weight,
mean KL / top-1 / perplexity vs the F32 GGUF (from each report.json), and greedy decode tok/s through
edgeinfer (artifacts alternate round by round).

llama.cpp's converter comes from the llama-cpp-python sdist of the installed version (``pip download``,
cached under ~/.cache/edgeinfer-bench) and needs ``sentencepiece`` and torch (``pip install -e
".[bench]"``); pass ``--llama-cpp DIR`` to use another checkout.

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.convert [--rounds 3] [--tokens 64]
Writes benchmarks/results/convert.json and convert.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import fmt, machine_info, markdown_table, paired_ratios, publish, quiet_logging

QUANTS = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0")
PROMPT = "Write a short paragraph about the history of lighthouses and the people who kept them."


def llama_cpp_converter(explicit: str | None) -> Path:
    """The folder holding convert_hf_to_gguf.py (+ gguf-py) matching the installed llama-cpp-python."""
    if explicit:
        return Path(explicit)
    import llama_cpp

    version = llama_cpp.__version__
    root = Path.home() / ".cache" / "edgeinfer-bench" / f"llama.cpp-{version}"
    if (root / "convert_hf_to_gguf.py").is_file():
        return root
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}",
                        "--no-binary", ":all:", "--no-deps", "-q", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        prefix = f"{sdist.name[: -len('.tar.gz')]}/vendor/llama.cpp/"
        wanted = ("convert_hf_to_gguf.py", "gguf-py/", "conversion/")
        staging = root.with_suffix(".part")
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers()
                       if m.name.startswith(prefix) and m.name[len(prefix):].startswith(wanted)]
            for member in members:
                member.name = member.name[len(prefix):]
            archive.extractall(staging, members=members, filter="data")
        staging.rename(root)
    return root


# Runs a script or module in this interpreter, then reports the process's peak RSS (VmHWM). VmHWM
# belongs to the address space execve created, so unlike wait4's ru_maxrss it does not count the
# parent's pages that the child held between fork and exec.
PEAK_WRAPPER = """
import runpy, sys
target, sys.argv = sys.argv[1], sys.argv[1:]
try:
    if target == "-m":
        sys.argv = sys.argv[1:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(target, run_name="__main__")
finally:
    peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print(f"PEAK_RSS_KB {peak}", file=sys.stderr)
"""


def timed_child(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``[script_or_-m, args...]`` with this Python; its wall seconds and its own peak RSS in MB."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *cmd], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    peaks = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    if proc.returncode or not peaks:
        raise RuntimeError(f"{cmd[:2]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": int(peaks[-1]) / 1024}


def compare_tensors(a: Path, b: Path) -> dict[str, Any]:
    """How many tensors of two GGUF files have the same name, type, shape and bytes."""
    import gguf
    import numpy as np

    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    same = [n for n in ta if n in tb and ta[n].tensor_type == tb[n].tensor_type
            and list(ta[n].shape) == list(tb[n].shape) and np.array_equal(ta[n].data, tb[n].data)]
    return {"ours": len(ta), "llama_cpp": len(tb), "identical": len(same),
            "only_ours": sorted(set(ta) - set(tb)), "only_llama_cpp": sorted(set(tb) - set(ta)),
            "different": sorted(n for n in set(ta) & set(tb) if n not in same)}


def part1(src: Path, work: Path, rounds: int, converter: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{converter / 'gguf-py'}{os.pathsep}{converter}"}
    variants = {
        "edgeinfer": (["-m", "edgeinfer", "convert", str(src), "-o", str(work / "ours.gguf"),
                       "--quant", "F16", "--no-quality", "--force", "--json"], None),
        "llama.cpp": ([str(converter / "convert_hf_to_gguf.py"), str(src), "--outtype", "f16",
                       "--outfile", str(work / "theirs.gguf")], env),
    }
    names = list(variants)
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for rnd in range(rounds):
        for name in names[rnd % 2:] + names[: rnd % 2]:
            cmd, cenv = variants[name]
            samples[name].append(timed_child(cmd, cenv))
            print(f"  round {rnd + 1} {name}: {samples[name][-1]}", flush=True)
    med = {n: {k: statistics.median(s[k] for s in samples[n]) for k in ("seconds", "peak_rss_mb")}
           for n in names}
    return {
        "samples": samples,
        "median": med,
        "time_ratio": paired_ratios([s["seconds"] for s in samples["edgeinfer"]],
                                    [s["seconds"] for s in samples["llama.cpp"]]),
        "rss_ratio": paired_ratios([s["peak_rss_mb"] for s in samples["edgeinfer"]],
                                   [s["peak_rss_mb"] for s in samples["llama.cpp"]]),
        "tensors": compare_tensors(work / "ours.gguf", work / "theirs.gguf"),
    }


def part2(src: Path, work: Path, rounds: int, tokens: int, threads: int) -> dict[str, Any]:
    from edgeinfer_converters import convert

    import edgeinfer as ei

    rows: dict[str, dict[str, Any]] = {}
    for quant in QUANTS:
        result = convert(src, work / f"smol-{quant}.gguf", quant=quant, force=True, n_threads=threads)
        report = json.loads(result.report.read_text())
        rows[quant] = {"size_mb": report["size_bytes"] / 1e6, "bits_per_weight": report["bits_per_weight"],
                       "quality": report["quality"] or {}, "convert_s": result.seconds, "tok_s": []}
        print(f"  {quant}: {rows[quant]['size_mb']:.1f} MB, quality {rows[quant]['quality']}", flush=True)
    models = {q: ei.load(work / f"smol-{q}.gguf", n_ctx=512, n_threads=threads, kv=ei.KVOptions(settle=False))
              for q in QUANTS}
    try:
        prompt = models["F16"].chat_prompt([{"role": "user", "content": PROMPT}])
        for rnd in range(rounds):
            for quant in QUANTS[rnd % len(QUANTS):] + QUANTS[: rnd % len(QUANTS)]:
                models[quant].engine.reset()
                done = models[quant].generate(prompt, max_tokens=tokens, temperature=0)
                rows[quant]["tok_s"].append(done.stats.decode_tok_s)
    finally:
        for model in models.values():
            model.close()
    for row in rows.values():
        row["decode_tok_s"] = statistics.median(row["tok_s"])
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-cpp", default=None, help="folder with llama.cpp's convert_hf_to_gguf.py")
    args = parser.parse_args(argv)
    quiet_logging()
    from tests.hf_fixtures import rebuilt_checkpoint

    src = rebuilt_checkpoint("smollm2")
    with tempfile.TemporaryDirectory(prefix="ei-convert-bench-") as tmp:
        work = Path(tmp)
        print("part 1: conversion to F16, ours vs llama.cpp", flush=True)
        speed = part1(src, work, args.rounds, llama_cpp_converter(args.llama_cpp))
        print("part 2: quality and speed per quantization", flush=True)
        quality = part2(src, work, args.rounds, args.tokens, args.threads)
    data = {"machine": machine_info(), "source": "SmolLM2-135M-Instruct rebuilt as HF float32",
            "rounds": args.rounds, "conversion": speed, "quantizations": quality}
    med, t = speed["median"], speed["tensors"]
    md = ["# HF -> GGUF conversion (SmolLM2-135M-Instruct, F16)", "",
          markdown_table(
              ["converter", "seconds (median)", "peak RSS MB (median)"],
              [[n, fmt(m["seconds"], 2), fmt(m["peak_rss_mb"], 0)] for n, m in med.items()]),
          "",
          f"Paired ratios, edgeinfer / llama.cpp: time {fmt(speed['time_ratio']['median'], 2)}x, "
          f"peak RSS {fmt(speed['rss_ratio']['median'], 2)}x ({args.rounds} rounds, alternating).",
          f"F16 tensors byte-identical to llama.cpp's: {t['identical']} of {t['llama_cpp']} "
          f"(ours {t['ours']}; different: {t['different'] or 'none'}).", "",
          "# Quality and speed per quantization (vs the F32 GGUF; fixed English text)", "",
          markdown_table(
              ["quant", "size MB", "bits/weight", "mean KL", "top-1", "PPL", "PPL F32", "decode tok/s"],
              [[q, fmt(r["size_mb"], 1), fmt(r["bits_per_weight"], 2), fmt(r["quality"].get("mean_kl"), 4),
                fmt(r["quality"].get("top1_agreement"), 3), fmt(r["quality"].get("ppl_candidate"), 2),
                fmt(r["quality"].get("ppl_reference"), 2), fmt(r["decode_tok_s"], 1)]
               for q, r in quality.items()]),
          "", "Run: `EDGEINFER_HOME=/tmp/eihome python -m benchmarks.convert --rounds 3 --tokens 64`"]
    publish("convert", data, "\n".join(md) + "\n")
    return data


if __name__ == "__main__":
    main()
