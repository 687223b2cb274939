"""Why a one-token step on onnxruntime is not bit-exact with a prefill, and what the one in-graph fix costs.

Exact speculation (a draft checked in one eval gives the tokens plain decoding gives) and exact reuse of an
answer's KV straight after it was decoded both need a one-token eval to compute what a several-token eval
(a prefill, a draft check) computes for the same positions. On the onnx backend it does not, so the engine
runs no exact speculation there and settles an answer's KV by recomputing it. This benchmark shows where
the two part and measures the only fix inside the graph, on the default chat model's prepared ONNX folder
(the GGUF's own weights, ``edgeinfer pull smollm2-135m-instruct``):

  where      every 3-D activation of the graph for the last position, a prefill of n tokens vs a prefill
             of n - 1 then a one-token step: the first node whose output differs, and the logits' max
             difference. (onnxruntime's GroupQueryAttention multiplies probabilities by V with
             ``MlasGemm``; for one query row MLAS takes its M=1 kernel, a multiply then an add, and for
             several rows its FMA kernel: the last bits differ, and 30 layers grow them.)
  fix        the same graph with the query/key/value row of a one-token step duplicated before
             GroupQueryAttention (one Pad node, the copy sits one position past the sequence and is
             dropped after it; seqlens and total length +1), so attention always runs several rows:
             bit-exactness of one-token steps vs the prefill, over several steps
  cost       decode step time of the fixed graph vs the shipped one at 300 / 1000 / 3000 tokens of
             history, each variant in a fresh worker process (two onnxruntime sessions in one process
             spin against each other), alternating A B B A for ``--rounds`` rounds; median of per-round
             ratios
  batching   whether the fixed graph can still decode several sequences in one run: onnxruntime's
             GroupQueryAttention refuses several new rows per sequence in a batch over a past
  speculation  what the fix would buy: the 12 tasks of ``benchmarks/speculative.py`` (128 greedy tokens),
             the shipped graph decoding plainly (what the default does) vs the fixed graph plainly and
             with prompt-lookup speculation ("auto", its checks exact there), in one process,
             alternating, ``--spec-rounds`` rounds; per task the median of per-round ratios, and whether
             the speculative text equals the fixed graph's plain text

Run:  EDGEINFER_HOME=/tmp/eihome python -m benchmarks.onnx_one_token [--rounds 5] [--spec-rounds 3]
Writes benchmarks/results/onnx_one_token.json and onnx_one_token.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    fmt,
    machine_info,
    markdown_table,
    median_summary,
    publish,
    quiet_logging,
    steal_ticks,
)

HISTORIES = (300, 1000, 3000)
PREFIX = 40  # tokens of the exactness checks
STEPS = 5  # one-token steps checked after a prefill of PREFIX - STEPS


def linked_folder(folder: Path, dest: Path, model: Any) -> Path:
    """``dest`` holding ``model`` as model.onnx beside the folder's other files (the weights hard-linked
    where the file system allows, copied otherwise; the backend refuses symlinks out of a folder)."""
    import onnx

    dest.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.name == "model.onnx" or not item.is_file():
            continue
        try:
            os.link(item, dest / item.name)
        except OSError:
            shutil.copy2(item, dest / item.name)
    onnx.save_model(model, str(dest / "model.onnx"))
    return dest


def duplicated_row_graph(model: Any) -> Any:
    """The graph with each GroupQueryAttention fed its input rows plus a copy of the last one (Pad, mode
    edge) and the copy's output dropped (Slice), seqlens_k and the total length one longer."""
    from onnx import helper, numpy_helper

    g = model.graph
    g.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (
        ("dup.pads", [0, 0, 0, 0, 1, 0]), ("dup.start", [0]), ("dup.end", [-1]), ("dup.axis", [1]))])
    g.initializer.append(numpy_helper.from_array(np.array(1, np.int32), "dup.one"))
    nodes, counts = [], {}
    for node in g.node:
        if node.op_type == "GroupQueryAttention":
            seqlens, total = node.input[5], node.input[6]
            for name in (seqlens, total):
                if name not in counts:
                    counts[name] = f"{name}.dup"
                    nodes.append(helper.make_node("Add", [name, "dup.one"], [counts[name]]))
            rows, out = node.input[0], node.output[0]
            nodes.append(helper.make_node("Pad", [rows, "dup.pads"], [f"{rows}.dup"], mode="edge"))
            inputs = list(node.input)
            inputs[0], inputs[5], inputs[6] = f"{rows}.dup", counts[seqlens], counts[total]
            del node.input[:]
            node.input.extend(inputs)
            node.output[0] = f"{out}.dup"
            nodes.append(node)
            nodes.append(helper.make_node("Slice", [f"{out}.dup", "dup.start", "dup.end", "dup.axis"], [out]))
        else:
            nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    return model


