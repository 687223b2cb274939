"""A real edgeinfer server for tests on a free 127.0.0.1 port: uvicorn in a thread, or the
`edgeinfer serve` command in a child process."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from waits import wait_until

from edgeinfer.server import ServerOptions, bind, create_app, url_of
from edgeinfer.server.run import server_config


@contextlib.contextmanager
def running(models: list, options: ServerOptions) -> Iterator[str]:
    """A uvicorn server in a thread on a free 127.0.0.1 port; yields its base URL. (The options are
    taken as given: `edgeinfer serve` derives ``loopback`` from the host it binds.)"""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(server_config(create_app(models, options), options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "the server to start")
    assert server.started, "the server did not start"
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@contextlib.contextmanager
def serve_process(*args: str, env: dict, log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m edgeinfer serve ...` on a free port; yields the process and its base URL."""
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "edgeinfer", "serve", *args, "--port", "0"],
                                stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/v1", line)
        assert match, f"no URL printed: {line!r} {log.read_text()}"
        yield proc, match.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
