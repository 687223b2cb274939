"""tests/local_hub.py against the real huggingface_hub client, run in a subprocess: conftest sets
HF_HUB_OFFLINE=1 for this process, and huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE once,
at import."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_hub import LocalHub
from waits import wait_until

MiB = 1024 * 1024
REPO = "org/tiny"
CONFIG = b'{"model_type": "llama"}'
WEIGHTS = bytes(range(256)) * (12 * MiB // 256) + b"tail"  # over 10 MiB: the client writes 10 MiB chunks
README = b"# tiny\n"

# Prints one JSON line: what `body` put in `out`, or the exception's class and its bases.
PRELUDE = """
import hashlib, json, os, sys
import huggingface_hub as hf
out = {}
try:
{body}
except Exception as error:
    out["error"] = [cls.__name__ for cls in type(error).__mro__]
print(json.dumps(out))
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub() -> Iterator[LocalHub]:
    with LocalHub() as local:
        yield local


@pytest.fixture
def commit(hub: LocalHub) -> str:
    return hub.add_repo(REPO, {"config.json": CONFIG, "model.gguf": WEIGHTS, "docs/README.md": README})


def client_env(hub: LocalHub, home: Path, token: str | None) -> dict[str, str]:
    assert hub.url.startswith("http://127.0.0.1:"), hub.url  # the client never talks to a real hub
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1")
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def script(body: str) -> str:
    return PRELUDE.replace("{body}", "\n".join("    " + line for line in body.strip().splitlines()))


def run_client(hub: LocalHub, home: Path, body: str, token: str | None = None) -> dict:
    """Runs `body` (which fills `out`) with huggingface_hub pointed at the hub; returns `out`."""
    done = subprocess.run(
        [sys.executable, "-c", script(body)],
        env=client_env(hub, home, token),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def download(filename: str, repo: str = REPO) -> str:
    return f"""
path = hf.hf_hub_download({repo!r}, {filename!r})
out["path"] = path
out["sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
"""


def blobs(home: Path, repo: str = REPO) -> Path:
    return home / "hub" / f"models--{repo.replace('/', '--')}" / "blobs"


def test_model_info_shows_the_commit_and_lfs_metadata(hub: LocalHub, commit: str, tmp_path: Path) -> None:
    out = run_client(hub, tmp_path / "hf", """
info = hf.model_info("org/tiny", files_metadata=True)
out["sha"], out["gated"], out["private"] = info.sha, info.gated, info.private
out["siblings"] = {s.rfilename: [s.size, s.lfs.sha256 if s.lfs else None] for s in info.siblings}
out["files"] = hf.list_repo_files("org/tiny")
""")  # fmt: skip
    assert out["sha"] == commit and out["gated"] is False and out["private"] is False
    assert out["siblings"] == {
        "config.json": [len(CONFIG), None],  # small text: a plain git blob
        "docs/README.md": [len(README), None],
        "model.gguf": [len(WEIGHTS), sha256(WEIGHTS)],  # LFS
    }
    assert out["files"] == ["config.json", "docs/README.md", "model.gguf"]
    assert hub.requests[0].query == "blobs=true"


def test_download_and_snapshot_give_the_true_bytes_under_the_commit(
    hub: LocalHub, commit: str, tmp_path: Path
) -> None:
    home = tmp_path / "hf"
    out = run_client(hub, home, download("model.gguf"))
    assert out["sha256"] == sha256(WEIGHTS)
    assert Path(out["path"]) == home / "hub" / "models--org--tiny" / "snapshots" / commit / "model.gguf"
    assert (blobs(home) / sha256(WEIGHTS)).is_file()  # an LFS blob is named by its sha256 (the ETag)

    newer = hub.add_repo(REPO, {"config.json": b"{}"})  # "main" moves on; the old commit stays reachable
    out = run_client(hub, tmp_path / "fresh", f"""
out["main"] = hf.snapshot_download("org/tiny")
out["old"] = hf.snapshot_download("org/tiny", revision={commit!r}, allow_patterns=["*.json", "docs/*"])
""")  # fmt: skip
    assert Path(out["main"]).name == newer and (Path(out["main"]) / "config.json").read_bytes() == b"{}"
    old = Path(out["old"])
    assert old.name == commit
    assert sorted(str(p.relative_to(old)) for p in old.rglob("*") if p.is_file()) == [
        "config.json",
        "docs/README.md",
    ]
    assert (old / "config.json").read_bytes() == CONFIG


def test_an_interrupted_download_resumes_with_range_within_the_same_call(
    hub: LocalHub, commit: str, tmp_path: Path
) -> None:
    # huggingface_hub retries within the call from what it wrote: whole 10 MiB chunks only
    hub.interrupt(REPO, "model.gguf", after_bytes=11 * MiB)
    out = run_client(hub, tmp_path / "hf", download("model.gguf"))
    assert out["sha256"] == sha256(WEIGHTS)
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith("/model.gguf")]
    assert [(r.range, r.status) for r in gets] == [(None, 200), (f"bytes={10 * MiB}-", 206)]


