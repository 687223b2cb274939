"""The GPU check's report: what edgeinfer does on this machine's GPU, measured, in JSON and Markdown.

Sections, per bundled model that is here: the device choice and why (`edgeinfer env`), full offload (the
layers llama.cpp put on the GPU), VRAM used against the VRAM the choice planned for, decode and prefill
tok/s on the GPU against the CPU of the same machine, batching at 1/4/8/32 streams, and exactness (batched
= one by one, reused prefix = cold, speculation = plain). Then what a user gets for a model larger than the
free VRAM (other processes hold the rest). ``--cpu`` rehearses the same report on a CPU machine: the GPU
rows run on the CPU and the VRAM rows use an injected probe.

Run by tools/gpu_check.sh (the build and the models first); alone: python tools/gpu_check.py --cpu --out DIR
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import glob
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
STREAMS = (1, 4, 8, 32)
MIB = 1 << 20
PROMPTS = [
    f"Write three sentences about {topic}."
    for topic in (
        "lighthouses",
        "bread",
        "rivers",
        "owls",
        "trains",
        "glaciers",
        "bees",
        "violins",
        "deserts",
        "kites",
        "tides",
        "chess",
        "volcanoes",
        "maps",
        "tea",
        "comets",
        "bridges",
        "coral",
        "clocks",
        "wolves",
        "salt",
        "printing",
        "moss",
        "ferries",
        "thunder",
        "paper",
        "orchards",
        "lanterns",
        "canals",
        "sails",
        "honey",
        "snow",
    )
]
GROUNDED = (
    "Rewrite this paragraph in plain words, keeping every fact: The lighthouse at Cape Point was "
    "built in 1860 on a cliff 238 metres above the sea. Its light was often hidden by cloud, so a "
    "second lighthouse was built lower down in 1919, and it still guides ships today."
)


# ---- the machine's GPU, read with nvidia-smi and the CUDA runtime ----------------------------------------
def nvidia_smi(query: str) -> list[list[str]]:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-{query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[field.strip() for field in line.split(",")] for line in out.strip().splitlines() if line.strip()]


def vram_used_mib() -> int | None:
    """MiB of GPU memory in use on GPU 0 (all processes), or None without nvidia-smi."""
    rows = nvidia_smi("gpu=memory.used")
    return int(rows[0][0]) if rows and rows[0][0].isdigit() else None


def cudart() -> ctypes.CDLL:
    """The CUDA runtime library (the toolkit's, or the pip package's)."""
    names = ["libcudart.so", "libcudart.so.13", "libcudart.so.12"]
    names += sorted(glob.glob("/usr/local/cuda*/lib64/libcudart.so*"))
    names += sorted(
        glob.glob(
            os.path.join(
                sys.prefix, "lib", "python3*", "site-packages", "nvidia", "*", "lib", "libcudart.so*"
            )
        )
    )
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise OSError("no CUDA runtime library found (libcudart.so)")


def hold_vram(leave: int) -> None:
    """Allocate GPU memory until ``leave`` bytes are free, say so, and hold it until stdin closes."""
    lib = cudart()
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
    held, ptr = [], ctypes.c_void_p()
    want = free.value - leave
    while want > 64 * MIB:  # one allocation may not take it all: go on in halves
        if lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(want)) == 0:
            held.append(want)
            lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
            want = free.value - leave
        else:
            want //= 2
    print(json.dumps({"held": sum(held), "free": free.value, "total": total.value}), flush=True)
    sys.stdin.read()


# ---- measurements -------------------------------------------------------------------------------------
class OffloadLog(logging.Handler):
    """Collects llama.cpp's load messages about offloading (its log reaches Python's logging)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().strip()
        if "offload" in text or "CUDA" in text and "buffer size" in text:
            self.lines.append(text)


def load(name: str, **options: Any) -> tuple[Any, dict]:
    """``ei.load(name)`` with the facts of the load: device, GPU layers and why, offload lines, VRAM."""
    import edgeinfer as ei
    from edgeinfer.backends.llamacpp import log as logger  # llama.cpp's own log lines arrive here

    handler, level = OffloadLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    before = vram_used_mib()
    start = time.perf_counter()
    try:
        model = ei.load(name, offline=True, **{"backend": "llama.cpp", **options})  # the GPU's backend
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    after = vram_used_mib()
    choice = model.choice
    return model, {
        "device": choice.device,
        "n_gpu_layers": choice.n_gpu_layers,
        "reasons": list(choice.reasons),
        "load_s": round(time.perf_counter() - start, 2),
        "offload_log": handler.lines,
        "vram_used_mib": None if before is None or after is None else after - before,
    }


