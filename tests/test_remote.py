"""RemoteModel against a real `edgeinfer serve` process and against tiny stub servers (127.0.0.1 only)."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("httpx")

from server_helpers import serve_process  # noqa: E402
from waits import wait_until  # noqa: E402

import edgeinfer as ei  # noqa: E402
import edgeinfer.remote  # noqa: E402

KEY = "remote-test-key"
MODEL = "smollm2-135m-instruct"
PROMPT = "The capital of France is"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]
COUNTING = "1, 2, 3, 4, 5, 6,"  # greedy SmolLM2 keeps counting: a stream that runs as long as asked
SERVE_ARGS = (MODEL, "--threads", "1", "--n-ctx", "1024", "--max-sequences", "2")


@contextlib.contextmanager
def serve(home: Path, log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m edgeinfer serve` on a free loopback port; yields the process and its base URL."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EDGEINFER_HOME": str(home), "EDGEINFER_API_KEY": KEY}
    with serve_process(*SERVE_ARGS, env=env, log=log) as served:
        yield served


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- a real server --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    home = tmp_path_factory.getbasetemp() / "edgeinfer-home"
    home.mkdir(exist_ok=True)
    with serve(home, tmp_path_factory.mktemp("serve") / "serve.log") as (_, url):
        yield url


@pytest.fixture(scope="module")
def remote(server) -> Iterator[ei.RemoteModel]:
    with ei.RemoteModel(server, MODEL, api_key=KEY, timeout=60) as model:
        yield model


@pytest.mark.slow
def test_generate_stream_and_chat_match_the_local_model(remote, server):
    assert remote.available() and remote.device == server.removeprefix("http://")
    local = ei.load(MODEL, n_ctx=1024, n_threads=1)  # the lock's sampling defaults, as served
    try:
        expected = local.generate(PROMPT, temperature=0, max_tokens=16)
        expected_chat = local.complete_chat(HELLO, temperature=0, max_tokens=16)
    finally:
        local.close()

    done = remote.generate(PROMPT, temperature=0, max_tokens=16)
    assert done.text == expected.text and done.text.strip()
    s = done.stats
    assert (s.backend, s.model, s.device) == ("remote", MODEL, remote.device)
    assert s.prompt_tokens == expected.stats.prompt_tokens and s.completion_tokens == 16
    assert s.finish_reason == done.finish_reason == "length" and s.total_s > 0

    stream = remote.stream(PROMPT, temperature=0, max_tokens=16)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == expected.text == stream.completion.text
    s = stream.completion.stats
    assert s.completion_tokens == 16 and s.prompt_tokens > 0 and 0 < s.ttft_s <= s.total_s

    chat = remote.complete_chat(HELLO, temperature=0, max_tokens=16)
    assert chat.text == expected_chat.text and "Paris" in chat.text
    streamed = remote.stream_chat(HELLO, temperature=0, max_tokens=16).result()
    assert streamed.text == chat.text and streamed.stats.completion_tokens > 0

    conversation = remote.chat()  # a LanguageModel: multi-turn chat keeps the messages client-side
    assert conversation.send(HELLO[0]["content"], temperature=0, max_tokens=16).text == chat.text
    assert [m["role"] for m in conversation.messages] == ["user", "assistant"]


@pytest.fixture
def backoffs(monkeypatch) -> list[float]:
    """The seconds RemoteModel sleeps between attempts, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(edgeinfer.remote, "time", types.SimpleNamespace(sleep=slept.append,
                                                                        perf_counter=time.perf_counter))
    return slept


@pytest.mark.slow
def test_server_refusals_are_not_retried_and_carry_its_message(server, backoffs):
    with ei.RemoteModel(server, MODEL, api_key="wrong", retries=3, backoff=5) as bad_key:
        with pytest.raises(ei.RemoteRequestError) as info:
            bad_key.generate(PROMPT, max_tokens=2)
        assert backoffs == []  # not retried
        assert info.value.status == 401 and "401" in str(info.value)
        assert not bad_key.available()
    with ei.RemoteModel(server, "no-such-model", api_key=KEY) as unknown:
        with pytest.raises(ei.RemoteRequestError) as info:
            unknown.stream(PROMPT, max_tokens=2)
        assert info.value.status in (400, 404) and "no-such-model" in str(info.value)
    with ei.RemoteModel(server, MODEL, api_key=KEY) as model:
        with pytest.raises(ei.RemoteRequestError) as info:
            model.generate("word " * 3000, max_tokens=2)
        assert info.value.status == 400 and info.value.code == "context_length_exceeded"
        with pytest.raises(ei.InvalidRequestError):  # checked before any request, like Model
            model.generate(PROMPT, temprature=0)


