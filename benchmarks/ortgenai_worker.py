"""Child process of benchmarks/onnx.py, run by the onnxruntime-genai venv's Python (not the project's).

It imports only the standard library, numpy, onnxruntime and onnxruntime_genai: never edgeinfer.

  tokenize MODEL_DIR TEXT_FILE OUT_JSON
      the text's token ids with onnxruntime-genai's own tokenizer (og.Tokenizer)
  logits MODEL_DIR IDS_NPY WINDOW THREADS OUT_NPY
      every position's logits of the ids (float32, tokens x vocab), each window of WINDOW tokens one
      prefill from an empty cache, by a plain onnxruntime session on the builder's model.onnx
  serve MODEL_DIR THREADS
      loads the model once with onnxruntime-genai's runtime, then answers one JSON line on stdout per
      request line on stdin: {"prompt": [ids], "tokens": N, "max_length": L} -> timings of a greedy
      completion (og.Generator), each reply line prefixed with "@@ "; an empty line or EOF ends it
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPLY = "@@ "  # marks protocol lines on stdout, as benchmarks/onnx.py reads them


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))


def tokenize(folder: Path, text_file: Path, out: Path) -> None:
    """Write onnxruntime-genai's token ids of the text as a JSON list."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    ids = og.Tokenizer(model).encode(text_file.read_text(encoding="utf-8"))
    out.write_text(json.dumps([int(t) for t in ids]), encoding="utf-8")


def logits(folder: Path, ids_file: Path, window: int, threads: int, out: Path) -> None:
    """Write all positions' logits of the ids, window by window from an empty KV cache."""
    import onnxruntime as ort

    decoder = _config(folder)["model"]["decoder"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(folder / decoder["filename"]), options,
                                   providers=["CPUExecutionProvider"])
    names = {i.name: i for i in session.get_inputs()}
    kv_dtype = np.float16 if "float16" in names["past_key_values.0.key"].type else np.float32
    empty = np.zeros((1, int(decoder["num_key_value_heads"]), 0, int(decoder["head_size"])), dtype=kv_dtype)
    ids = np.load(ids_file).astype(np.int64)
    rows: list[np.ndarray] = []
    for start in range(0, len(ids), window):
        chunk = ids[start:start + window][None, :]
        feed: dict[str, np.ndarray] = {"input_ids": chunk, "attention_mask": np.ones_like(chunk)}
        if "position_ids" in names:
            feed["position_ids"] = np.arange(chunk.shape[1], dtype=np.int64)[None, :]
        feed.update({name: empty for name in names if name.startswith("past_key_values.")})
        rows.append(session.run(["logits"], feed)[0][0].astype(np.float32, copy=False))
    np.save(out, np.concatenate(rows))


def serve(folder: Path, threads: int) -> None:
    """Answer timing requests (JSON lines) with onnxruntime-genai's generator loop."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    print(REPLY + json.dumps({"ready": True, "version": og.__version__}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        request = json.loads(line)
        prompt, n_tokens = [int(t) for t in request["prompt"]], int(request["tokens"])
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=int(request["max_length"]), do_sample=False)
        generator = og.Generator(model, params)
        # Same marks as edgeinfer's Stats: start -> first token sampled (TTFT), then first -> last token.
        # append_tokens runs the prompt; each generate_next_token runs the previous token, then samples.
        start = time.perf_counter()
        generator.append_tokens(prompt)
        produced, first, last = 0, 0.0, 0.0
        while produced < n_tokens and not generator.is_done():
            generator.generate_next_token()
            last = time.perf_counter()
            produced += 1
            if produced == 1:
                first = last
        sequence = [int(t) for t in generator.get_sequence(0)]
        del generator
        reply = {"prompt_tokens": len(prompt), "cached_tokens": 0, "completion_tokens": produced,
                 "prefill_s": first - start, "decode_s": last - first, "tokens": sequence[len(prompt):]}
        print(REPLY + json.dumps(reply), flush=True)


def main(argv: list[str]) -> None:
    """Dispatch on the first argument (tokenize, logits or serve)."""
    mode, folder = argv[0], Path(argv[1])
    if mode == "tokenize":
        tokenize(folder, Path(argv[2]), Path(argv[3]))
    elif mode == "logits":
        logits(folder, Path(argv[2]), int(argv[3]), int(argv[4]), Path(argv[5]))
    elif mode == "serve":
        serve(folder, int(argv[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
