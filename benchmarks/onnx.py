"""ONNX on CPU side by side: edgeinfer's ONNX artifacts, onnxruntime-genai (builder + runtime), llama.cpp.

One run, one model: SmolLM2-135M-Instruct rebuilt as an HF float32 checkpoint from its bundled GGUF
(``tests/hf_fixtures.py``; cached). Variants:

  onnx-int4 / -int4-fast / -int8 / -fp32  ``edgeinfer_converters.convert(format="onnx")``, run by edgeinfer
  genai-int4                         onnxruntime-genai's model builder (``-p int4 -e cpu``, its defaults)
                                     and its own runtime (og.Generator), in a separate venv
  gguf-Q4_K_M / gguf-Q8_0            ``edgeinfer_converters.convert(format="gguf")``, run by edgeinfer
                                     (llama.cpp)

Quality: one reference, the F32 GGUF's logits (llama.cpp) on the first 1024 tokens of
``quality_text()``, cut into 512-token windows each prefilled from an empty cache; every variant's
logits on the same token ids and windows (GGUF: ``gguf_logits``; edgeinfer ONNX: ``onnx_logits``;
genai: its model.onnx in a plain onnxruntime session of its venv) go through ``compare_logits``:
mean KL(F32 || variant), top-1 agreement, perplexity. Each tokenizer's ids of the text are checked
against the reference's.

Speed: the same prompt ids (the text's first ``--prompt-tokens`` tokens) and greedy decoding of
``--tokens`` tokens, same n_ctx and threads; each variant is loaded once in a process of its own (a
worker child answering requests on stdin), and they run round by round, the order rotating (ABCDEF,
BCDEFA, ...) after one untimed warm-up each. Prefill tok/s = prompt tokens /
(request start -> first token sampled), from a cold cache (edgeinfer: KV cache kept off and reset,
checked by ``cached_tokens == 0``; genai: a new Generator per request); decode tok/s = (tokens - 1) /
(first -> last token sampled). Medians over rounds and paired per-round ratios vs genai-int4 and vs
gguf-Q4_K_M. The machine may be shared: from /proc, each run first waits (``--quiet-wait``) until other
processes keep at most ``--max-foreign`` cores busy, and is redone (``--retries``) if they kept more
busy during it; every sample records that load.

onnxruntime-genai is installed only in its own venv (created once, ~1.3 GB with CPU torch for its
builder): ``<cache>/ortgenai-venv``, with the project's onnxruntime version so both ONNX runtimes are
the same build. Artifacts are cached under ``<cache>`` (default ~/.cache/edgeinfer-bench), keyed by a
digest of what built them (converter sources and library versions; genai version and builder
arguments); ``--rebuild`` makes them again.

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.onnx [--rounds 3] [--tokens 64] [--skip-genai]
Writes benchmarks/results/onnx.json and onnx.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    fmt,
    machine_info,
    markdown_table,
    median_summary,
    paired_ratios,
    quiet_logging,
    ratio,
    write_report,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCH_CACHE = Path.home() / ".cache" / "edgeinfer-bench"
WORKER = HERE / "ortgenai_worker.py"
GENAI_VERSION = "0.18.0"
TORCH_PIN = "torch==2.13.0"  # the CPU wheel pip finds locally; a bare `torch` pulls the CUDA build (GBs)
ONNX_QUANTS = ("int4", "int4-fast", "int8", "fp32")
GGUF_QUANTS = ("Q4_K_M", "Q8_0")
GENAI = "genai-int4"
Q4KM = "gguf-Q4_K_M"
EI_INT4 = "onnx-int4"
EI_INT4_FAST = "onnx-int4-fast"
WINDOW = 512  # quality windows (tokens), as edgeinfer_converters.quality uses
QUALITY_TOKENS = 1024
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


# --- caching -------------------------------------------------------------------------------------
def digest(files: Iterable[Path], *extra: object) -> str:
    """sha256 (16 hex digits) of the files' paths relative to the repo and bytes, plus ``extra``."""
    h = hashlib.sha256(json.dumps([str(x) for x in extra]).encode())
    for path in sorted(files):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def dist_version(name: str) -> str | None:
    """Installed version of a distribution in this interpreter, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def converter_key(fmt_name: str, source: Path) -> str:
    """What an edgeinfer artifact depends on: converter sources, the libraries used, the checkpoint."""
    conv = ROOT / "converters"
    files = [*conv.glob("*.py"), *(conv / f"to_{fmt_name}").rglob("*.py"), *conv.glob("data/*.txt")]
    libs = ("onnx", "onnxruntime", "numpy") if fmt_name == "onnx" else ("llama_cpp_python", "gguf", "numpy")
    return digest(files, source.name, *(f"{lib}={dist_version(lib)}" for lib in libs))


def cached(root: Path, name: str, key: str, build: Callable[[Path], None], rebuild: bool) -> Path:
    """``root/name-key``, built by ``build(tmp)`` into a temp folder then renamed (never half written);
    older keys of the same name are removed once the new one is in place."""
    target = root / f"{name}-{key}"
    if target.is_dir() and not rebuild:
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        build(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in root.glob(f"{name}-*"):
        if stale != target and stale.is_dir() and len(stale.name) == len(target.name):
            shutil.rmtree(stale, ignore_errors=True)
    return target


def model_bytes(path: Path) -> int:
    """Bytes of the model itself: the GGUF file, or an ONNX folder's graph and weight files."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir()
               if p.is_file() and (p.suffix in (".onnx", ".data") or p.name.endswith(".onnx_data")))


