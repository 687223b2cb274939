"""The `edgeinfer` command, run as a user would: a real process, offline."""

import json
import os
import re
import subprocess
import sys

import pytest
from child_hooks import child_code

pytestmark = pytest.mark.slow
EDGEINFER = [sys.executable, "-m", "edgeinfer"]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*EDGEINFER, *args], capture_output=True, text=True, input=stdin, env=env,
                          timeout=300)


def test_run_answers_from_the_bundled_model():
    r = cli("run", "smollm2-135m-instruct", "What is the capital of France?", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "llama" not in r.stderr.lower()  # llama.cpp's logs go to logging, not the terminal


def test_run_json_has_text_stats_and_the_choice():
    r = cli("run", "smollm2", "Say hello.", "--json", "--max-tokens", "8", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"] and out["mode"] == "chat"
    # the command line made the default model's ONNX folder first: on a CPU it runs faster there
    assert out["stats"]["completion_tokens"] <= 8 and out["stats"]["backend"] == "onnx"
    assert out["choice"]["device"] == "cpu" and "faster on onnxruntime" in out["choice"]["reasons"][0]


def test_run_reads_stdin_and_raw_mode():
    r = cli("run", "smollm2", "-", "--raw", "--max-tokens", "4", "--temperature", "0", stdin="The sky is")
    assert r.returncode == 0 and r.stdout.strip()


def test_errors_are_one_clear_line_with_a_nonzero_exit():
    r = cli("run", "no-such-model", "hi")
    assert r.returncode == 1 and r.stderr.startswith("error: unknown model 'no-such-model'")
    assert "Traceback" not in r.stderr
    r = cli("run", "smollm2", "hi", "--temperature", "-1")
    assert r.returncode == 2 and "temperature" in r.stderr
    r = cli("run", "smollm2", "   ")
    assert r.returncode == 2 and "empty" in r.stderr
    r = cli("run", "no-such-model", "hi", "--json")
    assert json.loads(r.stdout)["error"]["type"] == "UnknownModelError"


def test_env_reports_probe_choice_and_versions():
    assert cli("pull", "smollm2").returncode == 0  # its ONNX folder made (once): the plan is onnx
    r = cli("env", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["versions"]["llama-cpp-python"]
    assert out["plan"]["choice"]["backend"] == "onnx"
    assert json.loads(cli("env", "gemma-3-270m", "--json").stdout)["plan"]["choice"]["backend"] == "llama.cpp"
    assert {b["name"]: b["installed"] for b in out["backends"]} == {"llama.cpp": True, "onnx": True}
    assert out["probe"]["physical_cores"] >= 1
    text = cli("env").stdout
    assert "fastest quantizations on this CPU" in text
    memory = {row["name"]: row for row in out["memory"]["models"]}
    smol = memory["smollm2-135m-instruct"]
    assert smol["kv_bytes_per_token"] == 23040 and smol["fits"][0]["n_ctx"] == 4096
    assert smol["fits"][0]["sequences"] >= 1
    assert out["memory"]["budget_bytes"] > out["memory"]["process_bytes"]
    assert re.search(r"smollm2-135m-instruct: at most \d+ sequences? of 4096", text)


def test_a_memory_budget_that_cannot_fit_fails_before_loading_and_says_what_would():
    r = cli("run", "smollm2-135m-instruct", "Hello", "--memory", "250MB", "--n-ctx", "4096")
    assert r.returncode != 0
    assert "memory budget is 250 MB" in r.stderr
    assert re.search(r"it fits at most \d+ sequences? of \d+", r.stderr)
    assert "Traceback" not in r.stderr
    bad = cli("run", "smollm2-135m-instruct", "Hello", "--memory", "lots")
    assert bad.returncode != 0 and "'1.5GB'" in bad.stderr


def test_list_pull_and_lock_verify():
    r = cli("list", "--json")
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["smollm2-135m-instruct"]["available"].startswith("package")
    r = cli("pull", "smollm2")
    assert r.returncode == 0 and "sha256 verified" in r.stdout
    r = cli("lock", "verify", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    status = {row["name"]: row["status"] for row in json.loads(r.stdout)}
    assert status["smollm2-135m-instruct"] == "ok"


def test_pull_prepares_a_checkpoint_once_and_load_then_only_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path))
    first = cli("pull", "all-minilm-l6-v2")
    assert first.returncode == 0, first.stderr
    assert "converting the checkpoint to GGUF (F16) (once)" in first.stdout
    assert "prepared: checkpoint-gguf" in first.stdout
    again = cli("pull", "all-minilm-l6-v2")
    assert "(once)" not in again.stdout and "prepared: checkpoint-gguf" in again.stdout
    converted = list((tmp_path / "converted").glob("all-minilm-l6-v2-*-F16.gguf"))
    assert len(converted) == 1 and not list((tmp_path / "converted").glob("*.tmp*"))


def test_chat_is_interactive_multi_turn_and_streams():
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # the story pauses after a few words until it is cancelled (a test hook), so the Ctrl-C below
    # always lands mid-answer, however fast this machine writes the story
    code = child_code('pause_answer("dragon", after_tokens=12)')
    # one thread: with another process on a core, llama.cpp's second thread stalls every step
    args = ["-c", code, "chat", "--temperature", "0", "--max-tokens", "64", "--threads", "1", "--show-stats"]
    child = pexpect.spawn(sys.executable, args, env=env, encoding="utf-8", timeout=300)
    try:
        child.expect(">>> ")
        child.sendline("What is the capital of France?")
        child.expect("Paris")
        child.expect(r"\((\d+) cached\)")
        child.expect(">>> ")
        child.sendline("Repeat the name of that city.")
        child.expect(r"\((\d+) cached\)")
        assert int(child.match.group(1)) > 20  # the second turn reused the first turn's KV cache
        child.expect(">>> ")
        child.sendline("Write a very long story about a dragon.")
        child.expect("dragon.\r\n")  # the terminal's echo of the input
        child.expect(r"\w+ \w+ \w+")  # the answer is streaming
        child.sendintr()  # Ctrl-C stops the answer, not the chat
        child.expect(r"\(stopped\)")
        child.expect(">>> ")
        child.sendline("Thanks.")
        child.expect(r"\((\d+) cached\)")
        assert int(child.match.group(1)) > 40  # ...and the stopped turn's cache is still reused
        child.expect(">>> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_chat_with_an_id_resumes_in_a_new_process(tmp_path):
    env_home = {"EDGEINFER_HOME": str(tmp_path)}
    # a system prompt long enough for an exact first prefill (64+ tokens with flash attention)
    system = ("You are a helpful assistant. Answer in one short sentence, plainly and precisely, without "
              "repeating the question. If you do not know, say so instead of guessing. Use the earlier "
              "turns of the conversation to understand follow-up questions and to remember names.")
    args = ["chat", "--id", "demo", "--temperature", "0", "--max-tokens", "16", "--show-stats",
            "--system", system]
    first = subprocess.run([*EDGEINFER, *args], input="My name is Ada.\n/exit\n", capture_output=True,
                           text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **env_home}, timeout=300)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([*EDGEINFER, *args], input="What is my name?\n/exit\n", capture_output=True,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **env_home}, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "resumed conversation 'demo': 1 earlier turns" in second.stderr
    cached = int(second.stderr.split(" cached)")[0].rsplit("(", 1)[1])
    assert cached > 20  # the first process's KV came back from the disk cache


def test_run_cascade_shows_its_routing_decision_in_json():
    ask = ("run", "smollm2-135m-instruct", "What is the capital of France?", "--temperature", "0",
           "--max-tokens", "8", "--escalate-to", "gemma-3-270m", "--json")
    kept = cli(*ask, "--threshold", "-100")
    assert kept.returncode == 0, kept.stderr
    out = json.loads(kept.stdout)
    assert out["route"] == "small: cascade: small tier first; kept"
    assert out["router"]["large"]["requests"] == 0
    moved = json.loads(cli(*ask, "--threshold", "0").stdout)  # log-probabilities are below 0
    assert moved["route"].startswith("large: cascade: mean_logprob -")
    assert moved["stats"]["model"] == "gemma-3-270m" and moved["router"]["small"]["requests"] == 1
    bad = cli(*ask, "--threshold", "0.5")
    assert bad.returncode == 2 and "threshold must be in" in bad.stdout  # --json: the error as JSON
