"""RAM budgets: peak resident memory and speed before / after sizing llama.cpp models to a budget.

"before" is a checkout of the tree before the budget and lazily allocated KV sequences (``--before DIR``,
default /tmp/ei-before); "after" is this tree. Every variant runs in its own fresh process; inside a round
the variants alternate, their order rotated each round; the report gives medians and the median of
per-round ratios. Sections (``--only`` picks some):

  peak    peak RSS (the process's own VmHWM) of a fresh process that loads a bundled model with
          ``ei.load(name)`` defaults and answers one chat turn (``complete_chat``, max_tokens=64), for
          SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M; reference: llama-cpp-python's
          ``Llama(path, n_ctx=4096, verbose=False)`` + ``create_chat_completion`` in a process that
          imports only ``llama_cpp``. The reference runs with llama.cpp's extra buffer types off
          (``llama_model_default_params`` patched to ``use_extra_bufts = False``, as edgeinfer runs): with
          them on, llama.cpp repacks weights for AMX and the process dies with SIGILL on this VM (the CPU
          reports AMX but the hypervisor does not grant the tiles). Target: after / reference <= 1.05.
          (The Gemma GGUF is a base model without a chat template: llama-cpp-python falls back to a
          format of its own, and its answer may be empty; the buffers are reserved all the same.)
  vocab   the large vocabulary (Gemma, 262k tokens): llama.cpp's reserved compute, KV and output
          buffers as its log reports them (edgeinfer routes it to the logger "edgeinfer.llama_cpp"),
          and prefill tok/s of a 400-token prompt with no KV reuse (``KVOptions(ram_bytes=0)``).
  serve   ``python -m edgeinfer serve smollm2-135m-instruct --port 0 --max-sequences 8 --threads 2``
          (after and before) with phases of 1 (3 requests one after another), 2, 4 (2 requests each), 8
          and 32 concurrent clients (distinct chat prompts, max_tokens 32): peak RSS per phase (psutil,
          every 50 ms), the KV sequences and bytes ``/metrics`` reports; then this tree's server with
          ``--memory`` set to hold about three full sequences (the layout's estimates: 120 MB of process
          before the load + the model's fixed buffers + 3.5 sequences of KV; ``--budget`` overrides) and
          32 clients: its peak RSS and VmHWM must stay within the budget.
  speed   SmolLM2 with n_threads=2, n_ctx=2048, max_sequences=4: single-request decode and prefill tok/s,
          the batching gain (aggregate tok/s of 4 concurrent requests / the same 4 one by one) and the
          KV-reuse gain (a second chat turn's TTFT cold / with the first turn's KV reused). Target: after
          within 3% of before.

The run records the load average and the hypervisor's steal ticks at the start and the end, and the CPU
time other processes took while it ran; the report warns when the machine was busy.

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.memory [--rounds 3] [--before DIR] [--only SECTION]
Writes benchmarks/results/memory.json and memory.md and prints the Markdown report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    fmt,
    machine_info,
    markdown_table,
    median_summary,
    paired_ratios,
    run_in_tree,
    steal_ticks,
    write_report,
)

ROOT = Path(__file__).resolve().parent.parent
SMALL, LARGE = "smollm2-135m-instruct", "gemma-3-270m"
MODELS = (SMALL, LARGE)
SECTIONS = ("peak", "vocab", "serve", "speed")
HELLO = [{"role": "user", "content": "Say hello in five words."}]
MIB = 1 << 20
# (clients at once, chat completions each): a lone client's few requests come first, then concurrency
SERVE_PHASES = ((1, 3), (2, 2), (4, 2), (8, 1), (32, 1))
QUICK_PHASES = ((1, 1), (8, 1), (32, 1))
SERVE_TOKENS = 32
BASE_GUESS = 120_000_000  # a serve process before its model loads (Python, FastAPI, uvicorn, edgeinfer)

# ~450 tokens of plain prose (cut to PREFILL_TOKENS): the prefill prompt and the chat's system prompt
TEXT = (
    "You are the customer support assistant of Northwind Outdoor Supply, a small shop that sells tents, "
    "sleeping bags, stoves, backpacks and hiking clothes online and in one store in Lyon. Follow these "
    "rules in every answer. Be polite, brief and concrete, and never invent order details you were not "
    "given. Orders ship within two working days from the warehouse in Lyon; delivery in France takes two "
    "to four working days and elsewhere in the European Union four to eight working days. Shipping is "
    "free above eighty euros, otherwise it costs six euros in France and twelve euros elsewhere. "
    "Customers may return unused items within thirty days of delivery for a full refund; used items can "
    "only be returned if they are faulty. Refunds are paid to the original payment method within five "
    "working days after the return arrives. Tents and stoves have a two year warranty, clothes one year, "
    "and repairs under warranty are free. The store in Lyon is open Tuesday to Saturday from ten to "
    "seven. Gift cards are valid for two years and cannot be exchanged for cash. If a customer is angry, "
    "acknowledge the problem first, then explain what happens next. If a question needs an order number "
    "and none was given, ask for it. If a question is about something other than the shop, say politely "
    "that you can only help with Northwind orders and products. Never promise a discount; you may mention "
    "that the newsletter sometimes contains seasonal offers. Answer in the language of the customer and "
    "end with one helpful next step the customer can take. The warehouse closes for inventory during the "
    "first week of January, and orders placed then ship in the second week. Large items such as family "
    "tents travel by a freight carrier that calls the customer to agree on a delivery slot; the customer "
    "must be at home to sign. Damaged parcels should be refused at the door or photographed before "
    "opening, and the photographs sent with the order number within seven days. Stove fuel cannot be "
    "shipped by post and is sold only in the Lyon store. Customers who order for a school or a scout "
    "group may ask for an invoice with the group's name and address, and may pay by bank transfer within "
    "thirty days."
)
STORIES = [
    "Once upon a time, in a small village at the edge of a great pine forest, there lived",
    "The history of the old lighthouse on the northern cliffs begins in the winter of",
    "In the kitchen of the little restaurant on Rue Saint-Antoine, the chef was preparing",
    "The expedition left the harbour at dawn, and for three days the ship sailed north until",
]
TOPICS = ["the sea", "a mountain village", "an old bicycle", "a library at night", "winter bread",
          "a lost umbrella", "the first train", "a garden in spring"]

# ---------------------------------------------------------------------------------------------- workers
# Each runs in a fresh process with a tree first on sys.path; argv[1] is its parameters as JSON; its
# last stdout line is its result as JSON.
VM = r"""
def vm():
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    return out
"""

PEAK_WORKER = r"""
import json, sys
""" + VM + r"""
p = json.loads(sys.argv[1])
import edgeinfer as ei
model = ei.load(p["model"])
done = model.complete_chat(p["messages"], max_tokens=p["max_tokens"])
layout = getattr(model, "layout", None)
snap = model.metrics.snapshot()
print(json.dumps({**vm(), "tokens": done.stats.completion_tokens, "prompt_tokens": done.stats.prompt_tokens,
                  "n_ctx": model.n_ctx, "max_sequences": model.backend.caps.max_sequences,
                  "sequences_allocated": snap.get("sequences_allocated"),
                  "layout": layout.to_dict() if layout is not None else None}))
