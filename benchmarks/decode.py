"""Prefill and decode speed of edgeinfer's decode loop against llama-cpp-python, side by side.

Three variants run the same GGUF model, threads, n_ctx, n_batch and prompt token ids, interleaved
round by round, who goes first rotating (ABC, BCA, CAB, ...), so that drift hits all alike:

  A  edgeinfer: ``Model.stream(tokens, temperature=0)``; times from ``completion.stats``
  B  llama-cpp-python's high-level ``Llama(...)(tokens, stream=True)``; TTFT and chunk times
  C  a bare loop on llama-cpp-python's low-level bindings (llama_decode + greedy sampler chain)

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.decode [--model NAME|PATH] [--threads 2]
Writes benchmarks/results/decode.json and decode.md and prints the Markdown report.
"""

from __future__ import annotations

import argparse
import ctypes
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from benchmarks.common import (
    fmt,
    machine_info,
    markdown_table,
    median_summary,
    paired_ratios,
    quiet_logging,
    ratio,
    without_weight_repacking,
    write_report,
)
from edgeinfer.stats import Stats

# A story opening: a plain (non-chat) prompt whose continuation runs long without an end token.
PARAGRAPH = (
    "Once upon a time, in a small village at the edge of a great pine forest, there lived an old "
    "clockmaker named Elias and his granddaughter Mira. Every morning, before the sun rose over the "
    "hills, Elias opened the shutters of his workshop and wound the hundred clocks that hung on its "
    "walls. Mira loved the sound they made together, a soft and steady ticking like rain on the roof. "
    "One winter evening a stranger in a grey coat knocked at the door, carrying a clock that had "
    "stopped at exactly midnight and would not start again, no matter what anyone tried. "
)

VARIANTS = {
    "A": "edgeinfer Model.stream",
    "B": "llama-cpp-python Llama()",
    "C": "bare llama_cpp loop",
}


@dataclass
class Run:
    """One timed completion of one variant."""

    variant: str
    prompt_tokens: int
    computed_prompt_tokens: int
    completion_tokens: int
    prefill_s: float  # request start -> first token sampled (TTFT)
    decode_s: float  # first token sampled -> last token sampled
    finish_reason: str
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def stats(self) -> Stats:
        """The same numbers as edgeinfer's Stats, so rates are computed one way for every variant."""
        return Stats(prompt_tokens=self.prompt_tokens,
                     cached_tokens=self.prompt_tokens - self.computed_prompt_tokens,
                     completion_tokens=self.completion_tokens, prefill_s=self.prefill_s,
                     decode_s=self.decode_s)

    @property
    def prefill_tok_s(self) -> float:
        return self.stats().prefill_tok_s

    @property
    def decode_tok_s(self) -> float:
        return self.stats().decode_tok_s

    def sample(self) -> dict[str, Any]:
        """The numbers of this run for the JSON report (no token lists)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("tokens", "text")}
        d.update(prefill_tok_s=self.prefill_tok_s, decode_tok_s=self.decode_tok_s)
        return d


class StepTimer:
    """Wraps llama_decode and adds up the time of one-token (decode step) calls.

    Decode time minus this is what the loop itself costs per token, a figure that machine drift
    barely moves (unlike the tok/s of a shared 2-core machine).
    """

    def __init__(self, decode: Any) -> None:
        self.decode, self.step_s = decode, 0.0

    def __call__(self, ctx: Any, batch: Any) -> int:
        t = time.perf_counter()
        rc = self.decode(ctx, batch)
        if batch.n_tokens == 1:
            self.step_s += time.perf_counter() - t
        return rc


def loop_overhead_us(run: Run, step_s: float) -> float:
    """Microseconds per generated token spent outside llama_decode's decode steps."""
    steps = run.completion_tokens - 1
    return (run.decode_s - step_s) / steps * 1e6 if steps > 0 else 0.0