def test_a_download_cut_before_10_mib_starts_over(hub: LocalHub, tmp_path: Path) -> None:
    weights = WEIGHTS[: 2 * MiB]
    hub.add_repo(REPO, {"model.gguf": weights})
    hub.interrupt(REPO, "model.gguf", after_bytes=MiB)
    out = run_client(hub, tmp_path / "hf", download("model.gguf"))
    assert out["sha256"] == sha256(weights)
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith("/model.gguf")]
    assert [(r.range, r.status) for r in gets] == [(None, 200), (None, 200)]


def test_a_killed_download_leaves_an_incomplete_blob_that_the_next_call_ignores(
    hub: LocalHub, commit: str, tmp_path: Path
) -> None:
    home = tmp_path / "hf"
    stall = hub.stall(REPO, "model.gguf", after_bytes=11 * MiB)
    client = subprocess.Popen(
        [sys.executable, "-c", script(download("model.gguf"))], env=client_env(hub, home, None),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert stall.reached.wait(60)
        partial = lambda: [p for p in blobs(home).glob("*.incomplete") if p.stat().st_size == 10 * MiB]
        wait_until(partial, "the client to write its first 10 MiB")
    finally:
        client.kill()
        client.wait()
    assert stall.disconnected.wait(10)
    [stale] = partial()
    assert stale.name.startswith(sha256(WEIGHTS) + ".")  # <etag>.<8 hex>.incomplete, unique to that process

    hub.clear_requests()
    out = run_client(hub, home, download("model.gguf"))
    assert out["sha256"] == sha256(WEIGHTS)
    gets = [r for r in hub.requests if r.method == "GET"]
    assert [r.range for r in gets] == [None]  # no resume from the stale file: the whole file again
    assert stale.exists()  # ... which nothing cleans up


def test_a_released_stall_completes_the_download(hub: LocalHub, commit: str, tmp_path: Path) -> None:
    stall = hub.stall(REPO, "config.json", after_bytes=5)
    threading.Thread(target=lambda: stall.reached.wait(60) and stall.release(), daemon=True).start()
    assert run_client(hub, tmp_path / "hf", download("config.json"))["sha256"] == sha256(CONFIG)
    assert stall.reached.is_set() and not stall.disconnected.is_set()


def test_a_gated_repo_needs_a_known_token(hub: LocalHub, tmp_path: Path) -> None:
    hub.add_repo("org/gated", {"config.json": CONFIG}, gated=True)
    home = tmp_path / "hf"
    info = 'out["gated"] = hf.model_info("org/gated").gated'
    assert run_client(hub, home, info) == {"gated": "manual"}  # metadata is public, as on the real hub
    refused = run_client(hub, home, download("config.json", "org/gated"))
    assert refused["error"][:2] == ["GatedRepoError", "RepositoryNotFoundError"]
    assert [r.status for r in hub.requests if r.method == "HEAD"] == [401]
    unknown = run_client(hub, home, download("config.json", "org/gated"), token="hf_bad")
    assert "GatedRepoError" in unknown["error"]
    assert [r.status for r in hub.requests if r.method == "HEAD"][-1] == 403
    granted = run_client(hub, home, download("config.json", "org/gated"), token="hf_good")
    assert granted["sha256"] == sha256(CONFIG)
    assert all(r.auth for r in hub.requests[-2:])


def test_a_corrupted_file_downloads_without_complaint(hub: LocalHub, commit: str, tmp_path: Path) -> None:
    # huggingface_hub checks only the size of what it got, never its sha256: the blob named after the
    # true sha256 holds other bytes. Catching this is up to edgeinfer.
    hub.corrupt(REPO, "model.gguf")
    home = tmp_path / "hf"
    out = run_client(hub, home, download("model.gguf"))
    assert "error" not in out and out["sha256"] != sha256(WEIGHTS)
    blob = Path(out["path"]).resolve()
    assert blob == blobs(home) / sha256(WEIGHTS) and blob.stat().st_size == len(WEIGHTS)


def test_unknown_repo_revision_and_file(hub: LocalHub, commit: str, tmp_path: Path) -> None:
    home = tmp_path / "hf"
    hub.add_repo("org/private", {"config.json": CONFIG}, private=True)  # without a token: as if missing
    missing = download("config.json", "org/missing"), download("a", "org/private")
    for body in (*missing, 'hf.model_info("org/missing")'):
        assert run_client(hub, home, body)["error"][0] == "RepositoryNotFoundError"
    revision = 'hf.hf_hub_download("org/tiny", "config.json", revision="v9")'
    assert run_client(hub, home, revision)["error"][0] == "RevisionNotFoundError"
    assert "EntryNotFoundError" in run_client(hub, home, download("nope.bin"))["error"]
