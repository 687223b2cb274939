"""BERT encoders: all-MiniLM-L6-v2 converted to GGUF embeds like sentence-transformers does, through
``Model.embed`` and the server's /v1/embeddings; embedding models refuse generation and vice versa."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
from embedding_fixtures import (
    SENTENCES,
    check_cannot_generate,
    check_over_context,
    converted_once,
    cosines,
    sentence_transformers_embeddings,
)
from hf_fixtures import minilm_dir

import edgeinfer as ei
from edgeinfer.errors import InvalidRequestError, UnsupportedArchitectureError

pytestmark = pytest.mark.slow

MIN_COSINE = 0.99


@pytest.fixture(scope="session")
def minilm_gguf(tmp_path_factory: pytest.TempPathFactory):
    """A function quant -> the converted GGUF path, each converted once per test session."""
    return converted_once(tmp_path_factory.mktemp("minilm-gguf"), "gguf", lambda q: f"minilm-{q}.gguf")


@pytest.fixture(scope="module")
def minilm(minilm_gguf) -> Iterator[ei.Model]:
    model = ei.load(minilm_gguf("F16"), n_threads=2)
    yield model
    model.close()


# --- the converter -------------------------------------------------------------------------------
def test_gguf_metadata_and_f32_tensors(minilm_gguf):
    import gguf

    reader = gguf.GGUFReader(str(minilm_gguf("F16")))
    fields = {name: field.contents() for name, field in reader.fields.items()
              if not name.startswith("tokenizer.ggml.token")}
    assert fields["general.architecture"] == "bert"
    assert fields["bert.pooling_type"] == int(gguf.PoolingType.MEAN)
    assert fields["bert.attention.causal"] is False
    assert fields["bert.context_length"] == 512 and fields["bert.embedding_length"] == 384
    assert fields["bert.block_count"] == 6 and fields["bert.attention.head_count"] == 12
    assert fields["tokenizer.ggml.model"] == "bert"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert not any(name.startswith(("pooler", "cls")) for name in types)
    assert types["position_embd.weight"] == types["token_types.weight"] == "F32"
    assert types["token_embd.weight"] == types["blk.0.attn_q.weight"] == "F16"


def test_masked_lm_checkpoint_with_bert_prefix_and_cls_pooling(tmp_path):
    """BertForMaskedLM names tensors 'bert.*' and adds an MLM head (skipped); CLS pooling is read
    from the sentence-transformers Pooling module."""
    torch = pytest.importorskip("torch")
    from edgeinfer_converters import convert
    from transformers import BertConfig, BertForMaskedLM

    src = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128)
    hf = BertForMaskedLM(config).eval()
    hf.save_pretrained(src, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, src / name)
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (src / "modules.json").write_text(json.dumps(
        [{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    out = convert(src, tmp_path / "tiny.gguf", quant="F32").artifact
    texts = ["hello world", "a tiny random encoder"]
    with ei.load(out, n_threads=2) as model:
        ours = model.embed(texts, normalize=False)
        ids = [model.tokenize(t) for t in texts]
    with torch.no_grad():
        want = np.stack([hf.bert(torch.tensor([i])).last_hidden_state[0, 0].numpy() for i in ids])
    np.testing.assert_allclose(ours, want, rtol=1e-3, atol=1e-3)


def test_unsupported_pooling_is_refused(tmp_path):
    from edgeinfer_converters.checkpoint import Checkpoint
    from edgeinfer_converters.to_gguf.families import family_for

    src = tmp_path / "st"
    shutil.copytree(minilm_dir(), src, ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copy(minilm_dir() / "model.safetensors", src)
    (src / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(UnsupportedArchitectureError, match="pooling"):
        family_for(Checkpoint.open(src))


# --- embeddings ----------------------------------------------------------------------------------
@pytest.mark.parametrize("quant", ["F32", "F16"])
def test_embeddings_match_sentence_transformers(minilm_gguf, quant):
    with ei.load(minilm_gguf(quant), n_threads=2) as model:
        assert model.is_embedding
        vectors = model.embed(SENTENCES)
        assert len(model.tokenize(SENTENCES[-1])) < 256  # sentence-transformers truncates at 256
    assert vectors.shape == (len(SENTENCES), 384) and vectors.dtype == np.float32
    cos = cosines(vectors, sentence_transformers_embeddings())
    print(f"\n{quant}: min cosine to sentence-transformers {cos.min():.6f}")
    assert cos.min() >= MIN_COSINE, dict(zip(SENTENCES, cos.round(4), strict=True))


def test_batched_equals_one_by_one_and_normalize_flag(minilm):
    together = minilm.embed(SENTENCES)
    alone = np.concatenate([minilm.embed(s) for s in SENTENCES])
    assert cosines(together, alone).min() > 0.9999
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    raw = minilm.embed(SENTENCES[:3], normalize=False)
    norms = np.linalg.norm(raw, axis=1)
    assert np.all(np.abs(norms - 1.0) > 0.1)  # MiniLM's mean-pooled vectors are not unit length
    np.testing.assert_allclose(raw / norms[:, None], minilm.embed(SENTENCES[:3]), rtol=1e-4, atol=1e-6)


def test_empty_inputs(minilm):
    assert minilm.embed([]).shape == (0, 384)
    (empty,) = minilm.embed("")  # still [CLS] [SEP]
    assert np.isfinite(empty).all() and abs(np.linalg.norm(empty) - 1) < 1e-5


def test_over_context_text_is_refused_or_truncated(minilm):
    check_over_context(minilm)


def test_embedding_model_cannot_generate(minilm):
    check_cannot_generate(minilm)


def test_generative_model_cannot_embed(smol):
    assert not smol.is_embedding
    with pytest.raises(InvalidRequestError, match="not an embedding model"):
        smol.embed(["hello"])


# --- the server ----------------------------------------------------------------------------------
def serving(model: ei.Model):  # noqa: ANN201
    """A uvicorn server for ``model`` on a free 127.0.0.1 port; yields its base URL."""
    pytest.importorskip("uvicorn")
    from server_helpers import running

    from edgeinfer.server import ServerOptions

    return running([model], ServerOptions())


def test_server_embeddings(minilm):
    openai = pytest.importorskip("openai")
    texts = SENTENCES[:3]
    with serving(minilm) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        r = client.embeddings.create(model=minilm.name, input=texts)
        assert [d.index for d in r.data] == [0, 1, 2]
        got = np.array([d.embedding for d in r.data], dtype=np.float32)
        np.testing.assert_allclose(got, minilm.embed(texts), atol=1e-5)
        assert r.usage.prompt_tokens == sum(len(minilm.tokenize(t)) for t in texts)
        single = client.embeddings.create(model=minilm.name, input="Hi", encoding_format="base64")
        (item,) = single.data
        vector = np.frombuffer(base64.b64decode(item.embedding), dtype="<f4")
        np.testing.assert_allclose(vector, minilm.embed("Hi")[0], atol=1e-6)
        with pytest.raises(openai.BadRequestError, match="512") as info:
            client.embeddings.create(model=minilm.name, input="word " * 600)
        assert info.value.code == "context_length_exceeded"
        with pytest.raises(openai.BadRequestError, match="embedding model"):
            client.completions.create(model=minilm.name, prompt="hello", max_tokens=4)