class _TimedLlama:
    """The llama_cpp module as edgeinfer's backend sees it, with llama_decode timed."""

    def __init__(self, timer: StepTimer) -> None:
        import llama_cpp

        self._module, self.llama_decode = llama_cpp, timer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


class Variant(Protocol):
    key: str

    def run(self, prompt: list[int], max_tokens: int) -> Run: ...

    def close(self) -> None: ...


class EdgeInferVariant:
    """A: edgeinfer's engine loop (prefix reuse, native sampler, text assembly, stats)."""

    key = "A"

    def __init__(self, path: Path, args: argparse.Namespace) -> None:
        import edgeinfer

        self.model = edgeinfer.load(path, n_threads=args.threads, n_ctx=args.n_ctx, n_batch=args.n_batch)
        import llama_cpp

        self.timer = StepTimer(llama_cpp.llama_decode)
        self.model.backend._ll = _TimedLlama(self.timer)

    def run(self, prompt: list[int], max_tokens: int) -> Run:
        m = self.model
        m.engine.reset()  # forget the previous request: a cold prefill every time
        self.timer.step_s = 0.0
        stream = m.stream(prompt, temperature=0, max_tokens=max_tokens)
        for _piece in stream:
            pass
        completion = stream.completion
        assert completion is not None
        s = completion.stats
        run = Run("A", s.prompt_tokens, s.computed_prompt_tokens, s.completion_tokens, s.prefill_s,
                  s.decode_s, completion.finish_reason, list(completion.tokens), completion.text,
                  {"cached_tokens": s.cached_tokens})
        run.extra["loop_overhead_us"] = loop_overhead_us(run, self.timer.step_s)
        return run

    def close(self) -> None:
        self.model.close()


class HighLevelVariant:
    """B: llama-cpp-python's ``Llama.__call__`` streaming completion."""

    key = "B"

    def __init__(self, path: Path, args: argparse.Namespace) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=args.n_ctx, n_threads=args.threads,
                         n_threads_batch=args.threads, n_batch=args.n_batch, verbose=False)

    def run(self, prompt: list[int], max_tokens: int) -> Run:
        llm = self.llm
        llm.set_cache(None)
        llm.reset()  # n_tokens = 0: no prefix match, the KV is cleared from position 0 on eval
        pieces: list[str] = []
        chunks = 0
        finish = ""
        t_first = t_last = 0.0
        t_start = time.perf_counter()
        for chunk in llm(prompt, max_tokens=max_tokens, temperature=0, repeat_penalty=1.0, stream=True):
            now = time.perf_counter()
            choice = chunk["choices"][0]
            if choice["text"]:
                if not t_first:
                    t_first = now
                t_last = now
                chunks += 1
                pieces.append(choice["text"])
            if choice["finish_reason"]:
                finish = choice["finish_reason"]
        # Tokens it evaluated after the prompt; the last sampled token is never evaluated
        # when the run ends at max_tokens, and an end token is sampled but not kept.
        evaluated = [int(t) for t in llm.input_ids[len(prompt) : llm.n_tokens]]
        n_generated = len(evaluated) + (1 if finish == "length" else 0)
        return Run("B", len(prompt), len(prompt), n_generated, t_first - t_start, t_last - t_first,
                   finish, evaluated, "".join(pieces), {"text_chunks": chunks})

    def close(self) -> None:
        self.llm.close()