def prompt_ids(model: Any, n: int) -> list[int]:
    text = GROUNDED + " "
    ids = model.tokenize(text * (1 + n // 40))
    return ids[:n]


def speed(model: Any, prompt: list[int], gen: int) -> dict[str, float]:
    """Prefill tok/s, decode tok/s and TTFT of one greedy request (nothing reused)."""
    model.engine.reset()
    s = model.generate(prompt, max_tokens=gen, temperature=0).stats
    decode = (s.completion_tokens - 1) / s.decode_s if s.decode_s > 0 and s.completion_tokens > 1 else 0.0
    return {
        "prefill_tok_s": s.computed_prompt_tokens / s.prefill_s if s.prefill_s else 0.0,
        "decode_tok_s": decode,
        "ttft_ms": s.ttft_s * 1e3,
    }


def speed_vs_cpu(model: Any, cpu_model: Any, rounds: int, prompt_tokens: int, gen: int) -> dict:
    """The two models alternating (GPU, CPU, GPU, ...): medians and the median of per-round ratios."""
    prompt = prompt_ids(model, prompt_tokens)
    for m in (model, cpu_model):
        m.generate(prompt[:16], max_tokens=2, temperature=0)  # warm-up
    runs: dict[str, list[dict]] = {"gpu": [], "cpu": []}
    for _ in range(rounds):
        runs["gpu"].append(speed(model, prompt, gen))
        runs["cpu"].append(speed(cpu_model, prompt, gen))
    out: dict[str, Any] = {"prompt_tokens": len(prompt), "gen_tokens": gen, "rounds": rounds}
    for key in ("prefill_tok_s", "decode_tok_s", "ttft_ms"):
        out[key] = {side: round(statistics.median(r[key] for r in runs[side]), 1) for side in runs}
        ratios = [g[key] / c[key] for g, c in zip(runs["gpu"], runs["cpu"], strict=True) if c[key]]
        out[key]["ratio"] = round(statistics.median(ratios), 2) if ratios else None
    return out


def concurrently(model: Any, prompts: list[str], gen: int) -> tuple[list[str], float, int]:
    """Greedy answers to ``prompts`` sent at once from threads: texts, wall seconds, tokens generated."""
    results: list[Any] = [None] * len(prompts)

    def ask(i: int) -> None:
        results[i] = model.complete_chat(
            [{"role": "user", "content": prompts[i]}], max_tokens=gen, temperature=0
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return [r.text for r in results], wall, sum(r.stats.completion_tokens for r in results)


def batching(model: Any, gen: int) -> list[dict]:
    """Aggregate tok/s at each stream count, against the same prompts one by one, and how many differ."""
    rows = []
    for n in STREAMS:
        prompts = PROMPTS[:n]
        model.engine.reset()
        alone, alone_s, alone_tokens = [], 0.0, 0
        for p in prompts:
            model.engine.reset()  # each alone from an empty cache, as batched requests start
            texts, wall, tokens = concurrently(model, [p], gen)
            alone += texts
            alone_s += wall
            alone_tokens += tokens
        model.engine.reset()
        together, wall, tokens = concurrently(model, prompts, gen)
        rows.append(
            {
                "streams": n,
                "tok_s": round(tokens / wall, 1),
                "one_by_one_tok_s": round(alone_tokens / alone_s, 1),
                "ratio": round((tokens / wall) / (alone_tokens / alone_s), 2),
                "outputs_differing": sum(a != b for a, b in zip(alone, together, strict=True)),
            }
        )
    return rows


def exactness(name: str, model: Any, options: dict) -> dict:
    """Reused prefix = cold, and speculation = plain, greedy, on the loaded model and a second one."""
    import edgeinfer as ei

    out: dict[str, Any] = {}
    chat = model.chat(system="You are a helpful assistant.")
    chat.send("Tell me about Lyon.", max_tokens=48, temperature=0)
    model.engine.settle()
    before = list(chat.messages)
    reused = chat.send("And its food?", max_tokens=32, temperature=0)
    model.engine.reset()
    cold = model.complete_chat(
        [*before, {"role": "user", "content": "And its food?"}], max_tokens=32, temperature=0
    )
    out["reused_prefix_equals_cold"] = reused.text == cold.text
    out["reused_tokens"] = reused.stats.cached_tokens
    from edgeinfer.speculative import StepCosts

    spec = ei.load(name, offline=True, backend="llama.cpp", speculation="prompt-lookup", **options)
    spec.engine.step_costs = StepCosts(prior_slope=0.3, pinned=True)  # drafts are checked, on any device
    plain = ei.load(name, offline=True, backend="llama.cpp", speculation=None, **options)
    try:
        a = spec.complete_chat([{"role": "user", "content": GROUNDED}], max_tokens=96, temperature=0)
        b = plain.complete_chat([{"role": "user", "content": GROUNDED}], max_tokens=96, temperature=0)
        out["speculation_equals_plain"] = a.text == b.text
        out["speculation_drafted"] = a.stats.draft_tokens
        out["speculation_accepted"] = a.stats.accepted_tokens
        out["speculation_flash_attn"] = options.get("flash_attn", False)
    finally:
        spec.close()
        plain.close()
    return out


def model_section(name: str, *, rounds: int, gen: int) -> dict:
    """Everything the report says of one bundled model."""
    section: dict[str, Any] = {"name": name}
    env = subprocess.run(
        [sys.executable, "-m", "edgeinfer", "env", name, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(env.stdout)
        section["env_choice"] = report["plan"]["choice"]
    except json.JSONDecodeError:
        section["env_choice"] = {"error": (env.stderr or env.stdout)[-500:]}
    model, section["load"] = load(name, max_sequences=max(STREAMS))
    try:
        cpu_model, section["load_cpu"] = load(name, device="cpu")
        try:
            section["speed"] = speed_vs_cpu(model, cpu_model, rounds, 256, gen)
        finally:
            cpu_model.close()
        section["batching"] = batching(model, min(gen, 32))
        section["exactness"] = exactness(name, model, {"flash_attn": True})  # what exact drafting needs
    finally:
        model.close()
    return section


def too_large(name: str, *, cpu_rehearsal: bool) -> dict:
    """What a user gets when other processes leave less free VRAM than the model needs."""
    from edgeinfer.device import GPU, VRAM_RESERVE_BYTES, Artifact, choose
    from edgeinfer.loader import cached_probe, locate_model

    located = locate_model(name, offline=True)
    size = located.path.stat().st_size
    out: dict[str, Any] = {"model": name, "model_bytes": size}
    if cpu_rehearsal:  # the choice is a pure function of the probe: inject a GPU with little free memory
        probe = cached_probe()
        for label, free in (
            ("free = reserve + half the model", VRAM_RESERVE_BYTES + size // 2),
            ("free = half the model", size // 2),
        ):
            fake = GPU("Injected GPU", "cuda", 8 << 30, free)
            injected = dataclasses.replace(
                probe, gpus=(fake,), llama_gpu_offload=True, llama_build_backends=frozenset({"CPU", "CUDA"})
            )
            choice = choose(injected, Artifact("gguf", size, 30))
            out[label] = {
                "auto": {
                    "device": choice.device,
                    "n_gpu_layers": choice.n_gpu_layers,
                    "reasons": list(choice.reasons),
                },
                "all_layers_forced": "not run: no GPU in a CPU rehearsal",
            }
        return out
    if not nvidia_smi("gpu=name"):
        out["not run"] = "holding GPU memory from another process takes the CUDA runtime (no NVIDIA GPU)"
        return out
    for label, leave in (
        ("free = reserve + half the model", VRAM_RESERVE_BYTES + size // 2),
        ("free = half the model", size // 2),
    ):
        holder = subprocess.Popen(
            [sys.executable, __file__, "--hold-vram-leaving", str(leave)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            held = json.loads(holder.stdout.readline() or "{}")
            row: dict[str, Any] = {"held": held}
            for case, extra in (("auto", []), ("all_layers_forced", ["--n-gpu-layers", "999"])):
                child = subprocess.run(
                    [sys.executable, __file__, "--load-once", name, *extra],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                try:
                    row[case] = json.loads(child.stdout.strip().splitlines()[-1])
                except (json.JSONDecodeError, IndexError):
                    row[case] = {"exit_code": child.returncode, "stderr_tail": child.stderr[-800:]}
            out[label] = row
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
    return out


def load_once(name: str, n_gpu_layers: int | None) -> None:
    """Load ``name`` (in a child process, so an abort is reported, not fatal), answer, print one JSON line."""
    from edgeinfer.errors import EdgeInferError

    try:
        model, facts = load(name, n_gpu_layers=n_gpu_layers)
        facts["answer"] = model.complete_chat(
            [{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
        ).text
        model.close()
    except EdgeInferError as exc:
        facts = {"error": type(exc).__name__, "message": str(exc)[:600]}
    print(json.dumps(facts))


# ---- the report -------------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    lines = [
        f"# GPU check ({report['date']}, {report['device']})",
        "",
        f"Mode: {report['mode']}. edgeinfer env: {report['env_summary']}.",
        "",
    ]
    if report.get("build"):
        b = report["build"]
        lines += [
            f"Build: llama-cpp-python {report['llama_cpp_python']} with CUDA (arch {b.get('cuda_arch')}) "
            f"in {b.get('build_s')} s on {b.get('cores')} cores; install {b.get('install_s')} s.",
            "",
        ]
    for s in report["models"]:
        if "error" in s:
            lines += [f"## {s['name']}", "", f"Not run: {s['error']}", ""]
            continue
        ld, sp = s["load"], s["speed"]
        lines += [
            f"## {s['name']}",
            "",
            f"- Choice: {ld['device']}, {ld['n_gpu_layers']} GPU layers ({'; '.join(ld['reasons'])}).",
            f"- Offload: {' | '.join(ld['offload_log'][-3:]) or 'no offload lines logged'}.",
            f"- VRAM used by the load: {ld['vram_used_mib']} MiB.",
            "",
            "| | GPU | CPU | GPU / CPU |",
            "|---|---|---|---|",
        ]
        for key, label in (
            ("prefill_tok_s", "prefill tok/s"),
            ("decode_tok_s", "decode tok/s"),
            ("ttft_ms", "TTFT ms"),
        ):
            lines.append(f"| {label} | {sp[key]['gpu']} | {sp[key]['cpu']} | {sp[key]['ratio']} |")
        lines += [
            "",
            "| streams | tok/s | one by one tok/s | ratio | outputs differing |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['streams']} | {r['tok_s']} | {r['one_by_one_tok_s']} | {r['ratio']} | "
            f"{r['outputs_differing']} |"
            for r in s["batching"]
        ]
        ex = s["exactness"]
        lines += [
            "",
            f"Exactness: reused prefix = cold: {ex['reused_prefix_equals_cold']} "
            f"({ex['reused_tokens']} tokens reused); speculation = plain: {ex['speculation_equals_plain']} "
            f"({ex['speculation_accepted']}/{ex['speculation_drafted']} drafted tokens accepted).",
            "",
        ]
    big = report.get("too_large", {})
    lines += ["## A model larger than the free VRAM", ""]
    if "not run" in big:
        lines.append(f"- not run: {big['not run']}")
    for label, row in big.items():
        if isinstance(row, dict):
            lines.append(
                f"- {label}: auto -> {json.dumps(row.get('auto'))[:400]}; all layers forced -> "
                f"{json.dumps(row.get('all_layers_forced'))[:400]}"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="the CPU rehearsal")
    parser.add_argument("--out", type=Path, default=Path("gpu_kit/out"))
    parser.add_argument("--models-dir", type=Path, help="GGUFs put together from the carried parts")
    parser.add_argument("--build", type=Path, help="build.json written by tools/gpu_check.sh")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--hold-vram-leaving", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load-once", help=argparse.SUPPRESS)
    parser.add_argument("--n-gpu-layers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hold_vram_leaving is not None:
        return hold_vram(args.hold_vram_leaving)
    if args.load_once:
        return load_once(args.load_once, args.n_gpu_layers)

    import edgeinfer as ei
    from edgeinfer.loader import locate_model
    from edgeinfer.lock import ModelLock
    from edgeinfer.sources import cache_path

    started = time.perf_counter()
    lock = ModelLock.load()
    if args.models_dir:  # the carried files go where ei.load looks for them (it checks their sha256)
        for name in MODELS:
            entry = lock.get(name)
            carried = args.models_dir / entry.file
            if carried.exists() and not cache_path(entry).exists():
                cache_path(entry).parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(carried, cache_path(entry))
                except OSError:  # another file system
                    shutil.copyfile(carried, cache_path(entry))
    gpu = nvidia_smi("gpu=name,memory.total,driver_version,compute_cap")
    env = json.loads(
        subprocess.run(
            [sys.executable, "-m", "edgeinfer", "env", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    choice, probe = env["plan"]["choice"], env["probe"]
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "mode": "CPU rehearsal" if args.cpu else "GPU",
        "device": ", ".join(gpu[0]) if gpu else f"{platform.processor() or platform.machine()}, no GPU",
        "llama_cpp_python": env.get("versions", {}).get("llama-cpp-python"),
        "env_summary": (
            f"llama.cpp build backends {', '.join(probe['llama_build_backends'])}, GPU offload "
            f"{probe['llama_gpu_offload']}; chose {choice['device']} with {choice['n_gpu_layers']} GPU "
            f"layers ({'; '.join(choice['reasons'])})"
        ),
        "env": {**env, "probe": {k: v for k, v in probe.items() if k != "cpu_features"}},  # a summary
        "build": json.loads(args.build.read_text()) if args.build and args.build.exists() else None,
        "models": [],
    }
    for name in MODELS:
        try:
            locate_model(name, offline=True)
        except ei.EdgeInferError as exc:
            report["models"].append(
                {"name": name, "error": f"not here ({type(exc).__name__}): carry its parts"}
            )
            continue
        report["models"].append(model_section(name, rounds=args.rounds, gen=args.gen))
    report["too_large"] = too_large(MODELS[0], cpu_rehearsal=args.cpu)
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    print(f"report written to {args.out}/gpu_check.json and gpu_check.md in {report['seconds']} s")


if __name__ == "__main__":
    main()
