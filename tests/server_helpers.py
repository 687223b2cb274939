"""A real edgeinfer server (uvicorn) in a thread on a free 127.0.0.1 port, for tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn

from edgeinfer.server import ServerOptions, bind, create_app, url_of


@contextlib.contextmanager
def running(models: list, options: ServerOptions) -> Iterator[str]:
    """A uvicorn server in a thread on a free 127.0.0.1 port; yields its base URL. (The options are
    taken as given: `edgeinfer serve` derives ``loopback`` from the host it binds.)"""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(models, options), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