@pytest.mark.slow
def test_a_stream_can_be_cancelled_from_another_thread(remote):
    stream = remote.stream(COUNTING, temperature=0, max_tokens=900)
    pieces = iter(stream)
    next(pieces)
    canceller = threading.Thread(target=stream.cancel)
    canceller.start()  # while this thread reads on
    rest = list(pieces)
    canceller.join()
    assert len(rest) < 800  # far from the 900 asked for: the server-side request was cut off too
    assert stream.completion.finish_reason == "cancelled"
    assert remote.generate(PROMPT, max_tokens=2).stats.completion_tokens == 2  # the client still works


def cancelled_on_server(server: str) -> float:
    """The server's count of cancelled requests, from its /metrics."""
    import httpx

    text = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('edgeinfer_requests_total{finish_reason="cancelled"'))


@pytest.mark.slow
def test_a_remote_stream_reads_on_after_a_break_and_cancels_when_dropped_or_left(remote, server):
    expected = remote.generate(PROMPT, temperature=0, max_tokens=16)
    stream = remote.stream(PROMPT, temperature=0, max_tokens=16)
    first = next(iter(stream))  # iter() is the stream itself: nothing is cancelled
    assert stream.result().text == expected.text and expected.text.startswith(first)
    stream = remote.stream_chat(HELLO, temperature=0, max_tokens=16)
    for _ in stream:
        break
    assert stream.result().finish_reason == "length" and stream.completion.stats.completion_tokens == 16

    before = cancelled_on_server(server)
    with remote.stream(COUNTING, temperature=0, max_tokens=900) as stream:
        next(stream)
    done = stream.result()  # leaving the block cancelled the rest, here and on the server
    assert done.finish_reason == "cancelled" and len(done.text) < 800
    wait_until(lambda: cancelled_on_server(server) == before + 1, "the server to cancel the request")
    stream = remote.stream(COUNTING, temperature=0, max_tokens=900)
    next(stream)
    del stream  # dropped unfinished: the connection is closed and the server cancels
    gc.collect()
    wait_until(lambda: cancelled_on_server(server) == before + 2, "the server to cancel the dropped request")
    assert remote.generate(PROMPT, max_tokens=2).stats.completion_tokens == 2


@pytest.mark.slow
def test_a_server_killed_mid_stream_raises_promptly(tmp_path, tmp_path_factory):
    home = tmp_path_factory.getbasetemp() / "edgeinfer-home"
    home.mkdir(exist_ok=True)
    with serve(home, tmp_path / "serve.log") as (proc, url):
        model = ei.RemoteModel(url, MODEL, api_key=KEY, timeout=120)
        stream = model.stream(COUNTING, temperature=0, max_tokens=900)
        received: list[str] = []
        with pytest.raises(ei.RemoteProtocolError) as info:
            for piece in stream:
                received.append(piece)
                if len(received) == 3:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = time.monotonic()
        assert time.monotonic() - killed < 60  # at once, not after the 120 s read timeout
        assert len(received) >= 3 and "broke off" in str(info.value) and url in str(info.value)
        assert stream.completion is None
        proc.wait(timeout=10)
    # this process is fine: the dead URL is now plainly unavailable, quickly
    started = time.monotonic()
    with pytest.raises(ei.RemoteUnavailableError):
        model.generate(PROMPT, max_tokens=2)
    assert time.monotonic() - started < 60 and not model.available()  # refused, not timed out
    model.close()


# --- no server -----------------------------------------------------------------------------------
def test_an_unreachable_server_fails_after_retries_with_backoff(backoffs):
    url = f"http://127.0.0.1:{free_port()}"
    with ei.RemoteModel(url, "m", retries=2, backoff=0.1) as model:
        assert not model.available()
        with pytest.raises(ei.RemoteUnavailableError) as info:
            model.generate("hi")
        assert backoffs == [0.1, 0.2]  # between three attempts, doubling
        assert url in str(info.value) and "3 attempt" in str(info.value) and info.value.status is None
        with pytest.raises(ei.RemoteUnavailableError):  # a stream fails before it is returned
            model.stream_chat(HELLO)
        assert isinstance(info.value, ei.EdgeInferError)


