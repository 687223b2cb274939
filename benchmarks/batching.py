"""Continuous batching: aggregate and per-stream tok/s and TTFT for 1, 2, 4, 8 concurrent streams.

Part 1, side by side in one run (variants alternate round by round, who goes first rotating):
  raw         llama.cpp's own multi-sequence decode on the low-level API: each prompt prefilled,
              then one llama_decode per step carrying one token of every stream (greedy argmax)
  engine      edgeinfer: n threads call ``Model.generate`` at once; the engine batches them
  sequential  edgeinfer: the same n requests one after another
with the same GGUF file, threads, context settings (one KV stream per sequence, no flash attention,
no weight repacking: edgeinfer's defaults) and prompts. The engine's greedy tokens are checked
against the raw loop's.

Part 2: which artifact / KV layout scales best with concurrency (engine only): the bundled Q4_1,
Q4_0 (with and without llama.cpp's AVX2 weight repacking), Q8_0 and F16 made from it with
llama.cpp's quantizer (speed-representative: the weights come from Q4_1), and the unified KV layout.

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.batching [--rounds 3] [--tokens 64]
Writes benchmarks/results/batching.json and batching.md.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import fmt, machine_info, markdown_table, paired_ratios, quiet_logging, write_report

PROMPTS = [
    "Once upon a time, in a small village at the edge of a great pine forest, there lived",
    "The history of the old lighthouse on the northern cliffs begins in the winter of",
    "In the kitchen of the little restaurant on Rue Saint-Antoine, the chef was preparing",
    "The expedition left the harbour at dawn, and for three days the ship sailed north until",
    "My grandfather kept a notebook in which he wrote down every bird he saw, and one spring",
    "The train stopped in the middle of the valley, and the passengers looked out at the snow",
    "When the museum reopened after the long renovation, the first visitors were surprised to",
    "The letter arrived on a rainy Tuesday, written in a hand that nobody in the family knew,",
]
LEVELS = (1, 2, 4, 8)


class RawLoop:
    """llama.cpp multi-sequence decode with nothing around it (the issue's reference)."""

    def __init__(self, path: Path, threads: int, n_ctx: int, n_seq: int) -> None:
        import llama_cpp as ll

        self.ll = ll
        ll.llama_backend_init()
        mparams = ll.llama_model_default_params()
        mparams.use_extra_bufts = False  # as edgeinfer's default
        self.model = ll.llama_model_load_from_file(str(path).encode(), mparams)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx, cparams.n_seq_max = n_ctx * n_seq, n_seq
        cparams.n_batch = cparams.n_ubatch = 512
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.kv_unified, cparams.swa_full = False, True
        cparams.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as edgeinfer's default
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        self.mem = ll.llama_get_memory(self.ctx)
        self.batch = ll.llama_batch_init(512, 0, n_seq)
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))

    def _argmax(self, row: int) -> int:
        import numpy as np

        ptr = self.ll.llama_get_logits_ith(self.ctx, row)
        return int(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())

    def _decode(self, entries: list[tuple[int, int, int]]) -> None:
        b = self.batch
        for i, (tok, pos, seq) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, True
            b.seq_id[i][0] = seq
        b.n_tokens = len(entries)
        if self.ll.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def run(self, prompts: list[list[int]], n_tokens: int) -> dict[str, Any]:
        self.ll.llama_memory_clear(self.mem, True)
        t0 = time.perf_counter()
        nexts, ttft = [], []
        for seq, prompt in enumerate(prompts):
            self._decode([(t, p, seq) for p, t in enumerate(prompt)])
            nexts.append(self._argmax(len(prompt) - 1))
            ttft.append(time.perf_counter() - t0)
        outs = [[t] for t in nexts]
        t_decode = time.perf_counter()
        for step in range(n_tokens - 1):
            self._decode([(outs[s][-1], len(prompts[s]) + step, s) for s in range(len(prompts))])
            for s in range(len(prompts)):
                outs[s].append(self._argmax(s))
        wall = time.perf_counter() - t0
        decode_s = time.perf_counter() - t_decode
        return {
            "wall_s": wall,
            "tokens": outs,
            "ttft_s": statistics.median(ttft),
            "stream_tok_s": (n_tokens - 1) / decode_s,
            "agg_tok_s": len(prompts) * n_tokens / wall,
        }

    def close(self) -> None:
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)