class BareLoopVariant:
    """C: llama_decode + llama_sampler_sample in a plain Python loop, nothing else."""

    key = "C"

    def __init__(self, path: Path, args: argparse.Namespace) -> None:
        import llama_cpp as ll

        self.ll = ll
        ll.llama_backend_init()
        mparams = ll.llama_model_default_params()
        mparams.use_extra_bufts = False  # as edgeinfer loads (repacked AMX kernels SIGILL on some VMs)
        self.model = ll.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = args.n_ctx
        cparams.n_batch = cparams.n_ubatch = min(args.n_batch, args.n_ctx)
        cparams.n_threads = cparams.n_threads_batch = args.threads
        # Both other variants disable flash attention; the default (auto) would turn it on for CPU.
        cparams.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.context_params = {
            "n_ctx": cparams.n_ctx, "n_batch": cparams.n_batch, "n_ubatch": cparams.n_ubatch,
            "n_threads": cparams.n_threads, "n_threads_batch": cparams.n_threads_batch,
            "n_seq_max": cparams.n_seq_max, "kv_unified": cparams.kv_unified,
            "swa_full": cparams.swa_full, "flash_attn_type": cparams.flash_attn_type,
            "no_perf": cparams.no_perf,
        }
        self.n_batch = cparams.n_batch
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.mem = ll.llama_get_memory(self.ctx)
        self.batch = ll.llama_batch_init(self.n_batch, 0, 1)
        self.sampler = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        ll.llama_sampler_chain_add(self.sampler, ll.llama_sampler_init_greedy())
        self.timer = StepTimer(ll.llama_decode)

    def _fill(self, tokens: list[int], pos0: int) -> None:
        b = self.batch
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = False
        b.logits[len(tokens) - 1] = True
        b.n_tokens = len(tokens)

    def run(self, prompt: list[int], max_tokens: int) -> Run:
        ll, ctx, batch, sampler, vocab = self.ll, self.ctx, self.batch, self.sampler, self.vocab
        ll.llama_memory_clear(self.mem, True)
        ll.llama_sampler_reset(sampler)
        self.timer.step_s = 0.0
        decode, sample, is_eog = self.timer, ll.llama_sampler_sample, ll.llama_vocab_is_eog
        token_arr, pos_arr = batch.token, batch.pos
        generated: list[int] = []
        finish = "length"
        t_start = time.perf_counter()
        for start in range(0, len(prompt), self.n_batch):
            chunk = prompt[start : start + self.n_batch]
            self._fill(chunk, start)
            if decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on the prompt")
        idx = batch.n_tokens - 1
        pos = len(prompt)
        t_first = t_last = 0.0
        while True:
            tok = sample(sampler, ctx, idx)
            t_last = time.perf_counter()
            if not t_first:
                t_first = t_last
            if is_eog(vocab, tok):
                finish = "stop"
                break
            generated.append(tok)
            if len(generated) >= max_tokens:
                break
            if idx:  # first step after the prompt: a one-token batch that wants logits
                self._fill([tok], pos)
                idx = 0
            token_arr[0] = tok
            pos_arr[0] = pos
            if decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on a generated token")
            pos += 1
        run = Run("C", len(prompt), len(prompt), len(generated), t_first - t_start,
                  t_last - t_first if generated else 0.0, finish, generated, self.detokenize(generated))
        run.extra["loop_overhead_us"] = loop_overhead_us(run, self.timer.step_s)
        return run

    def detokenize(self, tokens: list[int]) -> str:
        buf = ctypes.create_string_buffer(256)
        out = b""
        for t in tokens:
            n = self.ll.llama_token_to_piece(self.vocab, t, buf, len(buf), 0, False)
            out += buf.raw[: max(n, 0)]
        return out.decode("utf-8", errors="replace")

    def close(self) -> None:
        ll = self.ll
        ll.llama_sampler_free(self.sampler)
        ll.llama_batch_free(self.batch)
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)


def build_prompt(model: Any, n_tokens: int) -> list[int]:
    """``n_tokens`` token ids of the repeated story paragraph (tokenized as edgeinfer does text)."""
    text = PARAGRAPH
    tokens = model.tokenize(text)
    while len(tokens) < n_tokens:
        text += PARAGRAPH
        tokens = model.tokenize(text)
    return tokens[:n_tokens]


