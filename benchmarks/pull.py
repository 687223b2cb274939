"""Pull + convert a safetensors repo: `edgeinfer pull hf:…` vs `hf download` + convert_hf_to_gguf.py.

The repo is SmolLM2-135M-Instruct (rebuilt as an HF float32 checkpoint from its bundled GGUF; cached),
served by tests/local_hub.py on 127.0.0.1, so every variant downloads the same 540 MB through the real
huggingface_hub client into an empty cache. Variants alternate round by round (who goes first rotating),
each command in a fresh process; wall time and the process's own peak RSS (VmHWM):

- reference: ``hf download REPO --local-dir D`` then ``convert_hf_to_gguf.py D --outtype q8_0``;
- ``edgeinfer pull hf:REPO --quant Q8_0 --no-quality``: download, verify every file, convert, check the
  GGUF in llama.cpp, pin (the same work as the reference, plus the checks);
- ``edgeinfer pull hf:REPO --quant Q8_0``: download, verify every file against the hub's sha256,
  convert, check the GGUF in llama.cpp, measure its quality against an F32 GGUF, pin;
- ``edgeinfer pull hf:REPO``: the same with ``--quant auto`` (tries types until one is within --max-kl).

llama.cpp's converter comes from the llama-cpp-python sdist (see benchmarks/convert.py; needs
``pip install -e ".[bench]"``).

Run:  python -m benchmarks.pull [--rounds 3]
Writes benchmarks/results/pull.json and pull.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import fmt, machine_info, markdown_table, paired_ratios, publish, steal_ticks
from benchmarks.convert import llama_cpp_converter, timed_child

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
REFERENCE = "hf download + convert_hf_to_gguf.py (q8_0)"
OURS_PLAIN = "edgeinfer pull --quant Q8_0 --no-quality"
OURS_Q8 = "edgeinfer pull --quant Q8_0"
OURS_AUTO = "edgeinfer pull (--quant auto)"
PULL_OPTIONS = {OURS_PLAIN: ["--quant", "Q8_0", "--no-quality"], OURS_Q8: ["--quant", "Q8_0"], OURS_AUTO: []}


def child_env(hub_url: str, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A fresh hub cache, edgeinfer home and user lock for one run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "EDGEINFER_"))}
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(home / "hf"), HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               EDGEINFER_HOME=str(home / "ei"), EDGEINFER_CONFIG=str(home / "config"), **(extra or {}))
    return env


def run_variant(name: str, hub_url: str, work: Path, converter: Path) -> dict[str, Any]:
    """One variant from an empty cache: its seconds, peak RSS (the largest of its processes), output."""
    home = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    env = child_env(hub_url, home)
    if name == REFERENCE:
        local = home / "download"
        steps = [timed_child(["-m", "huggingface_hub.cli.hf", "download", REPO, "--local-dir", str(local)],
                             env),
                 timed_child([str(converter / "convert_hf_to_gguf.py"), str(local), "--outtype", "q8_0",
                              "--outfile", str(home / "theirs.gguf")],
                             {**env, "PYTHONPATH": f"{converter / 'gguf-py'}{os.pathsep}{converter}"})]
        out = home / "theirs.gguf"
    else:
        steps = [timed_child(["-m", "edgeinfer", "pull", f"hf:{REPO}", "--name", "smol", *PULL_OPTIONS[name]],
                             env)]
        out = next((home / "ei").rglob("smol-*.gguf"))
    return {"seconds": sum(s["seconds"] for s in steps), "peak_rss_mb": max(s["peak_rss_mb"] for s in steps),
            "steps": steps, "output_mb": out.stat().st_size / 1e6}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--llama-cpp", default=None, help="folder with llama.cpp's convert_hf_to_gguf.py")
    args = parser.parse_args(argv)
    from tests.hf_fixtures import rebuilt_checkpoint
    from tests.local_hub import LocalHub

    converter = llama_cpp_converter(args.llama_cpp)
    checkpoint = rebuilt_checkpoint("smollm2")
    names = [REFERENCE, OURS_PLAIN, OURS_Q8, OURS_AUTO]
    samples: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    steal_before, load_before = steal_ticks(), os.getloadavg()
    with LocalHub() as hub, tempfile.TemporaryDirectory(prefix="ei-pull-bench-") as tmp:
        hub.add_repo(REPO, {p.name: p for p in checkpoint.iterdir() if p.is_file()})
        for rnd in range(args.rounds):
            for name in names[rnd % len(names):] + names[: rnd % len(names)]:
                samples[name].append(run_variant(name, hub.url, Path(tmp), converter))
                print(f"  round {rnd + 1} {name}: {samples[name][-1]['seconds']:.1f} s, "
                      f"{samples[name][-1]['peak_rss_mb']:.0f} MB", flush=True)
    quiet = {"steal_ticks": steal_ticks() - steal_before, "load_before": load_before,
             "load_after": os.getloadavg()}
    keys = ("seconds", "peak_rss_mb", "output_mb")
    median = {n: {k: statistics.median(s[k] for s in samples[n]) for k in keys} for n in names}
    ratios = {n: {"time": paired_ratios([s["seconds"] for s in samples[n]],
                                        [s["seconds"] for s in samples[REFERENCE]]),
                  "rss": paired_ratios([s["peak_rss_mb"] for s in samples[n]],
                                       [s["peak_rss_mb"] for s in samples[REFERENCE]])} for n in names[1:]}
    data = {"machine": machine_info(), "repo": REPO, "rounds": args.rounds, "samples": samples,
            "median": median, "ratios_vs_reference": ratios, "quiet": quiet}
    rows = [[n, fmt(median[n]["seconds"], 1), fmt(median[n]["peak_rss_mb"], 0),
             fmt(median[n]["output_mb"], 1),
             "1.00" if n == REFERENCE else fmt(ratios[n]["time"]["median"], 2),
             "1.00" if n == REFERENCE else fmt(ratios[n]["rss"]["median"], 2)] for n in names]
    md = [f"# Pull + convert {REPO} (540 MB of float32 safetensors, from a local hub)", "",
          markdown_table(["variant", "seconds", "peak RSS MB", "GGUF MB", "time vs reference",
                          "peak RSS vs reference"], rows), "",
          f"Medians of {args.rounds} rounds, variants alternating; ratios are medians of per-round ratios. "
          f"Machine: {quiet['steal_ticks']} steal ticks during the run, load "
          f"{quiet['load_before'][0]:.2f} before / {quiet['load_after'][0]:.2f} after.",
          "The reference's time is the download plus the conversion, its peak the larger of the two "
          "processes'. edgeinfer's pull also hashes every file against the hub's sha256 and loads the GGUF "
          "in llama.cpp to check it; with the quality report it also writes an F32 GGUF and runs both "
          "models over the 1,023-token quality text.", "",
          "Run: `python -m benchmarks.pull --rounds 3`"]
    publish("pull", data, "\n".join(md) + "\n")
    return data


if __name__ == "__main__":
    main()
