"""Tool calling in the generic JSON format: tools and tool_choice are checked, a required or named call is
constrained by the tool's schema, "auto" allows a call or free text, and earlier calls and results render
through any chat template. The calls themselves come from the real SmolLM2."""

from __future__ import annotations

import json

import jsonschema
import pytest

import edgeinfer as ei
from edgeinfer.tools import parse_choice, parse_tools, read_tool_calls, tool_messages, tool_output

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["a", "b"],
                   "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize(("tools", "choice", "message"), [
    ([], "auto", "non-empty list"),
    ([{"type": "function"}], "auto", r"tools\[0\]"),
    ([{"type": "function", "function": {"name": "bad name!"}}], "auto", "letters, digits"),
    ([WEATHER, WEATHER], "auto", "unique"),
    ([WEATHER], "sometimes", "tool_choice must be one of"),
    ([WEATHER], {"type": "function", "function": {"name": "add"}}, "not among the tools"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}],
     "required", "not"),
])
def test_bad_tools_and_choices_are_clear_errors(tools, choice, message):
    with pytest.raises(ei.InvalidRequestError, match=message):
        parsed = parse_tools(tools)
        tool_output(parsed, parse_choice(choice, parsed))


def test_history_with_calls_and_results_renders_as_plain_messages():
    tools = parse_tools([WEATHER])
    history = [{"role": "system", "content": "Be brief."}, *ASK,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]
    rendered = tool_messages(history, tools, "auto")
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "user"]
    assert rendered[0]["content"].startswith("Be brief.\n\nYou have these tools:\n- get_weather:")
    assert json.loads(rendered[2]["content"]) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert rendered[3]["content"] == "Result of get_weather: 18 C, sunny"
    assert all(isinstance(m["content"], str) for m in rendered)
    assert tool_messages(ASK, tools, "none") == ASK  # no tools offered: nothing added


def test_free_text_and_cut_off_calls_are_not_calls():
    tools = parse_tools([WEATHER])
    assert read_tool_calls("It is sunny.", tools) == []
    assert read_tool_calls('{"name": "get_weather", "argu', tools) == []  # cut off by max_tokens
    assert read_tool_calls('{"name": "other", "arguments": {}}', tools) == []
    (call,) = read_tool_calls(' {"name": "get_weather", "arguments": {"city": "Oslo"}}', tools)
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    assert call.to_openai()["type"] == "function" and call.id.startswith("call_")


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_a_required_or_named_call_matches_the_tools_schema(smol, choice):
    tools = parse_tools([WEATHER, ADD])
    chosen = parse_choice(choice, tools)
    done = smol.complete_chat(tool_messages(ASK, tools, chosen), output=tool_output(tools, chosen),
                              max_tokens=60, temperature=0)
    (call,) = read_tool_calls(done.text, tools)
    tool = chosen if chosen != "required" else next(t for t in tools if t.name == call.name)
    assert done.finish_reason == "stop" and call.name == tool.name
    jsonschema.validate(json.loads(call.arguments), tool.parameters)
    if chosen == "required":
        assert call.name == "get_weather" and json.loads(call.arguments)["city"] == "Paris"


@pytest.mark.slow
def test_auto_gives_a_valid_call_or_text_and_reads_tool_results(smol):
    tools = parse_tools([WEATHER, ADD])
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]
    for messages in (ASK, history):
        done = smol.complete_chat(tool_messages(messages, tools, "auto"), output=tool_output(tools, "auto"),
                                  max_tokens=40, temperature=0)
        calls = read_tool_calls(done.text, tools)
        if calls:  # a call: whole, and valid for its tool's schema
            tool = next(t for t in tools if t.name == calls[0].name)
            jsonschema.validate(json.loads(calls[0].arguments), tool.parameters)
        else:  # free text, which the grammar keeps from looking like a call
            assert done.text.strip() and not done.text.lstrip().startswith("{")


def test_a_pydantic_schema_with_nested_models_keeps_its_references():
    from pydantic import BaseModel

    class Address(BaseModel):
        city: str

    class Person(BaseModel):
        name: str
        home: Address

    tools = parse_tools([{"type": "function", "function": {"name": "save", "parameters":
                                                           Person.model_json_schema()}}, ADD])
    fmt = tool_output(tools, "required")  # compiles: every $ref resolves
    assert fmt.schema["$defs"].keys() == {"save.Address"}
    call = {"name": "save", "arguments": {"name": "Al", "home": {"city": "Oslo"}}}
    jsonschema.validate(call, fmt.schema)
    with pytest.raises(jsonschema.ValidationError):  # the nested model's rules apply through the $ref
        jsonschema.validate({"name": "save", "arguments": {"name": "Al", "home": {"city": 5}}}, fmt.schema)
