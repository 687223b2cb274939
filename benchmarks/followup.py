"""A short follow-up turn's time to first token, and where it goes, after 256 / 1k / 3k tokens of history.

One chat per history length on the default chat model (``ei.load`` defaults: KV reuse with idle-time
settling). The history is a long first message and a 48-token greedy answer; then the follow-up "Summarize
all of that in one line." (~25 new tokens) is sent right after the previous answer (no idle time: the
previous answer's KV is still being settled), after 3 s of idle time (settled), and right after the answer
on a model loaded with ``KVOptions(exact=False)`` (the answer's KV reused as decoding computed it). Two more
cases send the first turn of another chat right after the answer. The cases without idle time also run on a
model whose settling steps a request cannot interrupt (as before: it waits for the step running), all
alternating, for ``--rounds`` rounds. Each TTFT (from ``stream()`` to the first piece) is split into:

  render    chat template + tokenization of the whole conversation
  settle    time the request waited for an idle settling step already running (or for it to stop)
  prefill   the request's own evals before its first token (tokens: how many it computed)
  other     the rest (scheduling, sampling, detokenizing)

Reference: the same eval of the follow-up's new tokens alone at that history length (``prefill-only``),
what a turn costs when nothing but its own message is computed; and, where the GGUF's own weights were
prepared for onnxruntime (``edgeinfer pull MODEL --backend onnx``), the same eval on the onnx backend.

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.followup [--rounds 3]
Writes benchmarks/results/followup.json and followup.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from benchmarks.common import fmt, machine_info, markdown_table, publish, quiet_logging, steal_ticks

HISTORIES = (256, 1024, 3000)
FOLLOW_UP = "Summarize all of that in one line."
OTHER_CHAT = "What is the capital of France?"
FILLER = ("The history of lighthouses is long. Keepers trimmed wicks, polished lenses and logged the weather "
          "every night, and many of them wrote letters about the storms they watched from the lantern room. ")


class Timeline:
    """Intervals of settling steps and evals, and the render time, recorded as the engine runs."""

    def __init__(self, model: Any) -> None:
        import edgeinfer.model as model_mod

        self.settles: list[tuple[float, float]] = []
        self.evals: list[tuple[float, float, int]] = []
        self.render = 0.0
        cache, backend = model.engine.cache, model.backend
        settle, evaluate, render = cache.settle_step, backend.eval, model_mod.chat_tokens

        def timed_settle(*args: Any, **kwargs: Any) -> int:
            start = time.perf_counter()
            try:
                return settle(*args, **kwargs)
            finally:
                self.settles.append((start, time.perf_counter()))

        def timed_eval(items: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return evaluate(items, *args, **kwargs)
            finally:
                self.evals.append((start, time.perf_counter(), sum(len(i.tokens) for i in items)))

        def timed_render(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return render(*args, **kwargs)
            finally:
                self.render = time.perf_counter() - start

        cache.settle_step, backend.eval, model_mod.chat_tokens = timed_settle, timed_eval, timed_render

    def clear(self) -> None:
        self.settles.clear()
        self.evals.clear()

    def split(self, start: float, first: float) -> dict[str, float]:
        """The parts of [start, first] in ms (settling that ran while the caller rendered is no wait)."""
        submitted = start + self.render

        def overlap(a: float, b: float) -> float:
            return max(0.0, min(b, first) - max(a, submitted))

        settle = sum(overlap(a, b) for a, b in self.settles)
        inside = [(a, b, n) for a, b, n in self.evals
                  if not any(sa <= a and b <= sb for sa, sb in self.settles)]
        prefill = sum(overlap(a, b) for a, b, _ in inside)
        tokens = next((n for a, b, n in inside if overlap(a, b) > 0 and n > 1), 0)
        total = first - start
        return {"ttft": total * 1e3, "render": self.render * 1e3, "settle": settle * 1e3,
                "prefill": prefill * 1e3, "prefill_tokens": tokens,
                "other": (total - self.render - settle - prefill) * 1e3}


def prefill_only(model: Any, prompt: list[int], new: int, repeats: int = 3) -> float:
    """ms to evaluate the last ``new`` tokens of ``prompt`` on top of the rest (median)."""
    from edgeinfer.backends.base import EvalItem

    backend, seq = model.backend, 3
    model.engine.reset()
    backend.kv_drop(seq)
    backend.eval([EvalItem(seq, prompt[:-new])])
    times = []
    for _ in range(repeats):
        backend.kv_truncate(seq, len(prompt) - new)
        start = time.perf_counter()
        backend.eval([EvalItem(seq, prompt[-new:])])
        times.append((time.perf_counter() - start) * 1e3)
    backend.kv_drop(seq)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--idle", type=float, default=3.0)
    args = parser.parse_args(argv)
    quiet_logging()
    import edgeinfer as ei

    model = ei.load(args.model, max_sequences=4)
    inexact = ei.load(args.model, max_sequences=4, kv=ei.KVOptions(exact=False))
    waiting = ei.load(args.model, max_sequences=4)  # as before: a request waits for a running settling step
    waiting.backend.interrupt = lambda: None
    timelines = {id(m): Timeline(m) for m in (model, inexact, waiting)}
    try:  # the same weights on onnxruntime, when prepared: its floor beside llama.cpp's
        onnx = ei.load(args.model, backend="onnx", n_ctx=4096, max_sequences=4)
    except ei.ModelNotPreparedError:
        onnx = None  # `edgeinfer pull MODEL --backend onnx` makes it
    models = tuple(m for m in (model, inexact, waiting, onnx) if m is not None)
    answer = ei.SamplingParams(temperature=0, max_tokens=48)
    turn = ei.SamplingParams(temperature=0, max_tokens=8)
    # (case, model, idle seconds before the turn, whether the turn starts another chat)
    cases = [("no idle", model, 0.0, False), ("no idle, settling not interrupted", waiting, 0.0, False),
             ("idle", model, args.idle, False), ("no idle, exact=False", inexact, 0.0, False),
             ("another chat, no idle", model, 0.0, True),
             ("another chat, no idle, settling not interrupted", waiting, 0.0, True)]
    rows: dict[str, dict[str, Any]] = {}
    steal_before = steal_ticks()
    for history in HISTORIES:
        words = " ".join((FILLER * 200).split()[: int(history * 0.7)])
        for rnd in range(args.rounds):
            for case, m, idle, other in cases[rnd % len(cases) :] + cases[: rnd % len(cases)]:
                m.engine.reset()
                timeline = timelines[id(m)]
                chat = m.chat(system="You are a helpful assistant.")
                chat.send("Read this and tell me what it is about:\n" + words, answer)
                time.sleep(idle)
                timeline.clear()
                start = time.perf_counter()
                if other:
                    stream = m.chat(system="You are a helpful assistant.").stream(OTHER_CHAT, turn)
                else:
                    stream = chat.stream(FOLLOW_UP, turn)
                next(iter(stream))
                first = time.perf_counter()
                done = stream.result()
                parts = timeline.split(start, first)
                m.engine.settle()  # nothing left settling in the background when the next case starts
                row = rows.setdefault(f"{history}/{case}",
                                      {"history": done.stats.prompt_tokens, "idle_s": idle, "samples": []})
                row["samples"].append(parts)
                if not other:
                    followed = chat
        prompt = model.chat_prompt(followed.messages[:-1])
        for label, m in (("prefill-only", model), ("prefill-only, onnx", onnx)):
            if m is not None:
                rows[f"{history}/{label}"] = {"history": len(prompt), "idle_s": None, "samples": [
                    {"ttft": prefill_only(m, prompt, 25), "prefill_tokens": 25}]}
    for m in models:
        m.close()
    for row in rows.values():
        row["median"] = {k: statistics.median(s[k] for s in row["samples"]) for k in row["samples"][0]}
    # interrupting idle-time settling vs waiting for its step: median of per-round TTFT ratios
    paired = {}
    for history in HISTORIES:
        for case in ("no idle", "another chat, no idle"):
            ours = rows[f"{history}/{case}"]["samples"]
            waited = rows[f"{history}/{case}, settling not interrupted"]["samples"]
            paired[f"{history}/{case}"] = statistics.median(
                x["ttft"] / y["ttft"] for x, y in zip(ours, waited, strict=True))
    data = {"machine": machine_info(), "model": args.model, "rounds": args.rounds, "rows": rows,
            "interrupting_vs_waiting": paired,
            "steal_ticks": steal_ticks() - steal_before}
    table = [[key.split("/")[0], fmt(row["history"], 0), key.split("/")[1], fmt(row["median"]["ttft"], 0),
              fmt(row["median"].get("render"), 1), fmt(row["median"].get("settle"), 0),
              fmt(row["median"].get("prefill"), 0), fmt(row["median"].get("prefill_tokens"), 0),
              fmt(row["median"].get("other"), 0)] for key, row in rows.items()]
    md = [f"# Follow-up turn TTFT ({args.model}, `ei.load` defaults)", "",
          markdown_table(["history", "prompt tokens", "case", "TTFT ms", "render ms", "settle wait ms",
                          "prefill ms", "prefill tokens", "other ms"], table), "",
          f"Medians of {args.rounds} rounds (the cases alternating). exact=False: `KVOptions(exact=False)`, "
          "reusing the previous answer's decode-computed KV as it is (no settling, not bit-exact vs a cold "
          "run). prefill-only: the follow-up's "
          "25 new tokens evaluated alone on top of the history (the least a turn can cost without a faster "
          "kernel); prefill-only, onnx: the same on the onnx backend running the GGUF's own weights "
          f"(`backend=\"onnx\"`, when prepared). Steal ticks during the run: {data['steal_ticks']}.", "",
          "TTFT with settling interrupted / waiting for the settling step (median of per-round ratios): "
          + "; ".join(f"{key.replace('/', ' tokens, ')} {ratio:.2f}x" for key, ratio in paired.items())
          + ".", "",
          "Run: `EDGEINFER_HOME=/tmp/eihome python -m benchmarks.followup --rounds 3` (the onnx rows once "
          "`EDGEINFER_HOME=/tmp/eihome edgeinfer pull smollm2-135m-instruct --backend onnx` made its folder)"]
    publish("followup", data, "\n".join(md) + "\n")
    return data


if __name__ == "__main__":
    main()