def probed_graph(model: Any) -> tuple[Any, list[tuple[str, str]]]:
    """The graph with every node's first output also a graph output: (model, [(output, op type)])."""
    from onnx import TypeProto, helper

    outputs = {o.name for o in model.graph.output}
    probes = [(node.output[0], node.op_type) for node in model.graph.node
              if node.output and node.output[0] and node.output[0] not in outputs]
    model.graph.output.extend(helper.make_value_info(name, TypeProto()) for name, _ in probes)
    return model, probes


class Session:
    """A plain onnxruntime session over a folder (copies of past KV, no IOBinding): for exactness."""

    def __init__(self, folder: Path) -> None:
        from edgeinfer.backends.onnx import open_session

        self.session = open_session(folder / "model.onnx", "cpu", None)
        names = [i.name for i in self.session.get_inputs()]
        self.keep = "num_logits_to_keep" in names
        self.layers = sum(1 for n in names if n.startswith("past_key_values.") and n.endswith(".key"))
        self.outputs = [o.name for o in self.session.get_outputs()]
        shape = next(i.shape for i in self.session.get_inputs() if i.name == "past_key_values.0.key")
        self.empty = np.zeros((1, shape[1], 0, shape[3]), np.float32)

    def run(self, tokens: list[int], past: list[np.ndarray] | None) -> tuple[dict[str, np.ndarray], list]:
        """Evaluate ``tokens`` after ``past``: every output, and the present KV cut to the real length."""
        held = 0 if past is None else past[0].shape[2]
        n = len(tokens)
        feed: dict[str, np.ndarray] = {
            "input_ids": np.array([tokens], np.int64), "attention_mask": np.ones((1, held + n), np.int64),
            "position_ids": np.arange(held, held + n, dtype=np.int64)[None]}
        if self.keep:
            feed["num_logits_to_keep"] = np.array(n, np.int64)
        for layer in range(self.layers):
            for k, kind in enumerate(("key", "value")):
                feed[f"past_key_values.{layer}.{kind}"] = self.empty if past is None else past[2 * layer + k]
        out = dict(zip(self.outputs, self.session.run(None, feed), strict=True))
        present = [out[f"present.{layer}.{kind}"][:, :, :held + n]
                   for layer in range(self.layers) for kind in ("key", "value")]
        return out, present


def where_they_part(folder: Path, work: Path, tokens: list[int]) -> dict[str, Any]:
    """The first node whose last-position output differs between a prefill and prefill + one step."""
    import onnx

    model, probes = probed_graph(onnx.load(str(folder / "model.onnx"), load_external_data=False))
    session = Session(linked_folder(folder, work / "probed", model))
    whole, _ = session.run(tokens, None)
    _, past = session.run(tokens[:-1], None)
    step, _ = session.run(tokens[-1:], past)
    first = None
    compared = 0
    for name, op in probes:
        a, b = whole.get(name), step.get(name)
        if a is None or b is None or a.ndim != 3 or a.shape[1] != len(tokens) or b.shape[1] != 1:
            continue
        compared += 1
        diff = float(np.abs(a[:, -1] - b[:, -1]).max())
        if diff > 0 and first is None:
            first = {"node": name, "op": op, "max_abs_diff": diff, "index": compared}
    logits = float(np.abs(whole["logits"][0, -1] - step["logits"][0, -1]).max())
    return {"activations_compared": compared, "first_differing": first, "logits_max_abs_diff": logits,
            "same_argmax": bool(whole["logits"][0, -1].argmax() == step["logits"][0, -1].argmax())}


def step_exactness(folder: Path, tokens: list[int]) -> dict[str, Any]:
    """Max |logits difference| of STEPS one-token steps vs a prefill of the same tokens."""
    session = Session(folder)
    whole, _ = session.run(tokens, None)
    _, past = session.run(tokens[:-STEPS], None)
    diffs = []
    for i in range(len(tokens) - STEPS, len(tokens)):
        out, past = session.run([tokens[i]], past)
        diffs.append(float(np.abs(out["logits"][0, -1] - whole["logits"][0, i]).max()))
    return {"steps": STEPS, "max_abs_diff": max(diffs), "per_step": diffs}


