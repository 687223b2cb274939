"""`edgeinfer serve`: a real uvicorn server on a free loopback port, the real SmolLM2, real clients."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from server_helpers import running, serve_process  # noqa: E402
from waits import EvalGate, wait_until  # noqa: E402

import edgeinfer as ei  # noqa: E402
from edgeinfer.lock import ModelLock  # noqa: E402
from edgeinfer.server import ServerOptions  # noqa: E402

pytestmark = pytest.mark.slow
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO = [{"role": "user", "content": "What is the capital of France?"}]
COUNTING = "1, 2, 3, 4, 5, 6,"  # greedy SmolLM2 keeps counting: a request that runs as long as asked


@pytest.fixture(scope="module")
def model(smollm2_path):
    # one thread: on 2 cores shared with clients (and other processes) llama.cpp's second thread
    # mostly waits for the first; results are bit-identical to two threads
    m = ei.load(smollm2_path, n_ctx=1024, n_threads=1, max_sequences=4)
    yield m
    m.close()


@pytest.fixture(scope="module")
def base_url(model) -> Iterator[str]:
    with running([model], ServerOptions(api_key=KEY)) as url:
        yield url


@pytest.fixture(scope="module")
def http(base_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=60)


def admitted(http: httpx.Client, model_name: str) -> int:
    return http.get("/health").json()["models"][model_name]["admitted"]


def assert_serving(http: httpx.Client) -> None:
    """A normal request still gets its answer."""
    r = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


# --- the OpenAI client ---------------------------------------------------------------------------
def test_models_are_listed(client, model):
    (card,) = client.models.list().data
    assert card.id == model.name and card.object == "model"
    assert client.models.retrieve(model.name).id == model.name


def test_chat_equals_the_in_process_greedy_answer_and_counts_usage(client, model):
    system = {"role": "system", "content": "You are a concise geography teacher. " * 12}
    messages = [system, *HELLO]
    expected = model.complete_chat(messages, temperature=0, max_tokens=24)
    r = client.chat.completions.create(model=model.name, messages=messages, temperature=0, max_tokens=24)
    assert r.object == "chat.completion" and r.model == model.name and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert r.usage.prompt_tokens == len(model.chat_prompt(messages))
    assert r.usage.completion_tokens == expected.stats.completion_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens > 0  # the same long prompt ran just before
    assert r.model_extra["x_edgeinfer"]["cached_tokens"] == r.usage.prompt_tokens_details.cached_tokens


def test_chat_streams_role_pieces_finish_reason_and_usage(client, model):
    expected = model.complete_chat(HELLO, temperature=0, max_tokens=16)
    chunks = list(client.chat.completions.create(model=model.name, messages=HELLO, temperature=0,
                                                 max_tokens=16, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == expected.stats.completion_tokens


def test_completions_from_text_and_token_ids(client, model):
    prompt = "The capital of France is"
    expected = model.generate(prompt, temperature=0, max_tokens=8)
    r = client.completions.create(model=model.name, prompt=prompt, temperature=0, max_tokens=8)
    assert r.object == "text_completion" and r.choices[0].text == expected.text
    assert r.usage.prompt_tokens == len(model.tokenize(prompt))
    ids = model.tokenize(prompt)
    r = client.completions.create(model=model.name, prompt=ids, temperature=0, max_tokens=8)
    assert r.choices[0].text == expected.text
    pieces = client.completions.create(model=model.name, prompt=prompt, temperature=0, max_tokens=8,
                                       stream=True)
    assert "".join(c.choices[0].text for c in pieces) == expected.text


def test_embeddings_need_an_embedding_model(client, model, monkeypatch):
    with pytest.raises(openai.BadRequestError, match="cannot embed"):
        client.embeddings.create(model=model.name, input="hello")
    # a model that can embed (Model.embed, once it exists) is called with the list of texts
    monkeypatch.setattr(model, "embed", lambda texts: [[len(t), 0.5, -1.0] for t in texts], raising=False)
    r = client.embeddings.create(model=model.name, input=["a", "abc"])
    assert [d.embedding for d in r.data] == [[1.0, 0.5, -1.0], [3.0, 0.5, -1.0]]
    r = client.embeddings.create(model=model.name, input="ab", encoding_format="float")
    assert r.data[0].embedding == [2.0, 0.5, -1.0]


# --- bad input -----------------------------------------------------------------------------------
def _chat(**fields) -> dict:
    return {"messages": HELLO, "max_tokens": 2, **fields}


BAD_REQUESTS = {
    # name: (request options for httpx, expected status, a piece of the message)
    "malformed json": (dict(content=b'{"messages": [', headers={"Content-Type": "application/json"}),
                       400, "not valid JSON"),
    "not an object": (dict(json=[1, 2]), 400, "JSON object"),
    "messages not a list": (dict(json={"messages": "hi"}), 400, "messages"),
    "content not a string": (dict(json={"messages": [{"role": "user", "content": 5}]}), 400, "content"),
    "no messages": (dict(json={"messages": []}), 400, "messages"),
    "max_tokens a string": (dict(json=_chat(max_tokens="8")), 400, "max_tokens"),
    "max_tokens negative": (dict(json=_chat(max_tokens=-1)), 400, "max_tokens"),
    "max_tokens zero": (dict(json=_chat(max_tokens=0)), 400, "max_tokens"),
    "max_tokens huge": (dict(json=_chat(max_tokens=10**6)), 400, "context"),
    "temperature a string": (dict(json=_chat(temperature="hot")), 400, "temperature"),
    "temperature negative": (dict(json=_chat(temperature=-1)), 400, "temperature"),
    "n > 1": (dict(json=_chat(n=2)), 400, "n must be 1"),
    "tools": (dict(json=_chat(tools=[{"type": "function"}])), 400, "tools"),
    "unknown model": (dict(json=_chat(model="gpt-9")), 404, "not served"),
    "no api key": (dict(json=_chat(), headers={"Authorization": ""}), 401, "API key"),
    "wrong api key": (dict(json=_chat(), headers={"Authorization": "Bearer nope"}), 401, "API key"),
    "over the context": (dict(json=_chat(messages=[{"role": "user", "content": "word " * 3000}])),
                         400, "context holds 1024"),
    "bad host": (dict(json=_chat(), headers={"Host": "evil.example:8000"}), 403, "Host"),
    "bad origin": (dict(json=_chat(), headers={"Origin": "http://evil.example"}), 403, "Origin"),
    "10 MB body": (dict(json=_chat(messages=[{"role": "user", "content": "x" * 10_000_000}])),
                   413, "larger than"),
    "10 MB chunked body": (dict(content=(b"x" * 65536 for _ in range(160)),
                                headers={"Content-Type": "application/json"}), 413, "larger than"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_an_openai_error_and_the_server_keeps_serving(http, case):
    options, status, message = BAD_REQUESTS[case]
    r = http.post("/v1/chat/completions", **options)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert_serving(http)


def test_completion_errors_name_the_prompt(http):
    r = http.post("/v1/completions", json={"prompt": "word " * 3000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "prompt"
    r = http.post("/v1/completions", json={"prompt": [10**9]})
    assert r.status_code == 400 and "token ids" in r.json()["error"]["message"]
    r = http.post("/v1/completions", json={"prompt": ""})
    assert r.status_code == 400 and r.json()["error"]["code"] == "empty_prompt"
    r = http.post("/v1/completions", json={"prompt": ["a", "b"]})
    assert r.status_code == 400 and "one prompt" in r.json()["error"]["message"]
    assert http.get("/v1/nothing").json()["error"]["code"] == "not_found"


def test_loopback_origins_are_allowed(http):
    r = http.get("/health", headers={"Origin": "http://localhost:5173", "Host": "localhost:1234"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:5173"
    r = http.get("/health", headers={"Host": "[::1]:8000"})
    assert r.status_code == 200


def test_the_host_guard_is_off_when_not_bound_to_loopback(model):
    with running([model], ServerOptions(loopback=False)) as url:
        r = httpx.get(f"{url}/v1/models", headers={"Host": "my-box.lan:8000", "Origin": "http://my-box.lan"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


# --- disconnects and the queue -------------------------------------------------------------------
@pytest.fixture
def streams(model, monkeypatch) -> list:
    """The CompletionStreams the server starts (the real ones, recorded as they are made)."""
    made = []
    original = model.stream

    def recording(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(model, "stream", recording)
    return made


def _cancelled(stream) -> bool:
    return stream.completion is not None and stream.completion.finish_reason == "cancelled"


@pytest.fixture
def gate(model) -> Iterator[EvalGate]:
    """The served model's evals, let through as the test says (no idle settling in the way)."""
    model.engine.settle()
    with EvalGate(model.backend) as g:
        yield g