def run_engine(model: Any, prompts: list[list[int]], n_tokens: int, *, concurrent: bool) -> dict[str, Any]:
    """The requests at once (threads) or one after another; greedy, exactly n_tokens each."""
    model.engine.reset()
    results: list[Any] = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts) + 1)

    def one(i: int) -> None:
        if concurrent:
            barrier.wait()
        results[i] = model.generate(prompts[i], max_tokens=n_tokens, temperature=0)

    t0 = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
    else:
        for i in range(len(prompts)):
            one(i)
    wall = time.perf_counter() - t0
    total = sum(r.stats.completion_tokens for r in results)
    return {
        "wall_s": wall,
        "tokens": [r.tokens for r in results],
        "ttft_s": statistics.median(r.stats.ttft_s for r in results),
        "stream_tok_s": statistics.median(r.stats.decode_tok_s for r in results),
        "agg_tok_s": total / wall,
    }


def make_variants(source: Path, folder: Path) -> dict[str, Path]:
    """Q4_0, Q8_0 and F16 files re-quantized from the bundled Q4_1 (cached by name)."""
    import llama_cpp as ll

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, ftype in (
        ("Q4_0", ll.LLAMA_FTYPE_MOSTLY_Q4_0),
        ("Q8_0", ll.LLAMA_FTYPE_MOSTLY_Q8_0),
        ("F16", ll.LLAMA_FTYPE_MOSTLY_F16),
    ):
        target = folder / f"{source.stem.rsplit('.', 1)[0]}.{name}.gguf"
        if not target.exists():
            params = ll.llama_model_quantize_default_params()
            params.ftype, params.allow_requantize, params.nthread = ftype, True, 2
            tmp = target.with_suffix(".part")
            if ll.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
                raise RuntimeError(f"quantizing to {name} failed")
            tmp.rename(target)
        out[name] = target
    return out


