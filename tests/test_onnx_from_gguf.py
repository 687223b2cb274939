"""The default chat model's GGUF (SmolLM2-135M-Instruct, Q4_1 + a Q8_0 embedding) converted straight to an
edgeinfer ONNX folder (converters/to_onnx/from_gguf.py, no torch), for real: every matrix keeps the GGUF's
blocks bit for bit, the tokenizer.json built from the GGUF's metadata tokenizes as llama.cpp does, and
the logits follow llama.cpp's on the same file closely (both quantize activations to int8 per block of
32, each its own way, so they are close, not identical)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from hf_fixtures import cache_key, cached_build, converters_digest, gguf_source  # noqa: E402

from edgeinfer.backends.base import EvalItem  # noqa: E402

pytestmark = pytest.mark.slow
TEXTS = [
    "Hello, world! How are you doing today?",
    "The year 2024 had 366 days; π ≈ 3.14159, and 1,000,000 > 999999.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. Ça va? ¿Qué tal?",
    "Привет, как дела? 日本語のテキストです。中文也可以吗？한국어도 됩니다. مرحبا بالعالم",
    "Emoji: 🎉🚀👍🏽 and a family 👨‍👩‍👧‍👦",
    "def fib(n):\n    if n < 2:\n        return n\n\n\n\treturn fib(n-1)  ",
    "   leading spaces and trailing   \n\n  \r\n tabs\t\there",
    "It's they're we've I'm you'll he'd IT'S THEY'RE",
    "<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|endoftext|>text<|im_end|><repo_name>foo<file_sep>bar",
]


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return gguf_source("smollm2")[0]


@pytest.fixture(scope="module")
def folder() -> Path:
    """The GGUF as an ONNX folder, cached across sessions by the GGUF and the converter's sources."""
    from edgeinfer_converters.to_onnx.from_gguf import gguf_to_onnx

    source, sha256 = gguf_source("smollm2")
    built = cached_build("onnx-gguf-smollm2", cache_key("onnx-gguf", sha256, converters_digest()),
                         lambda out: gguf_to_onnx(source, out / "model"))
    return built / "model"


@pytest.fixture(scope="module")
def llama(gguf_path: Path):  # noqa: ANN201
    from edgeinfer.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(gguf_path, n_ctx=256, n_batch=256, n_threads=2, max_sequences=1, n_outputs=256)
    yield backend
    backend.close()


def test_every_matrix_keeps_the_gguf_blocks_exactly(gguf_path: Path) -> None:
    """Each matrix's blocks stand for exactly the GGUF's dequantized weights (q/k rows in HF order), and
    the Q4_1 / Q8_0 ones are carried over as they are, not re-quantized."""
    import gguf
    from edgeinfer_converters.to_onnx.from_gguf import GgufCheckpoint, unpermute_rows

    ckpt = GgufCheckpoint(gguf_path)
    kinds = set()
    for name, tensor in ckpt.tensors.items():
        if len(tensor.data.shape) != 2:
            continue
        weight = ckpt.load(name)
        kinds.add(weight.source)
        assert weight.exact, name
        want = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = ckpt.config["num_attention_heads" if "q_proj" in name else "num_key_value_heads"]
            want = want[unpermute_rows(want.shape[0], heads)]
        np.testing.assert_array_equal(weight.dequantize(), want, err_msg=name)
    assert kinds == {"Q4_1", "Q8_0"}


def test_tokenizer_json_tokenizes_as_llama_cpp(folder: Path, llama) -> None:  # noqa: ANN001
    from edgeinfer_converters.quality import quality_text

    from edgeinfer.backends.onnx_tokens import TokenizerJson

    tok = TokenizerJson(folder / "tokenizer.json")
    for text in [*TEXTS, quality_text()]:
        want = llama.tokenize(text, add_special=True, parse_special=True)
        assert tok.encode(text, add_special=True) == want, text
    for token in range(0, 49152, 97):  # the bytes each token stands for, as the engine streams them
        assert tok.token_bytes(token) == llama.token_bytes(token), token


