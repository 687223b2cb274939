"""RemoteModel: an OpenAI-compatible server (llama.cpp, vLLM, Ollama, `edgeinfer serve`) used like a Model.

It returns the SDK's own Completion / CompletionStream / Stats, so a Router can treat local and
remote tiers alike. Only the options the caller sets are sent; the server's defaults fill the rest.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .conversation import Chats
from .engine import Completion, CompletionStream
from .errors import (
    BackendUnavailableError,
    InvalidRequestError,
    RemoteProtocolError,
    RemoteRequestError,
    RemoteTimeoutError,
    RemoteUnavailableError,
)
from .model import make_params
from .protocol import Message
from .sampling import SamplingParams
from .stats import Stats
from .structured import parsed_output

if TYPE_CHECKING:
    import httpx

    from .structured import OutputFormat

# sent as they are; "confidence" is local-only and "output" is sent as OpenAI's response_format
_PARAM_NAMES = tuple(f.name for f in fields(SamplingParams) if f.name not in ("confidence", "output"))


def _httpx():  # noqa: ANN202 - the module
    """httpx, imported on first use so `import edgeinfer` does not need it."""
    try:
        import httpx
    except ImportError:
        raise BackendUnavailableError("RemoteModel needs httpx: pip install 'edgeinfer[remote]'") from None
    return httpx


def request_options(params: SamplingParams | None, options: dict[str, Any]) -> tuple[dict[str, Any],
                                                                                   OutputFormat | None]:
    """The OpenAI request fields for the caller's settings (every field of ``params`` plus the explicit
    ``options``, validated like Model's: unknown names are an InvalidRequestError), and the output format
    asked for: ``json_schema=`` is sent as OpenAI's ``response_format``; a Lark grammar or regex cannot
    be sent (an InvalidRequestError)."""
    merged = make_params(params, **options)  # validates values and names
    if merged.confidence:
        raise InvalidRequestError("a remote tier cannot report per-token confidence: put a local model "
                                  "first in a cascade")
    chosen = set(_PARAM_NAMES) if params is not None else {k for k, v in options.items() if v is not None}
    out = {name: getattr(merged, name) for name in _PARAM_NAMES if name in chosen}
    if "stop" in out:
        out["stop"] = list(out["stop"])
    if out.get("seed") is None:
        out.pop("seed", None)
    if merged.output is not None:
        out["response_format"] = merged.output.response_format()
    return out, merged.output


class RemoteModel(Chats):
    """A model served over HTTP, with the LanguageModel surface of ``edgeinfer.Model`` (generate, stream,
    complete_chat, stream_chat, chat). Thread-safe; close it (or use ``with``) to release its connections."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 30.0,
                 retries: int = 2, backoff: float = 0.5, name: str | None = None) -> None:
        httpx = _httpx()
        base = base_url.rstrip("/")
        self.base_url = base[:-3] if base.endswith("/v1") else base  # accept either spelling
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequestError(f"base_url must be http(s)://host[:port], got {base_url!r}")
        self.device = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        self.model = model
        self.name = name or model
        self.role = "chat"  # an OpenAI-compatible server: a Router sends it chat messages
        self.timeout, self.retries, self.backoff = timeout, max(0, retries), backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout))

    def __repr__(self) -> str:
        return f"<RemoteModel {self.name} {self.base_url}>"

    # --- health
    def available(self, timeout: float = 2.0) -> bool:
        """True when the server answers GET /v1/models with 200 within ``timeout`` (never raises)."""
        httpx = _httpx()
        try:
            return self._client.get(f"{self.base_url}/v1/models", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    # --- plain completion
    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                 **options: Any) -> Completion:
        """Complete ``prompt`` in one request (POST /v1/completions); ttft_s is then the full wait."""
        sent, output = request_options(params, options)
        body = {"prompt": prompt if isinstance(prompt, str) else list(prompt), **sent}
        return self._complete("/v1/completions", body, chat=False, output=output)

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
               **options: Any) -> CompletionStream:
        """Complete ``prompt``, yielding text pieces; connection errors raise here, before any piece."""
        sent, output = request_options(params, options)
        body = {"prompt": prompt if isinstance(prompt, str) else list(prompt), **sent}
        return self._stream("/v1/completions", body, chat=False, output=output)

    # --- chat
    def complete_chat(self, messages: Sequence[Message], params: SamplingParams | None = None,
                      **options: Any) -> Completion:
        """Answer ``messages`` in one request (POST /v1/chat/completions)."""
        sent, output = request_options(params, options)
        body = {"messages": [dict(m) for m in messages], **sent}
        return self._complete("/v1/chat/completions", body, chat=True, output=output)

    def stream_chat(self, messages: Sequence[Message], params: SamplingParams | None = None,
                    **options: Any) -> CompletionStream:
        """Answer ``messages``, yielding text pieces as the server sends them."""
        sent, output = request_options(params, options)
        body = {"messages": [dict(m) for m in messages], **sent}
        return self._stream("/v1/chat/completions", body, chat=True, output=output)

    # --- transport
    def _send(self, path: str, body: dict[str, Any], *, stream: bool) -> httpx.Response:
        """POST with retries on connection failures and 5xx (exponential backoff); 4xx and timeouts
        are raised at once. Returns a 200 response (still open when ``stream``)."""
        httpx = _httpx()
        url = f"{self.base_url}{path}"
        attempts, why, status = self.retries + 1, "", None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                request = self._client.build_request("POST", url, json={"model": self.model, **body})
                response = self._client.send(request, stream=stream)
            except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
                raise RemoteTimeoutError(f"{url} did not answer within {self.timeout:g} s ({exc!r})",
                                         url=url) from exc
            except httpx.TransportError as exc:  # refused, reset, DNS, connect timeout, pool timeout
                why, status = f"cannot connect ({type(exc).__name__}: {exc})", None
                continue
            if response.status_code < 400:
                return response
            status, message, code = response.status_code, *self._error_of(response)
            if status < 500:
                raise RemoteRequestError(f"{url} refused the request: HTTP {status}: {message}",
                                         url=url, status=status, code=code)
            why = f"HTTP {status}: {message}"
        raise RemoteUnavailableError(f"{url} is unavailable after {attempts} attempt(s): {why}",
                                     url=url, status=status)

    @staticmethod
    def _error_of(response: httpx.Response) -> tuple[str, str | None]:
        """The server's error message and code (OpenAI's error object, or the raw body)."""
        try:
            response.read()
            text = response.text
        finally:
            response.close()
        try:
            error = json.loads(text)["error"]
            if isinstance(error, dict):
                return str(error.get("message") or error), error.get("code")
            return str(error), None
        except (ValueError, KeyError, TypeError):
            return text.strip()[:500] or response.reason_phrase, None

    def _stats(self, started: float) -> Stats:
        elapsed = time.perf_counter() - started
        return Stats(model=self.name, backend="remote", device=self.device, total_s=elapsed)

    def _complete(self, path: str, body: dict[str, Any], *, chat: bool,
                  output: OutputFormat | None = None) -> Completion:
        """One non-streamed request; a malformed 200 answer is a RemoteProtocolError (not retried)."""
        started = time.perf_counter()
        response = self._send(path, {**body, "stream": False}, stream=False)
        url = str(response.request.url)
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
            if not isinstance(text, str):
                text = "" if text is None else str(text)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise RemoteProtocolError(f"{url} sent a malformed answer ({type(exc).__name__}: {exc}): "
                                      f"{response.text[:200]!r}", url=url) from None
        stats = self._stats(started)
        stats.ttft_s = stats.total_s  # no piece is visible before the whole answer
        finish = str(choice.get("finish_reason") or "stop")
        _apply_usage(stats, data.get("usage"), pieces=1 if text else 0)
        stats.finish_reason = finish
        return Completion(text=text, tokens=[], finish_reason=finish, stats=stats,
                          parsed=parsed_output(output, text, finish))

    def _stream(self, path: str, body: dict[str, Any], *, chat: bool,
                output: OutputFormat | None = None) -> CompletionStream:
        started = time.perf_counter()
        response = self._send(path, {**body, "stream": True, "stream_options": {"include_usage": True}},
                              stream=True)
        cancelled = threading.Event()

        def cancel() -> None:
            cancelled.set()
            response.close()

        return CompletionStream(self._pieces(response, chat, started, cancelled, output), on_cancel=cancel)

    def _pieces(self, response: httpx.Response, chat: bool, started: float,
                cancelled: threading.Event, output: OutputFormat | None = None) -> Iterator[str]:
        """The stream's text pieces (SSE ``data:`` lines up to ``[DONE]``); returns the Completion.
        A break-off raises RemoteProtocolError after the pieces already yielded; never retried."""
        httpx = _httpx()
        url = str(response.request.url)
        stats = self._stats(started)
        pieces: list[str] = []
        usage: dict | None = None
        finish, done, t_first = "", False, 0.0
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, other SSE fields
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                event = _event(data, url, len(pieces))
                if "error" in event:
                    error = event["error"]
                    message = error.get("message", error) if isinstance(error, dict) else error
                    code = error.get("code") if isinstance(error, dict) else None
                    raise RemoteProtocolError(f"{url} reported an error mid-stream after {len(pieces)} "
                                              f"piece(s): {message}", url=url, code=code)
                usage = event.get("usage") or usage
                for choice in event.get("choices") or ():
                    finish = choice.get("finish_reason") or finish
                    text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    if text:
                        if not pieces:
                            t_first = time.perf_counter()
                        pieces.append(text)
                        yield text
        except (httpx.HTTPError, httpx.StreamError) as exc:
            if cancelled.is_set():
                finish = "cancelled"
            elif isinstance(exc, httpx.TimeoutException):
                raise RemoteTimeoutError(f"{url} sent nothing for {self.timeout:g} s after {len(pieces)} "
                                         "piece(s)", url=url) from exc
            else:
                raise RemoteProtocolError(f"the stream from {url} broke off after {len(pieces)} piece(s) "
                                          f"(server stopped or connection lost: {type(exc).__name__}: {exc})",
                                          url=url) from exc
        finally:
            response.close()
        if cancelled.is_set():
            finish = "cancelled"
        elif not done and not finish:
            raise RemoteProtocolError(f"the stream from {url} ended after {len(pieces)} piece(s) without "
                                      "a finish reason or [DONE]", url=url)
        end = time.perf_counter()
        stats.total_s = end - started
        if pieces:
            stats.ttft_s, stats.decode_s = t_first - started, end - t_first
        _apply_usage(stats, usage, pieces=len(pieces))
        stats.finish_reason = finish or "stop"
        text = "".join(pieces)
        return Completion(text=text, tokens=[], finish_reason=stats.finish_reason, stats=stats,
                          parsed=parsed_output(output, text, stats.finish_reason))

    def close(self) -> None:
        """Release the HTTP connections."""
        self._client.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _event(data: str, url: str, count: int) -> dict:
    """One SSE event's JSON object, or a RemoteProtocolError saying where the stream went wrong."""
    try:
        event = json.loads(data)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        raise RemoteProtocolError(f"{url} sent a malformed stream event after {count} piece(s): "
                                  f"{data[:200]!r}", url=url)
    return event


def _apply_usage(stats: Stats, usage: Any, *, pieces: int) -> None:
    """Token counts from OpenAI's ``usage``; without it, the number of pieces received."""
    usage = usage if isinstance(usage, dict) else {}
    stats.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    stats.completion_tokens = int(usage.get("completion_tokens") or pieces)
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        stats.cached_tokens = int(details.get("cached_tokens") or 0)
