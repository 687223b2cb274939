"""OpenAI tools over HTTP: ``tools`` and ``tool_choice`` on /v1/chat/completions, through the official
client against a real server. Calls come back as ``message.tool_calls`` (streamed as ``delta.tool_calls``)
with finish_reason "tool_calls"; earlier calls and tool results are accepted. Real SmolLM2, greedy."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

import openai_server  # noqa: E402
from openai_server import KEY, TOOL_SCHEMAS, TOOLS, WEATHER  # noqa: E402

from edgeinfer.server.responses import HeldText, ToolUse  # noqa: E402
from edgeinfer.tools import parse_tools  # noqa: E402

# the server fixtures (module-scoped: one server per test module)
model, base_url, client = openai_server.model, openai_server.base_url, openai_server.client

SCHEMAS = TOOL_SCHEMAS
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0, "max_tokens": 60}


def _valid_call(call) -> dict:
    """The call's arguments, checked against its tool's parameters."""
    assert call.type == "function" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments


@pytest.mark.slow
def test_required_tool_choice_returns_a_valid_call(client, model):
    r = client.chat.completions.create(model=model.name, messages=ASK, tools=TOOLS, tool_choice="required",
                                       **GREEDY)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert "Paris" in _valid_call(call)["city"]
    assert r.usage.completion_tokens > 0


@pytest.mark.slow
def test_a_named_tool_choice_calls_that_tool(client, model):
    r = client.chat.completions.create(model=model.name, messages=ASK, tools=TOOLS, **GREEDY,
                                       tool_choice={"type": "function", "function": {"name": "add"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "add"
    _valid_call(call)


@pytest.mark.slow
@pytest.mark.parametrize("messages", [ASK, [{"role": "user", "content": "Say hello to Bob."}]])
def test_auto_answers_with_a_valid_call_or_text(client, model, messages):
    r = client.chat.completions.create(model=model.name, messages=messages, tools=TOOLS, **GREEDY)
    choice = r.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        _valid_call(choice.message.tool_calls[0])
    else:
        assert choice.finish_reason in ("stop", "length") and choice.message.content
        assert choice.finish_reason == "length" or not choice.message.content.lstrip().startswith("{")


@pytest.mark.slow
@pytest.mark.parametrize(("tool_choice", "history"), [("required", False), ("auto", False), ("auto", True)])
def test_streamed_calls_reassemble_into_the_same_call(client, model, tool_choice, history):
    # (SmolLM2 answers the bare question in text with "auto", and calls again after a call and its result)
    messages = _conversation() if history else ASK
    whole = client.chat.completions.create(model=model.name, messages=messages, tools=TOOLS,
                                           tool_choice=tool_choice, **GREEDY).choices[0]
    chunks = list(client.chat.completions.create(model=model.name, messages=messages, tools=TOOLS,
                                                 tool_choice=tool_choice, stream=True, **GREEDY))
    choices = [c.choices[0] for c in chunks if c.choices]
    assert choices[0].delta.role == "assistant"
    assert choices[-1].finish_reason == whole.finish_reason
    calls: dict[int, dict] = {}
    for delta in (c.delta for c in choices):
        for piece in delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
            if piece.id:
                call["id"] = piece.id
                assert piece.type == "function"
            call["name"] += (piece.function.name or "") if piece.function else ""
            call["arguments"] += (piece.function.arguments or "") if piece.function else ""
    text = "".join(c.delta.content or "" for c in choices)
    if whole.message.tool_calls:
        expected = whole.message.tool_calls[0]
        assert list(calls) == [0] and calls[0]["id"].startswith("call_") and not text
        assert calls[0]["name"] == expected.function.name
        assert json.loads(calls[0]["arguments"]) == json.loads(expected.function.arguments)
    else:  # "auto" may answer in text: streamed as content
        assert tool_choice == "auto" and not calls and text == whole.message.content


def test_held_text_streams_text_at_once_and_holds_what_may_be_a_call():
    tools = tuple(parse_tools(TOOLS))
    auto = HeldText(ToolUse(tools, "auto"))
    assert [auto.feed(p) for p in (" ", "\n", "Hi", " there")] == ["", "", " \nHi", " there"]
    assert auto.end() == ([], "")
    auto = HeldText(ToolUse(tools, "auto"))
    call = '{"name": "add", "arguments": {"a": 1, "b": 2}}'
    assert [auto.feed(p) for p in (" ", call[:10], call[10:])] == ["", "", ""]
    calls, _ = auto.end()
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("add", {"a": 1, "b": 2})]
    cut = HeldText(ToolUse(tools, "required"))
    assert cut.feed('{"name": "ad') == "" and cut.end() == ([], '{"name": "ad')
    text = HeldText(ToolUse(tools, tools[0]))  # a named tool: held even if it does not start with "{"
    assert text.feed("Hi") == "" and text.end() == ([], "Hi")


@pytest.mark.slow
def test_streamed_usage_comes_after_the_call(client, model):
    chunks = list(client.chat.completions.create(model=model.name, messages=ASK, tools=TOOLS,
                                                 tool_choice="required", stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


@pytest.mark.slow
def test_a_cut_off_call_is_text_with_finish_reason_length(client, model):
    r = client.chat.completions.create(model=model.name, messages=ASK, tools=TOOLS, tool_choice="required",
                                       temperature=0, max_tokens=4)
    choice = r.choices[0]
    assert choice.finish_reason == "length" and not choice.message.tool_calls
    assert choice.message.content.startswith("{")
    chunks = list(client.chat.completions.create(model=model.name, messages=ASK, tools=TOOLS,
                                                 tool_choice="required", temperature=0, max_tokens=4,
                                                 stream=True))
    choices = [c.choices[0] for c in chunks if c.choices]
    assert "".join(c.delta.content or "" for c in choices) == choice.message.content
    assert choices[-1].finish_reason == "length" and not any(c.delta.tool_calls for c in choices)


def _conversation() -> list[dict]:
    return [*ASK,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}]


@pytest.mark.slow
def test_a_follow_up_with_calls_and_results_is_answered(client, model):
    r = client.chat.completions.create(model=model.name, messages=_conversation(), tools=TOOLS,
                                       tool_choice="none", **GREEDY)
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.message.content
    assert not choice.message.tool_calls
    # without tools, the history alone is accepted too; and with "auto" the answer is a call or text
    plain = client.chat.completions.create(model=model.name, messages=_conversation(), **GREEDY)
    assert plain.choices[0].message.content and not plain.choices[0].message.tool_calls
    auto = client.chat.completions.create(model=model.name, messages=_conversation(), tools=TOOLS,
                                          **GREEDY).choices[0]
    assert auto.message.content or _valid_call(auto.message.tool_calls[0]) is not None


@pytest.mark.slow
@pytest.mark.parametrize(("fields", "param", "says"), [
    ({"tools": []}, "tools", "non-empty list"),
    ({"tools": [{"type": "function"}]}, "tools", "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools", "letters, digits"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "unique"),
    ({"tools": [WEATHER, {"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "not": {}}}}]}, "tools.1.function.parameters", '"not"'),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "not among the tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": "add"}}, "tool_choice", "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "tool_choice must be one of"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format", "use one"),
    ({"functions": [WEATHER["function"]]}, "functions", "use tools"),
    ({"messages": [*ASK, {"role": "tool", "content": "18 C"}]}, "messages.1.tool_call_id", "tool_call_id"),
    ({"messages": [*ASK, {"role": "assistant", "content": None}]}, "messages.1.content", "required"),
    ({"messages": [{"role": "user", "content": "hi", "tool_calls": _conversation()[1]["tool_calls"]}]},
     "messages.0.tool_calls", "only assistant"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}]},
     "messages.1.tool_calls.0.function.arguments", "arguments"),
])
def test_bad_tools_are_a_400_before_any_generation(client, base_url, model, fields, param, says):
    body = {"messages": ASK, "max_tokens": 4, **fields}
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                   timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert says in error["message"] and error["param"] == param and error["type"] == "invalid_request_error"
    if "tools" in fields and "messages" not in fields:  # the official client gets a BadRequestError
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=model.name, messages=ASK, max_tokens=4,
                                           **{k: v for k, v in fields.items()})
