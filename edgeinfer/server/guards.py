"""Checks made before any route runs: DNS-rebinding guard, API key, request body size."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
LOOPBACK_ORIGIN = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(:\d+)?$")


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` serves this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str | None:
    match = _HOST.match(value)
    return match.group(1).strip("[]").lower() if match else None


class Guard:
    """Pure ASGI middleware (so it never buffers a body) applying the server's admission rules.

    ``loopback``: the Host header must name this machine and an Origin, if any, must be a loopback
    origin; a web page on another site can then not reach the server through DNS rebinding.
    ``api_key``: /v1/* and /metrics need ``Authorization: Bearer KEY`` (a Prometheus scrape job sends
    it with ``authorization: {credentials: KEY}``); /health stays open for liveness probes.
    ``max_body``: larger bodies get a 413, refused from Content-Length before reading, or as soon as
    the bytes read exceed it. ``body_timeout``: a body not complete within that many seconds is a 408.
    """

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body: int, loopback: bool,
                 body_timeout: float = 30.0) -> None:
        self.app, self.api_key, self.max_body, self.loopback = app, api_key, max_body, loopback
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check(scope, Headers(scope=scope))
        except APIError as exc:
            await exc.response()(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _check(self, scope: Scope, headers: Headers) -> None:
        if self.loopback:
            self._check_origin(headers)
        path = scope["path"]
        if self.api_key and (path.startswith("/v1/") or path == "/metrics") and scope["method"] != "OPTIONS":
            self._check_key(headers.get("authorization", ""))
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            raise _too_large(self.max_body)

    def _check_origin(self, headers: Headers) -> None:
        host = headers.get("host")
        if host is not None and _host_name(host) not in LOOPBACK_NAMES:
            raise APIError(403, f"Host {host!r} is not this machine: a server bound to loopback answers "
                           "only localhost, 127.0.0.1 and [::1]", code="forbidden_host")
        origin = headers.get("origin")
        if origin is not None and not re.fullmatch(LOOPBACK_ORIGIN, origin):
            raise APIError(403, f"Origin {origin!r} may not use this server (loopback origins only)",
                           code="forbidden_origin")

    def _check_key(self, authorization: str) -> None:
        scheme, _, given = authorization.partition(" ")
        key = (self.api_key or "").encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that fails with a 413 once the body grows past the limit (chunked uploads), and
        with a 408 when the body is not complete in time (a client trickling bytes holds no slot).
        Once the body is in, receive waits as long as it must (it then only reports a disconnect)."""
        seen, complete = 0, False
        deadline = asyncio.get_running_loop().time() + self.body_timeout

        async def limited() -> Message:
            nonlocal seen, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except asyncio.TimeoutError:
                raise APIError(408, f"the request body did not arrive within {self.body_timeout:g} s",
                               code="request_timeout") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.max_body:
                    raise _too_large(self.max_body)
            else:
                complete = True
            return message

        return limited


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes (the server's --max-body)",
                    code="request_too_large")