"""

# Only llama_cpp: its high-level API, extra buffer types off (AMX repacking dies with SIGILL here)
REFERENCE_WORKER = r"""
import json, sys
""" + VM + r"""
p = json.loads(sys.argv[1])
import llama_cpp
import llama_cpp.llama_cpp as lc
_default_params = lc.llama_model_default_params
def _no_extra_bufts():
    params = _default_params()
    params.use_extra_bufts = False
    return params
lc.llama_model_default_params = _no_extra_bufts
llm = llama_cpp.Llama(p["path"], n_ctx=4096, verbose=False)
done = llm.create_chat_completion(p["messages"], max_tokens=p["max_tokens"])
assert not any(m.split(".")[0] == "edgeinfer" for m in sys.modules), "the reference imported edgeinfer"
print(json.dumps({**vm(), "tokens": done["usage"]["completion_tokens"],
                  "prompt_tokens": done["usage"]["prompt_tokens"]}))
"""

VOCAB_WORKER = r"""
import json, logging, re, statistics, sys
""" + VM + r"""
p = json.loads(sys.argv[1])
lines = []
class Grab(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
log = logging.getLogger("edgeinfer.llama_cpp")
log.setLevel(logging.DEBUG)
log.addHandler(Grab())
log.propagate = False
import edgeinfer as ei
model = ei.load(p["model"], backend="llama.cpp", n_threads=2, speculation=None,
                kv=ei.KVOptions(ram_bytes=0, settle=False))
at_load = list(lines)
buffers = {}
for line in at_load:
    m = re.search(r"(\w+)\s+(compute|KV|output) buffer size\s*=\s*([\d.]+) MiB", line)
    if m:
        buffers[m.group(2)] = buffers.get(m.group(2), 0.0) + float(m.group(3))
prompt = model.tokenize(p["text"])[: p["tokens"]]
model.generate(prompt[:64], max_tokens=1, temperature=0)  # warm: first-eval allocations
rates, cached = [], []
for _ in range(p["reps"]):
    s = model.generate(prompt, max_tokens=1, temperature=0).stats
    rates.append(s.prefill_tok_s)
    cached.append(s.cached_tokens)
print(json.dumps({**vm(), "buffers_mib": buffers, "prefill_tok_s": statistics.median(rates),
                  "prefill_samples": rates, "cached_tokens": max(cached), "prompt_tokens": len(prompt),
                  "buffer_lines": [x for x in at_load if "buffer size" in x]}))
"""

SPEED_WORKER = r"""
import json, statistics, sys, threading, time
""" + VM + r"""
p = json.loads(sys.argv[1])
import edgeinfer as ei
model = ei.load(p["model"], backend="llama.cpp", n_ctx=2048, n_threads=2, max_sequences=4, speculation=None,
                kv=ei.KVOptions(settle=False))
N = p["tokens"]
def med(xs):
    return statistics.median(xs)
def run(prompt, n, cold=True):
    if cold:
        model.engine.reset()
    return model.generate(prompt, max_tokens=n, temperature=0).stats
from benchmarks.batching import run_engine  # the same in both trees
def together(prompts, concurrent):
    r = run_engine(model, prompts, N, concurrent=concurrent)
    return r["agg_tok_s"], [len(t) for t in r["tokens"]]
long_prompt = model.tokenize(p["text"])[: p["prefill_tokens"]]
stories = [model.tokenize(s) for s in p["stories"]]
# a two-turn chat: the second turn's prompt starts with the first turn's (system prompt + question)
system = {"role": "system", "content": p["text"]}
first = [system, {"role": "user", "content": "Summarise these rules in two sentences."}]
answer = model.complete_chat(first, max_tokens=32, temperature=0).text
second = model.chat_prompt([*first, {"role": "assistant", "content": answer},
                            {"role": "user", "content": "Which of them is about refunds?"}])
first_prompt = model.chat_prompt(first)
# warm: first-eval allocations, and the 4 sequences the batch needs (allocated on first use after the change)
run(long_prompt[:64], 2)
together(stories, True)
prefill, decode, batched, sequential, reuse, cold, cached, tokens = [], [], [], [], [], [], [], []
for _ in range(p["reps"]):
    prefill.append(run(long_prompt, 1).prefill_tok_s)
    s = run(stories[0], N)
    decode.append(s.decode_tok_s)
    tokens.append(s.completion_tokens)
    rate, counts = together(stories, True)
    batched.append(rate)
    tokens += counts
    sequential.append(together(stories, False)[0])
    run(first_prompt, 32)
    s = run(second, 1, cold=False)
    reuse.append(s.ttft_s)
    cached.append(s.cached_tokens)
    cold.append(run(second, 1).ttft_s)
snap = model.metrics.snapshot()
print(json.dumps({**vm(), "prefill_tok_s": med(prefill), "decode_tok_s": med(decode),
                  "batched_tok_s": med(batched), "sequential_tok_s": med(sequential),
                  "batching_gain": med([a / b for a, b in zip(batched, sequential)]),
                  "reuse_ttft_s": med(reuse), "cold_ttft_s": med(cold),
                  "reuse_gain": med([c / r for c, r in zip(cold, reuse)]),
                  "cached_tokens": min(cached), "second_turn_tokens": len(second),
                  "min_completion_tokens": min(tokens),
                  "sequences_allocated": snap.get("sequences_allocated")}))
"""


def _run(tree: Path, worker: str, params: dict, timeout: float = 600) -> dict:
    return run_in_tree(tree, worker, json.dumps(params), timeout=timeout)


# ------------------------------------------------------------------------------------ machine load
def _cpu_ticks() -> tuple[int, int]:
    """(busy, steal) ticks of all CPUs so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


def _own_cpu_s() -> float:
    """CPU seconds this process and its waited-for children used so far."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Busy:
    """How much CPU others took while a stretch ran: busy CPU time of the machine less this process's
    and its children's, and the hypervisor's steal."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.t0, (self.busy0, self.steal0), self.own0 = time.monotonic(), _cpu_ticks(), _own_cpu_s()

    def done(self) -> dict[str, float]:
        busy, steal = _cpu_ticks()
        wall = time.monotonic() - self.t0
        others = max(0.0, (busy - self.busy0) / self.tick - (_own_cpu_s() - self.own0))
        cores = os.cpu_count() or 1
        return {"wall_s": wall, "others_cpu_s": others,
                "others_share": others / (wall * cores) if wall else 0, "steal_ticks": steal - self.steal0}


# ------------------------------------------------------------------------------------------- server
def _metrics(text: str) -> dict[str, float]:
    """The samples of a Prometheus text page by name and labels (``name{a="b"}`` as written)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and not line.startswith("#"):
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def _pick(samples: dict[str, float], name: str, **labels: str) -> float | None:
    for key, value in samples.items():
        if key == name or key.startswith(name + "{"):
            if all(f'{k}="{v}"' in key for k, v in labels.items()):
                return value
    return None


def _vm_hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Server:
    """``python -m edgeinfer serve`` from a tree, its RSS sampled every 50 ms; killed on exit."""

    def __init__(self, tree: Path, args: list[str], startup_timeout: float = 180) -> None:
        import psutil

        env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
        self.log = tempfile.NamedTemporaryFile("w+", prefix="ei-serve-", suffix=".log")  # noqa: SIM115
        self.cmd = [sys.executable, "-m", "edgeinfer", "serve", SMALL, "--port", "0", "--threads", "2", *args]
        self.proc = subprocess.Popen(self.cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True)
        self.url = ""
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        try:
            self.url = self._wait_ready(startup_timeout)
            self._ps = psutil.Process(self.proc.pid)
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float) -> str:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
                if self.proc.poll() is not None:
                    break
                continue
            line = self.proc.stdout.readline()
            if not line:
                break
            if m := re.search(r"edgeinfer serve: (http://\S+)/v1", line):
                # drain stdout from now on, so the server never blocks on a full pipe
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return m.group(1)
        raise RuntimeError(f"the server did not start ({' '.join(self.cmd)}): {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-n:]

    def _sample(self) -> None:
        import psutil

        t0 = time.monotonic()
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - t0, self._ps.memory_info().rss))
            except (OSError, psutil.Error):  # the process ended
                return
            self._stop.wait(0.05)

    def peak_since(self, index: int) -> int:
        return max((rss for _, rss in self.samples[index:]), default=0)

    def close(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if self._sampler is not None:
            self._sampler.join(timeout=5)
        self.log.close()


def _clients(url: str, n: int, per_client: int, max_tokens: int, tag: str) -> dict[str, Any]:
    """``n`` threads, each sending ``per_client`` chat completions with prompts of their own; a 503 (the
    server's queue is full) is retried after a pause, and counted."""
    import httpx

    results: list[dict] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def client(i: int) -> None:
        done = {"ok": 0, "rejected": 0, "errors": [], "tokens": 0}
        with httpx.Client(base_url=url, timeout=300) as http:
            barrier.wait(timeout=60)
            for j in range(per_client):
                topic = TOPICS[(i + j) % len(TOPICS)]
                body = {"model": SMALL, "max_tokens": max_tokens, "temperature": 0,
                        "messages": [{"role": "user", "content": f"[{tag} client {i}, request {j}] "
                                      f"Write two sentences about {topic}."}]}
                for _attempt in range(600):
                    try:
                        r = http.post("/v1/chat/completions", json=body)
                    except httpx.HTTPError as exc:
                        done["errors"].append(repr(exc))
                        break
                    if r.status_code == 503:
                        done["rejected"] += 1
                        time.sleep(0.2)
                        continue
                    if r.status_code != 200:
                        done["errors"].append(f"{r.status_code} {r.text[:200]}")
                    else:
                        done["ok"] += 1
                        done["tokens"] += r.json()["usage"]["completion_tokens"]
                    break
        with lock:
            results.append(done)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    wall = time.perf_counter() - t0
    errors = [e for r in results for e in r["errors"]]
    return {"clients": n, "requests": n * per_client, "ok": sum(r["ok"] for r in results),
            "rejected_503": sum(r["rejected"] for r in results), "errors": len(errors) + n - len(results),
            "error_samples": errors[:3], "tokens": sum(r["tokens"] for r in results), "wall_s": wall}


def serve_run(tree: Path, args: list[str], phases: tuple[tuple[int, int], ...], max_tokens: int,
              tag: str) -> dict[str, Any]:
    """One server: its RSS at start, then per phase of concurrent clients the peak RSS and the KV
    sequences and bytes /metrics reports after it."""
    import httpx

    server = Server(tree, args)
    try:
        time.sleep(0.3)
        out: dict[str, Any] = {"command": " ".join(server.cmd[1:]), "rss_ready": server.peak_since(0)}
        with httpx.Client(base_url=server.url, timeout=30) as http:
            health = http.get("/health").json()["models"]
            capacity = next(iter(health.values()))["capacity"]
            out["max_sequences"] = capacity // 5  # the admission capacity is 5 x max_sequences by default
            out["n_ctx"] = http.get("/v1/models").json()["data"][0].get("n_ctx")
            out["phases"] = []
            for n, per_client in phases:
                start = len(server.samples)
                phase = _clients(server.url, n, per_client, max_tokens, f"{tag}-{n}")
                time.sleep(0.2)
                samples = _metrics(http.get("/metrics").text)
                phase.update(
                    peak_rss=server.peak_since(start),
                    vm_hwm=_vm_hwm(server.proc.pid),
                    sequences_allocated=_pick(samples, "edgeinfer_kv_sequences_allocated"),
                    kv_allocated=_pick(samples, "edgeinfer_kv_cache_bytes", state="allocated"),
                    kv_used=_pick(samples, "edgeinfer_kv_cache_bytes", state="used"),
                    process_rss=_pick(samples, "process_resident_memory_bytes"),
                )
                out["phases"].append(phase)
        out["peak_rss"] = server.peak_since(0)
        out["vm_hwm"] = _vm_hwm(server.proc.pid)
        out["samples"] = len(server.samples)
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited ({server.proc.returncode}): {server.log_tail()}")
        return out
    finally:
        server.close()


def default_budget() -> int:
    """A --memory budget that holds about three full sequences of SmolLM2 at the serve defaults."""
    from edgeinfer.loader import locate_model
    from edgeinfer.memory import footprint_of

    fp = footprint_of(locate_model(SMALL, offline=True).path)
    return int(BASE_GUESS + fp.fixed_bytes(4096, 512, 8) + 3.5 * fp.kv_bytes(4096, 1))


# ------------------------------------------------------------------------------------------- rounds
def _rotate(items: list, r: int) -> list:
    k = r % len(items)
    return items[k:] + items[:k]


def run_round(r: int, sections: list[str], trees: dict[str, Path], paths: dict[str, str],
              args: argparse.Namespace, raw: dict[str, list]) -> None:
    quick = args.quick
    hello = {"messages": HELLO, "max_tokens": 64}
    if "peak" in sections:
        for model in MODELS:
            for variant in _rotate(["after", "before", "reference"], r):
                if variant == "reference":
                    res = _run(ROOT, REFERENCE_WORKER, {**hello, "path": paths[model]})
                else:
                    res = _run(trees[variant], PEAK_WORKER, {**hello, "model": model})
                raw.setdefault(f"peak/{model}/{variant}", []).append(res)
                print(f"round {r + 1} peak {model} {variant}: VmHWM {res['VmHWM'] / MIB:.0f} MiB", flush=True)
    if "vocab" in sections:
        for variant in _rotate(["after", "before"], r):
            res = _run(trees[variant], VOCAB_WORKER, {"model": LARGE, "text": TEXT, "tokens": 400,
                                                      "reps": 1 if quick else 3})
            raw.setdefault(f"vocab/{variant}", []).append(res)
            print(f"round {r + 1} vocab {variant}: compute {res['buffers_mib'].get('compute')} MiB, "
                  f"prefill {res['prefill_tok_s']:.0f} tok/s", flush=True)
    if "serve" in sections:
        phases, max_tokens = (QUICK_PHASES, 8) if quick else (SERVE_PHASES, SERVE_TOKENS)
        budget = args.budget
        variants = {"after": (trees["after"], ["--max-sequences", "8"], phases),
                    "before": (trees["before"], ["--max-sequences", "8"], phases),
                    "budget": (trees["after"], ["--memory", str(budget)], ((32, 1),))}
        for variant in _rotate(list(variants), r):
            tree, extra, ph = variants[variant]
            res = serve_run(tree, extra, ph, max_tokens, f"r{r}-{variant}")
            if variant == "budget":
                res["budget"] = budget
            raw.setdefault(f"serve/{variant}", []).append(res)
            print(f"round {r + 1} serve {variant}: peak RSS {res['peak_rss'] / MIB:.0f} MiB, "
                  f"sequences {[p['sequences_allocated'] for p in res['phases']]}", flush=True)
    if "speed" in sections:
        for variant in _rotate(["after", "before"], r):
            res = _run(trees[variant], SPEED_WORKER, {
                "model": SMALL, "text": TEXT, "stories": STORIES, "prefill_tokens": 400,
                "tokens": 16 if quick else args.tokens, "reps": 1 if quick else 3})
            raw.setdefault(f"speed/{variant}", []).append(res)
            print(f"round {r + 1} speed {variant}: decode {res['decode_tok_s']:.1f} tok/s, prefill "
                  f"{res['prefill_tok_s']:.0f} tok/s, batching x{res['batching_gain']:.2f}, "
                  f"reuse x{res['reuse_gain']:.1f}", flush=True)


# ------------------------------------------------------------------------------------------- report
def _med(values: list[float | None]) -> float | None:
    return median_summary([v for v in values if v is not None])["median"]


def _mib(value: float | None) -> str:
    return fmt(None if value is None else value / MIB, 0)


def report(raw: dict[str, list], sections: list[str], args: argparse.Namespace) -> tuple[dict, str]:
    summary: dict[str, Any] = {}
    parts = []
    if "peak" in sections:
        rows = []
        for model in MODELS:
            hwm = {v: [x["VmHWM"] for x in raw[f"peak/{model}/{v}"]]
                   for v in ("after", "before", "reference")}
            toks = {v: _med([x["tokens"] for x in raw[f"peak/{model}/{v}"]]) for v in hwm}
            after_ref, before_ref = paired_ratios(hwm["after"], hwm["reference"]), paired_ratios(
                hwm["before"], hwm["reference"])
            summary[f"peak {model}"] = {"vm_hwm": {v: median_summary(x) for v, x in hwm.items()},
                                        "after/reference": after_ref, "before/reference": before_ref,
                                        "tokens": toks}
            ok = after_ref["median"] is not None and after_ref["median"] <= 1.05
            rows.append([model, *(_mib(_med(hwm[v])) for v in ("reference", "before", "after")),
                         fmt(before_ref["median"], 3), fmt(after_ref["median"], 3), "yes" if ok else "**NO**",
                         f"{fmt(toks['reference'], 0)} / {fmt(toks['before'], 0)} / {fmt(toks['after'], 0)}"])
        table = markdown_table(["model", "reference VmHWM MiB", "before MiB", "after MiB", "before / ref",
                                "after / ref", "after <= 1.05x", "tokens answered (ref / before / after)"],
                               rows)
        parts.append(
            "## Peak RSS: `ei.load(name)` defaults, one chat turn\n\n"
            "Each process's own VmHWM after loading the model and answering \"Say hello in five words.\" "
            "(max_tokens=64, default sampling). Reference: llama-cpp-python `Llama(path, n_ctx=4096, "
            "verbose=False)` + `create_chat_completion` in a process that imports only `llama_cpp`, with "
            "`use_extra_bufts = False` patched into `llama_model_default_params` (edgeinfer's setting too: "
            "llama.cpp's AMX weight repacking dies with SIGILL on this VM). Ratios: medians of per-round "
            "ratios. The Gemma GGUF is a base model without a chat template: edgeinfer and llama-cpp-python "
            f"fall back to different formats, so their answers differ in length.\n\n{table}")
    if "vocab" in sections:
        runs = {v: raw[f"vocab/{v}"] for v in ("after", "before")}
        rows = []
        for key, label in (("compute", "compute buffer MiB"), ("KV", "KV buffers MiB"),
                           ("output", "output buffer MiB")):
            vals = {v: _med([x["buffers_mib"].get(key) for x in runs[v]]) for v in runs}
            summary[f"vocab {key} MiB"] = vals
            rows.append([label, fmt(vals["before"]), fmt(vals["after"]), fmt(
                vals["after"] / vals["before"] if vals["after"] is not None and vals["before"] else None, 3)])
        hwm = {v: [x["VmHWM"] for x in runs[v]] for v in runs}
        rows.append(["VmHWM MiB (load + prefills)", _mib(_med(hwm["before"])), _mib(_med(hwm["after"])),
                     fmt(paired_ratios(hwm["after"], hwm["before"])["median"], 3)])
        rate = {v: [x["prefill_tok_s"] for x in runs[v]] for v in runs}
        prefill_ratio = paired_ratios(rate["after"], rate["before"])
        summary["vocab prefill tok/s"] = {"before": median_summary(rate["before"]),
                                          "after": median_summary(rate["after"]),
                                          "after/before": prefill_ratio}
        rows.append(["prefill tok/s (400 tokens, no reuse)", fmt(_med(rate["before"])),
                     fmt(_med(rate["after"])), fmt(prefill_ratio["median"], 3)])
        cached = max(x["cached_tokens"] for v in runs for x in runs[v])
        table = markdown_table(["Gemma 3 270M (262k vocabulary)", "before", "after", "after / before"], rows)
        parts.append(
            "## Large vocabulary: reserved buffers and prefill\n\n"
            "`ei.load(\"gemma-3-270m\", n_threads=2, kv=KVOptions(ram_bytes=0, settle=False))`; buffer sizes "
            "from llama.cpp's log at load (before: every sequence's KV at load, and logits reserved for "
            "n_batch=512 rows; after: one sequence, 8 rows). Prefill: `generate(400 token ids, "
            f"max_tokens=1)`, the engine's `Stats.prefill_tok_s` (cached tokens: {cached}).\n\n{table}")
    if "serve" in sections:
        parts.append(_serve_report(raw, summary))
    if "speed" in sections:
        runs = {v: raw[f"speed/{v}"] for v in ("after", "before")}
        rows = []
        for key, label, digits in (("decode_tok_s", "decode tok/s (1 request)", 1),
                                   ("prefill_tok_s", "prefill tok/s (400 tokens)", 0),
                                   ("batching_gain", "batching gain (4 at once / one by one)", 2),
                                   ("reuse_gain", "KV reuse gain (2nd turn TTFT cold / reused)", 2),
                                   ("batched_tok_s", "aggregate tok/s, 4 at once", 1),
                                   ("reuse_ttft_s", "2nd turn TTFT with reuse (s)", 3),
                                   ("cold_ttft_s", "2nd turn TTFT cold (s)", 3)):
            vals = {v: [x[key] for x in runs[v]] for v in runs}
            r = paired_ratios(vals["after"], vals["before"])
            summary[f"speed {key}"] = {"before": median_summary(vals["before"]),
                                       "after": median_summary(vals["after"]), "after/before": r}
            within = "-" if r["median"] is None or "ttft" in key or "batched" in key else (
                "yes" if r["median"] >= 0.97 else "**NO**")
            rows.append([label, fmt(_med(vals["before"]), digits), fmt(_med(vals["after"]), digits),
                         fmt(r["median"], 3), within])
        table = markdown_table(["SmolLM2-135M, 2 threads", "before", "after", "after / before",
                                "at most 3% slower"], rows)
        x = runs["after"][0]
        parts.append(
            "## Speed unchanged\n\n`ei.load(smollm2, n_ctx=2048, n_threads=2, max_sequences=4, "
            "speculation=None, kv=KVOptions(settle=False))`, greedy; per process the median of "
            f"{1 if args.quick else 3} repetitions, after warm-up (the 4 sequences the "
            f"batch uses allocated). Decode: {args.tokens if not args.quick else 16} tokens; KV reuse: "
            f"a {x['second_turn_tokens']}-token second turn reusing {x['cached_tokens']} tokens of the "
            f"first.\n\n{table}")
    return summary, "\n\n".join(parts)


def _serve_report(raw: dict[str, list], summary: dict) -> str:
    rows = []
    for variant in ("before", "after"):
        runs = raw[f"serve/{variant}"]
        for i, phase in enumerate(runs[0]["phases"]):
            per = [run["phases"][i] for run in runs]
            peak = _med([p["peak_rss"] for p in per])
            seqs = _med([p["sequences_allocated"] for p in per])
            kv_alloc, kv_used = _med([p["kv_allocated"] for p in per]), _med([p["kv_used"] for p in per])
            summary[f"serve {variant} {phase['clients']} clients"] = {
                "peak_rss": peak, "sequences_allocated": seqs, "kv_allocated": kv_alloc, "kv_used": kv_used,
                "tok_s": _med([p["tokens"] / p["wall_s"] for p in per]),
                "errors": sum(p["errors"] for p in per), "rejected_503": sum(p["rejected_503"] for p in per)}
            rows.append([variant, phase["clients"], phase["requests"], _mib(peak), fmt(seqs, 0),
                         _mib(kv_alloc), _mib(kv_used),
                         fmt(_med([p["tokens"] / p["wall_s"] for p in per]), 1),
                         sum(p["errors"] for p in per)])
        summary[f"serve {variant} ready rss"] = _med([run["rss_ready"] for run in runs])
    table = markdown_table(["server", "clients at once", "requests", "peak RSS MiB", "KV sequences allocated",
                            "KV allocated MiB", "KV in use MiB", "tok/s", "errors"], rows)
    lone = raw["serve/after"][0]["phases"][0]
    note = ""
    if lone["clients"] == 1 and (lone["sequences_allocated"] or 0) > 1:
        note = (f"\n\nA lone client's {lone['requests']} requests, one after another, left "
                f"{lone['sequences_allocated']:.0f} sequences allocated (the prompt cache keeps idle prompts "
                "and asks for a new sequence rather than evicting one), so the after server's RSS grows "
                "with distinct prompts, not only with concurrency.")
    ready = {v: _mib(summary[f"serve {v} ready rss"]) for v in ("before", "after")}
    budget_rows, failed = [], False
    for run in raw["serve/budget"]:
        phase = run["phases"][-1]
        peak = max(run["peak_rss"], run["vm_hwm"] or 0)
        over = peak > run["budget"]
        failed |= over or phase["errors"] > 0
        budget_rows.append([f"{run['budget']} ({_mib(run['budget'])} MiB)", run["max_sequences"],
                            fmt(phase["sequences_allocated"], 0), _mib(run["peak_rss"]), _mib(run["vm_hwm"]),
                            _mib(run["budget"] - peak), phase["rejected_503"], phase["errors"],
                            "**EXCEEDED**" if over else "ok"])
    summary["serve budget"] = [{"budget": run["budget"], "max_sequences": run["max_sequences"],
                                "peak_rss": run["peak_rss"], "vm_hwm": run["vm_hwm"],
                                "within": max(run["peak_rss"], run["vm_hwm"] or 0) <= run["budget"]}
                               for run in raw["serve/budget"]]
    summary["serve budget failed"] = failed
    budget_table = markdown_table(["--memory (bytes)", "max sequences (layout)", "sequences allocated",
                                   "peak RSS MiB", "VmHWM MiB", "margin MiB (budget - peak)",
                                   "503s retried", "errors", "verdict"], budget_rows)
    verdict = ("**FAILURE: the server exceeded its memory budget (or requests failed).**" if failed
               else "The server stayed within its budget in every round.")
    return (
        "## serve with 8 sequences\n\n"
        "`python -m edgeinfer serve smollm2-135m-instruct --port 0 --max-sequences 8 --threads 2`, one "
        "server per tree and round; clients in phases (each sends its own chat prompts, temperature 0), "
        "RSS sampled every 50 ms; the KV gauges are `/metrics` after each phase (the before tree has none). "
        f"RSS when ready: before {ready['before']} MiB, after {ready['after']} MiB.\n\n{table}{note}\n\n"
        "### With a budget (`--memory`, no `--max-sequences`), 32 clients\n\n"
        f"Max sequences is the admission capacity / 5 (`/health`). Peak is the larger of the sampled RSS "
        f"and the process's VmHWM.\n\n{budget_table}\n\n{verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, default=Path("/tmp/ei-before"),
                        help="a checkout of the tree before the change (default /tmp/ei-before)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run only this section (repeatable)")
    parser.add_argument("--tokens", type=int, default=64, help="decode tokens of the speed section")
    parser.add_argument("--budget", default=None,
                        help="the serve budget run's --memory, e.g. 650MB (default: ~3 SmolLM2 sequences)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: fewer tokens, phases, repetitions")
    args = parser.parse_args()
    sections = [s for s in SECTIONS if s in (args.only or SECTIONS)]
    trees = {"before": args.before.resolve(), "after": ROOT}
    if not (trees["before"] / "edgeinfer").is_dir():
        parser.error(f"{trees['before']} is not a checkout of edgeinfer (--before)")
    from edgeinfer.loader import locate_model

    paths = {m: str(locate_model(m, offline=True).path) for m in MODELS}
    from edgeinfer.memory import parse_size

    args.budget = parse_size(args.budget) if args.budget else default_budget()
    import psutil

    info = machine_info()
    info["cpu_busy_pct_before_start"] = psutil.cpu_percent(interval=1.0)
    steal0, busy = steal_ticks(), Busy()
    raw: dict[str, list] = {}
    rounds, seconds = [], {}
    for r in range(args.rounds):
        one = Busy()
        for section in sections:
            t0 = time.monotonic()
            run_round(r, [section], trees, paths, args, raw)
            seconds[section] = seconds.get(section, 0.0) + time.monotonic() - t0
        rounds.append(one.done())
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    info["steal_ticks_during_run"] = steal_ticks() - steal0
    info["others"] = busy.done()
    info["others_per_round"] = rounds
    info["section_s"] = seconds
    summary, body = report(raw, sections, args)
    others = info["others"]
    quiet = (info["cpu_busy_pct_before_start"] < 10 and others["others_share"] < 0.05
             and info["steal_ticks_during_run"] < 0.01 * others["wall_s"] * os.sysconf("SC_CLK_TCK"))
    warning = "" if quiet else (
        "\n\n**Warning: the machine was busy while this ran** (CPU busy before the start "
        f"{info['cpu_busy_pct_before_start']:.0f}%, other processes took {others['others_cpu_s']:.0f} "
        "CPU s = "
        f"{100 * others['others_share']:.0f}% of the machine, steal ticks {info['steal_ticks_during_run']}): "
        "timings and ratios are not reliable; run it again on a quiet machine.")
    markdown = (
        f"# RAM budgets: peak memory and speed, before / after\n\n{args.rounds} round(s)"
        f"{' (quick)' * args.quick}, sections: {', '.join(sections)}; every variant in a fresh process, "
        f"variants alternating within a round (order rotated each round). {info['cpu_model']}, "
        f"{info['cpu_count']} CPUs. Load average at the start {info['loadavg']}, at the end "
        f"{info['loadavg_end']}; steal ticks during the run "
        f"{info['steal_ticks_during_run']}; CPU time of other processes {others['others_cpu_s']:.0f} s "
        f"({100 * others['others_share']:.1f}% of the machine over {others['wall_s']:.0f} s; by section: "
        f"{', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}).{warning}\n\n"
        f"{body}\n\n"
        "Run: `EDGEINFER_HOME=/tmp/eihome python -m benchmarks.memory --rounds 3 --before /tmp/ei-before`\n")
    write_report("memory", {"machine": info, "rounds": args.rounds, "sections": sections, "quick": args.quick,
                            "budget": args.budget, "summary": summary, "runs": raw}, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
