"""`edgeinfer serve`: a local OpenAI-compatible HTTP server (needs the `server` extra: fastapi,
uvicorn, prometheus_client). Imported only by the serve path, so the SDK itself never needs them."""

from __future__ import annotations

from .app import ServerOptions, create_app
from .errors import APIError
from .run import bind, make_server, serve, url_of

__all__ = ["APIError", "ServerOptions", "bind", "create_app", "make_server", "serve", "url_of"]