def test_a_client_leaving_mid_stream_cancels_its_request(http, model, streams, gate):
    body = {"prompt": COUNTING, "max_tokens": 600, "temperature": 0, "stream": True}
    gate.allow(12)  # the prefill and 11 tokens, then the request waits, still running, at the gate
    with http.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        assert [next(lines) for _ in range(6)][0].startswith("data: ")
        gate.wait_held("the request to be waiting for its next token")
    wait_until(lambda: admitted(http, model.name) == 0, "the server to let go of the request")
    assert streams[0].completion is None  # the stream was cancelled while it was still running
    gate.open()
    wait_until(lambda: _cancelled(streams[0]), "the engine to end the request as cancelled")
    # a token an eval: the 12 allowed, and the one held at the gate; none after the cancel
    assert streams[0].completion.stats.completion_tokens <= gate.passed == 13
    wait_until(lambda: model.engine.occupancy() == (0, 0), "the engine to be idle")
    assert_serving(http)


def test_a_client_leaving_during_a_long_prefill_cancels_it(base_url, http, model, streams, gate):
    body = json.dumps({"prompt": "word " * 500, "max_tokens": 300, "temperature": 0}).encode()
    host, port = base_url.removeprefix("http://").split(":")
    gate.hold()
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        gate.wait_held("the prompt's prefill to start")
        assert admitted(http, model.name) == 1
    wait_until(lambda: admitted(http, model.name) == 0, "the server to let go of the request")
    gate.open()
    wait_until(lambda: _cancelled(streams[0]), "the engine to end the request as cancelled")
    assert streams[0].completion.stats.completion_tokens <= 1  # the prefill's own token, no decoding
    assert_serving(http)


