"""`edgeinfer pull hf:ORG/REPO` with the real huggingface_hub client against a local hub on 127.0.0.1
(tests/local_hub.py): a GGUF repo (a file picked, verified, pinned in the user's lock, then used offline), a
cut download resumed, a damaged download refused and fetched again, a gated repo, offline and unreachable
hubs, and a safetensors repo converted, loaded and removed. Each command runs in a child process:
huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE once, at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hf_fixtures import gguf_source, tiny_checkpoint
from local_hub import LocalHub
from waits import wait_until

from edgeinfer.errors import ModelNotAvailableError, UnknownModelError
from edgeinfer.hashing import sha256_file
from edgeinfer.hub import HubSpec, RemoteFile, RepoListing, parse_spec
from edgeinfer.lock import packaged_lock_path
from edgeinfer.pull import pick_gguf, pick_order, quant_in_name

MiB = 1 << 20
GGUF_REPO = "bartowski/SmolLM2-135M-Instruct-GGUF"
GGUF_FILE = "SmolLM2-135M-Instruct-Q4_1.gguf"
CKPT_REPO = "org/Tiny-Llama"
GATED_REPO = "org/gated-GGUF"


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    smol, _ = gguf_source("smollm2")
    with LocalHub(tokens=("hf_good",)) as local:
        local.add_repo(GGUF_REPO, {
            GGUF_FILE: smol,
            "SmolLM2-135M-Instruct-Q8_0.gguf": b"GGUF not the one picked",  # later in the pick order
            "mmproj-SmolLM2-f16.gguf": b"GGUF a vision projector, never a model",
            "README.md": b"# SmolLM2 135M Instruct, GGUF\n",
        }, card_data={"license": "apache-2.0"})
        local.add_repo(GATED_REPO, {GGUF_FILE: smol}, gated=True)
        checkpoint = tiny_checkpoint("llama")
        local.add_repo(CKPT_REPO, {p.name: p for p in checkpoint.iterdir() if p.is_file()})
        local.add_repo("org/gpt2-like", {"config.json": b'{"architectures": ["GPT2LMHeadModel"]}',
                                         "model.safetensors": b"\0" * 4096, "tokenizer.json": b"{}"})
        yield local


def env_for(hub_url: str, tmp: Path, *, offline: bool = False, token: str | None = None) -> dict[str, str]:
    assert hub_url.startswith("http://127.0.0.1:"), hub_url  # the client never talks to a real hub
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_", "EDGEINFER_"))}
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(tmp / "hf"), HF_HUB_OFFLINE="1" if offline else "0",
               HF_HUB_DISABLE_TELEMETRY="1", EDGEINFER_HOME=str(tmp / "home"),
               EDGEINFER_CONFIG=str(tmp / "config"))
    if token:
        env["HF_TOKEN"] = token
    return env


def cli(hub: LocalHub, tmp: Path, *args: str, **options: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeinfer", *args], env=env_for(hub.url, tmp, **options),
                          capture_output=True, text=True, timeout=600)


def user_lock(tmp: Path) -> str:
    path = tmp / "config" / "models.lock"
    return path.read_text() if path.exists() else ""


def gets(hub: LocalHub, filename: str) -> list:
    return [r for r in hub.requests if r.method == "GET" and r.path.endswith("/" + filename)]


def blobs(tmp: Path, repo: str) -> list[Path]:
    folder = tmp / "hf" / "hub" / f"models--{repo.replace('/', '--')}" / "blobs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_a_gguf_repo_is_picked_verified_pinned_and_then_used_offline(hub: LocalHub, tmp_path: Path) -> None:
    packaged = packaged_lock_path().read_bytes()
    pulled = cli(hub, tmp_path, "pull", f"hf:{GGUF_REPO}", "--json")
    assert pulled.returncode == 0, pulled.stderr
    data = json.loads(pulled.stdout)
    smol, smol_sha = gguf_source("smollm2")
    assert data["name"] == "smollm2-135m-instruct-q4_1" and data["quantization"] == "Q4_1"
    assert data["files"] == {GGUF_FILE: smol_sha} and data["sha256"] == smol_sha and not data["already"]
    assert len(data["revision"]) == 40
    assert "Q4_1" in pulled.stderr and data["role"] == "chat"
    lock = user_lock(tmp_path)
    assert f'repo = "{GGUF_REPO}"' in lock and f'revision = "{data["revision"]}"' in lock
    assert 'license = "apache-2.0"' in lock
    assert packaged_lock_path().read_bytes() == packaged  # pull never writes the project's lock

    listed = cli(hub, tmp_path, "list", "--json", offline=True)
    row = next(r for r in json.loads(listed.stdout) if r["name"] == data["name"])
    assert row["lock"] == "user"

    hub.clear_requests()
    again = cli(hub, tmp_path, "pull", f"hf:{GGUF_REPO}")
    assert again.returncode == 0 and "already pinned" in again.stdout
    assert not gets(hub, GGUF_FILE)  # the commit and file were pinned and are in the cache
    unreachable = subprocess.run([sys.executable, "-m", "edgeinfer", "pull", f"hf:{GGUF_REPO}"],
                                 env=env_for("http://127.0.0.1:9", tmp_path), capture_output=True, text=True)
    assert unreachable.returncode == 0 and "already pinned" in unreachable.stdout, unreachable.stderr
    assert "kept the pinned commit" in unreachable.stderr

    answer = cli(hub, tmp_path, "run", data["name"], "What is the capital of France? One word.",
                 "--max-tokens", "8", "--temperature", "0", offline=True)
    assert answer.returncode == 0 and "paris" in answer.stdout.lower(), answer.stderr
    by_spec = subprocess.run(
        [sys.executable, "-c", f"import edgeinfer as ei; m = ei.load('hf:{GGUF_REPO}', n_ctx=256); "
                               "print(m.name); m.close()"],
        env=env_for(hub.url, tmp_path, offline=True), capture_output=True, text=True, timeout=300)
    assert by_spec.returncode == 0 and by_spec.stdout.strip() == data["name"], by_spec.stderr


def test_a_cut_download_resumes_where_it_stopped(hub: LocalHub, tmp_path: Path) -> None:
    hub.clear_requests()
    hub.interrupt(GGUF_REPO, GGUF_FILE, after_bytes=35 * MiB)
    pulled = cli(hub, tmp_path, "pull", f"hf:{GGUF_REPO}:{GGUF_FILE}", "--name", "smol")
    assert pulled.returncode == 0, pulled.stderr
    ranges = [(r.range, r.status) for r in gets(hub, GGUF_FILE)]
    # huggingface_hub keeps whole 10 MiB chunks and asks for the rest
    assert ranges == [(None, 200), (f"bytes={30 * MiB}-", 206)], ranges
    assert "[models.smol]" in user_lock(tmp_path)


def test_a_killed_pull_leaves_no_partial_file_behind_for_good(hub: LocalHub, tmp_path: Path) -> None:
    """huggingface_hub 2.x restarts a file whose download process died (each download writes its own
    temporary file); the next pull deletes the dead one's partial file once it is stale."""
    stall = hub.stall(GGUF_REPO, GGUF_FILE, after_bytes=25 * MiB)
    child = subprocess.Popen([sys.executable, "-m", "edgeinfer", "pull", f"hf:{GGUF_REPO}"],
                             env=env_for(hub.url, tmp_path), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        assert stall.reached.wait(120), "the download never reached the stall"
        wait_until(lambda: any(p.name.endswith(".incomplete") and p.stat().st_size >= 10 * MiB
                               for p in blobs(tmp_path, GGUF_REPO)), "10 MiB written to the partial file")
        child.kill()
        child.wait(60)
    finally:
        stall.release()
    [partial] = [p for p in blobs(tmp_path, GGUF_REPO) if p.name.endswith(".incomplete")]
    os.utime(partial, (partial.stat().st_atime - 3600, partial.stat().st_mtime - 3600))  # long dead
    pulled = cli(hub, tmp_path, "pull", f"hf:{GGUF_REPO}")
    assert pulled.returncode == 0, pulled.stderr
    assert not partial.exists() and not [p for p in blobs(tmp_path, GGUF_REPO) if p.suffix == ".incomplete"]


def test_a_damaged_download_is_refused_deleted_and_fetched_again(hub: LocalHub, tmp_path: Path) -> None:
    hub.corrupt(GGUF_REPO, GGUF_FILE)
    try:
        bad = cli(hub, tmp_path, "pull", f"hf:{GGUF_REPO}")
    finally:
        hub.repair(GGUF_REPO, GGUF_FILE)
    assert bad.returncode != 0 and "damaged and has been deleted" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    assert user_lock(tmp_path) == ""  # nothing pinned
    assert not blobs(tmp_path, GGUF_REPO) or all(p.stat().st_size < MiB for p in blobs(tmp_path, GGUF_REPO))
    good = cli(hub, tmp_path, "pull", f"hf:{GGUF_REPO}")
    assert good.returncode == 0, good.stderr
    assert sha256_file(next(p for p in blobs(tmp_path, GGUF_REPO) if p.stat().st_size > MiB)) == \
        gguf_source("smollm2")[1]


def test_a_gated_repo_needs_a_token_with_access(hub: LocalHub, tmp_path: Path) -> None:
    refused = cli(hub, tmp_path, "pull", f"hf:{GATED_REPO}")
    assert refused.returncode != 0 and "is gated" in refused.stderr and "HF_TOKEN" in refused.stderr
    assert "Traceback" not in refused.stderr and user_lock(tmp_path) == ""
    wrong = cli(hub, tmp_path, "pull", f"hf:{GATED_REPO}", token="hf_wrong")
    assert wrong.returncode != 0 and "is gated" in wrong.stderr
    allowed = cli(hub, tmp_path, "pull", f"hf:{GATED_REPO}", token="hf_good")
    assert allowed.returncode == 0, allowed.stderr
    assert all(r.auth for r in gets(hub, GGUF_FILE)[-1:])


def test_offline_and_unreachable_hubs_say_what_to_run(hub: LocalHub, tmp_path: Path) -> None:
    offline = cli(hub, tmp_path, "pull", f"hf:{GGUF_REPO}", offline=True)
    assert offline.returncode != 0
    assert f"run `edgeinfer pull hf:{GGUF_REPO}` once while online" in offline.stderr
    loaded = subprocess.run([sys.executable, "-c", f"import edgeinfer as ei; ei.load('hf:{GGUF_REPO}')"],
                            env=env_for(hub.url, tmp_path, offline=True), capture_output=True, text=True)
    assert "ModelNotAvailableError" in loaded.stderr and "once while online" in loaded.stderr
    closed = subprocess.run([sys.executable, "-m", "edgeinfer", "pull", f"hf:{GGUF_REPO}"],
                            env=env_for("http://127.0.0.1:9", tmp_path), capture_output=True, text=True,
                            timeout=300)
    assert closed.returncode != 0 and "check the connection" in closed.stderr, closed.stderr
    assert "Traceback" not in closed.stderr and user_lock(tmp_path) == ""


@pytest.mark.slow
def test_a_safetensors_repo_is_converted_checked_pinned_loaded_and_removed(hub: LocalHub,
                                                                           tmp_path: Path) -> None:
    pulled = cli(hub, tmp_path, "pull", f"hf:{CKPT_REPO}")
    assert pulled.returncode == 0, pulled.stderr
    assert "tiny-llama: pinned" in pulled.stdout and "mean KL" in pulled.stdout
    lock = user_lock(tmp_path)
    assert 'format = "hf"' in lock and "checksums" in lock and '"model.safetensors" = "' in lock
    converted = sorted((tmp_path / "home").rglob("tiny-llama-*.gguf"))
    assert len(converted) == 1 and converted[0].with_name(converted[0].stem + ".report.json").is_file()
    again = cli(hub, tmp_path, "pull", f"hf:{CKPT_REPO}")  # the same commit, converted before: no work
    assert again.returncode == 0 and "already pinned" in again.stdout and "converting" not in again.stderr
    ran = cli(hub, tmp_path, "run", "tiny-llama", "Hello", "--max-tokens", "4", "--raw", offline=True)
    assert ran.returncode == 0, ran.stderr
    quant = converted[0].stem.rsplit("-", 1)[-1]
    converted[0].unlink()  # the cache lost the GGUF: the entry makes it again, offline, in the pinned type
    again = cli(hub, tmp_path, "pull", "tiny-llama", offline=True)
    assert again.returncode == 0, again.stderr
    assert f"converting the checkpoint to GGUF ({quant})" in again.stdout
    assert converted[0].is_file()

    removed = cli(hub, tmp_path, "rm", "tiny-llama", "--json", offline=True)
    assert removed.returncode == 0, removed.stderr
    gone = json.loads(removed.stdout)["removed"]
    assert str(converted[0]) in gone and any("blobs" in p for p in gone)
    assert not converted[0].exists() and "tiny-llama" not in user_lock(tmp_path)
    assert not [p for p in blobs(tmp_path, CKPT_REPO) if p.stat().st_size > 100_000]


def test_an_unsupported_architecture_is_refused_before_the_weights_download(hub: LocalHub,
                                                                            tmp_path: Path) -> None:
    hub.clear_requests()
    refused = cli(hub, tmp_path, "pull", "hf:org/gpt2-like")
    assert refused.returncode != 0 and "unsupported architecture GPT2LMHeadModel" in refused.stderr
    assert not gets(hub, "model.safetensors") and user_lock(tmp_path) == ""


# --- the parts without a hub -----------------------------------------------------------------------
@pytest.mark.parametrize("text", ["hf:org", "hf:org/../x", "hf:org/repo:../../etc/passwd", "hf:org/repo@",
                                  "hf:org/repo:", "hf:/abs/path", "hf:org/re po", "hf:org/repo@a..b"])
def test_malformed_specs_are_refused(text: str) -> None:
    with pytest.raises(UnknownModelError, match="write hf:ORG/REPO"):
        parse_spec(text)


def test_specs_parse() -> None:
    assert parse_spec("hf:Qwen/Qwen2.5-0.5B-Instruct") == HubSpec("Qwen/Qwen2.5-0.5B-Instruct")
    spec = parse_spec("hf:org/r-GGUF@v1.0:sub/m-Q4_K_M.gguf")
    assert spec == HubSpec("org/r-GGUF", "v1.0", "sub/m-Q4_K_M.gguf")
    assert str(spec) == "hf:org/r-GGUF@v1.0:sub/m-Q4_K_M.gguf"


def listing(sizes: dict[str, int], file: str | None = None) -> RepoListing:
    return RepoListing(HubSpec("org/m-GGUF", None, file), "0" * 40,
                       {n: RemoteFile(n, size, "a" * 64) for n, size in sizes.items()})


def test_the_pick_follows_the_order_and_the_ram() -> None:
    sizes = {"m-Q8_0.gguf": 8 * MiB * 1024, "m-Q4_K_M.gguf": 5 * MiB * 1024, "m-Q2_K.gguf": 3 * MiB * 1024,
             "m-F16.gguf": 16 * MiB * 1024, "mmproj-m-f16.gguf": MiB}
    assert pick_gguf(listing(sizes), ram_available=64 << 30)[0].name == "m-Q4_K_M.gguf"
    assert pick_gguf(listing(sizes), ram_available=5 << 30)[0].name == "m-Q2_K.gguf"  # Q4_K_M does not fit
    assert pick_gguf(listing(sizes), quant="q8_0", ram_available=1)[0].name == "m-Q8_0.gguf"
    with pytest.raises(ModelNotAvailableError, match="smallest file"):
        pick_gguf(listing(sizes), ram_available=1 << 30)
    with pytest.raises(UnknownModelError, match="no IQ4_XS file; its types: Q4_K_M, Q8_0, Q2_K, F16"):
        pick_gguf(listing(sizes), quant="IQ4_XS")
    with pytest.raises(ModelNotAvailableError, match="only split files"):
        pick_gguf(listing({"m-Q4_K_M-00001-of-00002.gguf": 1, "m-Q4_K_M-00002-of-00002.gguf": 1}))
    plain_cpu = pick_order(frozenset({"sse4_2"}))
    assert pick_gguf(listing(sizes), ram_available=64 << 30, order=plain_cpu)[0].name == "m-Q8_0.gguf"
    assert pick_order(frozenset({"avx2"}))[0][0] == "Q4_K_M"
    assert quant_in_name("Llama-3.2-1B-Instruct-IQ4_XS.gguf") == "IQ4_XS"
    assert quant_in_name("qwen2.5-0.5b-instruct-q4_k_m.gguf") == "Q4_K_M"
    assert quant_in_name("model.gguf") == ""
