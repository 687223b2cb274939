"""models.lock parsing and resolution: cache -> package -> hub, sha256 checked before use."""

import hashlib
import sys
from pathlib import Path

import pytest

from edgeinfer.errors import ChecksumMismatchError, LockFileError, ModelNotAvailableError, UnknownModelError
from edgeinfer.lock import ModelLock
from edgeinfer.sources import cache_path, resolve

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path / "home"))


def write_lock(tmp_path: Path, body: str) -> ModelLock:
    path = tmp_path / "models.lock"
    path.write_text(body)
    return ModelLock.load(path)


def entry_toml(sha: str, sources: str, name: str = "toy") -> str:
    return f"""
[models.{name}]
role = "chat"
format = "gguf"
sha256 = "{sha}"
size = {len(PAYLOAD)}
file = "toy.gguf"
aliases = ["toy-alias"]
{sources}
"""


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An importable package 'toypkg' holding the payload whole and in two chunks."""
    root = tmp_path / "site"
    pkg = root / "toypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('importing me needs extras')\n")
    (pkg / "toy.gguf").write_bytes(PAYLOAD)
    (pkg / "part0").write_bytes(PAYLOAD[:1000])
    (pkg / "part1").write_bytes(PAYLOAD[1000:])
    monkeypatch.syspath_prepend(str(root))
    yield pkg
    sys.modules.pop("toypkg", None)


SHA = hashlib.sha256(PAYLOAD).hexdigest()
PACKAGE_SOURCE = """
[[models.toy.sources]]
type = "package"
package = "toypkg"
install = "toy-package"
path = "toy.gguf"
"""
CHUNK_SOURCE = """
[[models.toy.sources]]
type = "package-chunks"
package = "toypkg"
chunks = ["toypkg/part0", "toypkg/part1"]
"""
HUB_SOURCE = """
[[models.toy.sources]]
type = "hub"
repo = "org/toy"
revision = "0123456789abcdef0123456789abcdef01234567"
filename = "toy.gguf"
"""


def test_the_shipped_lock_has_the_three_default_models():
    lock = ModelLock.load()
    assert {"smollm2-135m-instruct", "gemma-3-270m", "all-minilm-l6-v2"} <= set(lock.entries)
    assert lock.get("smollm2").name == "smollm2-135m-instruct"


def test_package_source_is_found_without_importing_the_package(tmp_path, fake_package):
    lock = write_lock(tmp_path, entry_toml(SHA, PACKAGE_SOURCE))
    resolved = resolve(lock.get("toy-alias"))
    assert resolved.path == fake_package / "toy.gguf" and "toy-package" in resolved.source


def test_chunks_are_assembled_atomically_into_the_cache(tmp_path, fake_package):
    lock = write_lock(tmp_path, entry_toml(SHA, CHUNK_SOURCE))
    entry = lock.get("toy")
    resolved = resolve(entry)
    assert resolved.path == cache_path(entry) and resolved.path.read_bytes() == PAYLOAD
    assert not list(resolved.path.parent.glob("*.part"))
    assert resolve(entry).source == "cache"


def test_sha256_mismatch_in_the_lock_is_refused(tmp_path, fake_package):
    lock = write_lock(tmp_path, entry_toml("0" * 64, PACKAGE_SOURCE))
    with pytest.raises(ChecksumMismatchError, match="pull toy --force"):
        resolve(lock.get("toy"))


def test_a_tampered_cached_copy_is_dropped_and_rebuilt(tmp_path, fake_package):
    lock = write_lock(tmp_path, entry_toml(SHA, CHUNK_SOURCE))
    entry = lock.get("toy")
    path = resolve(entry).path
    path.write_bytes(PAYLOAD[:-1] + b"X")
    assert resolve(entry).path.read_bytes() == PAYLOAD


def test_offline_looks_in_the_hub_cache_only(tmp_path):
    """Offline, a hub source is looked up in huggingface_hub's cache (where `edgeinfer pull` put it) and
    nowhere else: an empty cache is a clear refusal. (Downloads themselves are tested against a local hub
    in test_pull_hub.py.)"""
    lock = write_lock(tmp_path, entry_toml(SHA, HUB_SOURCE))
    with pytest.raises(ModelNotAvailableError, match="not in the hub cache and edgeinfer is offline"):
        resolve(lock.get("toy"), offline=True)


def test_unknown_name_lists_known_models(tmp_path):
    lock = write_lock(tmp_path, entry_toml(SHA, PACKAGE_SOURCE))
    with pytest.raises(UnknownModelError, match="Known models: toy"):
        lock.get("nope")


def test_missing_package_says_what_to_install(tmp_path):
    lock = write_lock(tmp_path, entry_toml(SHA, PACKAGE_SOURCE.replace("toypkg", "not_installed_pkg")))
    with pytest.raises(ModelNotAvailableError, match="pip install toy-package"):
        resolve(lock.get("toy"), offline=True)


@pytest.mark.parametrize(
    "body, match",
    [
        ("[models.x\n", "not valid TOML"),
        ('[models.x]\nrole = "chat"\n', "lacks"),
        (entry_toml("abc", PACKAGE_SOURCE, name="toy"), "malformed sha256"),
        (entry_toml(SHA, '[[models.toy.sources]]\ntype = "ftp"\n'), "unknown type"),
        (entry_toml(SHA, 'sampling = { temprature = 1 }\n' + PACKAGE_SOURCE), "unknown sampling keys"),
        (entry_toml(SHA, HUB_SOURCE + '[models.toy.sources.checksums]\n"../x" = "' + "a" * 64 + '"\n'),
         "checksums must be a table of relative file paths to sha256"),
        (entry_toml(SHA, HUB_SOURCE + '[models.toy.sources.checksums]\n"a.json" = "not-hex"\n'),
         "checksums must be a table"),
    ],
)
def test_bad_lock_files(tmp_path, body, match):
    with pytest.raises(LockFileError, match=match):
        write_lock(tmp_path, body)
