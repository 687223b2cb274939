"""The user's own models.lock, layered over the packaged one: `lock add` pins there (never in the
project's tracked models.lock), `list` says where each entry comes from, `rm` forgets an entry and its
cached files, and a user entry cannot take a packaged model's name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import edgeinfer as ei
from edgeinfer.cli.main import main
from edgeinfer.lock import ModelLock, add_entry, packaged_lock_path, remove_entry, user_lock_path
from edgeinfer.paths import cache_root


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty config folder of this test's own, and no $EDGEINFER_LOCK."""
    monkeypatch.setenv("EDGEINFER_CONFIG", str(tmp_path / "config"))
    monkeypatch.delenv("EDGEINFER_LOCK", raising=False)
    return tmp_path / "config"


def test_lock_add_pins_in_the_users_lock_and_the_packaged_one_stays_as_it_is(
        config: Path, smollm2_path: Path, capsys: pytest.CaptureFixture[str]):
    packaged = packaged_lock_path()
    before = _sha(packaged)
    assert main(["lock", "add", str(smollm2_path), "--name", "mine", "--role", "chat"]) == 0
    assert _sha(packaged) == before
    assert user_lock_path() == config / "models.lock" and user_lock_path().is_file()
    lock = ModelLock.load()
    assert lock.get("mine").origin == "user" and lock.get("smollm2-135m-instruct").origin == "packaged"
    assert lock.user_path == user_lock_path()
    with ei.load("mine", n_ctx=256, n_threads=2, kv=ei.KVOptions(settle=False)) as model:
        assert model.generate("Hello", max_tokens=4, temperature=0).text

    capsys.readouterr()
    assert main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mine"]["lock"] == "user" and rows["gemma-3-270m"]["lock"] == "packaged"
    assert main(["list"]) == 0
    assert str(user_lock_path()) in capsys.readouterr().out


def test_nothing_writes_the_packaged_lock_or_takes_its_names(config: Path, smollm2_path: Path):
    packaged = packaged_lock_path()
    before = _sha(packaged)
    with pytest.raises(ei.LockFileError, match="packaged models.lock, which commands never change"):
        add_entry(smollm2_path, name="other", lock_path=packaged)
    for name in ("smollm2-135m-instruct", "SMOLLM2", "gemma-3-270m"):  # names and aliases, any case
        with pytest.raises(ei.LockFileError, match="name of a packaged model"):
            add_entry(smollm2_path, name=name, force=True)
    assert main(["lock", "add", str(smollm2_path), "--name", "x", "--lock", str(packaged)]) == 1
    assert _sha(packaged) == before and not user_lock_path().exists()

    # a hand-edited user lock that reuses a packaged name is refused when read, with the file named
    user_lock_path().parent.mkdir(parents=True)
    entry = ModelLock.load().get("smollm2-135m-instruct")
    user_lock_path().write_text(
        f'version = 1\n[models.smollm2]\nrole = "chat"\nformat = "gguf"\nsha256 = "{entry.sha256}"\n'
        f'size = {entry.size}\nfile = "{entry.file}"\n'
        f'sources = [{{ type = "path", path = "{smollm2_path}" }}]\n', encoding="utf-8")
    with pytest.raises(ei.LockFileError, match=r"models.lock: 'smollm2' uses the name 'smollm2'"):
        ModelLock.load()


def test_rm_forgets_the_entry_and_its_cache_but_keeps_the_users_file(
        config: Path, smollm2_path: Path, capsys: pytest.CaptureFixture[str]):
    assert add_entry(smollm2_path, name="mine").origin == "user"
    cached = cache_root() / "models" / "mine" / "0123456789abcdef"
    cached.mkdir(parents=True)
    (cached / "copy.gguf").write_bytes(b"GGUF")
    assert main(["rm", "mine", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["removed"] == [str(cached.parent)] and out["kept"] == [str(smollm2_path)]
    assert not cached.parent.exists() and smollm2_path.is_file()
    with pytest.raises(ei.UnknownModelError):
        ModelLock.load().get("mine")
    with pytest.raises(ei.LockFileError, match="packaged models; it cannot be removed"):
        remove_entry("smollm2")
    assert main(["rm", "nothing-like-it"]) == 1
    assert "not in" in capsys.readouterr().err


def test_edgeinfer_lock_names_the_only_file_used(config: Path, smollm2_path: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch):
    add_entry(smollm2_path, name="in-user-lock")
    other = tmp_path / "team.lock"
    add_entry(smollm2_path, name="in-team-lock", lock_path=other)
    monkeypatch.setenv("EDGEINFER_LOCK", str(other))
    lock = ModelLock.load()
    assert set(lock.entries) == {"in-team-lock"} and lock.get("in-team-lock").origin == str(other.resolve())
    add_entry(smollm2_path, name="second")  # $EDGEINFER_LOCK is also where commands pin
    assert set(ModelLock.load().entries) == {"in-team-lock", "second"}