def part1(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    import edgeinfer as ei

    model = ei.load(
        path,
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        max_sequences=max(LEVELS),
        kv=ei.KVOptions(settle=False),
        speculation=None,
    )
    raw = RawLoop(path, args.threads, args.n_ctx, max(LEVELS))
    token_prompts = [model.tokenize(p) for p in PROMPTS]
    samples: dict[int, dict[str, list[dict]]] = {
        n: {"raw": [], "engine": [], "sequential": []} for n in LEVELS
    }
    raw.run(token_prompts[:2], 4)  # warm up: first decodes allocate buffers
    run_engine(model, token_prompts[:2], 4, concurrent=True)
    mismatches = 0
    for rnd in range(args.rounds):
        for n in LEVELS:
            prompts = token_prompts[:n]
            order = ["raw", "engine", "sequential"]
            order = order[rnd % 3 :] + order[: rnd % 3]
            for variant in order:
                if variant == "raw":
                    r = raw.run(prompts, args.tokens)
                else:
                    r = run_engine(model, prompts, args.tokens, concurrent=variant == "engine")
                samples[n][variant].append(r)
            mismatches += sum(
                a != b
                for a, b in zip(
                    samples[n]["raw"][-1]["tokens"], samples[n]["engine"][-1]["tokens"], strict=True
                )
            )
            print(
                f"round {rnd + 1} n={n}: "
                + ", ".join(f"{v} {samples[n][v][-1]['agg_tok_s']:.1f}" for v in order),
                flush=True,
            )
    raw.close()
    model.close()
    table = {}
    for n in LEVELS:
        s = samples[n]
        med = {v: statistics.median(x["agg_tok_s"] for x in s[v]) for v in s}
        table[n] = {
            "agg_tok_s": med,
            "stream_tok_s": {v: statistics.median(x["stream_tok_s"] for x in s[v]) for v in s},
            "ttft_s": {v: statistics.median(x["ttft_s"] for x in s[v]) for v in s},
            "engine_vs_raw": paired_ratios(
                [x["agg_tok_s"] for x in s["engine"]], [x["agg_tok_s"] for x in s["raw"]]
            ),
            "engine_vs_sequential": paired_ratios(
                [x["agg_tok_s"] for x in s["engine"]], [x["agg_tok_s"] for x in s["sequential"]]
            ),
        }
    return {"levels": table, "outputs_differing_from_raw": mismatches}


def part2(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    import edgeinfer as ei

    files = {"Q4_1": path, **make_variants(path, Path(args.work) / "quants")}
    configs = {
        "Q4_1": (files["Q4_1"], {}),
        "Q4_1 unified KV": (files["Q4_1"], {"kv_unified": True}),
        "Q4_0": (files["Q4_0"], {}),
        "Q4_0 repacked": (files["Q4_0"], {"repack": True}),
        "Q8_0": (files["Q8_0"], {}),
        "F16": (files["F16"], {}),
    }
    curves: dict[str, dict[int, list[float]]] = {name: {n: [] for n in LEVELS} for name in configs}
    models = {
        name: ei.load(
            f,
            # unified: the sequences share n_ctx cells, so give them as many as the split layout has
            n_ctx=args.n_ctx * (max(LEVELS) if opts.get("kv_unified") else 1),
            n_threads=args.threads,
            max_sequences=max(LEVELS),
            kv=ei.KVOptions(settle=False),
            speculation=None,
            **opts,
        )
        for name, (f, opts) in configs.items()
    }
    for rnd in range(args.rounds):
        for n in LEVELS:
            names = list(configs)
            names = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in names:
                r = run_engine(
                    models[name],
                    [models[name].tokenize(p) for p in PROMPTS[:n]],
                    args.tokens,
                    concurrent=True,
                )
                curves[name][n].append(r["agg_tok_s"])
        print(f"part 2 round {rnd + 1} done", flush=True)
    for m in models.values():
        m.close()
    return {name: {n: statistics.median(v) for n, v in c.items()} for name, c in curves.items()}


def render(data: dict[str, Any]) -> str:
    p1 = data["part1"]["levels"]
    rows = []
    for n, r in p1.items():
        rows.append(
            [
                n,
                fmt(r["agg_tok_s"]["raw"]),
                fmt(r["agg_tok_s"]["engine"]),
                fmt(r["agg_tok_s"]["sequential"]),
                fmt(r["engine_vs_raw"]["median"], 3),
                fmt(r["engine_vs_sequential"]["median"], 2),
                fmt(r["stream_tok_s"]["engine"]),
                fmt(r["ttft_s"]["engine"] * 1000, 0),
                fmt(r["ttft_s"]["sequential"] * 1000, 0),
            ]
        )
    out = [
        f"# Continuous batching — {data['model']}, {data['threads']} threads, {data['tokens']} tokens "
        f"per stream, {data['rounds']} rounds",
        "",
        markdown_table(
            [
                "streams",
                "raw llama.cpp tok/s",
                "engine tok/s",
                "sequential tok/s",
                "engine/raw (paired)",
                "engine/sequential",
                "per-stream tok/s",
                "TTFT ms (engine)",
                "TTFT ms (sequential)",
            ],
            rows,
        ),
        "",
        "Engine greedy outputs differing from the raw loop's: "
        f"{data['part1']['outputs_differing_from_raw']}.",
        "",
        "## Aggregate tok/s by artifact and KV layout (engine)",
        "",
    ]
    p2 = data["part2"]
    out.append(
        markdown_table(
            ["artifact", *[f"{n} streams" for n in LEVELS], "8 vs 1"],
            [[name, *[fmt(c[n]) for n in LEVELS], fmt(c[8] / c[1], 2)] for name, c in p2.items()],
        )
    )
    out += ["", f"Machine: {data['machine']['cpu_model']}, load {data['machine']['loadavg']}."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default="/tmp/edgeinfer-bench")
    parser.add_argument("--skip-part2", action="store_true")
    args = parser.parse_args(argv)
    quiet_logging()
    from edgeinfer.loader import locate_model

    path = locate_model(args.model, offline=True).path
    data: dict[str, Any] = {
        "model": path.name,
        "threads": args.threads,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "machine": machine_info(),
    }
    data["part1"] = part1(path, args)
    data["part2"] = {} if args.skip_part2 else part2(path, args)
    md = render(data)
    write_report("batching", data, md)
    print(md)
    return data


if __name__ == "__main__":
    main()
