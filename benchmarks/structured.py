"""Structured output (JSON schema): validity, decode speed and compile time, edgeinfer vs llama-cpp-python.

Schemas: ``benchmarks/data/structured_schemas.json`` (35 schemas, each with a task prompt; objects closed
with ``additionalProperties: false``, OpenAI strict style). The prompt a model sees is the task followed
by the schema as compact JSON:
  chat model (SmolLM2):  one user message "<task>\\nAnswer with a JSON object that follows this JSON
                         schema: <schema>", through the GGUF's chat template (both libraries);
  base model (Gemma 3):  the plain text "<task>\\nThe answer is a JSON object that follows this JSON
                         schema: <schema>\\nJSON:\\n".
Each model is loaded once per process, by both libraries, from the same GGUF: edgeinfer
``ei.load(name, n_threads=2, n_ctx=2048, speculation=None, kv=KVOptions(settle=False))`` and
``llama_cpp.Llama(path, n_ctx=2048, n_threads=2, verbose=False)`` with llama.cpp's extra buffer types off
(``without_weight_repacking``: the AMX repacking they bring dies with SIGILL on this VM; edgeinfer runs
without them too). Greedy decoding (temperature 0, repeat penalty 1.0 in both), up to ``--tokens`` tokens.

Four variants per schema, in every round, their order rotating schema by schema (A B A B ...):
  ei-json     edgeinfer ``complete_chat`` / ``generate`` with ``json_schema=schema`` (llguidance)
  ei-free     the same call without ``json_schema``
  llama-json  llama-cpp-python ``create_chat_completion(response_format={"type": "json_object",
              "schema": schema})``, or for the base model ``create_completion(grammar=
              LlamaGrammar.from_json_schema(schema))`` (llama.cpp's GBNF grammar sampler)
  llama-free  the same call without a schema or grammar
Validity (first round's outputs): ``json.loads`` succeeds and ``jsonschema.validate`` passes (``uniqueItems``
included: edgeinfer keeps it while decoding, llama.cpp's GBNF ignores it). A schema that edgeinfer
refuses (``InvalidRequestError``) counts as "refused (clear error)" for edgeinfer and runs normally on
llama-cpp-python. A schema whose GBNF
llama.cpp cannot parse counts as "GBNF rejected" for llama-cpp-python and is not run there (the request
would segfault). An output cut at ``--tokens`` is invalid (reported as such). edgeinfer writes compact
JSON (no choice of whitespace), llama-cpp-python's grammar lets the model choose its whitespace.
Decode tok/s: edgeinfer's ``Completion.stats.decode_tok_s`` ((completion tokens - 1) / (last token time -
first token time); forced tokens are output tokens and count). llama-cpp-python the same way: the
benchmark wraps the ``Llama`` object's ``sample`` method (called once per generated token, end token
included) and takes (samples - 1) / (last sample time - first sample time); this leaves out the prompt's
prefill and the schema-to-grammar conversion, as edgeinfer's figure does. ``usage`` and wall time are kept
in the raw results. The speed ratio constrained / unconstrained is taken per schema and round, its median
over rounds per schema, then the median over the schemas edgeinfer accepts (for llama-cpp-python, less
any whose grammar llama.cpp cannot parse: such a request segfaults, so it is not run).
Compile time per schema: edgeinfer ``output_format(json_schema=s)`` + ``Constraint(fmt, backend)`` (the
vocabulary llguidance needs is built once per backend before, timed on its own and excluded), and the
first mask computed after it; llama-cpp-python ``LlamaGrammar.from_json_schema`` (schema -> GBNF text, in
Python) and that plus llama.cpp's grammar parse (``llama_sampler_init_grammar``, what every constrained
request pays when its sampler is built). Median over rounds per schema, then median and p99 over schemas.
The run records the load average and the hypervisor's steal ticks at its start and end, and the CPU time
other processes took while it ran; the report warns when the machine was busy.

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.structured [--rounds 2] [--tokens 256]
      [--models smollm2-135m-instruct gemma-3-270m] [--limit N] [--only NAME ...]
Writes benchmarks/results/structured.json and structured.md (full per-run data: results/raw/).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import (
    fmt,
    machine_info,
    markdown_table,
    median_summary,
    quiet_logging,
    steal_ticks,
    without_weight_repacking,
    write_report,
)

SCHEMAS = Path(__file__).resolve().parent / "data" / "structured_schemas.json"
MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
BASE_MODELS = {"gemma-3-270m"}  # no chat template: a plain prompt, ``generate`` / ``create_completion``
VARIANTS = ("ei-json", "ei-free", "llama-json", "llama-free")
EXCERPT = 300  # characters of an invalid output kept in the report


class SampleClock:
    """Times every token llama-cpp-python samples (``Llama.generate`` calls ``self.sample`` once per
    generated token), so that its decode rate leaves out prefill and grammar conversion."""

    def __init__(self, llm: Any) -> None:
        self.times: list[float] = []
        inner = llm.sample

        def timed(*args: Any, **kwargs: Any) -> int:
            token = inner(*args, **kwargs)
            self.times.append(time.perf_counter())
            return token

        llm.sample = timed

    def rate(self) -> float:
        steps = len(self.times) - 1
        span = self.times[-1] - self.times[0] if steps > 0 else 0.0
        return steps / span if span > 0 else 0.0


# ----------------------------------------------------------------------------------- machine load
def _cpu_ticks() -> tuple[int, int]:
    """(busy, steal) ticks of all CPUs so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


