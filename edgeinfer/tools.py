"""Tool calling (OpenAI ``tools`` and ``tool_choice``), constrained by the tools' own schemas, in the
model's own tool format when its chat template has one, else in a generic JSON format.

The model's own format (``TOOL_FORMATS``, recognised in the chat template's text): the template gets
the tools (its ``tools`` variable), earlier calls (``tool_calls``, arguments as objects) and tool
results (role "tool") and writes them its own way; the model's calls are read in that format, e.g.
``<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`` (Hermes style: Qwen2.5, Qwen3,
SmolLM3), several in a row when parallel calls are allowed.

The generic format (``GENERIC``: templates without tools, both bundled models): the tools are described
in a system message, and a call is the whole answer, one JSON object ``{"name": "<tool>", "arguments":
{...}}``; earlier calls and tool results are written in the same format, so any template renders them.

With ``tool_choice`` "required" or a named function the output must be a call (one ``anyOf`` branch per
tool, the tool's ``parameters`` as its arguments); with "auto" it is a call or free text that does not
start like one (a Lark grammar).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequestError
from .protocol import Message
from .structured import JSON_LAYOUT, OutputFormat, output_format

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


@dataclass(frozen=True)
class ToolFormat:
    """How a model writes tool calls: each call is ``open`` + a JSON object + ``close``, the arguments
    under ``arguments``; ``markers``: text that shows a chat template renders tools this way (all of it
    must be in the template); ``native``: the template renders tools, calls and results itself."""

    name: str
    markers: tuple[str, ...] = ()
    open: str = ""
    close: str = ""
    arguments: str = "arguments"
    native: bool = True
    parallel: bool = False  # several calls in one answer, one per line

    @property
    def starts_with(self) -> str:
        """How a call's text begins: an answer that begins otherwise is text."""
        return self.open or "{"


TOOL_FORMATS = (
    # Qwen2.5, Qwen3, Hermes 2/3, SmolLM3: calls in <tool_call> tags, results in <tool_response> tags
    ToolFormat("hermes", ("<tool_call>", "tools"), "<tool_call>\n", "\n</tool_call>", parallel=True),
    # Llama 3.1/3.2: the answer is one JSON object with "parameters"; results in the "ipython" role
    ToolFormat("llama3-json", ('"parameters": dictionary of argument name', "tools"), arguments="parameters"),
)
GENERIC = ToolFormat("generic", native=False)


def tool_format(template: str | None) -> ToolFormat:
    """The tool format a chat template renders (``GENERIC`` when it has none we know)."""
    for fmt in TOOL_FORMATS:
        if template and all(marker in template for marker in fmt.markers):
            return fmt
    return GENERIC


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


def call_schema(tools: Sequence[Tool], arguments: str = "arguments") -> dict:
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
        branches.append({"type": "object", "additionalProperties": False, "required": ["name", arguments],
                         "properties": {"name": {"const": t.name}, arguments: _renamed(parameters, refs)}})
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


def tool_output(tools: Sequence[Tool], choice: str | Tool, fmt: ToolFormat = GENERIC, *,
                parallel: bool = True) -> OutputFormat | None:
    """The constraint for ``choice`` in ``fmt``: None for "none" (free text), calls for "required" or a
    named tool, calls or free text (not starting like a call) for "auto". ``parallel``: a format that
    allows it may write several calls."""
    if choice == "none":
        return None
    schema = call_schema([choice] if isinstance(choice, Tool) else tools, fmt.arguments)
    if not fmt.open and choice != "auto":
        return output_format(json_schema=schema)
    inline = json.dumps({**schema, "x-guidance": JSON_LAYOUT})  # compact JSON, as with json_schema=
    call = (f"call: {json.dumps(fmt.open)} %json {inline} {json.dumps(fmt.close)}" if fmt.open
            else f"call: %json {inline}")
    calls = 'call ("\\n" call)*' if fmt.parallel and parallel else "call"
    if choice != "auto":
        return output_format(grammar=f"start: {calls}\n{call}\n")
    first = re.escape(fmt.starts_with[0]).replace("/", "\\/")
    return output_format(grammar=f"start: {calls} | TEXT\n{call}\nTEXT: /[^{first}\\s][\\s\\S]*/\n")


def tool_messages(messages: Sequence[Message], tools: Sequence[Tool], choice: str | Tool,
                  fmt: ToolFormat = GENERIC) -> list[Message]:
    """``messages`` ready for the chat template. A template with its own format (``fmt.native``) gets
    earlier calls with their arguments as objects and tool results as role "tool" (with the tool's
    name); the tools go to it separately (``template_tools``). Otherwise the tools are described in the
    system message, earlier calls are the assistant's JSON, and results are user messages that say
    whose result they are."""
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
                calls.append((function.get("name"), _arguments(function.get("arguments"))))
            if fmt.native:
                out.append({"role": "assistant", "content": _text(m.get("content")), "tool_calls": [
                    {"type": "function", "function": {"name": name, "arguments": arguments}}
                    for name, arguments in calls]})
            else:
                out.append({"role": "assistant", "content": "\n".join(
                    json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
                    for name, arguments in calls)})
        elif role == "tool":
            name = names.get(str(m.get("tool_call_id", "")), m.get("name") or "the tool")
            if fmt.native:
                out.append({"role": "tool", "name": name, "content": _text(m.get("content"))})
            else:
                out.append({"role": "user", "content": f"Result of {name}: {_text(m.get('content'))}"})
        else:  # plain text content (an assistant message's empty tool_calls list goes too)
            plain = {key: value for key, value in m.items() if key != "tool_calls"}
            out.append({**plain, "content": _text(m.get("content"))})
    if choice == "none" or fmt.native:
        return out
    guide = _guide(tools, choice)
    if out and out[0].get("role") == "system":
        return [{"role": "system", "content": f"{out[0]['content']}\n\n{guide}"}, *out[1:]]
    return [{"role": "system", "content": guide}, *out]


def template_tools(tools: Sequence[Tool]) -> list[dict]:
    """The tools as a chat template's ``tools`` variable takes them (OpenAI's function form)."""
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}} for t in tools]


def read_tool_calls(text: str, tools: Sequence[Tool], fmt: ToolFormat = GENERIC) -> list[ToolCall]:
    """The calls in an answer (empty when it is free text, or a call was cut off): JSON objects, in
    ``fmt``'s tags if it has any, naming one of ``tools`` with an object of arguments."""
    stripped = text.strip()
    if not stripped.startswith(fmt.starts_with):
        return []
    if fmt.open:
        pattern = re.escape(fmt.open.strip()) + r"\s*(.*?)\s*" + re.escape(fmt.close.strip())
        bodies = re.findall(pattern, stripped, flags=re.DOTALL)
    else:
        bodies = [stripped]
    known = {t.name for t in tools}
    calls = []
    for body in bodies:
        try:
            value = json.loads(body)
        except ValueError:
            return []  # cut off (finish_reason "length"): not a call
        if not isinstance(value, dict) or value.get("name") not in known or not isinstance(
                value.get(fmt.arguments), dict):
            return []
        calls.append(ToolCall(f"call_{secrets.token_hex(12)}", value["name"],
                              json.dumps(value[fmt.arguments], ensure_ascii=False)))
    return calls


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


def _arguments(arguments: Any) -> Any:
    """A call's arguments as an object where they are JSON text (OpenAI sends text)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            pass
    return arguments


def _text(content: Any) -> str:
    """A message's content as text: a string, None (a call), or OpenAI's list of text parts."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
