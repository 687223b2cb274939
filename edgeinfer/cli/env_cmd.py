"""`edgeinfer env`: this machine, its runtimes, and the backend/device choice for a model and why."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
from typing import Any

from .. import __version__
from ..backends import backend_specs, format_of
from ..device import Artifact, choose, onnx_provider_report
from ..errors import EdgeInferError
from ..loader import cached_probe, faster_cpu_path, locate_model
from ..lock import ModelLock
from ..memory import (
    DEFAULT_N_CTX,
    default_budget,
    describe_fits,
    footprint_of,
    format_size,
    process_rss,
    what_fits,
)
from .options import DEFAULT_CHAT_MODEL

_SHOWN_FEATURES = {"sse3", "ssse3", "avx", "avx2", "fma", "f16c", "avx512", "avx512_vnni", "avx_vnni",
                   "amx_int8", "neon", "dotprod", "i8mm", "sve", "sme"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `env`: the model to plan for, and --json."""
    p = sub.add_parser("env", help="this machine, the backend/device choice and why")
    p.add_argument("model", nargs="?", default=DEFAULT_CHAT_MODEL, help="artifact to plan for")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=env)


def _versions() -> dict[str, str | None]:
    """Versions of edgeinfer, Python and the packages it runs on (None: not installed)."""
    out: dict[str, str | None] = {"edgeinfer": __version__, "python": platform.python_version()}
    for dist in ("llama-cpp-python", "onnxruntime", "gguf", "huggingface-hub", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def _backends(probe: Any) -> list[dict]:
    """The registered backends (plugins included): installed here?, formats read, priority."""
    return [{"name": spec.name, "installed": spec.is_installed(probe), "formats": list(spec.format_names),
             "priority": spec.priority, "install_hint": spec.install_hint} for spec in backend_specs()]


def threads_policy(max_threads: int) -> str:
    """How the thread count is chosen while the model runs (what `edgeinfer env` explains)."""
    return (f"adaptive on the CPU: starts at {max_threads}, times every decode step on the device's shared "
            "compute queue, tries one thread fewer when steps slow down (another program may hold a core) "
            "and a neighbouring count now and then, keeps the faster; --threads N (n_threads=N) pins it")


def env(args: argparse.Namespace) -> int:
    """Print the probe of this machine and the plan for the model (offline: nothing is fetched)."""
    probe = cached_probe()
    plan: dict = {"model": args.model}
    try:
        located = locate_model(args.model, offline=True)
        path, fmt = located.path, format_of(located.path)
        size = path.stat().st_size if path.is_file() else 0
        choice = choose(probe, Artifact(fmt, size))
        if fmt == "gguf":  # the ONNX folder it runs as, where that is faster on this CPU
            path, fmt, choice = faster_cpu_path(located, path, choice, probe)
        plan.update(path=str(path), choice=choice.to_dict(), threads=threads_policy(choice.n_threads))
    except EdgeInferError as exc:
        choice = None
        plan["error"] = str(exc)
    backends = _backends(probe)
    memory = memory_report()
    report = {"versions": _versions(), "probe": probe.to_dict(), "backends": backends, "plan": plan,
              "memory": memory}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    gib = 1024**3
    print(f"edgeinfer {__version__} on Python {platform.python_version()}")
    print(f"OS/arch:   {probe.os} {probe.arch}")
    print(f"CPU:       {probe.physical_cores} physical / {probe.logical_cores} logical cores; "
          f"features: {', '.join(sorted(f for f in probe.cpu_features if f in _SHOWN_FEATURES)) or '?'}")
    print(f"RAM:       {probe.ram_total / gib:.1f} GiB total, {probe.ram_available / gib:.1f} GiB available")
    for i, g in enumerate(probe.gpus):
        print(f"GPU {i}:     {g.name} ({g.api}) {g.vram_free / gib:.1f}/{g.vram_total / gib:.1f} GiB free")
    if not probe.gpus:
        print("GPU:       none found")
    print(f"llama.cpp: {probe.llama_cpp_version or 'not installed'}; build backends "
          f"{', '.join(sorted(probe.llama_build_backends)) or '-'}; GPU offload "
          f"{'yes' if probe.llama_gpu_offload else 'no'}")
    print(f"onnxruntime providers: {', '.join(probe.onnx_providers) or 'not installed'}")
    for name, usable, why in onnx_provider_report(probe):
        print(f"  {'+' if usable else '-'} {name}: {why}")
    print("backends (registered):")
    for row in backends:
        mark, formats = "+" if row["installed"] else "-", ", ".join(row["formats"]) or "-"
        state = "installed" if row["installed"] else f"not installed ({row['install_hint'] or 'no hint'})"
        print(f"  {mark} {row['name']}: reads {formats}; priority {row['priority']}; {state}")
    print(f"\nPlan for {args.model}:")
    if choice is None:
        print(f"  {plan['error']}")
    else:
        print(f"  backend={choice.backend} device={choice.device} gpu_layers={choice.n_gpu_layers} "
              f"threads={choice.n_threads}")
        for reason in choice.reasons:
            print(f"  - {reason}")
        print(f"  - threads: {plan['threads']}")
    print(f"\nMemory: a load's default budget is {format_size(memory['budget_bytes'])} (this process's "
          f"{format_size(memory['process_bytes'])} + 3/4 of the RAM available); what fits, per model:")
    for row in memory["models"]:
        if "fits" not in row:
            print(f"  {row['name']}: {row['note']}")
            continue
        pairs = [(f["sequences"], f["n_ctx"]) for f in row["fits"]]
        fits = describe_fits(pairs) if pairs else "nothing (the budget is smaller than the weights)"
        print(f"  {row['name']}: {fits} (KV {row['kv_bytes_per_token'] / 1e3:.1f} KB per token; "
              f"weights {format_size(row['weights_bytes'])})")
    return 0


def memory_report() -> dict:
    """For each GGUF model in the lock that is on this machine, what fits the default budget."""
    base = process_rss()
    budget = default_budget(base)
    rows = []
    for entry in ModelLock.load().entries.values():
        try:
            path = locate_model(entry.name, offline=True).path
        except EdgeInferError:
            rows.append({"name": entry.name, "note": "not on this machine (edgeinfer pull it first)"})
            continue
        if format_of(path) != "gguf":
            rows.append({"name": entry.name, "note": f"{format_of(path)}: sized by its backend"})
            continue
        fp = footprint_of(path)
        if fp.embedding:
            rows.append({"name": entry.name, "note": "an embedding model: one pass per text"})
            continue
        n_ctx = min(DEFAULT_N_CTX, fp.n_ctx_train)
        fits = what_fits(fp, budget - base, n_ctx)
        rows.append({"name": entry.name, "weights_bytes": fp.weights,
                     "kv_bytes_per_token": fp.kv_bytes_per_token(),
                     "fits": [{"sequences": s, "n_ctx": c} for s, c in fits]})
    return {"budget_bytes": budget, "process_bytes": base, "models": rows}
