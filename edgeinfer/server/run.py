"""Running the app with uvicorn: bind, say where, serve until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..model import Model
from .app import ServerOptions, create_app
from .guards import is_loopback

SHUTDOWN_GRACE_S = 5  # open responses get this long to finish once a stop is asked


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one), IPv4 or IPv6."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """The base URL a bound socket answers on."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def make_server(models: Sequence[Model], options: ServerOptions | None = None, *, host: str = "127.0.0.1",
                aliases: Mapping[str, Model] | None = None, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn server for ``models``; the DNS-rebinding guard is on when ``host`` is loopback."""
    options = replace(options or ServerOptions(), loopback=is_loopback(host.strip("[]")))
    app = create_app(models, options, aliases=aliases)
    return uvicorn.Server(server_config(app, options, log_level=log_level))


def server_config(app: object, options: ServerOptions, *, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn's settings for ``app``: graceful shutdown, and a deadline for each request's headers."""
    protocol = type("HeaderDeadline", (HeaderDeadlineProtocol,), {"header_timeout": options.header_timeout})
    return uvicorn.Config(app, log_level=log_level, access_log=log_level in ("debug", "info"), http=protocol,
                          timeout_graceful_shutdown=SHUTDOWN_GRACE_S, lifespan="off")


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus a deadline for a request's headers: a client that opens a
    connection and trickles its headers (slowloris) is dropped after ``header_timeout`` seconds, on
    a new connection and between the requests of a kept-alive one. uvicorn alone has no such limit."""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self._deadline is not None and self.cycle is not self._waiting_after:  # headers are in
            self._deadline.cancel()
            self._deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._waiting_after = self.cycle  # a new request replaces the cycle
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.cycle is self._waiting_after and not self.transport.is_closing():
            self.transport.close()


def serve(models: Sequence[Model], options: ServerOptions | None = None, *, host: str = "127.0.0.1",
          port: int = 8000, aliases: Mapping[str, Model] | None = None, log_level: str = "warning",
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``models`` on ``host:port`` until SIGINT/SIGTERM (uvicorn handles both in the main
    thread); ``on_ready`` gets the base URL once the socket is bound. The caller closes the models."""
    sock = bind(host, port)
    server = make_server(models, options, host=host, aliases=aliases, log_level=log_level)
    if on_ready is not None:
        on_ready(url_of(sock))
    with _stopped_by_signals():
        server.run(sockets=[sock])


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """A normal return after SIGINT/SIGTERM. uvicorn shuts down gracefully, then raises the signal
    again once its handlers are gone; SIGTERM's default action would kill the process before the
    caller closes its models, so here both become a KeyboardInterrupt, caught."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
