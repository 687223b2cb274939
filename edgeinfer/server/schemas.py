"""Request bodies of the OpenAI endpoints, validated strictly (a wrong type is a 400, not a guess)."""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import APIError

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop")
MAX_STOP, MAX_STOP_CHARS = 16, 1000  # OpenAI allows 4 stop strings

_Check = tuple[str, Any, str]  # (field, predicate on its value: True when fine, why it is refused)


class _Strict(BaseModel):
    """Strict types, unknown fields ignored, and a table of known-but-unsupported options."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

    unsupported: ClassVar[tuple[_Check, ...]] = ()

    def refuse_unsupported(self) -> None:
        """Refuse OpenAI options this server cannot honour, instead of silently ignoring them."""
        for name, fine, why in self.unsupported:
            if not fine(getattr(self, name)):
                raise APIError(400, why, code="unsupported_parameter", param=name)


class StreamOptions(_Strict):
    """OpenAI's stream_options: ``include_usage`` adds a last chunk with the usage."""

    include_usage: bool = False


class JSONSchemaFormat(_Strict):
    """OpenAI's ``response_format.json_schema``: the schema the output must match (``name`` and
    ``strict`` are accepted; the output is always held to the schema)."""

    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """OpenAI's ``response_format``: plain text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    def constraint(self) -> Any:
        """What ``json_schema=`` takes for this format (None: plain text)."""
        if self.type == "json_object":
            return "json_object"
        if self.type == "json_schema" and self.json_schema is not None:
            return self.json_schema.schema_
        return None


class GenerationRequest(_Strict):
    """What chat and text completions share: the model, sampling, limits, streaming and the output's
    format."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # llama.cpp extensions: top_k, min_p, repeat_penalty
    min_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = Field(None, ge=0, lt=2**32)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    frequency_penalty: Any = None
    presence_penalty: Any = None
    logit_bias: Any = None
    logprobs: Any = None
    response_format: ResponseFormat | None = None

    unsupported: ClassVar[tuple[_Check, ...]] = (
        ("n", lambda v: v == 1, "n must be 1: send several requests instead (they run as one batch)"),
        ("frequency_penalty", lambda v: not v, "frequency_penalty is not supported; use repeat_penalty"),
        ("presence_penalty", lambda v: not v, "presence_penalty is not supported; use repeat_penalty"),
        ("logit_bias", lambda v: not v, "logit_bias is not supported"),
        ("logprobs", lambda v: not v, "logprobs are not supported"),
        ("stop", lambda v: len(_stops(v)) <= MAX_STOP,
         f"at most {MAX_STOP} stop strings (each is checked at every generated token)"),
        ("stop", lambda v: all(len(x) <= MAX_STOP_CHARS for x in _stops(v)),
         f"a stop string may have at most {MAX_STOP_CHARS} characters"),
        ("response_format", lambda v: v is None or v.type != "json_schema" or v.json_schema is not None,
         "response_format of type 'json_schema' needs 'json_schema': {'name': ..., 'schema': {...}}"),
    )

    @property
    def limit(self) -> int | None:
        """The most tokens to generate, as the client asked (None: not said)."""
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self) -> dict[str, Any]:
        """The sampling options the client set; the model's defaults fill in the rest."""
        return {k: getattr(self, k) for k in SAMPLING if getattr(self, k) is not None}

    def output_schema(self) -> Any:
        """What ``json_schema=`` takes for the requested response_format (None: plain text)."""
        return self.response_format.constraint() if self.response_format is not None else None


class ContentPart(_Strict):
    """One part of a message's content; only text parts can be served."""

    type: str
    text: str | None = None


class FunctionCall(_Strict):
    """The function an earlier assistant turn called: its name and its arguments as JSON text."""

    name: str
    arguments: str


