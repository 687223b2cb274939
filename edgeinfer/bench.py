"""``edgeinfer bench``: artifacts side by side on this machine (prefill and decode speed, time to first
token, load time, peak memory, file size), each beside the memory-bandwidth bound on its decode speed.

Each artifact runs in its own worker process (its peak RSS is its own, and llama.cpp models in one
process slow each other down); the repeats alternate between artifacts, one computing at a time, so
machine drift hits them alike. Every repeat is a fresh prefill (nothing cached between requests).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .machine_load import LoadWindow

# a long plain text to cut prompts from (any tokenizer: the prompt is its first N tokens)
PROMPT_TEXT = (
    "The history of the lighthouse begins with fires lit on hilltops to guide ships home at night. "
    "Later, towers were built so that the light could be seen from farther away, and keepers lived "
    "beside them to tend the flame through storms and long winters. In the nineteenth century, lenses "
    "made of many glass prisms focused the light into a beam that reached the horizon, and each "
    "lighthouse was given its own pattern of flashes so that sailors could tell them apart. Today most "
    "lights are automatic, powered by electricity or the sun, and watched from offices far away, but "
    "the old towers still stand along the coasts, painted in bands of red and white, and people travel "
    "to see them, climb their stairs and look out over the sea. "
)
BANDWIDTH_BYTES = 256 << 20  # the probe's matrix: far larger than any CPU cache


@dataclass
class Sample:
    prefill_tok_s: float
    ttft_s: float
    decode_tok_s: float
    generated: int


@dataclass
class ArtifactResult:
    artifact: str
    name: str = ""
    format: str = ""
    backend: str = ""
    device: str = ""
    size_bytes: int = 0
    bytes_per_token: int = 0  # weights read for one decoded token (an estimate; see bytes_read_per_token)
    load_s: float = 0.0
    peak_rss_bytes: int = 0
    kv_bytes_per_1k_tokens: int = 0  # KV cache one sequence holds per 1000 tokens
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    def summary(self, key: str) -> dict[str, float] | None:
        values = [getattr(s, key) for s in self.samples]
        if not values:
            return None
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def display_name(artifact: str, name: str) -> str:
    """A models.lock name as it is; a path as its last two parts (an ONNX folder is often "model")."""
    path = Path(artifact)
    return "/".join(path.parts[-2:]) if path.exists() and len(path.parts) > 1 else name


def artifact_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bytes_read_per_token(path: Path) -> int:
    """Weights one decode step reads: every tensor of a GGUF, except a token-embedding table that only
    has rows gathered (when a separate output matrix exists); for other formats, the files' size."""
    if path.is_file() and path.suffix == ".gguf":
        import gguf

        tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors}
        total = sum(tensors.values())
        if "output.weight" in tensors:
            total -= tensors.get("token_embd.weight", 0)
        return total
    return artifact_size(path)


