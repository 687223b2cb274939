"""Tool calling (OpenAI ``tools`` and ``tool_choice``) in a generic JSON format, constrained by the tools'
own schemas, for models whose chat template has no tool format (both bundled models).

The tools are described in a system message. A call is the whole answer, one JSON object:
``{"name": "<tool>", "arguments": {...}}``. With ``tool_choice`` "required" or a named function, the
output must be such a call (a JSON schema: one ``anyOf`` branch per tool, the tool's ``parameters`` as
``arguments``). With "auto", the output is either a call or free text that does not start with "{"
(a Lark grammar). Earlier calls and tool results in the conversation are written in the same format,
so any chat template can render them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequestError
from .protocol import Message
from .structured import OutputFormat, output_format

MAX_TOOLS = 64
CHOICES = ("none", "auto", "required")


@dataclass(frozen=True)
class Tool:
    """One function the model may call: its name, what it does, and its parameters' JSON schema."""

    name: str
    description: str
    parameters: dict


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: ``arguments`` is JSON text, as OpenAI's API gives it."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


def parse_tools(tools: Any) -> list[Tool]:
    """OpenAI ``tools`` (``[{"type": "function", "function": {"name", "description", "parameters"}}]``),
    checked: names are unique identifiers, parameters are JSON-schema objects."""
    if not isinstance(tools, list) or not tools:
        raise InvalidRequestError("tools must be a non-empty list of {'type': 'function', 'function': {...}}")
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(f"at most {MAX_TOOLS} tools per request, got {len(tools)}")
    out: list[Tool] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequestError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
        name = function.get("name")
        if not isinstance(name, str) or not name or len(name) > 64 or not name.replace("_", "a").replace(
                "-", "a").isalnum():
            raise InvalidRequestError(f"tools[{i}].function.name must be 1-64 letters, digits, '_' or '-'")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise InvalidRequestError(f"tools[{i}].function.parameters must be a JSON schema object")
        description = function.get("description", "")
        out.append(Tool(name, description if isinstance(description, str) else "", parameters))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise InvalidRequestError(f"tool names must be unique, got {names}")
    return out


def parse_choice(choice: Any, tools: Sequence[Tool]) -> str | Tool:
    """``tool_choice``: "none", "auto" (the default), "required", or ``{"type": "function", "function":
    {"name": ...}}`` (that tool must be called)."""
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice not in CHOICES:
            raise InvalidRequestError(f"tool_choice must be one of {list(CHOICES)} or a named function")
        return choice
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequestError("tool_choice must be 'none', 'auto', 'required' or "
                                  "{'type': 'function', 'function': {'name': ...}}")
    for tool in tools:
        if tool.name == name:
            return tool
    raise InvalidRequestError(f"tool_choice names {name!r}, which is not among the tools")


def call_schema(tools: Sequence[Tool]) -> dict:
    """The JSON schema of one call to any of ``tools``. Each tool's ``$defs`` move to the top, named
    after the tool, so that its ``$ref``s (pydantic writes them for nested models) still resolve."""
    defs: dict[str, Any] = {}
    branches = []
    for t in tools:
        parameters = dict(t.parameters)
        own = {**parameters.pop("definitions", {}), **parameters.pop("$defs", {})}
        refs = {f"#/{key}/{name}": f"#/$defs/{t.name}.{name}"
                for key in ("$defs", "definitions") for name in own}
        defs.update({f"{t.name}.{name}": _renamed(value, refs) for name, value in own.items()})
        branches.append({"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                         "properties": {"name": {"const": t.name}, "arguments": _renamed(parameters, refs)}})
    schema = branches[0] if len(branches) == 1 else {"anyOf": branches}
    return {**schema, "$defs": defs} if defs else schema


def _renamed(schema: Any, refs: dict[str, str]) -> Any:
    """``schema`` with its local ``$ref``s pointed at the moved definitions."""
    if isinstance(schema, dict):
        return {key: refs.get(value, value) if key == "$ref" and isinstance(value, str)
                else _renamed(value, refs) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_renamed(value, refs) for value in schema]
    return schema


def tool_output(tools: Sequence[Tool], choice: str | Tool) -> OutputFormat | None:
    """The constraint for ``choice``: None for "none" (free text), a call for "required" or a named tool,
    a call or free text (not starting with "{") for "auto"."""
    if choice == "none":
        return None
    if isinstance(choice, Tool):
        return output_format(json_schema=call_schema([choice]))
    if choice == "required":
        return output_format(json_schema=call_schema(tools))
    return output_format(grammar="start: call | TEXT\ncall: %json " + json.dumps(call_schema(tools))
                         + "\nTEXT: /[^{\\s][\\s\\S]*/\n")


def tool_messages(messages: Sequence[Message], tools: Sequence[Tool], choice: str | Tool) -> list[Message]:
    """``messages`` for a template without tools: the tools described in the system message, earlier
    calls as the assistant's JSON, and tool results as user messages that say whose result they are."""
    names: dict[str, str] = {}  # tool_call_id -> tool name
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequestError(f"message {i} must be an object")
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                function = call.get("function", {}) if isinstance(call, dict) else {}
                names[str(call.get("id", ""))] = str(function.get("name", ""))
                calls.append(_call_text(function.get("name"), function.get("arguments")))
            out.append({"role": "assistant", "content": "\n".join(calls)})
        elif role == "tool":
            name = names.get(str(m.get("tool_call_id", "")), m.get("name") or "the tool")
            out.append({"role": "user", "content": f"Result of {name}: {_text(m.get('content'))}"})
        else:  # plain text content (an assistant message's empty tool_calls list goes too)
            plain = {key: value for key, value in m.items() if key != "tool_calls"}
            out.append({**plain, "content": _text(m.get("content"))})
    if choice == "none":
        return out
    guide = _guide(tools, choice)
    if out and out[0].get("role") == "system":
        return [{"role": "system", "content": f"{out[0]['content']}\n\n{guide}"}, *out[1:]]
    return [{"role": "system", "content": guide}, *out]


def read_tool_calls(text: str, tools: Sequence[Tool]) -> list[ToolCall]:
    """The calls in an answer (empty when it is free text): a JSON object naming one of ``tools``."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return []
    try:
        value = json.loads(stripped)
    except ValueError:
        return []  # cut off (finish_reason "length"): not a call
    known = {t.name for t in tools}
    if not isinstance(value, dict) or value.get("name") not in known or not isinstance(value.get("arguments"),
                                                                                        dict):
        return []
    return [ToolCall(f"call_{secrets.token_hex(12)}", value["name"],
                     json.dumps(value["arguments"], ensure_ascii=False))]


def _guide(tools: Sequence[Tool], choice: str | Tool) -> str:
    listed = "\n".join(f"- {t.name}: {t.description or '(no description)'} Arguments (JSON schema): "
                       f"{json.dumps(t.parameters, ensure_ascii=False)}" for t in tools)
    how = ('To call a tool, answer with only a JSON object: {"name": "<tool name>", "arguments": {...}}.')
    if isinstance(choice, Tool):
        rule = f"Call the tool {choice.name} now."
    elif choice == "required":
        rule = "Call one of the tools now."
    else:
        rule = "Call a tool when it helps to answer; otherwise answer normally."
    return f"You have these tools:\n{listed}\n{how} {rule}"


def _call_text(name: Any, arguments: Any) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def _text(content: Any) -> str:
    """A message's content as text: a string, None (a call), or OpenAI's list of text parts."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