def folder_bytes(path: Path) -> int:
    """Bytes of every file of an artifact (tokenizer and configs included)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


# --- edgeinfer artifacts -------------------------------------------------------------------------
def edgeinfer_artifacts(src: Path, root: Path, threads: int, rebuild: bool) -> dict[str, Path]:
    """The F32 reference and the GGUF and ONNX variants, converted by ``edgeinfer_converters.convert``
    (cached)."""
    from edgeinfer_converters import convert

    out: dict[str, Path] = {}
    gguf_key, onnx_key = converter_key("gguf", src), converter_key("onnx", src)
    for quant in ("F32", *GGUF_QUANTS):
        def build_gguf(tmp: Path, quant: str = quant) -> None:
            convert(src, tmp / "model.gguf", quant=quant, quality=False, force=True, n_threads=threads)

        t = time.perf_counter()
        folder = cached(root, f"smollm2-gguf-{quant}", gguf_key, build_gguf, rebuild)
        out[f"gguf-{quant}"] = folder / "model.gguf"
        print(f"  gguf {quant}: {folder} ({time.perf_counter() - t:.1f} s)", flush=True)
    for quant in ONNX_QUANTS:
        def build_onnx(tmp: Path, quant: str = quant) -> None:
            convert(src, tmp / "model", format="onnx", quant=quant, quality=False, force=True,
                    n_threads=threads)

        t = time.perf_counter()
        folder = cached(root, f"smollm2-onnx-{quant}", onnx_key, build_onnx, rebuild)
        out[f"onnx-{quant}"] = folder / "model"
        print(f"  onnx {quant}: {folder} ({time.perf_counter() - t:.1f} s)", flush=True)
    return out


# --- onnxruntime-genai (its own venv) ------------------------------------------------------------
def genai_requirements(version: str) -> list[str]:
    """What the genai venv installs: genai, and its builder's needs at this project's versions."""
    pins = [f"onnxruntime-genai=={version}", TORCH_PIN]
    for dist in ("onnxruntime", "onnx", "onnx-ir", "transformers"):
        have = dist_version(dist)
        pins.append(f"{dist}=={have}" if have else dist)
    return [*pins, "tqdm"]


def genai_python(root: Path, version: str) -> Path:
    """The genai venv's Python; the venv (``root/ortgenai-venv``) is made again when the pins change."""
    venv = root / "ortgenai-venv"
    python = venv / "bin" / "python"
    stamp = venv / "edgeinfer-requirements.json"
    wanted = genai_requirements(version)
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted and python.exists():
        return python
    print(f"  creating {venv}: pip install {' '.join(wanted)} (a few minutes, once)", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"pip install in {venv} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    stamp.write_text(json.dumps(wanted))
    return python


def genai_versions(python: Path) -> dict[str, str | None]:
    """Versions of the genai venv's packages."""
    code = ("import importlib.metadata as m, json\n"
            "def v(d):\n    try:\n        return m.version(d)\n"
            "    except m.PackageNotFoundError:\n        return None\n"
            "print(json.dumps({d: v(d) for d in ('onnxruntime-genai', 'onnxruntime', 'torch', 'transformers',"
            " 'onnx', 'onnx-ir', 'numpy')}))")
    proc = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def genai_model(src: Path, root: Path, python: Path, rebuild: bool,
                extra: Sequence[str] = ()) -> tuple[Path, dict[str, Any]]:
    """onnxruntime-genai's int4 CPU model of ``src`` from its own builder (cached), and how it was built."""
    args = ["-p", "int4", "-e", "cpu", *(["--extra_options", *extra] if extra else [])]
    versions = genai_versions(python)
    key = digest([], src.name, args, sorted(versions.items()))  # every package of the venv
    info: dict[str, Any] = {"builder_args": args, "versions": versions, "build_s": None}

    def build(tmp: Path) -> None:
        cmd = [str(python), "-I", "-m", "onnxruntime_genai.models.builder", "-i", str(src),
               "-o", str(tmp / "model"), *args, "-c", str(tmp / "hf-cache")]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True)
        info["build_s"] = time.perf_counter() - t
        (tmp / "builder.log").write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr[-20000:]}")
        if proc.returncode or not (tmp / "model" / "genai_config.json").is_file():
            raise RuntimeError(f"onnxruntime-genai's builder failed ({proc.returncode}):\n"
                               f"{proc.stderr[-4000:]}")
        shutil.rmtree(tmp / "hf-cache", ignore_errors=True)

    folder = cached(root, "smollm2-genai-int4", key, build, rebuild)
    info["folder"] = str(folder / "model")
    return folder / "model", info


