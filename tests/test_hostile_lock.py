"""A models.lock from somewhere else is untrusted: every path it names stays inside its root (the
cache folder, a package folder), every key is known and typed, and nothing outside edgeinfer's folders
is written or deleted, whatever the checksum says. Each refusal is a LockFileError naming the key."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from test_lock_resolve import CHUNK_SOURCE, PACKAGE_SOURCE, PAYLOAD, SHA, entry_toml, fake_package  # noqa: F401

from edgeinfer.errors import LockFileError
from edgeinfer.lock import ModelLock
from edgeinfer.sources import cache_path, resolve


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path / "home"))


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file of the user's, outside edgeinfer's folders, that no lock entry may touch."""
    path = tmp_path / "outside" / "victim.txt"
    path.parent.mkdir()
    path.write_bytes(b"the user's own data")
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` but edgeinfer's cache and the lock itself, with its sha256."""
    home = root / "home"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and home not in p.parents and p.name != "models.lock"}


def load(tmp_path: Path, body: str | bytes) -> ModelLock:
    path = tmp_path / "models.lock"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return ModelLock.load(path)


def with_file(file: str, sources: str = CHUNK_SOURCE, sha: str = SHA) -> str:
    return entry_toml(sha, sources).replace('file = "toy.gguf"', f"file = {file!r}")


def swapped(old: str, new: str, sources: str = PACKAGE_SOURCE) -> str:
    """The toy entry with a package source, with ``old`` replaced by ``new``."""
    text = entry_toml(SHA, sources)
    assert old in text
    return text.replace(old, new)


CLIMB = "../../../outside/victim.txt"
HOSTILE = {
    # name: (lock text, a piece of the message: the key it names)
    "file climbs out of the cache": (with_file(CLIMB), "file must be a plain file or folder name"),
    "file is absolute": (with_file("/tmp/victim.gguf"), "file must be a plain file or folder name"),
    "file is '..'": (with_file(".."), "file must be"),
    "file has a NUL": (with_file("a\x01b"), "file must be"),
    "chunk climbs out of its package": (
        entry_toml(SHA, CHUNK_SOURCE.replace("toypkg/part1", "toypkg/../../outside/victim.txt")), "chunks"),
    "chunk with no path": (entry_toml(SHA, CHUNK_SOURCE.replace("toypkg/part1", "toypkg")), "chunks"),
    "package path climbs out": (swapped('path = "toy.gguf"', f'path = "{CLIMB}"'), "path must be a relative"),
    "package name is a path": (swapped('package = "toypkg"', 'package = "../x"'), "package must be a Python"),
    "listed files climb out": (entry_toml(SHA, PACKAGE_SOURCE) + 'files = ["../../x"]\n', "files"),
    "hub filename climbs out": (entry_toml(SHA, '[[models.toy.sources]]\ntype = "hub"\nrepo = "o/r"\n'
                                                'revision = "main"\nfilename = "../x"\n'), "filename"),
    "hub repo is not a repo id": (entry_toml(SHA, '[[models.toy.sources]]\ntype = "hub"\nrepo = "../../x"\n'
                                                  'revision = "main"\n'), "repo"),
    "model name '..'": (entry_toml(SHA, PACKAGE_SOURCE).replace("[models.toy]", '[models.".."]')
                        .replace("models.toy.sources", 'models."..".sources'), "invalid model name"),
    "model name with a slash": (entry_toml(SHA, PACKAGE_SOURCE).replace("[models.toy]", '[models."a/b"]')
                                .replace("models.toy.sources", 'models."a/b".sources'), "invalid model name"),
    "size is a string": (swapped(f"size = {len(PAYLOAD)}", 'size = "big"'), "must be a non-negative"),
    "size is negative": (swapped(f"size = {len(PAYLOAD)}", "size = -1"), "size must be"),
    "role is a number": (swapped('role = "chat"', "role = 5"), "role must be"),
    "sources is a string": (entry_toml(SHA, 'sources = "everywhere"\n'), "sources must be a list of tables"),
    "a source is a string": (entry_toml(SHA, 'sources = ["x"]\n'), "sources must be a list of tables"),
    "aliases is a string": (swapped('aliases = ["toy-alias"]', 'aliases = "a"'), "aliases must be a list"),
    "sampling of the wrong type": (entry_toml(SHA, 'sampling = { temperature = "hot" }\n' + PACKAGE_SOURCE),
                                   "invalid sampling defaults"),
    "sampling out of range": (entry_toml(SHA, "sampling = { top_p = 7.0 }\n" + PACKAGE_SOURCE), "top_p"),
    "cpu_backend not a known one": (entry_toml(SHA, 'cpu_backend = "../../evil"\n' + PACKAGE_SOURCE),
                                    "cpu_backend"),
    "cpu_backend on an hf entry": (swapped('format = "gguf"', 'format = "hf"\ncpu_backend = "onnx"'),
                                   "cpu_backend"),
    "unknown entry key": (entry_toml(SHA, 'shell = "rm -rf ~"\n' + PACKAGE_SOURCE), "unknown key(s) shell"),
    "unknown source key": (entry_toml(SHA, PACKAGE_SOURCE + 'exec = "x"\n'), "unknown key(s) exec"),
    "a source without what its type needs": (entry_toml(SHA, '[[models.toy.sources]]\ntype = "package"\n'),
                                             "needs package, path"),
    "models is not a table": ("models = 5\n", "[models] must be a table"),
    "an entry is not a table": ("[models]\ntoy = 5\n", "must be a table"),
    "unknown top-level key": ('version = 1\nhooks = "x"\n', "unknown top-level key(s) hooks"),
    "not UTF-8": (b'[models.toy]\nrole = "\xff\xfe"\n', "not UTF-8"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_lock_entry_is_refused_when_read_and_touches_nothing(tmp_path, victim, case):
    body, message = HOSTILE[case]
    before = snapshot(tmp_path)
    with pytest.raises(LockFileError, match=re.escape(message)):
        load(tmp_path, body)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("sha", [SHA, "0" * 64], ids=["matching sha256", "wrong sha256"])
def test_the_write_and_delete_attack_is_stopped(tmp_path, fake_package, victim, sha):  # noqa: F811
    """The reported attack: a chunked source whose assembled file lands outside the cache (payload
    written when the sha256 matches, the target deleted when it does not)."""
    before = snapshot(tmp_path)
    for file in (CLIMB, "../" * 12 + str(victim).lstrip("/")):
        with pytest.raises(LockFileError, match="file"):
            load(tmp_path, with_file(file, sha=sha))
    assert victim.read_bytes() == b"the user's own data" and snapshot(tmp_path) == before


def test_a_symlink_in_the_cache_does_not_lead_writes_outside(tmp_path, fake_package, victim):  # noqa: F811
    lock = load(tmp_path, entry_toml("0" * 64, CHUNK_SOURCE))  # wrong sha256: the delete path
    entry = lock.get("toy")
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    os.symlink(victim.parent, models / "toy")  # planted: the cache's model folder leads elsewhere
    before = snapshot(tmp_path)
    with pytest.raises(LockFileError, match="outside"):
        cache_path(entry)
    with pytest.raises(LockFileError, match="outside"):
        resolve(entry, offline=True)
    assert snapshot(tmp_path) == before


def test_a_damaged_verification_stamp_file_is_ignored(tmp_path, fake_package):  # noqa: F811
    lock = load(tmp_path, entry_toml(SHA, PACKAGE_SOURCE))
    stamps = tmp_path / "home" / "verified.json"
    stamps.parent.mkdir(parents=True)
    for damaged in ("[1, 2, 3]", '{"x": 5}', "[" * 100_000, "\xff not json"):
        stamps.write_text(damaged, encoding="utf-8", errors="surrogateescape")
        assert resolve(lock.get("toy"), offline=True).path == fake_package / "toy.gguf"


def test_the_shipped_locks_pass_the_checks():
    root = Path(__file__).resolve().parents[1]
    for path in (root / "models.lock", root / "edgeinfer" / "models.lock"):
        names = set(ModelLock.load(path).entries)
        assert {"smollm2-135m-instruct", "gemma-3-270m", "all-minilm-l6-v2"} <= names
