"""A short follow-up turn's time to first token, and where it goes, after 256 / 1k / 3k tokens of history.

One chat per history length on the default chat model (``ei.load`` defaults: KV reuse with idle-time
settling) and on ``backend="llama.cpp"``. The history is a long first message and a 48-token greedy answer;
then the follow-up "Summarize all of that in one line." (~25 new tokens) is sent right after the previous
answer (no idle time: the previous answer's KV is recomputed as a prefill computes it, for exact reuse),
after 3 s of idle time (settled meanwhile), and right after the answer on models loaded with
``KVOptions(exact=False)`` (the answer's KV reused as decoding computed it). One more case sends the first
turn of another chat right after the answer. All alternate, for ``--rounds`` rounds. Each TTFT (from
``stream()`` to the first piece) is split into:

  render    chat template + tokenization of the whole conversation
  settle    time the request waited for an idle settling step already running (or for it to stop)
  prefill   the request's own evals before its first token (tokens: how many it computed)
  other     the rest (scheduling, sampling, detokenizing)

Reference: the same eval of the follow-up's new tokens alone at that history length (``prefill-only``),
what a turn costs when nothing but its own message is computed; each token of an answer at that history
(``decode step``: one-token evals, default vs llama.cpp alternating); and, where the GGUF's own weights were
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


def decode_step(backend: Any, prompt: list[int], windows: int = 8, steps: int = 4) -> float:
    """ms per one-token eval after ``prompt`` (median over ``windows`` runs of ``steps`` steps), on a
    sequence no engine uses: what each token of the answer costs at that history."""
    from edgeinfer.backends.base import EvalItem

    seq = 3
    backend.kv_drop(seq)
    backend.eval([EvalItem(seq, prompt)])
    times = []
    for _ in range(windows):
        backend.kv_truncate(seq, len(prompt))
        start = time.perf_counter()
        for token in prompt[-steps:]:
            backend.eval([EvalItem(seq, [token])])
        times.append((time.perf_counter() - start) * 1e3 / steps)
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

    model = ei.load(args.model, max_sequences=4)  # the default: onnx where prepared and faster on a CPU
    inexact = ei.load(args.model, backend="llama.cpp", max_sequences=4, kv=ei.KVOptions(exact=False))
    llama = model  # not prepared for onnxruntime: the default is llama.cpp itself
    if model.backend.name != "llama.cpp":
        llama = ei.load(args.model, backend="llama.cpp", max_sequences=4)
    models = (model, inexact) if llama is model else (model, llama, inexact)
    # the default's own way out of recomputing the answer, where the default is not llama.cpp
    inexact_default = () if llama is model else (ei.load(args.model, max_sequences=4,
                                                         kv=ei.KVOptions(exact=False)),)
    timelines = {id(m): Timeline(m) for m in (*models, *inexact_default)}
    answer = ei.SamplingParams(temperature=0, max_tokens=48)
    turn = ei.SamplingParams(temperature=0, max_tokens=8)
    # (case, model, idle seconds before the turn, whether the turn starts another chat)
    turns = (("no idle", 0.0, False), ("idle", args.idle, False), ("another chat, no idle", 0.0, True))
    cases = [(f"{name}, {label}", m, idle, other)
             for name, m in (("default", model), ("llama.cpp", llama))[: len(models) - 1]
             for label, idle, other in turns]
    cases.append(("llama.cpp, no idle, exact=False", inexact, 0.0, False))
    cases += [("default, no idle, exact=False", m, 0.0, False) for m in inexact_default]
    rows: dict[str, dict[str, Any]] = {}
    decode: dict[str, dict[str, list[float]]] = {}  # history -> backend -> ms per decoded token
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
        for m in models[:-1]:
            sample = {"ttft": prefill_only(m, prompt, 25), "prefill_tokens": 25}
            rows[f"{history}/{m.backend.name}, prefill-only"] = {"history": len(prompt), "idle_s": None,
                                                                 "samples": [sample]}
        for rnd in range(args.rounds):  # alternating, as the cases
            for m in models[:-1] if rnd % 2 == 0 else models[-2::-1]:
                steps = decode.setdefault(str(history), {}).setdefault(m.backend.name, [])
                m.engine.reset()
                steps.append(decode_step(m.backend, prompt))
    for m in (*models, *inexact_default):
        m.close()
    for row in rows.values():
        row["median"] = {k: statistics.median(s[k] for s in row["samples"]) for k in row["samples"][0]}
    # the default vs llama.cpp, case by case: median of per-round TTFT ratios
    paired = {}
    if len(models) == 3:
        for history in HISTORIES:
            for label, _, _ in turns:
                ours, theirs = (rows[f"{history}/{name}, {label}"]["samples"]
                                for name in ("default", "llama.cpp"))
                paired[f"{history}/{label}"] = statistics.median(
                    x["ttft"] / y["ttft"] for x, y in zip(ours, theirs, strict=True))
    data = {"machine": machine_info(), "model": args.model, "rounds": args.rounds, "rows": rows,
            "backend": model.backend.name, "default_vs_llama_cpp": paired,
            "decode_step_ms": {h: {name: statistics.median(v) for name, v in by.items()}
                               for h, by in decode.items()},
            "steal_ticks": steal_ticks() - steal_before}
    table = [[key.split("/")[0], fmt(row["history"], 0), key.split("/")[1], fmt(row["median"]["ttft"], 0),
              fmt(row["median"].get("render"), 1), fmt(row["median"].get("settle"), 0),
              fmt(row["median"].get("prefill"), 0), fmt(row["median"].get("prefill_tokens"), 0),
              fmt(row["median"].get("other"), 0)] for key, row in rows.items()]
    md = [f"# Follow-up turn TTFT ({args.model}, `ei.load` defaults: the {model.backend.name} backend)", "",
          markdown_table(["history", "prompt tokens", "case", "TTFT ms", "render ms", "settle wait ms",
                          "prefill ms", "prefill tokens", "other ms"], table), "",
          f"Medians of {args.rounds} rounds (the cases alternating). default: `ei.load(MODEL)`; llama.cpp: "
          "`backend=\"llama.cpp\"`; exact=False: `KVOptions(exact=False)`, reusing the previous answer's "
          "decode-computed KV as it is (no settling, not bit-exact vs a cold run). prefill-only: the "
          "follow-up's 25 new tokens evaluated alone on top of the history (the least a turn can cost "
          f"without a faster kernel). Steal ticks during the run: {data['steal_ticks']}.", "",
          "TTFT, the default / llama.cpp (median of per-round ratios): "
          + ("; ".join(f"{key.replace('/', ' tokens, ')} {ratio:.2f}x" for key, ratio in paired.items())
             or "the default is llama.cpp here") + ".", "",
          "Each answer token after that history (ms per one-token eval, median of "
          f"{args.rounds} alternating rounds of 8 x 4 steps): "
          + "; ".join(f"{h} tokens: " + ", ".join(f"{name} {ms:.1f}" for name, ms in by.items())
                      for h, by in data["decode_step_ms"].items()) + ".", "",
          "Run: `EDGEINFER_HOME=/tmp/eihome python -m benchmarks.followup --rounds 3` (the default runs on "
          "onnxruntime once `EDGEINFER_HOME=/tmp/eihome edgeinfer pull smollm2-135m-instruct` made its "
          "folder)"]
    publish("followup", data, "\n".join(md) + "\n")
    return data


if __name__ == "__main__":
    main()