# --- stub servers --------------------------------------------------------------------------------
class Stub(BaseHTTPRequestHandler):
    """Answers every POST with the server's next scripted reply: (status, content type, body)."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        self.server.bodies.append(json.loads(self.rfile.read(length)))
        replies = self.server.replies
        status, kind, body = replies.pop(0) if len(replies) > 1 else replies[0]
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def stub(*replies: tuple[int, str, bytes]) -> Iterator[tuple[ThreadingHTTPServer, str]]:
    """A stub OpenAI server in a thread on 127.0.0.1; yields it (``.bodies`` = requests) and its URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    httpd.replies, httpd.bodies = list(replies), []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


JSON = "application/json"
SSE = "text/event-stream"
ERROR_500 = (500, JSON, json.dumps({"error": {"message": "the GPU fell over",
                                              "type": "server_error"}}).encode())
TEXT_OK = (200, JSON, json.dumps({"choices": [{"text": " Paris", "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 2}}).encode())


def test_http_500_is_retried_then_reported_with_the_server_message():
    with stub(ERROR_500) as (httpd, url), ei.RemoteModel(url, "m", retries=2, backoff=0.01) as model:
        with pytest.raises(ei.RemoteUnavailableError) as info:
            model.generate("hi")
        assert len(httpd.bodies) == 3
        assert info.value.status == 500 and "the GPU fell over" in str(info.value)
    with stub(ERROR_500, TEXT_OK) as (httpd, url), ei.RemoteModel(url, "m", backoff=0.01) as model:
        done = model.generate("hi", max_tokens=4, stop="\n")  # recovers on the second attempt
        assert done.text == " Paris" and len(httpd.bodies) == 2
        assert (done.stats.prompt_tokens, done.stats.completion_tokens) == (5, 2)
        # only what the caller set is sent; the server's defaults fill the rest
        assert httpd.bodies[-1] == {"model": "m", "prompt": "hi", "max_tokens": 4, "stop": ["\n"],
                                    "stream": False}


def test_a_401_surfaces_the_openai_error_message():
    body = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                      "code": "invalid_api_key"}}
    with stub((401, JSON, json.dumps(body).encode())) as (httpd, url), \
            ei.RemoteModel(url, "m", api_key="nope", retries=3) as model:
        with pytest.raises(ei.RemoteRequestError) as info:
            model.complete_chat(HELLO)
        assert len(httpd.bodies) == 1  # a 4xx is never retried
        assert "Incorrect API key provided" in str(info.value)
        assert (info.value.status, info.value.code) == (401, "invalid_api_key")


def test_malformed_answers_are_protocol_errors_and_not_retried():
    with stub((200, JSON, b"{not json")) as (httpd, url), ei.RemoteModel(url, "m", retries=2) as model:
        with pytest.raises(ei.RemoteProtocolError, match="malformed"):
            model.generate("hi")
        assert len(httpd.bodies) == 1
    events = (b'data: {"choices": [{"text": "one"}]}\n\n'
              b'data: {"choices": [{"text": " two"}]}\n\n'
              b"data: {broken\n\n")
    with stub((200, SSE, events)) as (httpd, url), ei.RemoteModel(url, "m") as model:
        stream = model.stream("hi")
        received = []
        with pytest.raises(ei.RemoteProtocolError, match="after 2 piece"):
            for piece in stream:
                received.append(piece)
        assert received == ["one", " two"] and len(httpd.bodies) == 1
        sent = httpd.bodies[0]
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_a_stream_without_usage_counts_pieces():
    events = (b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n'
              b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n'
              b'data: {"choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}]}\n\n'
              b"data: [DONE]\n\n")
    with stub((200, SSE, events)) as (_, url), ei.RemoteModel(url, "m", name="big") as model:
        done = model.stream_chat(HELLO).result()
        assert done.text == "Hello" and done.finish_reason == "stop"
        assert (done.stats.model, done.stats.backend, done.stats.completion_tokens) == ("big", "remote", 2)
