"""OpenAI response bodies and server-sent events for chat and text completions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..engine import Completion
from ..tools import GENERIC, Tool, ToolCall, ToolFormat, read_tool_calls
from .errors import APIError
from .pump import Pump


@dataclass(frozen=True)
class Shape:
    """What differs between chat and text completions: names, and where the text goes."""

    prefix: str
    object: str
    chunk_object: str
    chat: bool
    param: str  # the request field holding the prompt

    def choice(self, text: str | None, finish_reason: str | None, *, chunk: bool, role: bool = False) -> dict:
        """One entry of ``choices``: a message or delta for chat, a text for completions."""
        choice: dict = {"index": 0}
        if not self.chat:
            choice["text"] = text or ""
        elif chunk:
            delta = {"role": "assistant"} if role else {}
            choice["delta"] = delta if text is None else {**delta, "content": text}
        else:
            choice["message"] = {"role": "assistant", "content": text}
        choice.update(logprobs=None, finish_reason=finish_reason)
        return choice


CHAT = Shape("chatcmpl", "chat.completion", "chat.completion.chunk", chat=True, param="messages")
TEXT = Shape("cmpl", "text_completion", "text_completion", chat=False, param="prompt")


@dataclass(frozen=True)
class ToolUse:
    """The tools a chat request offers, its ``tool_choice`` ("auto", "required" or a named tool; with
    "none" there is no call to read) and the format calls are written in: the answer is read for calls
    (``tools.read_tool_calls``)."""

    tools: tuple[Tool, ...]
    choice: str | Tool
    format: ToolFormat = GENERIC

    def calls(self, text: str) -> list[ToolCall]:
        return read_tool_calls(text, self.tools, self.format)


class HeldText:
    """A streamed answer that may be a tool call is held back while it may be one: all of it with
    ``tool_choice`` required or named, and with "auto" while it starts like a call ("{", or the format's
    opening tag); an answer that starts otherwise is text, streamed as it comes."""

    def __init__(self, use: ToolUse) -> None:
        self.use = use
        self.text = ""
        self.holding = True

    def feed(self, piece: str) -> str:
        """What to stream now of ``piece`` (empty while holding)."""
        if not self.holding:
            return piece
        self.text += piece
        head, start = self.text.lstrip(), self.use.format.starts_with
        if self.use.choice == "auto" and head and not (head.startswith(start) or start.startswith(head)):
            self.holding, text, self.text = False, self.text, ""
            return text
        return ""

    def end(self) -> tuple[list[ToolCall], str]:
        """At the end: the calls in the held text, or (not a call: cut off, or free text) the text."""
        text, self.text = self.text, ""
        return (self.use.calls(text), text) if self.holding else ([], text)


def accounting(completion: Completion) -> dict:
    """OpenAI's usage (the reused prompt tokens where OpenAI reports its own prompt caching), and
    the completion's full stats under ``x_edgeinfer``."""
    s = completion.stats
    usage = {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
             "total_tokens": s.prompt_tokens + s.completion_tokens,
             "prompt_tokens_details": {"cached_tokens": s.cached_tokens}}
    return {"usage": usage, "x_edgeinfer": s.to_dict()}


def ended(completion: Completion | None) -> Completion:
    """The completion of a stream that ran to its end; one the server cancelled is a 503."""
    if completion is None or completion.finish_reason == "cancelled":
        raise APIError(503, "the server is shutting down: retry later", code="shutting_down")
    return completion


class Reply:
    """One completion request's identity (id, created, model) and the bodies built from it."""

    def __init__(self, shape: Shape, model: str, tools: ToolUse | None = None) -> None:
        self.shape, self.model, self.tools = shape, model, tools
        self.id = f"{shape.prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def body(self, completion: Completion) -> dict:
        """The whole (non-streamed) response."""
        calls = self.tools.calls(completion.text) if self.tools is not None else []
        if calls:
            message = {"role": "assistant", "content": None, "tool_calls": [c.to_openai() for c in calls]}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
        else:
            choice = self.shape.choice(completion.text, completion.finish_reason, chunk=False)
        return {**self._head(self.shape.object), "choices": [choice], **accounting(completion)}

    def chunk(self, text: str | None, finish_reason: str | None = None, *, role: bool = False,
              **extra: object) -> bytes:
        """One server-sent event carrying a piece (or the role, or the finish reason)."""
        choice = self.shape.choice(text, finish_reason, chunk=True, role=role)
        return sse({**self._head(self.shape.chunk_object), "choices": [choice], **extra})

    def call_chunks(self, index: int, call: ToolCall, **extra: object) -> list[bytes]:
        """A tool call as OpenAI streams it: its id, type and name, then its arguments."""
        head = {"index": index, "id": call.id, "type": "function",
                "function": {"name": call.name, "arguments": ""}}
        arguments = {"index": index, "function": {"arguments": call.arguments}}
        return [sse({**self._head(self.shape.chunk_object), **extra, "choices": [
            {"index": 0, "delta": {"tool_calls": [delta]}, "logprobs": None, "finish_reason": None}]})
            for delta in (head, arguments)]

    async def events(self, pump: Pump, include_usage: bool) -> AsyncIterator[bytes]:
        """The stream's events: (chat) the role, the pieces, the finish reason, usage, [DONE]. With
        tools, an answer that may be a call is held back and sent as ``delta.tool_calls`` once whole."""
        extra = {"usage": None} if include_usage else {}
        held = HeldText(self.tools) if self.tools is not None else None
        if self.shape.chat:
            yield self.chunk(None if held is not None else "", role=True, **extra)
        try:
            async for piece in pump:
                if held is not None and not (piece := held.feed(piece)):
                    continue
                yield self.chunk(piece, **extra)
            completion = ended(pump.completion) if not pump.disconnected else None
        except APIError as exc:
            yield sse(exc.body())
            return
        except Exception as exc:  # noqa: BLE001 - the headers are sent: report it in the stream
            yield sse(APIError(500, f"{type(exc).__name__}: {exc}", code="model_error").body())
            return
        if completion is None:
            return
        finish_reason = completion.finish_reason
        calls, text = held.end() if held is not None else ([], "")
        for i, call in enumerate(calls):
            for event in self.call_chunks(i, call, **extra):
                yield event
            finish_reason = "tool_calls"
        if text and not calls:
            yield self.chunk(text, **extra)
        yield self.chunk(None, finish_reason, **extra)
        if include_usage:
            yield sse({**self._head(self.shape.chunk_object), "choices": [], **accounting(completion)})
        yield b"data: [DONE]\n\n"


def sse(data: dict) -> bytes:
    """One server-sent event holding ``data`` as JSON."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


SHUTTING_DOWN = sse(APIError(503, "the server is shutting down: retry later", code="shutting_down").body())


class EventStream(StreamingResponse):
    """A text/event-stream response that calls ``on_close`` however it ends (done, client gone,
    server stopping), so the request's stream and admission are always released. The pump, not
    this response, watches for the client going away. A stream still running when the server's grace
    period ends (Ctrl-C, SIGTERM) is finished properly, with a shutting_down error event and
    ``[DONE]``, not cut off (and not logged as a traceback)."""

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            async for event in self.body_iterator:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:  # the server stopped waiting for this response
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await send({"type": "http.response.body", "body": SHUTTING_DOWN + b"data: [DONE]\n\n",
                            "more_body": False})
        finally:
            self.on_close()
