"""Structured output over HTTP: OpenAI's ``response_format`` on a real server (the official client),
RemoteModel's ``json_schema=`` against it, and `edgeinfer run --json-schema`. Real SmolLM2, greedy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pydantic = pytest.importorskip("pydantic")

import openai_server  # noqa: E402
from openai_server import KEY  # noqa: E402

import edgeinfer as ei  # noqa: E402
from edgeinfer.remote import request_options  # noqa: E402

# the server fixtures (module-scoped: one server per test module)
model, base_url, client = openai_server.model, openai_server.base_url, openai_server.client

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
ALICE = [{"role": "user", "content": "Describe Alice, who is 31 years old, as JSON."}]
ALICE_KEYS = [{"role": "user", "content": "Give a JSON object with the keys name and age for Alice, 31."}]
AS_PERSON = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
GREEDY = {"temperature": 0, "max_tokens": 60}


class Person(pydantic.BaseModel):
    name: str
    age: int


@pytest.fixture(scope="module")
def remote(base_url, model) -> Iterator[ei.RemoteModel]:
    with ei.RemoteModel(base_url, model.name, api_key=KEY, timeout=120, retries=0) as m:
        yield m


def _person(text: str) -> dict:
    value = json.loads(text)
    jsonschema.validate(value, PERSON)
    return value


# --- the server, through the official client ----------------------------------------------------
@pytest.mark.slow
def test_json_schema_answers_match_the_schema_and_the_in_process_model(client, model):
    r = client.chat.completions.create(model=model.name, messages=ALICE, response_format=AS_PERSON, **GREEDY)
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert _person(choice.message.content)["age"] == 31
    local = model.complete_chat(ALICE, json_schema=PERSON, **GREEDY)
    assert choice.message.content == local.text and local.parsed == json.loads(local.text)
    assert r.usage.completion_tokens == local.stats.completion_tokens


@pytest.mark.slow
def test_json_object_answers_are_a_json_object(client, model):
    r = client.chat.completions.create(model=model.name, messages=ALICE_KEYS, temperature=0, max_tokens=60,
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.slow
def test_streamed_json_schema_deltas_join_into_the_same_json(client, model):
    whole = client.chat.completions.create(model=model.name, messages=ALICE, response_format=AS_PERSON,
                                           **GREEDY).choices[0].message.content
    chunks = list(client.chat.completions.create(model=model.name, messages=ALICE, response_format=AS_PERSON,
                                                 stream=True, **GREEDY))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    _person(text)


@pytest.mark.slow
def test_text_completions_take_response_format_too(client, model):
    r = client.completions.create(model=model.name, prompt="A person as JSON:", temperature=0, max_tokens=60,
                                  extra_body={"response_format": AS_PERSON})
    assert r.choices[0].finish_reason == "stop"
    _person(r.choices[0].text)
    text = client.completions.create(model=model.name, prompt="The sky is", temperature=0, max_tokens=4,
                                     extra_body={"response_format": {"type": "text"}})
    assert text.choices[0].text


@pytest.mark.slow
def test_an_answer_cut_off_by_max_tokens_reports_length(client, model):
    r = client.chat.completions.create(model=model.name, messages=ALICE, response_format=AS_PERSON,
                                       temperature=0, max_tokens=4)
    choice = r.choices[0]
    assert choice.finish_reason == "length" and choice.message.content.startswith("{")
    with pytest.raises(ValueError):
        json.loads(choice.message.content)


@pytest.mark.slow
def test_an_unsupported_schema_is_a_400_naming_the_construct(client, model):
    unsupported = {"type": "json_schema",
                   "json_schema": {"name": "x", "schema": {"type": "object", "not": {}}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model.name, messages=ALICE, response_format=unsupported,
                                       **GREEDY)
    error = info.value.body
    assert info.value.status_code == 400 and '"not"' in error["message"]
    assert error["param"] == "response_format" and error["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="not"):  # the text endpoint, and streamed: the same 400
        client.completions.create(model=model.name, prompt="JSON:", stream=True,
                                  extra_body={"response_format": unsupported})
    ok = client.chat.completions.create(model=model.name, messages=ALICE, response_format=AS_PERSON, **GREEDY)
    assert ok.choices[0].finish_reason == "stop"  # the server keeps serving


@pytest.mark.slow
@pytest.mark.parametrize(("response_format", "says"), [
    ({"type": "json_schema"}, "needs 'json_schema'"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}, "schema"),
    ({"type": "xml"}, "response_format.type"),
    ("json", "response_format"),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}, "response_format"),
])
def test_a_malformed_response_format_is_a_400(base_url, response_format, says):
    body = {"messages": ALICE, "max_tokens": 4, "response_format": response_format}
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                   timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert says in error["message"] and error["param"].startswith("response_format")


# --- RemoteModel against the server -------------------------------------------------------------
def test_remote_requests_send_response_format_not_output():
    sent, _ = request_options(None, {"json_schema": PERSON, "max_tokens": 8})
    assert sent == {"max_tokens": 8, "response_format": AS_PERSON | {
        "json_schema": {"name": "output", "strict": True, "schema": PERSON}}}
    sent, _ = request_options(ei.SamplingParams(), {"json_schema": "json_object"})
    assert sent["response_format"] == {"type": "json_object"} and "output" not in sent
    assert "response_format" not in request_options(ei.SamplingParams(), {})[0]


def test_a_regex_or_grammar_on_a_remote_model_is_refused_before_any_request():
    # nothing listens on port 9: a request would be a RemoteUnavailableError, not an InvalidRequestError
    with ei.RemoteModel("http://127.0.0.1:9", "m", retries=0) as nowhere:
        with pytest.raises(ei.InvalidRequestError, match="regex"):
            nowhere.generate("x", regex=r"\d+")
        with pytest.raises(ei.InvalidRequestError, match="lark"):
            nowhere.stream_chat(ALICE, grammar='start: "a"')


@pytest.mark.slow
def test_remote_json_schema_results_are_parsed(remote, model):
    done = remote.complete_chat(ALICE, json_schema=PERSON, **GREEDY)
    assert done.finish_reason == "stop" and done.parsed == _person(done.text)
    assert done.text == model.complete_chat(ALICE, json_schema=PERSON, **GREEDY).text

    built = remote.complete_chat(ALICE, json_schema=Person, **GREEDY)
    assert isinstance(built.parsed, Person) and built.parsed.age == 31

    stream = remote.stream_chat(ALICE, json_schema=Person, **GREEDY)
    pieces = list(stream)
    assert len(pieces) > 1 and stream.completion.parsed == built.parsed

    text = remote.generate("A person as JSON:", json_schema=PERSON, temperature=0, max_tokens=60)
    assert text.finish_reason == "stop" and text.parsed == _person(text.text)
    anything = remote.complete_chat(ALICE_KEYS, json_schema="json_object", **GREEDY)
    assert anything.finish_reason == "stop" and isinstance(anything.parsed, dict)

    cut = remote.complete_chat(ALICE, json_schema=PERSON, temperature=0, max_tokens=4)
    assert cut.finish_reason == "length" and cut.parsed is None
    plain = remote.complete_chat(ALICE, temperature=0, max_tokens=4)
    assert plain.parsed is None


@pytest.mark.slow
def test_a_router_passes_json_schema_to_its_tiers(remote, model):
    router = ei.Router([ei.Tier("local", model), ei.Tier("remote", remote)],
                       ei.Rules([ei.Rule("remote", tasks=frozenset({"remote"}))]))
    local = router.complete_chat(ALICE, json_schema=Person, **GREEDY)
    assert isinstance(local.parsed, Person) and local.stats.route.startswith("local")
    far = router.complete_chat(ALICE, task="remote", json_schema=Person, **GREEDY)
    assert far.parsed == local.parsed and far.stats.route.startswith("remote")
    streamed = router.stream_chat(ALICE, task="remote", json_schema=PERSON, **GREEDY).result()
    assert streamed.parsed == local.parsed.model_dump()


# --- the command line ---------------------------------------------------------------------------
@pytest.mark.slow
def test_run_with_a_json_schema_file_prints_json(tmp_path):
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = [sys.executable, "-m", "edgeinfer", "run", "smollm2-135m-instruct", ALICE[0]["content"],
           "--temperature", "0", "--max-tokens", "60", "--threads", "1"]
    r = subprocess.run([*run, "--json-schema", str(schema)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert _person(r.stdout)["name"]

    r = subprocess.run([*run, "--json-schema", str(schema), "--json"], capture_output=True, text=True,
                       env=env, timeout=300)
    out = json.loads(r.stdout)
    assert out["finish_reason"] == "stop" and out["parsed"] == _person(out["text"])

    bad = tmp_path / "bad.json"
    for content, says in (("{not json", "not valid JSON"), ('{"type": "object", "not": {}}', '"not"')):
        bad.write_text(content)
        r = subprocess.run([*run, "--json-schema", str(bad)], capture_output=True, text=True, env=env,
                           timeout=300)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and says in r.stderr
        assert "Traceback" not in r.stderr
    r = subprocess.run([*run, "--json-schema", str(tmp_path / "missing.json")], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 2 and "cannot read" in r.stderr and "missing.json" in r.stderr