def bandwidth_probe(repeats: int = 5) -> float:
    """Memory read bandwidth in bytes/s: the best of a few float32 matrix-vector products over a matrix
    far larger than the caches (BLAS, all cores) — the ceiling a decode step that reads every weight
    once can approach."""
    rows = BANDWIDTH_BYTES // 4 // 4096
    matrix = np.ones((rows, 4096), dtype=np.float32)
    vector = np.ones(4096, dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matrix @ vector
        best = min(best, time.perf_counter() - start)
    return matrix.nbytes / best


def _prompt_ids(model: Any, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += model.tokenize(PROMPT_TEXT, add_special=not ids)
    return ids[:n]


def worker(artifact: str, options: dict[str, Any], conn: Any) -> None:
    """Load ``artifact``, answer ("ready", facts), then one Sample per "run" message until None."""
    import logging

    logging.getLogger("edgeinfer").setLevel(logging.ERROR)
    from .backends import format_of
    from .kv_options import KVOptions
    from .loader import load, locate_model

    try:
        located = locate_model(artifact, offline=options.get("offline"))
        start = time.perf_counter()
        model = load(artifact, n_threads=options.get("threads"), n_ctx=options["n_ctx"],
                     kv=KVOptions(ram_bytes=0, settle=False), speculation=None,
                     offline=options.get("offline"))
        load_s = time.perf_counter() - start
        prompt = _prompt_ids(model, options["prompt_tokens"])
        ran = Path(model.path)  # what it runs: a models.lock GGUF may run as the ONNX folder made from it
        facts = {"name": display_name(artifact, located.name), "format": format_of(ran),
                 "backend": model.backend.name, "device": model.backend.device,
                 "size_bytes": artifact_size(ran), "bytes_per_token": bytes_read_per_token(ran),
                 "load_s": load_s, "kv_bytes_per_1k_tokens": 1000 * model.backend.kv_bytes_per_token()}
        model.generate(prompt[:16], max_tokens=2, temperature=0)  # warm-up: first-touch of the weights
    except Exception as exc:  # noqa: BLE001 - reported as this artifact's error, the others go on
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", facts))
    while conn.recv() is not None:
        done = model.generate(prompt, max_tokens=options["gen_tokens"], temperature=0)
        s = done.stats
        decode = (s.completion_tokens - 1) / s.decode_s if s.decode_s > 0 and s.completion_tokens > 1 else 0.0
        sample = Sample(prefill_tok_s=s.computed_prompt_tokens / s.prefill_s if s.prefill_s else 0.0,
                        ttft_s=s.ttft_s, decode_tok_s=decode, generated=s.completion_tokens)
        conn.send((sample, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
    model.close()


def run(artifacts: list[str], *, prompt_tokens: int = 256, gen_tokens: int = 64, threads: int | None = None,
        repeats: int = 3, offline: bool | None = None, progress: Any = None) -> dict[str, Any]:
    """Measure ``artifacts`` side by side; returns the results, the bandwidth probe and the settings."""
    options = {"prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "threads": threads,
               "offline": offline, "n_ctx": max(512, prompt_tokens + gen_tokens + 16)}
    say = progress or (lambda message: None)
    window = LoadWindow.start()
    say("probing memory bandwidth")
    bandwidth = bandwidth_probe()
    ctx = mp.get_context("spawn")
    results = [ArtifactResult(a) for a in artifacts]
    live: dict[int, tuple[Any, Any]] = {}
    try:
        for i, artifact in enumerate(artifacts):
            say(f"loading {artifact}")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(artifact, options, child), daemon=True)
            proc.start()
            kind, value = parent.recv()
            if kind == "error":
                results[i].error = value
                proc.join(timeout=10)
                continue
            for key, item in value.items():
                setattr(results[i], key, item)
            live[i] = (proc, parent)
        order = list(live)
        for r in range(repeats):
            say(f"round {r + 1}/{repeats}")
            for i in order[r % max(1, len(order)):] + order[:r % max(1, len(order))]:
                conn = live[i][1]
                conn.send("run")
                sample, rss = conn.recv()
                results[i].samples.append(sample)
                results[i].peak_rss_bytes = rss
    finally:
        for proc, conn in live.values():
            conn.send(None)
            proc.join(timeout=30)
    spreads = {f"{r.name or r.artifact} decode": s["max"] / s["min"] for r in results
               if (s := r.summary("decode_tok_s")) and s["min"] > 0}
    return {"results": [_as_dict(r, bandwidth) for r in results], "bandwidth_bytes_s": bandwidth,
            "settings": {k: v for k, v in options.items() if k != "offline"} | {"repeats": repeats},
            "machine": _machine(), "load": window.report(spreads)}


def _as_dict(result: ArtifactResult, bandwidth: float) -> dict[str, Any]:
    out = asdict(result)
    for key in ("prefill_tok_s", "ttft_s", "decode_tok_s"):
        out[key] = result.summary(key)
    if result.bytes_per_token:
        out["bound_tok_s"] = bandwidth / result.bytes_per_token
        decode = out["decode_tok_s"]
        out["share_of_bound"] = decode["median"] / out["bound_tok_s"] if decode else None
    return out


def _machine() -> dict[str, Any]:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
            cpu = next(names, cpu)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cpus_usable": usable, "platform": platform.platform(),
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _spread(summary: dict[str, float] | None, scale: float = 1.0, digits: int = 1) -> str:
    if not summary:
        return "-"
    m, lo, hi = (summary[k] * scale for k in ("median", "min", "max"))
    return f"{m:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def markdown(data: dict[str, Any]) -> str:
    """The results as a Markdown table: median (min–max) over the repeats."""
    rows = []
    for r in data["results"]:
        if r["error"]:
            rows.append(f"| {r['artifact']} | failed: {r['error']} |" + " |" * 10)
            continue
        share = r.get("share_of_bound")
        rows.append(" | ".join([
            f"| {r['name']}", f"{r['format']} ({r['backend']}/{r['device']})", f"{r['size_bytes'] / 1e6:.1f}",
            f"{r['load_s']:.2f}", f"{r['peak_rss_bytes'] / 1e6:.0f}",
            f"{r.get('kv_bytes_per_1k_tokens', 0) / 1e6:.1f}" if r.get("kv_bytes_per_1k_tokens") else "-",
            _spread(r["prefill_tok_s"]),
            _spread(r["ttft_s"], 1000, 0), _spread(r["decode_tok_s"]),
            f"{r['bytes_per_token'] / 1e6:.0f} MB → {r['bound_tok_s']:.0f}" if r.get("bound_tok_s") else "-",
            f"{100 * share:.0f}% |" if share else "- |"]))
    s = data["settings"]
    warning = (data.get("load") or {}).get("warning")
    head = (f"**Warning: {warning}.**\n\n" if warning else "") + (
        "| artifact | format | size MB | load s | peak RSS MB | KV MB per 1k tokens | prefill tok/s "
        "| TTFT ms | decode tok/s | read per token → bound tok/s | decode / bound |\n|" + "---|" * 11)
    return "\n".join([
        head, *rows, "",
        f"Median (min–max) of {s['repeats']} repeat{'s' * (s['repeats'] != 1)}, alternating between "
        "artifacts; prompt "
        f"{s['prompt_tokens']} tokens (a fresh prefill each time), {s['gen_tokens']} greedy tokens, threads "
        f"{s['threads'] or 'auto'}. Bound: the memory bandwidth probe "
        f"({data['bandwidth_bytes_s'] / 1e9:.1f} GB/s, a BLAS matrix-vector product over "
        f"{BANDWIDTH_BYTES >> 20} MB) divided by the weights one decoded token reads. "
        f"Machine: {data['machine']['cpu']}, {data['machine']['cpus_usable']} CPUs usable.",
    ]) + "\n"


def plot(data: dict[str, Any], path: str | Path) -> Path:
    """A chart of the results (matplotlib): decode speed beside its bound, prefill, TTFT, memory."""
    try:
        import matplotlib
    except ImportError as exc:
        from .errors import InvalidRequestError

        raise InvalidRequestError("--plot needs matplotlib: pip install 'edgeinfer[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in data["results"] if not r["error"]]
    names = [r["name"] for r in ok]
    x = np.arange(len(ok))
    fig, axes = plt.subplots(1, 4, figsize=(4 + 3.2 * max(2, len(ok)), 4.6))

    def bars(ax: Any, key: str, title: str, scale: float = 1.0, color: str = "tab:blue") -> None:
        med = [r[key]["median"] * scale if r[key] else 0 for r in ok]
        err = [[m - r[key]["min"] * scale if r[key] else 0 for m, r in zip(med, ok, strict=True)],
               [r[key]["max"] * scale - m if r[key] else 0 for m, r in zip(med, ok, strict=True)]]
        ax.bar(x, med, yerr=err, capsize=4, color=color, width=0.6)
        for xi, m in zip(x, med, strict=True):
            ax.annotate(f"{m:.0f}", (xi, m), ha="center", va="bottom", fontsize=8, xytext=(0, 3),
                        textcoords="offset points")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)

    bars(axes[0], "decode_tok_s", "decode tok/s (bar: median, line: min–max)")
    bounds = [r.get("bound_tok_s") or 0 for r in ok]
    axes[0].scatter(x, bounds, marker="_", s=900, color="tab:red", zorder=3, label="bandwidth bound")
    axes[0].set_ylim(0, max(bounds + [1]) * 1.25)
    axes[0].legend(fontsize=8, loc="upper center", ncol=1, framealpha=0.9)
    bars(axes[1], "prefill_tok_s", "prefill tok/s", color="tab:green")
    bars(axes[2], "ttft_s", "time to first token (ms)", scale=1000, color="tab:orange")
    rss, size = [r["peak_rss_bytes"] / 1e6 for r in ok], [r["size_bytes"] / 1e6 for r in ok]
    axes[3].bar(x, rss, width=0.35, label="peak RSS", color="tab:purple")
    axes[3].bar(x + 0.35, size, width=0.35, label="file size", color="tab:gray")
    axes[3].set_xticks(x + 0.175, names, rotation=20, ha="right", fontsize=8)
    axes[3].set_title("memory and size (MB)", fontsize=10)
    axes[3].legend(fontsize=8)
    axes[3].grid(axis="y", alpha=0.3)
    s = data["settings"]
    fig.suptitle(f"edgeinfer bench: {s['prompt_tokens']}-token prompt, {s['gen_tokens']} tokens, "
                 f"{s['repeats']} repeat{'s' * (s['repeats'] != 1)}, {data['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