def test_graph_is_int8_activation_matmulnbits_with_integer_zero_points(folder: Path) -> None:
    """Every matmul is MatMulNBits at accuracy level 4 (the packed int8 kernel), none with float zero
    points (onnxruntime's unpacked, dequantize-every-run path); the folder says what it holds."""
    import json

    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 30 * 4 + 1  # qkv, o, gate+up, down per layer, and the tied head
    assert all(next(a.i for a in n.attribute if a.name == "accuracy_level") == 4 for n in nbits)
    assert all(len(n.input) == 3 for n in nbits)  # no zero points: the default (8 / 128)
    assert not any(n.op_type == "Gemm" for n in model.graph.node)
    meta = json.loads((folder / "edgeinfer.json").read_text())
    assert meta["quantization"] == "gguf-Q4_1" and meta["weights"] == {"Q4_1": 30 * 7, "Q8_0": 1}
    assert "<|im_start|>" in meta["chat_template"]
    assert (meta["bos_token_id"], meta["eos_token_id"]) == (1, 2)


def test_logits_follow_llama_cpp_on_the_same_gguf(folder: Path, llama) -> None:  # noqa: ANN001
    """Teacher-forced next-token logits over 255 positions of the quality text, against llama.cpp on the
    GGUF (measured: mean KL 0.0045, top-1 0.96, max |diff| 1.6 of logits up to 40; onnxruntime with fp32
    activations instead of int8 gives 0.0032: what is left is the two int8 schemes, not the weights;
    the int4 re-quantized from float weights: KL 0.048, top-1 0.87)."""
    from edgeinfer_converters.quality import QualityAccumulator, quality_text
    from edgeinfer_converters.to_onnx.quality import OnnxScorer

    tokens = llama.tokenize(quality_text(), add_special=True)[:256]
    llama.kv_drop(0)
    rows = llama.eval([EvalItem(0, tokens, n_outputs=len(tokens))])
    ref = np.stack([llama.logits(r).copy() for r in rows])
    cand = OnnxScorer(folder, window=256, n_threads=2).logits(tokens)
    acc = QualityAccumulator()
    acc.add(ref[:-1], cand[:-1], np.asarray(tokens[1:]))
    q = acc.result()
    assert q.mean_kl < 0.01, q
    assert q.top1_agreement > 0.93, q
    assert np.abs(ref - cand).max() < 3.0