def compare_outputs(runs: dict[str, list[Run]]) -> dict[str, Any]:
    """Whether the greedy outputs of A, B and C (and of every repeat) are identical."""
    ref = runs["A"][0]
    a_c = all(r.tokens == ref.tokens for r in runs["C"])
    a_a = all(r.tokens == ref.tokens for r in runs["A"])
    # B exposes the ids it evaluated (all but the last sampled token) and the text.
    a_b_tokens = all(r.tokens == ref.tokens[: len(r.tokens)] and r.completion_tokens == ref.completion_tokens
                     for r in runs["B"])
    a_b_text = all(r.text == ref.text for r in runs["B"])
    return {
        "identical": a_c and a_a and a_b_tokens and a_b_text,
        "A_repeats_identical": a_a,
        "A_vs_C_tokens": a_c,
        "A_vs_B_tokens": a_b_tokens,
        "A_vs_B_text": a_b_text,
        "completion_tokens": {k: sorted({r.completion_tokens for r in v}) for k, v in runs.items()},
        "finish_reasons": {k: sorted({r.finish_reason for r in v}) for k, v in runs.items()},
        "A_tokens": ref.tokens,
        "A_text": ref.text,
    }


def render_markdown(data: dict[str, Any]) -> str:
    """The report as Markdown: settings, per-variant medians, ratios, output check."""
    s, m, per = data["settings"], data["machine"], data["variants"]
    lines = [
        "# Decode benchmark: edgeinfer vs llama-cpp-python",
        "",
        f"Model `{s['model']}`; threads {s['threads']}; n_ctx {s['n_ctx']}; n_batch {s['n_batch']}; "
        f"prompt {s['prompt_tokens']} tokens; max_tokens {s['max_tokens']}; "
        f"{s['repeats']} interleaved repeats after {s['warmup']} warm-up round(s).",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['platform']}; "
        f"llama-cpp-python {m['llama_cpp_python']}; edgeinfer {m['edgeinfer']}.",
        "",
    ]
    rows = []
    for key, v in per.items():
        p, d, t = v["prefill_tok_s"], v["decode_tok_s"], v["ttft_ms"]
        rows.append([
            f"{key}: {VARIANTS[key]}",
            f"{fmt(p['median'])} ({fmt(p['min'])}-{fmt(p['max'])})",
            f"{fmt(d['median'])} ({fmt(d['min'])}-{fmt(d['max'])})",
            fmt(t["median"]),
            "/".join(str(n) for n in v["completion_tokens"]),
        ])
    lines.append(markdown_table(
        ["variant", "prefill tok/s median (min-max)", "decode tok/s median (min-max)", "TTFT ms median",
         "tokens generated"], rows))
    lines += ["", "Ratios (>1 means the first is faster): of medians, and median of per-round pairs.", ""]
    rrows = []
    for name, r in data["ratios"].items():
        rrows.append([name, fmt(r["prefill_of_medians"], 3), fmt(r["prefill_paired"]["median"], 3),
                      fmt(r["decode_of_medians"], 3), fmt(r["decode_paired"]["median"], 3)])
    lines.append(markdown_table(
        ["ratio", "prefill (medians)", "prefill (paired)", "decode (medians)", "decode (paired)"], rrows))
    overhead = {k: v["loop_overhead_us"] for k, v in per.items() if v.get("loop_overhead_us")}
    if overhead:
        lines += ["", "Loop cost per generated token outside llama_decode (sampling, bookkeeping, text, "
                  "stop checks; drift-free): " + "; ".join(
                      f"{k} {fmt(o['median'])} µs (min {fmt(o['min'])})" for k, o in overhead.items())]
    c = data["output_check"]
    if c["identical"] is None:
        return "\n".join([*lines, "", "Output check needs all three variants: not run."])
    lines += [
        "",
        f"Greedy outputs identical across A, B, C and repeats: **{'yes' if c['identical'] else 'NO'}** "
        f"(A=C tokens: {c['A_vs_C_tokens']}; A=B tokens: {c['A_vs_B_tokens']}; A=B text: {c['A_vs_B_text']}; "
        f"finish: {c['finish_reasons']}).",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="models.lock name or .gguf path")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--n-batch", type=int, default=512)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds of every variant first")
    p.add_argument("--variants", default="ABC", help="which variants to run, e.g. AC")
    p.add_argument("--no-write", action="store_true", help="print only; do not write results/")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet_logging()
    without_weight_repacking()  # variant B's Llama loads as edgeinfer does
    from edgeinfer.loader import locate_model

    path = locate_model(args.model).path
    factories = {"A": EdgeInferVariant, "B": HighLevelVariant, "C": BareLoopVariant}
    keys = [k for k in "ABC" if k in args.variants.upper()]
    variants: list[Variant] = [factories[k](path, args) for k in keys]
    tokenizer = next((v.model for v in variants if isinstance(v, EdgeInferVariant)), None)
    if tokenizer is None:
        import edgeinfer

        tokenizer = edgeinfer.load(path, n_threads=args.threads, n_ctx=args.n_ctx)
    prompt = build_prompt(tokenizer, args.prompt_tokens)

    runs: dict[str, list[Run]] = {k: [] for k in keys}
    t0 = time.perf_counter()
    for round_no in range(args.warmup + args.repeats):
        shift = round_no % len(variants)  # rotate who goes first: ABC, BCA, CAB, ...
        for v in variants[shift:] + variants[:shift]:
            r = v.run(prompt, args.max_tokens)
            if round_no >= args.warmup:
                runs[v.key].append(r)
    elapsed = time.perf_counter() - t0
    extra_info: dict[str, Any] = {}
    for v in variants:
        if isinstance(v, BareLoopVariant):
            extra_info["C_context_params"] = v.context_params
        v.close()

    per: dict[str, Any] = {}
    for k, rs in runs.items():
        per[k] = {
            "name": VARIANTS[k],
            "prefill_tok_s": median_summary([r.prefill_tok_s for r in rs]),
            "decode_tok_s": median_summary([r.decode_tok_s for r in rs]),
            "ttft_ms": median_summary([r.prefill_s * 1000 for r in rs]),
            "loop_overhead_us": (median_summary([r.extra["loop_overhead_us"] for r in rs])
                                 if "loop_overhead_us" in rs[0].extra else None),
            "completion_tokens": sorted({r.completion_tokens for r in rs}),
            "samples": [r.sample() for r in rs],
        }
    ratios: dict[str, Any] = {}
    for num, den in (("A", "C"), ("A", "B"), ("B", "C")):
        if num in runs and den in runs:
            ratios[f"{num}/{den}"] = {
                "prefill_of_medians": ratio(per[num]["prefill_tok_s"]["median"],
                                            per[den]["prefill_tok_s"]["median"]),
                "prefill_paired": paired_ratios([r.prefill_tok_s for r in runs[num]],
                                                [r.prefill_tok_s for r in runs[den]]),
                "decode_of_medians": ratio(per[num]["decode_tok_s"]["median"],
                                           per[den]["decode_tok_s"]["median"]),
                "decode_paired": paired_ratios([r.decode_tok_s for r in runs[num]],
                                               [r.decode_tok_s for r in runs[den]]),
            }
    check = compare_outputs(runs) if {"A", "B", "C"} <= set(runs) else {"identical": None}
    data = {
        "benchmark": "decode",
        "machine": machine_info(),
        "settings": {
            "model": str(args.model), "model_path": str(path), "threads": args.threads,
            "n_ctx": args.n_ctx, "n_batch": args.n_batch, "prompt_tokens": len(prompt),
            "max_tokens": args.max_tokens, "repeats": args.repeats, "warmup": args.warmup,
            "order": "".join(keys) + " rotated by one each round", "temperature": 0, **extra_info,
        },
        "elapsed_s": elapsed,
        "variants": per,
        "ratios": ratios,
        "output_check": check,
        "prompt_token_ids": prompt,
    }
    markdown = render_markdown(data)
    print(markdown)
    if not args.no_write:
        paths = write_report("decode", data, markdown)
        print(f"\nwrote {paths[0]} and {paths[1]} ({elapsed:.0f} s of runs)")
    return data


if __name__ == "__main__":
    main()