def batch_refusal(folder: Path) -> str | None:
    """The error of a two-sequence decode step on ``folder`` (None if it runs)."""
    from edgeinfer.backends.base import EvalItem
    from edgeinfer.backends.onnx import OnnxBackend

    backend = OnnxBackend(folder, n_threads=2, max_sequences=2)
    try:
        backend.grow_sequences(2)
        backend.eval([EvalItem(0, [1, 2, 3], 1), EvalItem(1, [4, 5], 1)])
        backend.eval([EvalItem(0, [7], 1), EvalItem(1, [8], 1)])
        return None
    except Exception as exc:  # noqa: BLE001 - the refusal is what is measured
        return str(exc).split("Status Message: ")[-1].strip()[:200]
    finally:
        backend.close()


WORKER = r"""
import json, sys
import numpy as np
from benchmarks.followup import decode_step
from edgeinfer.backends.onnx import OnnxBackend
folder, histories, windows = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
backend = OnnxBackend(folder, n_threads=2)
tokens = np.random.default_rng(0).integers(100, 20000, size=max(histories)).tolist()
print(json.dumps({str(held): decode_step(backend, tokens[:held], windows) for held in histories}))
"""


def step_times(folder: Path, windows: int) -> dict[str, float]:
    """Median decode step ms per history length, in a fresh process (one onnxruntime session)."""
    done = subprocess.run([sys.executable, "-c", WORKER, str(folder), json.dumps(HISTORIES), str(windows)],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                          timeout=900, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def speculation(shipped: Path, fixed: Path, rounds: int) -> dict[str, Any]:
    """The speculative benchmark's tasks: shipped plain vs fixed plain vs fixed with exact speculation."""
    import dataclasses

    from benchmarks.speculative import TASKS
    from edgeinfer.backends import onnx as onnx_backend
    from edgeinfer.model import Model

    grow = onnx_backend._KVPool.reserve

    def reserve(pool: Any, slots: int, positions: int) -> None:  # the copied row writes one position
        grow(pool, slots, positions + 1 if positions else 0)  # past the sequence's end

    def model(folder: Path, spec: str | None, exact: bool) -> Any:
        backend = onnx_backend.OnnxBackend(folder, n_threads=2, batch=False)
        if exact:  # the fixed graph's checks give the plain logits: measured above, and checked below
            backend.caps = dataclasses.replace(backend.caps, exact_verify=True)
        return Model(backend, name="smollm2", speculation=spec, settle=False)

    onnx_backend._KVPool.reserve = reserve  # type: ignore[method-assign]
    try:
        models = {"shipped": model(shipped, None, False), "fixed": model(fixed, None, True),
                  "fixed+spec": model(fixed, "auto", True)}
        prompts = {task: models["shipped"].chat_prompt([{"role": "user", "content": text}])
                   for task, (_, text) in TASKS.items()}
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {v: [] for v in models} for t in TASKS}
        turn = 0
        for _ in range(rounds):
            for task, tokens in prompts.items():
                names = list(models)
                for name in names[turn % 3:] + names[: turn % 3]:
                    models[name].engine.reset()
                    done = models[name].generate(tokens, max_tokens=128, temperature=0)
                    runs[task][name].append({"tok_s": done.stats.decode_tok_s, "tokens": done.tokens,
                                             "drafted": done.stats.draft_tokens,
                                             "accepted": done.stats.accepted_tokens})
                turn += 1
        for m in models.values():
            m.close()
    finally:
        onnx_backend._KVPool.reserve = grow  # type: ignore[method-assign]
    return {"rounds": rounds, "tokens": 128,
            "tasks": {task: task_summary(TASKS[task][0], by) for task, by in runs.items()}}


