"""Tools in the model's own format: a chat template that describes tools (here our own Hermes-style
template, the format of Qwen2.5/Qwen3/SmolLM3, on SmolLM2, whose ChatML markup is the same) gets the
tools, earlier calls and tool results, and the model's calls are read and constrained in its format,
through the official openai client against a real server. Llama 3's JSON format on its own."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

from openai_server import TOOL_SCHEMAS, TOOLS  # noqa: E402
from server_helpers import running  # noqa: E402

import edgeinfer as ei  # noqa: E402
from edgeinfer.server import ServerOptions  # noqa: E402
from edgeinfer.server.responses import HeldText, ToolUse  # noqa: E402
from edgeinfer.tools import (  # noqa: E402
    GENERIC,
    TOOL_FORMATS,
    parse_tools,
    read_tool_calls,
    template_tools,
    tool_format,
    tool_messages,
    tool_output,
)

HERMES = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "You may call functions. Their signatures:\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    "For each call, write a JSON object with the function's name and arguments within "
    "<tool_call></tool_call> tags:\n"
    "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
    "<|im_end|>\n"
    "{% elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'system' and loop.first %}"
    "{% elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n"
    "</tool_response><|im_end|>\n"
    "{% elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{% for call in message.tool_calls %}<tool_call>\n"
    "{\"name\": \"{{ call.function.name }}\", \"arguments\": {{ call.function.arguments | tojson }}}\n"
    "</tool_call>{% if not loop.last %}\n{% endif %}{% endfor %}"
    "<|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{% for message in messages %}<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n"
    "{% if tools and loop.last %}Given the following functions, respond with a JSON for a function call. "
    "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
    "value}.\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}{% endif %}{{ message.content }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
KEY = "native-tools-key"
SCHEMAS = TOOL_SCHEMAS
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
HISTORY = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
               {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
           {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny <b>&</b>"}]
GREEDY = {"temperature": 0, "max_tokens": 60}
HERMES_FORMAT, LLAMA3_FORMAT = TOOL_FORMATS


def test_the_format_is_recognised_in_the_template():
    assert tool_format(HERMES) is HERMES_FORMAT and tool_format(LLAMA3) is LLAMA3_FORMAT
    assert tool_format(None) is GENERIC and tool_format("{{ messages }} <|im_start|>") is GENERIC


def test_calls_are_read_in_the_format_and_anything_else_is_not_a_call():
    tools = parse_tools(TOOLS)
    two = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
           '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
    assert [(c.name, json.loads(c.arguments)) for c in read_tool_calls(two, tools, HERMES_FORMAT)] == [
        ("get_weather", {"city": "Paris"}), ("add", {"a": 1, "b": 2})]
    assert read_tool_calls(two[:40], tools, HERMES_FORMAT) == []  # cut off
    # a second call cut off by max_tokens is dropped; the complete first one is read
    assert [c.name for c in read_tool_calls(two[:-3], tools, HERMES_FORMAT)] == ["get_weather"]
    assert read_tool_calls('{"name": "add", "arguments": {"a": 1, "b": 2}}', tools, HERMES_FORMAT) == []
    llama = read_tool_calls('{"name": "add", "parameters": {"a": 1, "b": 2}}', tools, LLAMA3_FORMAT)
    assert [(c.name, json.loads(c.arguments)) for c in llama] == [("add", {"a": 1, "b": 2})]
    assert read_tool_calls('{"name": "add", "arguments": {"a": 1}}', tools, LLAMA3_FORMAT) == []
    # streaming with "auto": held while the answer may still become "<tool_call>"
    held = HeldText(ToolUse(tuple(tools), "auto", HERMES_FORMAT))
    assert [held.feed(p) for p in ("<", "tool_", "call>\n")] == ["", "", ""]
    text = HeldText(ToolUse(tuple(tools), "auto", HERMES_FORMAT))
    assert [text.feed(p) for p in ("<", "b>Hi")] == ["", "<b>Hi"]


def test_the_template_gets_the_tools_calls_and_results_in_its_own_terms(smollm2_path):
    tools = parse_tools(TOOLS)
    messages = tool_messages(HISTORY, tools, "auto", HERMES_FORMAT)
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert messages[2] == {"role": "tool", "name": "get_weather", "content": "18 C and sunny <b>&</b>"}
    with ei.load(smollm2_path, n_ctx=1024, n_threads=1, chat_template=HERMES) as model:
        prompt = model.detokenize(model.chat_prompt(messages, tools=template_tools(tools)))
    assert '"name": "get_weather", "description": "The current weather in a city."' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\n18 C and sunny <b>&</b>\n</tool_response>" in prompt  # not HTML-escaped
    assert prompt.endswith("</tool_response>\nassistant\n")  # (control tokens are not detokenized)


def test_llama3_json_calls_are_constrained_to_its_parameters_key(smollm2_path):
    tools = parse_tools(TOOLS)
    with ei.load(smollm2_path, n_ctx=1024, n_threads=1, chat_template=LLAMA3) as model:
        done = model.complete_chat(ASK, tools=template_tools(tools), output=tool_output(
            tools, "required", LLAMA3_FORMAT), temperature=0, max_tokens=60)
    (call,) = read_tool_calls(done.text, tools, LLAMA3_FORMAT)
    assert json.loads(done.text).keys() == {"name", "parameters"}
    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


# --- through the server and the openai client -----------------------------------------------------------
@pytest.fixture(scope="module")
def model(smollm2_path):
    m = ei.load(smollm2_path, n_ctx=1024, n_threads=1, max_sequences=2, chat_template=HERMES)
    yield m
    m.close()


@pytest.fixture(scope="module")
def client(model):
    with running([model], ServerOptions(api_key=KEY)) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)


def _valid(call) -> dict:
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments


@pytest.mark.slow
@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_calls_in_the_models_format_come_back_as_openai_tool_calls(client, model, tool_choice):
    r = client.chat.completions.create(model=model.name, messages=ASK, tools=TOOLS, tool_choice=tool_choice,
                                       **GREEDY)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls and all(_valid(c) is not None for c in choice.message.tool_calls)
    if isinstance(tool_choice, dict):
        assert {c.function.name for c in choice.message.tool_calls} == {"add"}
    else:
        assert "Paris" in _valid(choice.message.tool_calls[0])["city"]
    one = client.chat.completions.create(model=model.name, messages=ASK, tools=TOOLS, tool_choice="required",
                                         parallel_tool_calls=False, **GREEDY).choices[0]
    assert len(one.message.tool_calls) == 1


@pytest.mark.slow
def test_streamed_native_calls_and_a_follow_up_with_results(client, model):
    whole = client.chat.completions.create(model=model.name, messages=ASK, tools=TOOLS,
                                           tool_choice="required", **GREEDY).choices[0]
    chunks = list(client.chat.completions.create(model=model.name, messages=ASK, tools=TOOLS, stream=True,
                                                 tool_choice="required", **GREEDY))
    pieces = [p for c in chunks if c.choices for p in c.choices[0].delta.tool_calls or []]
    streamed = {}
    for p in pieces:
        streamed.setdefault(p.index, [p.function.name or "", ""])[1] += p.function.arguments or ""
    assert [(n, json.loads(a)) for n, a in streamed.values()] == [
        (c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls]
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    # the result goes back in the template's <tool_response>: the answer is text, or another valid call
    auto = client.chat.completions.create(model=model.name, messages=HISTORY, tools=TOOLS,
                                          **GREEDY).choices[0]
    assert auto.message.content or all(_valid(c) is not None for c in auto.message.tool_calls)
    assert not (auto.message.content or "").startswith("<tool_call>")