class ToolCallIn(_Strict):
    """One call in an earlier assistant turn's ``tool_calls``."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    """One chat message: text, an assistant turn that called tools (``tool_calls``, content null), or a
    tool's result (``role: "tool"`` with the ``tool_call_id`` it answers)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def has_tools(self) -> bool:
        """A tool result, or an assistant turn with tool calls (rendered by ``tools.tool_messages``)."""
        return self.role == "tool" or bool(self.tool_calls)

    def to_sdk(self, index: int) -> dict[str, Any]:
        """The message as the chat template takes it: plain text ('developer' is a system turn); tool
        calls and results keep their OpenAI fields, for ``tools.tool_messages`` to write out as text."""
        where = f"messages.{index}"
        if self.tool_calls and self.role != "assistant":
            raise APIError(400, f"{where}.tool_calls: only assistant messages make tool calls",
                           param=f"{where}.tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise APIError(400, f"{where}.tool_call_id is required in a tool message",
                           param=f"{where}.tool_call_id")
        if self.tool_calls:
            return {"role": "assistant", "content": self._text(where, required=False),
                    "tool_calls": [call.model_dump() for call in self.tool_calls]}
        message = {"role": "system" if self.role == "developer" else self.role,
                    "content": self._text(where, required=True)}
        if self.role == "tool":
            message["tool_call_id"] = self.tool_call_id
            if self.name:
                message["name"] = self.name
        return message

    def _text(self, where: str, *, required: bool) -> str | None:
        if self.content is None:
            if required:
                raise APIError(400, f"{where}.content is required (null only in an assistant message "
                               "with tool_calls)", param=f"{where}.content")
            return None
        if isinstance(self.content, str):
            return self.content
        if all(part.type == "text" and part.text is not None for part in self.content):
            return "".join(part.text or "" for part in self.content)
        raise APIError(400, f"{where}.content: only text parts are supported", param=f"{where}.content")


class ChatRequest(GenerationRequest):
    """POST /v1/chat/completions. ``tools`` / ``tool_choice`` are checked by ``tools.parse_tools`` /
    ``parse_choice`` (edgeinfer/tools.py), with the messages they render into."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: Any = None
    function_call: Any = None
    top_logprobs: Any = None

    unsupported: ClassVar[tuple[_Check, ...]] = (
        *GenerationRequest.unsupported,
        ("functions", lambda v: not v, "functions are not supported: use tools"),
        ("function_call", lambda v: not v, "function_call is not supported: use tool_choice"),
        ("top_logprobs", lambda v: not v, "logprobs are not supported"),
    )

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def has_tools(self) -> bool:
        """Tools offered (or a tool_choice), or tool calls and results in the conversation."""
        offered = self.tools is not None or self.tool_choice is not None
        return offered or any(m.has_tools for m in self.messages)

    def sdk_messages(self) -> list[dict[str, Any]]:
        return [m.to_sdk(i) for i, m in enumerate(self.messages)]


class CompletionRequest(GenerationRequest):
    """POST /v1/completions."""

    prompt: str | list[int] | list[str] | list[list[int]]
    echo: Any = None
    suffix: Any = None
    best_of: Any = None

    unsupported: ClassVar[tuple[_Check, ...]] = (
        *GenerationRequest.unsupported,
        ("echo", lambda v: not v, "echo is not supported"),
        ("suffix", lambda v: v is None, "suffix is not supported"),
        ("best_of", lambda v: v in (None, 1), "best_of must be 1"),
    )

    def single_prompt(self) -> str | list[int]:
        """The one prompt (text or token ids); a batch of several is refused like n > 1."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise APIError(400, "one prompt per request: send several requests (they run as one "
                               "batch)", param="prompt")
            prompt = prompt[0]
        return prompt


class EmbeddingRequest(_Strict):
    """POST /v1/embeddings (texts only)."""

    model: str | None = None
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


Body = TypeVar("Body", bound=_Strict)
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none)$|[^a-z0-9_]")  # pydantic's union branch names


MAX_DEPTH = 32  # an OpenAI request nests a few levels (messages, content parts, tools' JSON schemas)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _too_deep() -> APIError:
    return APIError(400, f"the request body nests deeper than {MAX_DEPTH} levels", code="invalid_json")


def _stops(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else value


def _check_tree(data: Any) -> None:
    """Refuse what JSON allows but text cannot hold: nesting past MAX_DEPTH, and lone surrogates
    (``"\\ud800"``), which no encoder can turn into UTF-8 for the tokenizer. Iterative: no recursion."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise APIError(400, "the request holds invalid Unicode (a lone surrogate such as \\ud800); "
                               "send well-formed UTF-16 pairs or plain UTF-8", code="invalid_unicode")
            continue
        children = value.items() if isinstance(value, dict) else value if isinstance(value, list) else ()
        if children and depth > MAX_DEPTH:
            raise _too_deep()
        for child in children:
            if isinstance(child, tuple):  # a dict item: its key is text too
                stack.append((child[0], depth + 1))
                child = child[1]
            stack.append((child, depth + 1))


def parse(schema: type[Body], raw: bytes) -> Body:
    """A request body validated against ``schema``; any problem is a 400 naming the field."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    _check_tree(data)
    try:
        body = schema.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(p) for p in error["loc"] if isinstance(p, int) or not _TYPE_TAG.search(p))
        raise APIError(400, f"{param or 'request body'}: {error['msg']}", param=param or None) from None
    body.refuse_unsupported()
    return body