def task_summary(kind: str, by: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One task's runs: speeds paired with the shipped graph's plain run of the same round, and
    whether the speculative text is the fixed graph's plain text."""

    def paired(name: str) -> dict[str, Any]:
        return median_summary([a["tok_s"] / b["tok_s"] for a, b in zip(by[name], by["shipped"], strict=True)])

    spec, plain = by["fixed+spec"], by["fixed"]
    return {"kind": kind, "shipped_tok_s": median_summary([r["tok_s"] for r in by["shipped"]]),
            "fixed_vs_shipped": paired("fixed"), "spec_vs_shipped": paired("fixed+spec"),
            "spec_equals_fixed": all(a["tokens"] == b["tokens"] for a, b in zip(spec, plain, strict=True)),
            "fixed_equals_shipped": plain[0]["tokens"] == by["shipped"][0]["tokens"],
            "drafted": spec[-1]["drafted"], "accepted": spec[-1]["accepted"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=15, help="4-step windows timed per history length")
    parser.add_argument("--spec-rounds", type=int, default=3, help="speculation task rounds (0: none)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args(argv)
    quiet_logging()
    import onnx

    import edgeinfer as ei

    model = ei.load(args.model)
    if model.backend.name != "onnx":
        raise SystemExit(f"{args.model} runs on {model.backend.name}: "
                         f"run `edgeinfer pull {args.model}` first")
    shipped = Path(model.path)
    vocab = model.backend.caps.n_vocab
    model.close()
    tokens = np.random.default_rng(1).integers(100, min(vocab, 20000), size=PREFIX).tolist()
    data: dict[str, Any] = {"machine": machine_info(), "model": args.model, "folder": shipped.name}
    with tempfile.TemporaryDirectory(prefix="onnx-one-token-") as tmp:
        work = Path(tmp)
        data["where"] = where_they_part(shipped, work, tokens)
        graph = onnx.load(str(shipped / "model.onnx"), load_external_data=False)
        fixed = linked_folder(shipped, work / "fixed", duplicated_row_graph(graph))
        data["exactness"] = {name: step_exactness(folder, tokens)
                             for name, folder in (("shipped", shipped), ("fixed", fixed))}
        data["batching"] = {"shipped": batch_refusal(shipped), "fixed": batch_refusal(fixed)}
        samples: dict[str, list[dict[str, float]]] = {"shipped": [], "fixed": []}
        steal = steal_ticks()
        for r in range(args.rounds):
            order = ("shipped", "fixed") if r % 2 == 0 else ("fixed", "shipped")
            for name in order:
                samples[name].append(step_times(shipped if name == "shipped" else fixed, args.steps))
        if args.spec_rounds:
            data["speculation"] = speculation(shipped, fixed, args.spec_rounds)
        data["steal_ticks"] = steal_ticks() - steal
        data["loadavg_after"] = list(os.getloadavg())
    data["cost"] = {str(h): {
        "shipped_ms": median_summary([s[str(h)] for s in samples["shipped"]]),
        "fixed_ms": median_summary([s[str(h)] for s in samples["fixed"]]),
        "fixed_over_shipped": median_summary([f[str(h)] / s[str(h)] for f, s in
                                              zip(samples["fixed"], samples["shipped"], strict=True)]),
    } for h in HISTORIES}
    data["samples"] = samples
    publish("onnx_one_token", data, report(data))
    return data


def report(data: dict[str, Any]) -> str:
    where, exact, batching = data["where"], data["exactness"], data["batching"]
    first = where["first_differing"] or {}
    lines = [
        "# One-token steps on onnxruntime vs a prefill",
        "",
        f"`{data['model']}`'s prepared ONNX folder; {data['machine']['cpu_model']}; load after "
        f"{data['loadavg_after'][0]:.2f}, steal ticks during the timing {data['steal_ticks']}.",
        "",
        f"**Where they part:** of {where['activations_compared']} activations at the last position, the "
        f"first that differs is `{first.get('node')}` ({first.get('op')}, max |diff| "
        f"{first.get('max_abs_diff', 0):.2g}); the logits then differ by up to "
        f"{where['logits_max_abs_diff']:.3f} (same argmax: {where['same_argmax']}).",
        "",
        markdown_table(
            ["graph", f"max logits diff, {STEPS} one-token steps vs prefill",
             "two sequences in one decode run"],
            [(name, f"{exact[name]['max_abs_diff']:.3g}", "runs" if batching[name] is None else
              f"refused: {batching[name]}") for name in ("shipped", "fixed")]),
        "",
        "Decode step (ms, median over rounds; each variant in a fresh process, alternating):",
        "",
        markdown_table(
            ["history", "shipped", "fixed (row duplicated)", "fixed / shipped (paired)"],
            [(h, fmt(c["shipped_ms"]["median"], 2), fmt(c["fixed_ms"]["median"], 2),
              f"{fmt(c['fixed_over_shipped']['median'], 3)}x") for h, c in data["cost"].items()]),
    ]
    spec = data.get("speculation")
    if spec:
        rows = [(task, t["kind"], fmt(t["shipped_tok_s"]["median"]),
                 f"{fmt(t['fixed_vs_shipped']['median'], 2)}x", f"{fmt(t['spec_vs_shipped']['median'], 2)}x",
                 "yes" if t["spec_equals_fixed"] else "NO",
                 f"{t['drafted']} / {t['accepted']}") for task, t in spec["tasks"].items()]
        lines += ["", "What the fix would buy: decode tok/s on the speculative benchmark's tasks "
                  f"({spec['tokens']} greedy tokens, {spec['rounds']} rounds alternating), each / the "
                  "shipped graph decoding plainly (the default):", "",
                  markdown_table(["task", "kind", "shipped tok/s", "fixed, plain", "fixed + speculation",
                                  "speculative text = fixed plain text", "drafted / accepted"], rows)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