def test_a_full_queue_gets_503_and_frees_up(model, gate):
    http = httpx.Client(timeout=60)
    with running([model], ServerOptions(max_queue=1)) as url, http:
        capacity = model.backend.caps.max_sequences + 1
        body = {"prompt": COUNTING, "max_tokens": 600, "temperature": 0, "stream": True}
        gate.hold()  # none of them can finish while the queue is checked
        with contextlib.ExitStack() as stack:
            for _ in range(capacity):  # each is admitted once its response has started
                stack.enter_context(http.stream("POST", f"{url}/v1/completions", json=body))
            assert http.get(f"{url}/health").json()["models"][model.name]["admitted"] == capacity
            r = http.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "server_busy"
            assert http.get(f"{url}/v1/models").status_code == 200  # only generation is queued
        wait_until(lambda: http.get(f"{url}/health").json()["models"][model.name]["admitted"] == 0,
                   "the server to let go of the requests whose clients left")
        gate.open()
        r = http.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
        assert r.status_code == 200, r.text
    wait_until(lambda: model.engine.occupancy() == (0, 0), "the engine to be idle")


# --- the command, from a second process ----------------------------------------------------------
def test_serve_needs_no_fastapi_to_import_the_sdk():
    code = ("import sys; sys.modules['fastapi'] = sys.modules['uvicorn'] = None; import edgeinfer; "
            "from edgeinfer.cli import main; sys.exit(main(['serve']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "pip install 'edgeinfer[server]'" in r.stderr


def _prompt(i: int) -> str:
    return f"Copy the code. Code: ID-{i}. Copy: ID-{i}. Copy:"


def test_many_concurrent_clients_get_their_own_answers(tmp_path):
    """32 client threads against `edgeinfer serve` in another process: every request is answered
    once, with its own prompt's answer; 503 only while the queue is full; memory stays flat."""
    psutil = pytest.importorskip("psutil")
    from edgeinfer_converters import prepare

    ids, rounds, clients, capacity = 50, 4, 32, 4 + 16
    defaults = ei.SamplingParams(**ModelLock.load().get("smollm2-135m-instruct").sampling)  # as served
    prepare("smollm2-135m-instruct", backend="auto")  # what `serve` does first: the default runs on onnx
    with ei.load("smollm2-135m-instruct", n_ctx=1024, n_threads=1, kv=ei.KVOptions(settle=False)) as alone:
        assert alone.backend.name == "onnx"
        expected = {i: alone.generate(_prompt(i), defaults, temperature=0, max_tokens=8) for i in range(ids)}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EDGEINFER_API_KEY": KEY}
    args = ("smollm2-135m-instruct", "--threads", "1", "--n-ctx", "1024", "--max-sequences", "4")
    log = tmp_path / "serve.log"
    with serve_process(*args, env=env, log=log) as (proc, url):
        results: dict[tuple[int, int], list] = collections.defaultdict(list)
        # at each 503: the server's admitted count, and the most requests the clients had in flight at
        # any moment while the refused one was (a client counts a request from before it is sent until
        # after its answer arrives, so at the moment of a refusal all the admitted ones are counted)
        busy_while: list[tuple[int, int]] = []
        flying: dict[int, int] = {}  # request number -> peak of in-flight requests during its flight
        numbers = iter(range(10**9))
        lock = threading.Lock()

        def ask(http: httpx.Client, job: tuple[int, int]) -> None:
            while True:
                with lock:
                    number = next(numbers)
                    flying[number] = 0
                    for other in flying:
                        flying[other] = max(flying[other], len(flying))
                r = http.post("/v1/completions", json={"prompt": _prompt(job[1]), "max_tokens": 8,
                                                       "temperature": 0, "model": "smollm2-135m-instruct"})
                with lock:
                    peak = flying.pop(number)
                    if r.status_code != 503:
                        results[job].append(r)
                        return
                    message = r.json()["error"]["message"]
                    admitted = int(re.search(r"(\d+) requests running", message).group(1))
                    busy_while.append((admitted, peak))
                time.sleep(0.5)  # a retry, sooner than Retry-After's 1 s: the others keep the queue full

        def run_round(n: int) -> None:
            jobs: queue.Queue = queue.Queue()
            for i in range(ids):
                jobs.put((n, i))

            def worker() -> None:
                with httpx.Client(base_url=url, headers=AUTH, timeout=60) as http:
                    while True:
                        try:
                            job = jobs.get_nowait()
                        except queue.Empty:
                            return
                        ask(http, job)

            threads = [threading.Thread(target=worker) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        server = psutil.Process(proc.pid)
        run_round(0)
        rss_first = server.memory_info().rss
        for n in range(1, rounds):
            run_round(n)
        rss_last = server.memory_info().rss

        assert sorted(results) == [(n, i) for n in range(rounds) for i in range(ids)]
        assert all(len(answers) == 1 for answers in results.values())  # none lost, none twice
        seen_ids = set()
        for (_, i), (r,) in results.items():
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["choices"][0]["text"] == expected[i].text, i
            assert body["usage"]["prompt_tokens"] == expected[i].stats.prompt_tokens
            seen_ids.add(body["id"])
        assert len(seen_ids) == ids * rounds
        assert all(admitted == capacity and peak > capacity for admitted, peak in busy_while), busy_while
        assert rss_last - rss_first < 50 * 2**20, (rss_first, rss_last)
        assert httpx.get(f"{url}/health").json()["models"]["smollm2-135m-instruct"]["admitted"] == 0

        proc.send_signal(signal.SIGTERM)  # graceful: uvicorn stops, the models are closed
        assert proc.wait(timeout=20) == 0
        assert "stopped" in log.read_text()