def genai_worker(python: Path, *args: str) -> None:
    """Run one worker command in the genai venv (isolated: this repo is not on its path)."""
    proc = subprocess.run([str(python), "-I", str(WORKER), *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ortgenai_worker {args[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


REPLY = "@@ "  # marks the workers' protocol lines on stdout (anything else there is ignored)


class Worker:
    """One variant loaded once in its own child process; one greedy completion per request.

    Every variant runs in a process of its own, as one model per app would: two llama.cpp models in one
    process slow each other down (libgomp throttles its spinning once it manages more threads than
    there are cores), and a separate process is the only way to run onnxruntime-genai anyway."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=env)
        self.ready = self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        self.log.seek(0)
        raise RuntimeError(f"a benchmark worker exited ({self.proc.wait()}):\n{self.log.read()[-4000:]}")

    def run(self, prompt: Sequence[int], tokens: int, n_ctx: int) -> dict[str, Any]:
        """Timings of one cold greedy completion; rates computed as edgeinfer's Stats computes them."""
        assert self.proc.stdin is not None
        request = {"prompt": list(prompt), "tokens": tokens, "max_length": n_ctx}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        r = self._reply()
        steps, computed = r["completion_tokens"] - 1, r["prompt_tokens"] - r["cached_tokens"]
        r["prefill_tok_s"] = computed / r["prefill_s"] if r["prefill_s"] > 0 else 0.0
        r["decode_tok_s"] = steps / r["decode_s"] if steps > 0 and r["decode_s"] > 0 else 0.0
        return r

    def close(self) -> None:
        """Stop the child."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def serve_edgeinfer(path: Path, threads: int, n_ctx: int) -> None:
    """Worker side for an edgeinfer artifact: load it, then answer request lines on stdin (stdout)."""
    import edgeinfer as ei

    quiet_logging()
    model = ei.load(path, n_ctx=n_ctx, n_threads=threads, max_sequences=1,
                    kv=ei.KVOptions(ram_bytes=0, settle=False), speculation=None)
    print(REPLY + json.dumps({"ready": True}), flush=True)
    try:
        for line in sys.stdin:
            if not line.strip():
                break
            request = json.loads(line)
            model.engine.reset()  # nothing reused: a cold prefill every time
            done = model.generate([int(t) for t in request["prompt"]], max_tokens=int(request["tokens"]),
                                  temperature=0)
            s = done.stats
            print(REPLY + json.dumps({"prompt_tokens": s.prompt_tokens, "cached_tokens": s.cached_tokens,
                                      "completion_tokens": s.completion_tokens, "prefill_s": s.prefill_s,
                                      "decode_s": s.decode_s, "tokens": list(done.tokens)}), flush=True)
    finally:
        model.close()


def worker_for(key: str, path: Path, threads: int, n_ctx: int, genai_py: Path | None) -> Worker:
    """The child process that runs one variant."""
    if key == GENAI:
        assert genai_py is not None
        return Worker([str(genai_py), "-I", str(WORKER), "serve", str(path), str(threads)])
    return Worker([sys.executable, "-m", "benchmarks.onnx", "--serve-variant", str(path),
                   "--threads", str(threads), "--n-ctx", str(n_ctx)])


# --- quality -------------------------------------------------------------------------------------
def reference_tokens(f32: Path, threads: int) -> list[int]:
    """The quality text's first tokens, as edgeinfer_converters.quality tokenizes them (the F32 GGUF,
    llama.cpp)."""
    from edgeinfer_converters.quality import ReferenceScorer

    with ReferenceScorer(f32, max_tokens=QUALITY_TOKENS, n_ctx=WINDOW, n_threads=threads) as ref:
        return list(ref.tokens)


def variant_logits(key: str, path: Path, tokens: list[int], threads: int,
                   genai_py: Path | None) -> np.ndarray:
    """Every position's logits of ``tokens`` (windows of WINDOW from an empty cache) from one variant."""
    if key.startswith("gguf-"):
        from edgeinfer_converters.quality import gguf_logits

        return gguf_logits(path, tokens, n_ctx=WINDOW, n_threads=threads)
    if key.startswith("onnx-"):
        from edgeinfer_converters.to_onnx.quality import onnx_logits

        return np.concatenate(list(onnx_logits(path, tokens, window=WINDOW, n_threads=threads)))
    assert genai_py is not None
    with tempfile.TemporaryDirectory(prefix="ei-onnx-bench-") as tmp:
        ids, out = Path(tmp) / "ids.npy", Path(tmp) / "logits.npy"
        np.save(ids, np.asarray(tokens, dtype=np.int64))
        genai_worker(genai_py, "logits", str(path), str(ids), str(WINDOW), str(threads), str(out))
        return np.load(out)


def tokenization_check(tokens: list[int], paths: dict[str, Path], genai_py: Path | None) -> dict[str, bool]:
    """Whether each runtime's own tokenizer gives the reference's ids for the quality text."""
    from edgeinfer_converters.quality import quality_text
    from edgeinfer_converters.to_onnx.quality import tokenize_text

    text = quality_text()
    n = len(tokens)
    checks = {"edgeinfer-onnx": tokenize_text(paths["onnx-fp32"], text)[:n] == tokens}
    if genai_py is not None and GENAI in paths:
        with tempfile.TemporaryDirectory(prefix="ei-onnx-bench-") as tmp:
            text_file, out = Path(tmp) / "text.txt", Path(tmp) / "ids.json"
            text_file.write_text(text, encoding="utf-8")
            genai_worker(genai_py, "tokenize", str(paths[GENAI]), str(text_file), str(out))
            checks["onnxruntime-genai"] = json.loads(out.read_text())[:n] == tokens
    return checks


def measure_quality(tokens: list[int], paths: dict[str, Path], threads: int,
                    genai_py: Path | None) -> dict[str, dict[str, Any]]:
    """Metrics of every variant vs the F32 GGUF's logits, all on the same token ids and windows."""
    from edgeinfer_converters.quality import compare_logits

    reference = variant_logits("gguf-F32", paths["gguf-F32"], tokens, threads, None)
    targets = np.asarray(tokens[1:], dtype=np.int64)
    n = len(targets)  # the last position has no next token
    out: dict[str, dict[str, Any]] = {}
    for key, path in paths.items():
        if key == "gguf-F32":
            continue
        t = time.perf_counter()
        logits = variant_logits(key, path, tokens, threads, genai_py)
        out[key] = compare_logits(reference[:n], logits[:n], targets).to_dict()
        del logits
        print(f"  {key}: KL {out[key]['mean_kl']:.4f}, top-1 {out[key]['top1_agreement']:.3f} "
              f"({time.perf_counter() - t:.1f} s)", flush=True)
    return out


# --- speed ---------------------------------------------------------------------------------------
def wait_quiet(pids: Sequence[int], max_foreign: float, timeout: float) -> float:
    """Wait (at most ``timeout`` s) until other processes keep at most ``max_foreign`` cores busy over
    half a second; return the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        with CpuWatch(pids) as watch:
            time.sleep(0.5)
        if watch.foreign_cores is None or watch.foreign_cores <= max_foreign:
            break
    return time.perf_counter() - start


def _busy_ticks() -> int:
    """Clock ticks the whole machine spent busy (stolen by the hypervisor included), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, handle.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal


def _process_ticks(pid: int) -> int:
    """Clock ticks (user + system, all threads) of one process."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class CpuWatch:
    """Cores kept busy by other processes during a block (``foreign_cores``; None where /proc is missing).

    The machine is shared: a run that other work slowed down is measured again (``--max-foreign``)."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.foreign_cores: float | None = None
        self._start: tuple[float, int, int] | None = None

    def _snapshot(self) -> tuple[float, int, int]:
        return time.perf_counter(), _busy_ticks(), sum(_process_ticks(p) for p in self.pids)

    def __enter__(self) -> CpuWatch:
        try:
            self._start = self._snapshot()
        except (OSError, ValueError):
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is None:
            return
        try:
            end = self._snapshot()
        except (OSError, ValueError):
            return
        wall, busy, ours = (b - a for a, b in zip(self._start, end, strict=True))
        self.foreign_cores = max(0.0, (busy - ours) / os.sysconf("SC_CLK_TCK") / wall) if wall > 0 else None


def measure_speed(paths: dict[str, Path], prompt: list[int], args: argparse.Namespace,
                  genai_py: Path | None) -> dict[str, dict[str, Any]]:
    """Prefill and decode tok/s of every variant, interleaved round by round (order rotating)."""
    n_ctx = max(512, len(prompt) + args.tokens + 1)
    names = [k for k in paths if k != "gguf-F32"]
    runners: dict[str, Worker] = {}
    try:
        for key in names:
            runners[key] = worker_for(key, paths[key], args.threads, n_ctx, genai_py)
        first: dict[str, list[int]] = {}
        for key in names:  # warm-up, untimed; its greedy tokens are compared below
            first[key] = runners[key].run(prompt, args.tokens, n_ctx)["tokens"]
        samples: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
        pids = [os.getpid(), *(r.proc.pid for r in runners.values())]
        for rnd in range(args.rounds):
            shift = rnd % len(names)
            for key in names[shift:] + names[:shift]:
                for attempt in range(1 + args.retries):
                    time.sleep(0.1)  # the previous runtime's spinning threads go idle
                    wait_quiet(pids, args.max_foreign, args.quiet_wait)
                    with CpuWatch(pids) as watch:
                        run = runners[key].run(prompt, args.tokens, n_ctx)
                    run.update(foreign_cores=watch.foreign_cores, attempts=attempt + 1)
                    if watch.foreign_cores is None or watch.foreign_cores <= args.max_foreign:
                        break
                run.pop("tokens")
                if run["cached_tokens"]:
                    raise RuntimeError(f"{key}: {run['cached_tokens']} prompt tokens came from a cache")
                samples[key].append(run)
                print(f"  round {rnd + 1} {key}: decode {run['decode_tok_s']:.1f} tok/s, prefill "
                      f"{run['prefill_tok_s']:.1f} tok/s ({run['completion_tokens']} tokens; others used "
                      f"{fmt(run['foreign_cores'], 2)} cores; try {run['attempts']})", flush=True)
    finally:
        for runner in runners.values():
            runner.close()
    ref_tokens = first.get("onnx-fp32", [])
    out: dict[str, dict[str, Any]] = {}
    for key in names:
        n_common = min(len(first[key]), len(ref_tokens))
        match = next((i for i in range(n_common) if first[key][i] != ref_tokens[i]), n_common)
        out[key] = {
            "samples": samples[key],
            "decode_tok_s": median_summary([s["decode_tok_s"] for s in samples[key]]),
            "prefill_tok_s": median_summary([s["prefill_tok_s"] for s in samples[key]]),
            "completion_tokens": min(s["completion_tokens"] for s in samples[key]),
            "contended_samples": sum(1 for s in samples[key] if (s["foreign_cores"] or 0) > args.max_foreign),
            "greedy_prefix_match_fp32": match,
        }
    for base in (GENAI, Q4KM):
        if base not in samples:
            continue
        for key in names:
            for metric in ("decode_tok_s", "prefill_tok_s"):
                out[key][f"{metric}_vs_{base}"] = paired_ratios(
                    [s[metric] for s in samples[key]], [s[metric] for s in samples[base]])
    return out


# --- report --------------------------------------------------------------------------------------
LABELS = {
    "onnx-int4": ("edgeinfer ONNX int4", "edgeinfer onnx (onnxruntime)"),
    "onnx-int4-fast": ("edgeinfer ONNX int4-fast", "edgeinfer onnx (onnxruntime)"),
    "onnx-int8": ("edgeinfer ONNX int8", "edgeinfer onnx (onnxruntime)"),
    "onnx-fp32": ("edgeinfer ONNX fp32", "edgeinfer onnx (onnxruntime)"),
    GENAI: ("onnxruntime-genai int4 (its builder)", "onnxruntime-genai"),
    "gguf-Q4_K_M": ("edgeinfer GGUF Q4_K_M", "edgeinfer llama.cpp"),
    "gguf-Q8_0": ("edgeinfer GGUF Q8_0", "edgeinfer llama.cpp"),
    "gguf-F32": ("edgeinfer GGUF F32 (reference)", "-"),
}


def _median(d: dict[str, Any] | None) -> float | None:
    return d["median"] if d else None


def markdown(data: dict[str, Any], args: argparse.Namespace) -> str:
    """The report's Markdown: the side-by-side table and the target ratios."""
    rows = []
    for key, v in data["variants"].items():
        q, s = v.get("quality") or {}, v.get("speed") or {}
        rows.append([LABELS[key][0], fmt(v["size_mb"], 1), fmt(_median(s.get("decode_tok_s")), 1),
                     fmt((s.get("decode_tok_s") or {}).get("max"), 1),
                     fmt(_median(s.get("prefill_tok_s")), 1),
                     fmt(_median(s.get(f"decode_tok_s_vs_{GENAI}")), 2),
                     fmt(_median(s.get(f"decode_tok_s_vs_{Q4KM}")), 2),
                     fmt(q.get("mean_kl"), 4), fmt(q.get("top1_agreement"), 3),
                     fmt(q.get("ppl_candidate"), 2),
                     s.get("greedy_prefix_match_fp32", "-")])
    m = data["machine"]
    speeds = [v["speed"] for v in data["variants"].values() if v.get("speed")]
    contended = sum(s["contended_samples"] for s in speeds)
    total = sum(len(s["samples"]) for s in speeds)
    gv = data.get("genai", {}).get("versions", {})
    md = [
        "# ONNX side by side (SmolLM2-135M-Instruct, CPU)", "",
        f"{m['cpu_model']}, {m['cpu_affinity']} cores usable (load average {m['loadavg_before_speed'][0]} "
        f"before, {m['loadavg'][0]} after the speed runs), {args.threads} threads per runtime; "
        f"{args.rounds} rounds, order rotating; prompt {data['prompt_tokens']} tokens, greedy "
        f"{args.tokens} tokens, n_ctx {data['n_ctx']}. onnxruntime {data['versions']['onnxruntime']} "
        f"(edgeinfer), onnxruntime-genai {gv.get('onnxruntime-genai', '-')} with onnxruntime "
        f"{gv.get('onnxruntime', '-')} (its venv); genai's builder: "
        f"`{' '.join(data.get('genai', {}).get('builder_args', ['-']))}`.", "",
        markdown_table(
            ["variant", "size MB", "decode tok/s", "best", "prefill tok/s", "decode / genai",
             "decode / Q4_K_M", "mean KL", "top-1", "PPL", f"greedy = fp32 (of {args.tokens})"], rows),
        "",
        f"Quality: vs the F32 GGUF's logits on the first {data['quality_tokens']} tokens of the shipped "
        f"text ({data['quality_positions']} positions, {WINDOW}-token windows); reference PPL "
        f"{fmt(data['reference_ppl'], 2)}. Same ids for every variant; each runtime's own tokenizer gives "
        "them: " + ", ".join(f"{k} {'yes' if ok else '**no**'}" for k, ok in data["tokenization"].items())
        + ".",
        "Size: model files only (GGUF file; ONNX graph + weights, without tokenizer/config). Speeds: medians "
        "over rounds (best: the fastest round); ratios: median of per-round ratios. Shared machine: each run "
        f"waits for other processes to use <= {args.max_foreign} cores and is redone (up to {args.retries}x) "
        f"if they used more during it; runs still contended: {contended} of {total}.", "",
        "## Target: edgeinfer int4 decodes >= 1.0x onnxruntime-genai int4, with KL <= llama.cpp Q4_K_M", "",
        *(line for key, t in data["target"].items() for line in (
            f"- **{LABELS[key][0]}**: decode / genai int4 **{fmt(t['decode_ratio_vs_genai'], 2)}x** "
            f"({fmt(t['decode_tok_s'], 1)} vs {fmt(t['genai_decode_tok_s'], 1)} tok/s); mean KL "
            f"**{fmt(t['kl'], 4)}** vs Q4_K_M {fmt(t['q4_k_m_kl'], 4)} ({fmt(t['kl_ratio_vs_q4_k_m'], 2)}x); "
            f"met: **{t['met']}**",)),
        "",
        f"Run: `EDGEINFER_HOME=/tmp/eihome python -m benchmarks.onnx --rounds {args.rounds} "
        f"--tokens {args.tokens}"
        f"{' --skip-genai' if args.skip_genai else ''}`",
    ]
    return "\n".join(md) + "\n"


def target_check(variants: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
    """The issue's target for one edgeinfer int4 variant: decode >= 1.0x genai int4 (paired per-round
    ratio) with mean KL <= llama.cpp Q4_K_M's."""
    mine, genai, q4 = variants[key], variants.get(GENAI), variants[Q4KM]
    decode_ratio = _median(mine["speed"].get(f"decode_tok_s_vs_{GENAI}")) if genai else None
    kl, q4_kl = mine["quality"]["mean_kl"], q4["quality"]["mean_kl"]
    return {
        "decode_ratio_vs_genai": decode_ratio,
        "decode_tok_s": _median(mine["speed"]["decode_tok_s"]),
        "genai_decode_tok_s": _median(genai["speed"]["decode_tok_s"]) if genai else None,
        "kl": kl, "q4_k_m_kl": q4_kl, "kl_ratio_vs_q4_k_m": ratio(kl, q4_kl),
        "met": None if decode_ratio is None else bool(decode_ratio >= 1.0 and kl <= q4_kl),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Build (or reuse) every artifact, measure quality and speed, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens per completion")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="prompt length for prefill")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-genai", action="store_true", help="leave onnxruntime-genai out")
    parser.add_argument("--genai-version", default=GENAI_VERSION)
    parser.add_argument("--genai-extra-options", nargs="*", default=[], metavar="KEY=VALUE",
                        help="passed to genai's builder as --extra_options (default: none, its defaults)")
    parser.add_argument("--cache-dir", type=Path, default=BENCH_CACHE, help="venv and artifacts")
    parser.add_argument("--rebuild", action="store_true", help="convert/build every artifact again")
    parser.add_argument("--max-foreign", type=float, default=0.25,
                        help="retry a run during which other processes kept more cores than this busy")
    parser.add_argument("--retries", type=int, default=2, help="extra attempts of a contended run")
    parser.add_argument("--serve-variant", type=Path, help=argparse.SUPPRESS)  # worker mode
    parser.add_argument("--n-ctx", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument("--quiet-wait", type=float, default=20.0,
                        help="before each run, wait at most this many seconds for other processes to calm")
    args = parser.parse_args(argv)
    if args.serve_variant:
        serve_edgeinfer(args.serve_variant, args.threads, args.n_ctx)
        return {}
    quiet_logging()
    from tests.hf_fixtures import rebuilt_checkpoint

    src = rebuilt_checkpoint("smollm2")
    artifacts = args.cache_dir / "onnx-bench"
    print(f"source {src}\nartifacts (cache {artifacts})", flush=True)
    paths = edgeinfer_artifacts(src, artifacts, args.threads, args.rebuild)
    genai_py: Path | None = None
    genai_info: dict[str, Any] = {}
    if not args.skip_genai:
        genai_py = genai_python(args.cache_dir, args.genai_version)
        paths[GENAI], genai_info = genai_model(src, artifacts, genai_py, args.rebuild,
                                               args.genai_extra_options)
        genai_info["venv"] = str(genai_py.parent.parent)
        print(f"  genai int4: {paths[GENAI]} (genai {genai_info['versions']['onnxruntime-genai']}, "
              f"onnxruntime {genai_info['versions']['onnxruntime']})", flush=True)
    order = ["onnx-int4", EI_INT4_FAST, "onnx-int8", "onnx-fp32", GENAI, *(f"gguf-{q}" for q in GGUF_QUANTS),
             "gguf-F32"]
    paths = {k: paths[k] for k in order if k in paths}

    print("quality (vs the F32 GGUF)", flush=True)
    tokens = reference_tokens(paths["gguf-F32"], args.threads)
    tokenization = tokenization_check(tokens, paths, genai_py)
    quality = measure_quality(tokens, paths, args.threads, genai_py)

    print("speed", flush=True)
    prompt = [int(t) for t in tokens[:args.prompt_tokens]]
    load_before = [round(x, 2) for x in os.getloadavg()]  # a shared machine: other work shows here
    speed = measure_speed(paths, prompt, args, genai_py)

    variants: dict[str, dict[str, Any]] = {}
    for key, path in paths.items():
        variants[key] = {"label": LABELS[key][0], "runtime": LABELS[key][1], "path": str(path),
                         "size_mb": model_bytes(path) / 1e6, "files_mb": folder_bytes(path) / 1e6,
                         "quality": quality.get(key), "speed": speed.get(key)}
    target = {key: target_check(variants, key) for key in (EI_INT4, EI_INT4_FAST)}
    any_quality = next(iter(quality.values()))
    data = {
        "machine": {**machine_info(), "loadavg_before_speed": load_before},
        "versions": {d: dist_version(d) for d in ("onnxruntime", "onnx", "llama_cpp_python", "numpy")},
        "source": f"SmolLM2-135M-Instruct rebuilt as HF float32 ({src})",
        "rounds": args.rounds, "tokens": args.tokens, "threads": args.threads,
        "prompt_tokens": len(prompt), "n_ctx": max(512, len(prompt) + args.tokens + 1),
        "quality_tokens": len(tokens), "quality_positions": any_quality["n_tokens"],
        "reference_ppl": any_quality["ppl_reference"], "tokenization": tokenization,
        "genai": genai_info, "variants": variants, "target": target,
    }
    md = markdown(data, args)
    json_path, md_path = write_report("onnx", data, md)
    print(md)
    print(f"wrote {json_path} and {md_path}")
    return data


if __name__ == "__main__":
    main()
