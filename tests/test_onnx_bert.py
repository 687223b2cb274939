"""BERT encoders to ONNX: all-MiniLM-L6-v2 converted with ``--format onnx`` embeds like
sentence-transformers through ``ei.load(folder).embed``, the CLI and the server; CLS / last-token
pooling and the ``bert.`` prefix match transformers; embedding folders refuse generation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from embedding_fixtures import (  # noqa: E402
    SENTENCES,
    check_cannot_generate,
    check_over_context,
    converted_once,
    cosines,
    sentence_transformers_embeddings,
)
from hf_fixtures import minilm_dir  # noqa: E402

import edgeinfer as ei  # noqa: E402
from edgeinfer.errors import (  # noqa: E402
    ContextOverflowError,
    ModelLoadError,
    UnsupportedArchitectureError,
)

pytestmark = pytest.mark.slow

MIN_COSINE_FP32 = 0.9999
MIN_COSINE_INT8 = 0.99  # MatMulNBits int8 with int8 activations (accuracy_level 4); measured 0.9985


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory):
    """A function quant -> the converted folder, each converted once per test session (about a second)."""
    return converted_once(tmp_path_factory.mktemp("minilm-onnx"), "onnx", lambda q: q)


@pytest.fixture(scope="module")
def minilm(minilm_onnx) -> Iterator[ei.Model]:
    model = ei.load(minilm_onnx("fp32"), n_threads=2)
    yield model
    model.close()


# --- the converter -------------------------------------------------------------------------------
def test_folder_metadata_and_io(minilm_onnx):
    import onnx

    folder = minilm_onnx("fp32")
    assert {"model.onnx", "model.onnx.data", "edgeinfer.json", "tokenizer.json", "report.json"} <= {
        p.name for p in folder.iterdir()}
    meta = json.loads((folder / "edgeinfer.json").read_text())
    assert meta["arch"] == "bert" and meta["embedding"] is True and meta["quantization"] == "fp32"
    assert meta["n_embd"] == 384 and meta["context_length"] == 512 and meta["model_file"] == "model.onnx"
    assert meta["pooling"] == "mean" and meta["normalize"] is True
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in graph.output] == ["last_hidden_state", "sentence_embedding"]
    assert not any(i.name.startswith(("pooler", "cls")) for i in graph.initializer)


def test_checkpoint_without_pooling_module_is_refused(tmp_path):
    src = tmp_path / "no-pooling"
    src.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (src / name).symlink_to(minilm_dir() / name)
    from edgeinfer_converters import convert

    with pytest.raises(UnsupportedArchitectureError, match="Pooling"):
        convert(src, tmp_path / "out", format="onnx")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("pooling", "act"), [("cls", "gelu"), ("last", "gelu_new")])
def test_masked_lm_checkpoint_matches_transformers(tmp_path, pooling, act):
    """BertForMaskedLM names tensors 'bert.*' and adds an MLM head (skipped); CLS / last-token pooling
    and tanh GELU match transformers, in one padded batch of texts of different lengths."""
    torch = pytest.importorskip("torch")
    from edgeinfer_converters import convert
    from transformers import BertConfig, BertForMaskedLM

    src = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, hidden_act=act)
    hf = BertForMaskedLM(config).eval()
    hf.save_pretrained(src, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, src / name)
    (src / "1_Pooling").mkdir()
    key = {"cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}[pooling]
    (src / "1_Pooling" / "config.json").write_text(json.dumps({key: True}))
    (src / "modules.json").write_text(json.dumps(
        [{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    out = convert(src, tmp_path / "tiny", format="onnx").artifact
    texts = ["hello world", "a tiny random encoder with a longer text", "x"]
    with ei.load(out, n_threads=2) as model:
        assert model.backend.caps.n_ctx == 128
        ours = model.embed(texts, normalize=False)
        ids = [model.tokenize(t) for t in texts]
    with torch.no_grad():
        rows = [hf.bert(torch.tensor([i])).last_hidden_state[0] for i in ids]
    want = np.stack([(r[0] if pooling == "cls" else r[-1]).numpy() for r in rows])
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4)


# --- embeddings ----------------------------------------------------------------------------------
def test_fp32_matches_sentence_transformers(minilm):
    assert minilm.is_embedding and minilm.backend.name == "onnx"
    vectors = minilm.embed(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384) and vectors.dtype == np.float32
    assert len(minilm.tokenize(SENTENCES[-1])) < 256  # sentence-transformers truncates at 256
    cos = cosines(vectors, sentence_transformers_embeddings())
    print(f"\nONNX fp32: min cosine to sentence-transformers {cos.min():.7f}")
    assert cos.min() >= MIN_COSINE_FP32, dict(zip(SENTENCES, cos.round(6), strict=True))


def test_int8_stays_close(minilm_onnx, minilm):
    folder = minilm_onnx("int8")
    assert json.loads((folder / "edgeinfer.json").read_text())["quantization"].startswith("int8")
    with ei.load(folder, n_threads=2) as model:
        cos = cosines(model.embed(SENTENCES), minilm.embed(SENTENCES))
    print(f"\nONNX int8: min cosine to fp32 {cos.min():.5f}")
    assert cos.min() >= MIN_COSINE_INT8


def test_batched_equals_one_by_one_and_normalize_flag(minilm):
    together = minilm.embed(SENTENCES)
    alone = np.concatenate([minilm.embed(s) for s in SENTENCES])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    shuffled = minilm.embed(SENTENCES[::-1])[::-1]
    np.testing.assert_allclose(together, shuffled, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    raw = minilm.embed(SENTENCES[:3], normalize=False)
    norms = np.linalg.norm(raw, axis=1)
    assert np.all(np.abs(norms - 1.0) > 0.1)  # MiniLM's mean-pooled vectors are not unit length
    np.testing.assert_allclose(raw / norms[:, None], together[:3], rtol=1e-4, atol=1e-6)


def test_empty_inputs(minilm):
    assert minilm.embed([]).shape == (0, 384)
    (empty,) = minilm.embed("")  # still [CLS] [SEP]
    assert np.isfinite(empty).all() and abs(np.linalg.norm(empty) - 1) < 1e-5


def test_over_context_text_is_refused_or_truncated(minilm):
    check_over_context(minilm)
    with pytest.raises(ContextOverflowError, match="at most 512"):  # the backend checks too
        minilm.backend.embed([minilm.tokenize("word " * 600)])


def test_embedding_model_cannot_generate(minilm):
    check_cannot_generate(minilm)


def test_encoder_contract_is_checked(minilm_onnx, tmp_path):
    """A folder marked as an embedding model whose graph is not the encoder's is refused before
    onnxruntime runs it (and external data is checked as for decoders)."""
    import onnx

    from edgeinfer.onnx_check import load_checked

    folder = tmp_path / "bad"
    shutil.copytree(minilm_onnx("fp32"), folder)
    load_checked(folder, encoder=True)
    with pytest.raises(ModelLoadError, match="decoder contract"):
        load_checked(folder, n_layers=6)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    model.graph.output[1].name = "pooled"
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="encoder contract"):
        ei.load(folder)


# --- CLI and server --------------------------------------------------------------------------------
def test_cli_convert_then_load(tmp_path, minilm):
    out = tmp_path / "minilm-onnx"
    cmd = [sys.executable, "-m", "edgeinfer", "convert", str(minilm_dir()), "--format", "onnx",
           "-o", str(out), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["quant"] == "fp32"
    with ei.load(out, n_threads=2) as model:
        np.testing.assert_allclose(model.embed(SENTENCES[:3]), minilm.embed(SENTENCES[:3]), atol=1e-6)


def test_server_embeddings(minilm):
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from server_helpers import running

    from edgeinfer.server import ServerOptions

    texts = SENTENCES[:3]
    with running([minilm], ServerOptions()) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        r = client.embeddings.create(model=minilm.name, input=texts)
        got = np.array([d.embedding for d in r.data], dtype=np.float32)
        np.testing.assert_allclose(got, minilm.embed(texts), atol=1e-5)
        with pytest.raises(openai.BadRequestError, match="512"):
            client.embeddings.create(model=minilm.name, input="word " * 600)
        with pytest.raises(openai.BadRequestError, match="embedding model"):
            client.completions.create(model=minilm.name, prompt="hello", max_tokens=4)