def test_a_prefill_split_anywhere_gives_the_kv_of_a_whole_one(folder: Path) -> None:
    """What lets the prompt cache reuse a prefix to the token here (``reuse_align`` 1): a prompt prefilled
    in two pieces at any split, the last of 2+ tokens, leaves bit-identical KV and logits; a last piece
    of one token runs other kernels (``exact_min_batch`` 2)."""
    from edgeinfer.backends.onnx import OnnxBackend

    backend = OnnxBackend(folder, n_ctx=512, n_threads=2, max_sequences=1)
    try:
        assert (backend.caps.reuse_align, backend.caps.exact_min_batch) == (1, 2)
        tokens = backend.tokenize(" ".join(TEXTS))[:160]

        def prefill(*pieces: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
            backend.kv_truncate(0, 0)
            for piece in pieces:
                (row,) = backend.eval([EvalItem(0, piece)])
            return backend.logits(row).copy(), backend._pool.filled(0)

        whole, kv = prefill(tokens)
        for split in (1, 3, 17, 64, 101, 158):
            logits, held = prefill(tokens[:split], tokens[split:])
            assert (logits == whole).all() and all((a == b).all() for a, b in zip(held, kv, strict=True))
        logits, _ = prefill(tokens[:-1], tokens[-1:])
        assert not (logits == whole).all()
    finally:
        backend.close()


def test_an_interrupted_eval_leaves_the_sequence_as_it_was(folder: Path) -> None:
    """``interrupt()`` stops an interruptible eval (onnxruntime's RunOptions.terminate, checked between
    nodes): the sequence keeps its length, and the same eval afterwards gives the uninterrupted logits;
    outside ``interruptible()`` nothing stops an eval."""
    from edgeinfer.backends.base import EvalInterrupted
    from edgeinfer.backends.onnx import OnnxBackend

    backend = OnnxBackend(folder, n_ctx=512, n_threads=2, max_sequences=1)
    try:
        prompt = backend.tokenize(TEXTS[0] + TEXTS[2] + TEXTS[7])[:64]
        backend.eval([EvalItem(0, prompt[:16])])
        backend.interrupt()  # no interruptible eval running: nothing to stop
        with backend.interruptible():
            backend.interrupt()
            with pytest.raises(EvalInterrupted):
                backend.eval([EvalItem(0, prompt[16:])])
        assert backend.seq_length(0) == 16
        (row,) = backend.eval([EvalItem(0, prompt[16:])])
        after = backend.logits(row).copy()
        backend.kv_truncate(0, 16)
        (row,) = backend.eval([EvalItem(0, prompt[16:])])
        assert (backend.logits(row) == after).all() and backend.seq_length(0) == len(prompt)
    finally:
        backend.close()


def test_a_request_interrupts_idle_settling_on_onnx_and_reuse_stays_exact(folder: Path) -> None:
    """The engine on this backend: a follow-up sent while the answer is being settled stops the settling
    run between two nodes, and every turn still equals its cold output (the llama.cpp test's body)."""
    from test_prompt_cache_llama import cold_model, interrupts_settling_and_stays_exact

    with cold_model(folder) as cold:
        interrupts_settling_and_stays_exact(folder, cold)


def test_greedy_choices_differ_from_llama_cpp_only_at_near_ties(folder: Path, gguf_path: Path, llama) -> None:  # noqa: ANN001
    """Along llama.cpp's own greedy continuation (teacher-forced), the ONNX folder picks the same next
    token, or one llama.cpp scores within 0.5 of its pick (llama.cpp's prefill and decode kernels flip
    such near-ties between themselves: free-running outputs part after 5-30 tokens either way)."""
    from edgeinfer_converters.to_onnx.quality import OnnxScorer

    import edgeinfer as ei

    scorer = OnnxScorer(folder, window=256, n_threads=2)
    model = ei.load(gguf_path, n_threads=2, kv=ei.KVOptions(settle=False), speculation=None)
    try:
        for prompt in ("The three primary colors are", "def fibonacci(n):", "List of the planets:"):
            tokens = model.tokenize(prompt) + model.generate(prompt, max_tokens=48, temperature=0).tokens
            llama.kv_drop(0)
            rows = llama.eval([EvalItem(0, tokens, n_outputs=len(tokens))])
            ref = np.stack([llama.logits(r).copy() for r in rows])
            cand = scorer.logits(tokens)
            picks_ref, picks_onnx = ref.argmax(axis=1), cand.argmax(axis=1)
            differ = np.flatnonzero(picks_ref != picks_onnx)
            gaps = ref[differ, picks_ref[differ]] - ref[differ, picks_onnx[differ]]
            assert len(differ) <= len(tokens) // 8, (prompt, differ)
            assert (gaps < 0.5).all(), (prompt, differ, gaps)
    finally:
        model.close()


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_each_exact_block_type_reads_as_gguf_dequantizes_it(kind: str) -> None:
    import gguf
    from edgeinfer_converters.gguf_fields import Tensor
    from edgeinfer_converters.to_onnx.from_gguf import block_weight

    qtype = gguf.GGMLQuantizationType[kind]
    weights = np.random.default_rng(0).standard_normal((8, 96)).astype(np.float32)
    weights[0, :32] = 0.5  # a constant block (d = 0 in Q4_1)
    raw = gguf.quants.quantize(weights, qtype)
    blocks = block_weight(Tensor("w", qtype, raw))
    assert blocks.exact and blocks.shape == (8, 96)
    np.testing.assert_array_equal(blocks.dequantize(), gguf.quants.dequantize(raw, qtype))


def test_edgeinfer_convert_takes_a_gguf_and_reports_quality_against_it(gguf_path: Path, tmp_path: Path) \
        -> None:
    """`edgeinfer convert FILE.gguf --format onnx`: the folder with a report measured against the GGUF run
    by llama.cpp; a type to re-quantize to is refused (the weights are the GGUF's), leaving nothing."""
    import json
    import subprocess
    import sys

    out = tmp_path / "smol-onnx"
    cli = [sys.executable, "-m", "edgeinfer", "convert", str(gguf_path), "--format", "onnx", "-o"]
    refused = subprocess.run([*cli, str(out), "--quant", "int4"], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "GGUF's own quantized weights" in refused.stderr and not out.exists()
    done = subprocess.run([*cli, str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["quant"] == "gguf-Q4_1" and result["quality"]["mean_kl"] < 0.01
    report = json.loads((out / "report.json").read_text())
    assert report["reference"] == f"{gguf_path.name} run by llama.cpp"
    question = "What is the capital of France?"
    run = subprocess.run([sys.executable, "-m", "edgeinfer", "run", str(out), question, "--temperature", "0"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "paris" in run.stdout.lower(), run.stdout + run.stderr


def test_a_pinned_gguf_runs_on_the_onnx_backend_once_prepared(tmp_path: Path, monkeypatch) -> None:
    """`ei.load(NAME, backend="onnx")` loads only (a clear error before the folder is made); the command
    line makes the folder itself, once, and `pull --backend onnx` says where it is."""
    import os
    import subprocess
    import sys

    import edgeinfer as ei

    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path / "home"))
    with pytest.raises(ei.ModelNotPreparedError, match="pull smollm2-135m-instruct --backend onnx"):
        ei.load("smollm2-135m-instruct", backend="onnx")
    cli, name = [sys.executable, "-m", "edgeinfer"], "smollm2-135m-instruct"
    run = subprocess.run([*cli, "run", name, "What is the capital of France?", "--backend", "onnx",
                          "--temperature", "0"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert run.returncode == 0 and "paris" in run.stdout.lower(), run.stdout + run.stderr
    assert "converting it to an ONNX folder" in run.stderr
    pulled = subprocess.run([*cli, "pull", name, "--backend", "onnx"],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert pulled.returncode == 0 and "(prepared: gguf-onnx)" in pulled.stdout
    assert "converting" not in pulled.stdout  # made once, by the run above
    with ei.load(name, backend="onnx", n_threads=2, kv=ei.KVOptions(settle=False)) as model:
        assert model.backend.name == "onnx" and model.backend.caps.quantization == "gguf-Q4_1"


def test_the_default_model_runs_on_onnx_by_default_once_prepared(tmp_path: Path, monkeypatch) -> None:
    """models.lock says onnxruntime runs SmolLM2's GGUF faster on a CPU: ``ei.load(NAME)`` takes llama.cpp
    (and says how to make the faster path) until `edgeinfer pull NAME` has made its ONNX folder, then the
    onnx backend; options only llama.cpp takes, or asking for llama.cpp, keep llama.cpp; `edgeinfer env`
    shows the same choice."""
    import json
    import os
    import subprocess
    import sys

    import edgeinfer as ei

    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path / "home"))
    name, kv = "smollm2-135m-instruct", ei.KVOptions(settle=False)
    with ei.load(name, n_threads=2, kv=kv) as model:
        assert model.backend.name == "llama.cpp"
        assert f"run `edgeinfer pull {name}`" in model.choice.reasons[-1]
    pulled = subprocess.run([sys.executable, "-m", "edgeinfer", "pull", name],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert pulled.returncode == 0 and "(prepared: gguf-onnx)" in pulled.stdout, pulled.stdout + pulled.stderr
    with ei.load(name, n_threads=2, kv=kv) as model:
        assert model.backend.name == "onnx" and "faster on onnxruntime" in model.choice.reasons[0]
        answer = model.chat(system="You are a helpful assistant.").send("What is the capital of France?",
                                                                         temperature=0)
        assert "paris" in answer.text.lower()
    from edgeinfer.memory import process_rss

    with ei.load(name, n_threads=2, kv=kv, memory=process_rss() + 2**30) as model:  # a budget: llama.cpp
        assert model.backend.name == "llama.cpp" and "memory given" in model.choice.reasons[-1]
    with ei.load(name, backend="llama.cpp", n_threads=2, kv=kv) as model:
        assert model.backend.name == "llama.cpp"
    env = subprocess.run([sys.executable, "-m", "edgeinfer", "env", name, "--json"],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert json.loads(env.stdout)["plan"]["choice"]["backend"] == "onnx", env.stdout + env.stderr


def test_a_folder_that_cannot_be_made_leaves_the_default_on_llama_cpp(tmp_path: Path, monkeypatch,
                                                                     caplog) -> None:
    """A full disk (or a cache it may not write) while a command makes the ONNX folder: a warning, and
    the model loads on llama.cpp, as before the folder existed."""
    import logging

    from edgeinfer_converters import preparation

    import edgeinfer as ei
    from edgeinfer.prepared import GGUF_ONNX

    def full_disk(_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(preparation.RECIPES, GGUF_ONNX, full_disk)
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path / "home"))
    with caplog.at_level(logging.WARNING):
        preparation.prepare_for_use("smollm2-135m-instruct", backend="auto")
    assert "No space left on device" in caplog.text
    with ei.load("smollm2-135m-instruct", n_threads=2, kv=ei.KVOptions(settle=False)) as model:
        assert model.backend.name == "llama.cpp"


@pytest.mark.parametrize("tamper", ["zero heads", "heads not dividing", "tokens and types differ",
                                    "bos out of range", "a string for a size"])
def test_inconsistent_metadata_is_refused_and_leaves_nothing(gguf_path: Path, tmp_path: Path,
                                                             monkeypatch, tamper: str) -> None:
    """A GGUF is untrusted: metadata that disagrees with itself or with the tensors is a clear
    EdgeInferError, never a crash, and no half-made folder is left."""
    from dataclasses import replace

    from edgeinfer_converters.gguf_fields import read_gguf
    from edgeinfer_converters.to_onnx import from_gguf

    import edgeinfer as ei

    def tampered(path):  # noqa: ANN001, ANN202
        fields, tensors = read_gguf(path)
        edits = {"zero heads": {"llama.attention.head_count": 0},
                 "heads not dividing": {"llama.attention.head_count": 7},
                 "a string for a size": {"llama.embedding_length": "576"},
                 "tokens and types differ": {"tokenizer.ggml.token_type": [1, 1, 3]},
                 "bos out of range": {"tokenizer.ggml.bos_token_id": 10**9,
                                      "tokenizer.ggml.add_bos_token": True}}[tamper]
        return [replace(f, value=edits[f.name]) if f.name in edits else f for f in fields], tensors

    monkeypatch.setattr(from_gguf, "read_gguf", tampered)
    out = tmp_path / "out"
    if tamper == "bos out of range":  # ignored (no BOS is added), as llama.cpp ignores it
        from_gguf.gguf_to_onnx(gguf_path, out)
        assert (out / "tokenizer.json").is_file()
        return
    with pytest.raises(ei.EdgeInferError):
        from_gguf.gguf_to_onnx(gguf_path, out)
    assert not out.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())