def _own_cpu_s() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


class MachineLoad:
    """Load average at the start and the end, steal ticks and the CPU time other processes took."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.load0 = [round(x, 2) for x in os.getloadavg()]
        self.t0, (self.busy0, self.steal0), self.own0 = time.monotonic(), _cpu_ticks(), _own_cpu_s()

    def done(self) -> dict[str, Any]:
        busy, steal = _cpu_ticks()
        wall = time.monotonic() - self.t0
        others = max(0.0, (busy - self.busy0) / self.tick - (_own_cpu_s() - self.own0))
        cores = os.cpu_count() or 1
        share = others / (wall * cores) if wall else 0.0
        steal_ticks_run = steal - self.steal0
        return {"loadavg_start": self.load0, "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                "wall_s": wall, "others_cpu_s": others, "others_share": share,
                "steal_ticks_during_run": steal_ticks_run, "steal_ticks_total": steal_ticks(),
                "quiet": share < 0.05 and steal_ticks_run < 0.01 * wall * self.tick}


# ------------------------------------------------------------------------------------------ schemas
def load_schemas(limit: int | None = None, only: list[str] | None = None) -> list[dict[str, Any]]:
    """The schema set; ``only`` picks by name, ``limit`` keeps N spread evenly over it (first and last
    included, so that a short run still covers several features and a refused schema)."""
    items = json.loads(SCHEMAS.read_text(encoding="utf-8"))["schemas"]
    if only:
        unknown = sorted(set(only) - {s["name"] for s in items})
        if unknown:
            raise SystemExit(f"unknown schema(s): {', '.join(unknown)}")
        items = [s for s in items if s["name"] in only]
    if limit is not None and 0 < limit < len(items):
        last = len(items) - 1
        picks = sorted({round(i * last / max(1, limit - 1)) for i in range(limit)}) if limit > 1 else [0]
        items = [items[i] for i in picks]
    return items


def chat_messages(item: dict[str, Any]) -> list[dict[str, str]]:
    schema = json.dumps(item["schema"])
    text = f"{item['prompt']}\nAnswer with a JSON object that follows this JSON schema: {schema}"
    return [{"role": "user", "content": text}]


def base_prompt(item: dict[str, Any]) -> str:
    schema = json.dumps(item["schema"])
    return f"{item['prompt']}\nThe answer is a JSON object that follows this JSON schema: {schema}\nJSON:\n"


def check(text: str, schema: dict[str, Any]) -> str | None:
    """None if ``text`` is JSON valid against ``schema``; else why not."""
    import jsonschema

    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"not JSON: {exc}"
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return f"schema: {exc.message}"
    return None


# ------------------------------------------------------------------------------------------ runners
class Pair:
    """One model loaded by both libraries, and the calls each variant makes."""

    def __init__(self, name: str, threads: int, tokens: int) -> None:
        import llama_cpp

        import edgeinfer as ei

        self.name, self.tokens, self.base = name, tokens, name in BASE_MODELS
        t0 = time.perf_counter()
        self.model = ei.load(name, backend="llama.cpp", n_threads=threads, n_ctx=2048, speculation=None,
                             kv=ei.KVOptions(settle=False))
        self.load_s = {"edgeinfer": time.perf_counter() - t0}
        self.path = str(self.model.path)
        without_weight_repacking()
        t0 = time.perf_counter()
        self.llm = llama_cpp.Llama(self.path, n_ctx=2048, n_threads=threads, verbose=False)
        self.load_s["llama_cpp"] = time.perf_counter() - t0
        self.clock = SampleClock(self.llm)

    def close(self) -> None:
        self.model.close()
        self.llm.close()

    def ours(self, item: dict[str, Any], constrained: bool) -> dict[str, Any]:
        options: dict[str, Any] = {"temperature": 0, "repeat_penalty": 1.0, "max_tokens": self.tokens}
        if constrained:
            options["json_schema"] = item["schema"]
        t0 = time.perf_counter()
        if self.base:
            done = self.model.generate(base_prompt(item), **options)
        else:
            done = self.model.complete_chat(chat_messages(item), **options)
        wall = time.perf_counter() - t0
        s = done.stats
        return {"text": done.text, "finish": done.finish_reason, "tok_s": s.decode_tok_s,
                "tokens": s.completion_tokens, "forced": s.forced_tokens, "wall_s": wall,
                "parsed": done.parsed is not None}

    def reference(self, item: dict[str, Any], constrained: bool) -> dict[str, Any]:
        import llama_cpp

        options: dict[str, Any] = {"temperature": 0, "repeat_penalty": 1.0, "max_tokens": self.tokens}
        self.clock.times = []
        t0 = time.perf_counter()
        if self.base:
            if constrained:
                options["grammar"] = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(item["schema"]),
                                                                             verbose=False)
            out = self.llm.create_completion(base_prompt(item), **options)
            text = out["choices"][0]["text"]
        else:
            if constrained:
                options["response_format"] = {"type": "json_object", "schema": item["schema"]}
            out = self.llm.create_chat_completion(chat_messages(item), **options)
            text = out["choices"][0]["message"]["content"] or ""
        wall = time.perf_counter() - t0
        return {"text": text, "finish": out["choices"][0]["finish_reason"], "tok_s": self.clock.rate(),
                "tokens": out["usage"]["completion_tokens"], "samples": len(self.clock.times),
                "wall_s": wall, "usage_tok_s": out["usage"]["completion_tokens"] / wall if wall else 0.0}


# ------------------------------------------------------------------------------------- compile time
def compile_times(pair: Pair, schemas: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """Per schema: edgeinfer compile (output_format + Constraint) and first mask, llama-cpp-python's
    schema -> GBNF conversion and that plus llama.cpp's grammar parse, ms (median over rounds)."""
    import llama_cpp

    from edgeinfer.errors import InvalidRequestError
    from edgeinfer.structured import Constraint, output_format, vocabulary_for

    backend = pair.model.backend
    t0 = time.perf_counter()
    vocabulary_for(backend)  # built once per backend; the first Constraint would pay for it
    vocab_ms = 1000 * (time.perf_counter() - t0)
    Constraint(output_format(json_schema={"type": "object"}), backend).allowed()  # warm-up, untimed
    vocab = pair.llm._model.vocab
    per: dict[str, dict[str, Any]] = {}
    for r in range(rounds):
        for item in schemas:
            row = per.setdefault(item["name"], {"ei_ms": [], "ei_mask_ms": [], "gbnf_ms": [],
                                                "gbnf_parse_ms": [], "refused": None, "llama_error": None})
            text = json.dumps(item["schema"])
            t0 = time.perf_counter()
            try:
                constraint = Constraint(output_format(json_schema=item["schema"]), backend)
            except InvalidRequestError as exc:
                row["refused"] = str(exc)
            else:
                t1 = time.perf_counter()
                constraint.allowed()
                t2 = time.perf_counter()
                row["ei_ms"].append(1000 * (t1 - t0))
                row["ei_mask_ms"].append(1000 * (t2 - t1))
            t0 = time.perf_counter()
            grammar = llama_cpp.LlamaGrammar.from_json_schema(text, verbose=False)
            t1 = time.perf_counter()
            with _stderr_silenced():  # llama.cpp prints a grammar it cannot parse, whole
                sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar._grammar.encode(), b"root")
            t2 = time.perf_counter()
            row["gbnf_ms"].append(1000 * (t1 - t0))
            if sampler:
                llama_cpp.llama_sampler_free(sampler)
                row["gbnf_parse_ms"].append(1000 * (t2 - t0))
            else:  # llama-cpp-python would go on with a NULL sampler: the request segfaults
                row["llama_error"] = ("llama.cpp cannot parse the GBNF llama-cpp-python makes of this schema "
                                      "(a request with it segfaults)")
        print(f"{pair.name}: compile round {r + 1}/{rounds} done", flush=True)
    medians = {
        name: {key: (statistics.median(v) if v else None) if isinstance(v, list) else v
               for key, v in row.items()}
        for name, row in per.items()
    }

    def spread(key: str) -> dict[str, float | None]:
        values = [m[key] for m in medians.values() if m[key] is not None]
        return {"median": statistics.median(values) if values else None, "p99": _p99(values),
                "max": max(values) if values else None, "n": len(values)}

    return {"vocabulary_ms": vocab_ms, "per_schema": medians, "samples": per,
            **{key: spread(key) for key in ("ei_ms", "ei_mask_ms", "gbnf_ms", "gbnf_parse_ms")}}


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a while (llama.cpp's C code writes there)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _p99(values: list[float]) -> float | None:
    """The 99th percentile (linear interpolation between closest ranks)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = 0.99 * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# ---------------------------------------------------------------------------------- validity + speed
def run_model(pair: Pair, schemas: list[dict[str, Any]], rounds: int, skip: dict[str, set[str]],
              turn: int) -> tuple[dict[str, dict[str, list[dict]]], int]:
    """Every variant on every schema, ``rounds`` times, the variants' order rotating schema by schema;
    ``skip`` names, per schema, the engines ("ei", "llama") that cannot run it constrained: their
    unconstrained run is left out too (nothing to pair it with)."""
    runs: dict[str, dict[str, list[dict]]] = {s["name"]: {v: [] for v in VARIANTS} for s in schemas}
    calls = {
        "ei-json": lambda item: pair.ours(item, True),
        "ei-free": lambda item: pair.ours(item, False),
        "llama-json": lambda item: pair.reference(item, True),
        "llama-free": lambda item: pair.reference(item, False),
    }
    for r in range(rounds):
        t0 = time.perf_counter()
        for item in schemas:
            name = item["name"]
            order = VARIANTS[turn % 4:] + VARIANTS[:turn % 4]
            turn += 1
            for variant in order:
                if variant.split("-")[0] in skip[name]:
                    continue
                runs[name][variant].append(calls[variant](item))
            last = {v: runs[name][v][-1] for v in VARIANTS if runs[name][v]}
            print(f"{pair.name} round {r + 1} {name}: "
                  + ", ".join(f"{v} {x['tokens']} tok {x['tok_s']:.1f} tok/s" for v, x in last.items()),
                  flush=True)
        print(f"{pair.name}: round {r + 1}/{rounds} took {time.perf_counter() - t0:.0f} s", flush=True)
    return runs, turn


def _ratio_per_round(a: list[dict], b: list[dict]) -> float | None:
    ratios = [x["tok_s"] / y["tok_s"] for x, y in zip(a, b, strict=True) if x["tok_s"] and y["tok_s"]]
    return statistics.median(ratios) if ratios else None


def summarize(pair: Pair, schemas: list[dict[str, Any]], runs: dict, compiled: dict) -> dict[str, Any]:
    per: dict[str, dict[str, Any]] = {}
    for item in schemas:
        name, r = item["name"], runs[item["name"]]
        comp = compiled["per_schema"][name]
        row: dict[str, Any] = {"covers": item["covers"], "refused": comp["refused"],
                               "llama_error": comp["llama_error"]}
        for engine, variant in (("ei", "ei-json"), ("llama", "llama-json")):
            if not r[variant]:
                row[engine] = {"status": "refused" if engine == "ei" else "grammar_error"}
                continue
            first = r[variant][0]
            error = check(first["text"], item["schema"])
            row[engine] = {
                "status": "valid" if error is None else "invalid", "error": error,
                "finish": first["finish"], "tokens": first["tokens"], "text": first["text"],
                "same_every_round": all(x["text"] == first["text"] for x in r[variant]),
                "ratio": _ratio_per_round(r[variant], r[variant.replace("json", "free")]),
                "tok_s_json": statistics.median(x["tok_s"] for x in r[variant]),
                "tok_s_free": statistics.median(x["tok_s"] for x in r[variant.replace("json", "free")]),
                "free_tokens": r[variant.replace("json", "free")][0]["tokens"],
            }
            if engine == "ei":
                row[engine]["forced"] = first["forced"]
                row[engine]["forced_share"] = first["forced"] / first["tokens"] if first["tokens"] else 0.0
                row[engine]["parsed"] = first["parsed"]
        per[name] = row
    accepted = [n for n, row in per.items() if row["ei"]["status"] != "refused"]

    def tally(engine: str) -> dict[str, int]:
        out = {"total": len(per), "valid": 0, "invalid": 0, "refused": 0, "grammar_error": 0,
               "cut_at_max_tokens": 0}
        for row in per.values():
            out[row[engine]["status"]] += 1
            if row[engine].get("finish") == "length":
                out["cut_at_max_tokens"] += 1
        return out

    def ratios(engine: str) -> dict[str, Any]:
        values = [per[n][engine]["ratio"] for n in accepted if per[n][engine].get("ratio") is not None]
        return median_summary(values)

    def rates(engine: str, key: str) -> float | None:
        values = [per[n][engine][key] for n in accepted if per[n][engine].get(key)]
        return statistics.median(values) if values else None

    forced = [per[n]["ei"]["forced_share"] for n in accepted]
    return {
        "model": pair.name, "gguf": Path(pair.path).name, "load_s": pair.load_s,
        "validity": {"edgeinfer": tally("ei"), "llama_cpp": tally("llama")},
        "speed": {
            "schemas": len(accepted),
            "ei_ratio": ratios("ei"), "llama_ratio": ratios("llama"),
            "ei_tok_s_json": rates("ei", "tok_s_json"), "ei_tok_s_free": rates("ei", "tok_s_free"),
            "llama_tok_s_json": rates("llama", "tok_s_json"),
            "llama_tok_s_free": rates("llama", "tok_s_free"),
            "forced_share_mean": statistics.fmean(forced) if forced else None,
            "ei_json_tokens_median": statistics.median(per[n]["ei"]["tokens"] for n in accepted)
            if accepted else None,
        },
        "compile": {k: v for k, v in compiled.items() if k not in ("per_schema", "samples")},
        "per_schema": per,
        "compile_per_schema": compiled["per_schema"],
        # one record per request and per compile (long lists: in the raw results only)
        "runs": [{"schema": name, "variant": v, "round": i, **x}
                 for name, by in runs.items() for v, xs in by.items() for i, x in enumerate(xs)],
        "compile_samples": [{"schema": name, "key": key, "round": i, "ms": ms}
                            for name, row in compiled["samples"].items() for key, values in row.items()
                            if isinstance(values, list) for i, ms in enumerate(values)],
    }


# ------------------------------------------------------------------------------------------- report
def _valid_cell(v: dict[str, int]) -> str:
    extra = [f"{v['invalid']} invalid"] if v["invalid"] else []
    extra += [f"{v['refused']} refused (clear error)"] if v["refused"] else []
    if v["grammar_error"]:
        extra += [f"{v['grammar_error']} GBNF rejected by llama.cpp: request segfaults"]
    extra += [f"{v['cut_at_max_tokens']} cut at max_tokens"] if v["cut_at_max_tokens"] else []
    return f"{v['valid']}/{v['total']}" + (f" ({', '.join(extra)})" if extra else "")


def _same(model: dict[str, Any], engine: str) -> str:
    rows = [row[engine] for row in model["per_schema"].values() if "same_every_round" in row[engine]]
    return f"{sum(r['same_every_round'] for r in rows)}/{len(rows)}"


def _one_line(text: str) -> str:
    """An output excerpt for a Markdown code span: one line, no backticks."""
    return text[:EXCERPT].replace("\n", " ").replace("`", "'")


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(data: dict[str, Any]) -> str:
    load, models = data["machine"]["load"], data["models"]
    warning = "" if load["quiet"] else (
        "\n\n**Warning: the machine was busy while this ran** (other processes took "
        f"{load['others_cpu_s']:.0f} CPU s = {100 * load['others_share']:.0f}% of the machine, steal ticks "
        f"{load['steal_ticks_during_run']}): timings and ratios are not reliable; run it again on a quiet "
        "machine.")
    out = [
        f"# Structured output (JSON schema): edgeinfer (llguidance) vs llama-cpp-python (GBNF)\n\n"
        f"{data['schemas']} schemas ({data['schemas_file']}), greedy, up to {data['tokens']} tokens, "
        f"{data['threads']} threads, {data['rounds']} round(s), variants alternating schema by schema (order "
        f"rotating). {data['machine']['cpu_model']}, {data['machine']['cpu_count']} CPUs. Load average at "
        f"the start {load['loadavg_start']}, at the end {load['loadavg_end']}; steal ticks during the run "
        f"{load['steal_ticks_during_run']}; CPU time of other processes {load['others_cpu_s']:.0f} s "
        f"({100 * load['others_share']:.1f}% of the machine over {load['wall_s']:.0f} s).{warning}",
        "",
        "## Validity (first round's output parses and validates with jsonschema)",
        "",
        markdown_table(
            ["model", "edgeinfer json_schema", "llama-cpp-python (schema -> GBNF)"],
            [[m["model"], _valid_cell(m["validity"]["edgeinfer"]), _valid_cell(m["validity"]["llama_cpp"])]
             for m in models.values()]),
        "",
        "Constrained greedy output the same in every round: "
        + "; ".join(f"{m['model']}: edgeinfer {_same(m, 'ei')}, llama-cpp-python {_same(m, 'llama')}"
                    for m in models.values()) + ".",
        "",
        "## Decode speed, constrained / unconstrained (same prompt; target for edgeinfer >= 1.0x)",
        "",
        markdown_table(
            ["model", "schemas", "edgeinfer json/free (min-max)", "edgeinfer tok/s json / free",
             "forced tokens (mean share)", "llama-cpp-python json/free (min-max)",
             "llama-cpp-python tok/s json / free", "edgeinfer met"],
            [[m["model"], s["schemas"],
              f"{_x(s['ei_ratio']['median'])} ({_x(s['ei_ratio']['min'])}-{_x(s['ei_ratio']['max'])})",
              f"{fmt(s['ei_tok_s_json'])} / {fmt(s['ei_tok_s_free'])}",
              "-" if s["forced_share_mean"] is None else f"{100 * s['forced_share_mean']:.0f}%",
              f"{_x(s['llama_ratio']['median'])} ({_x(s['llama_ratio']['min'])}-"
              f"{_x(s['llama_ratio']['max'])})",
              f"{fmt(s['llama_tok_s_json'])} / {fmt(s['llama_tok_s_free'])}",
              "-" if s["ei_ratio"]["median"] is None else ("yes" if s["ei_ratio"]["median"] >= 1.0 else "NO")]
             for m in models.values() for s in [m["speed"]]]),
        "",
        "Ratios: per schema the median over rounds of the same-round ratio, then the median (min-max) over "
        "the schemas edgeinfer accepts; tok/s: medians over those schemas. Decode tok/s = (tokens - 1) / "
        "(last token time - first token time), prefill excluded; edgeinfer's counts forced tokens (appended "
        "without a sampling step), llama-cpp-python's is timed at its per-token `sample` calls.",
        "",
        "## Compile time per schema, ms (median over rounds per schema; median / p99 over schemas)",
        "",
        markdown_table(
            ["model", "vocabulary (once per model)", "edgeinfer output_format + Constraint",
             "edgeinfer first mask", "llama-cpp-python from_json_schema", "+ llama.cpp grammar parse"],
            [[m["model"], fmt(c["vocabulary_ms"]),
              *(f"{fmt(c[k]['median'], 2)} / {fmt(c[k]['p99'], 2)}"
                for k in ("ei_ms", "ei_mask_ms", "gbnf_ms", "gbnf_parse_ms"))]
             for m in models.values() for c in [m["compile"]]]),
    ]
    for m in models.values():
        rows = []
        for name, row in m["per_schema"].items():
            ei, ll, comp = row["ei"], row["llama"], m["compile_per_schema"][name]
            rows.append([
                name, ", ".join(row["covers"]),
                ei["status"] + ("" if ei.get("finish") in (None, "stop") else f" ({ei['finish']})"),
                ll["status"].replace("_", " ")
                + ("" if ll.get("finish") in (None, "stop") else f" ({ll['finish']})"),
                "-" if ei["status"] == "refused" else f"{ei['tokens']} ({100 * ei['forced_share']:.0f}%)",
                _x(ei.get("ratio")), _x(ll.get("ratio")), fmt(comp["ei_ms"], 2),
                fmt(comp["gbnf_parse_ms"], 2)])
        out += ["", f"### {m['model']} ({m['gguf']}): per schema", "",
                markdown_table(["schema", "covers", "edgeinfer", "llama-cpp-python",
                                "edgeinfer tokens (forced)", "edgeinfer json/free", "llama json/free",
                                "edgeinfer compile ms", "llama GBNF + parse ms"], rows)]
        bad = [(name, engine, row[key]) for name, row in m["per_schema"].items()
               for engine, key in (("edgeinfer", "ei"), ("llama-cpp-python", "llama"))
               if row[key]["status"] == "invalid"]
        if bad:
            out += ["", "Invalid outputs:", ""]
            out += [f"- {name}, {engine} (finish {r['finish']}): {r['error'][:160]}; output "
                    f"`{_one_line(r['text'])}`" for name, engine, r in bad]
        refusals = sorted({row["refused"] for row in m["per_schema"].values() if row["refused"]})
        if refusals:
            out += ["", "edgeinfer refusals (InvalidRequestError): " + "; ".join(refusals)]
        errors = [name for name, row in m["per_schema"].items() if row["llama_error"]]
        if errors:
            out += ["", f"llama-cpp-python, not run constrained ({', '.join(errors)}): llama.cpp cannot "
                    "parse the GBNF that `LlamaGrammar.from_json_schema` makes of the schema (e.g. a `\\.` "
                    "escape from a regex `pattern`); llama-cpp-python then samples with a NULL grammar "
                    "sampler and the process dies with SIGSEGV."]
    out += ["", f"Run: `{data['run']}`"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256, help="max_tokens of every request")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="N schemas spread evenly over the set")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these schemas only")
    args = parser.parse_args(argv)
    quiet_logging()
    schemas = load_schemas(args.limit, args.only)
    info, load = machine_info(), MachineLoad()
    models: dict[str, Any] = {}
    turn = 0
    for name in args.models:
        t0 = time.perf_counter()
        pair = Pair(name, args.threads, args.tokens)
        try:
            compiled = compile_times(pair, schemas, args.rounds)
            skip = {n: {e for e, why in (("ei", c["refused"]), ("llama", c["llama_error"])) if why}
                    for n, c in compiled["per_schema"].items()}
            runs, turn = run_model(pair, schemas, args.rounds, skip, turn)
            models[name] = summarize(pair, schemas, runs, compiled)
        finally:
            pair.close()
        models[name]["seconds"] = time.perf_counter() - t0
    info["load"] = load.done()
    run = ("EDGEINFER_HOME=/tmp/eihome python -m benchmarks.structured"
           + (f" --rounds {args.rounds}" if args.rounds != 2 else "")
           + (f" --tokens {args.tokens}" if args.tokens != 256 else "")
           + (f" --models {' '.join(args.models)}" if list(args.models) != list(MODELS) else "")
           + (f" --limit {args.limit}" if args.limit else "")
           + (f" --only {' '.join(args.only)}" if args.only else ""))
    data = {"schemas": len(schemas), "schemas_file": str(SCHEMAS.relative_to(SCHEMAS.parents[2])),
            "schema_names": [s["name"] for s in schemas], "rounds": args.rounds, "tokens": args.tokens,
            "threads": args.threads, "run": run, "machine": info, "models": models}
    md = markdown(data)
    write_report("structured", data, md)
    print(md)
    return data


if __name__ == "__main__":
    main()
