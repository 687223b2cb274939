"""`edgeinfer serve`: a local OpenAI-compatible HTTP server over one or more loaded models."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

from ..errors import EdgeInferError, InvalidRequestError
from ..kv_options import KVOptions
from ..memory import Preferred
from ..routing.learned import TrainedRouter
from ..routing.spec import SPEC_HELP, check_spec, router_from_spec
from .options import DEFAULT_CHAT_MODEL, add_load_options, load_model

# 8: the engine's aggregate throughput still grows from 4 to 8 streams here (1.67x -> 1.91x of
# one-by-one, benchmarks/results/batching.md); each sequence costs n_ctx KV cells of memory, once used
SERVE_SEQUENCES = 8


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `serve`: the models, address, API key and admission limits, and the loading flags."""
    p = sub.add_parser("serve", help="a local OpenAI-compatible HTTP server (/v1/chat/completions, ...)")
    p.add_argument("models", nargs="*", default=[DEFAULT_CHAT_MODEL], metavar="MODEL",
                   help=f"models to serve; a request's 'model' picks one (default: {DEFAULT_CHAT_MODEL})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; another host turns the DNS-rebinding guard off)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one; default 8000)")
    p.add_argument("--api-key", default=os.environ.get("EDGEINFER_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $EDGEINFER_API_KEY)")
    p.add_argument("--max-sequences", type=int, default=None,
                   help="requests each model runs at once (default 8, fewer if --memory holds fewer; "
                        "each is allocated when first used)")
    p.add_argument("--max-queue", type=int, default=None,
                   help="requests each model queues beyond those (default 4 x --max-sequences); more get 503")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (413 above)")
    p.add_argument("--router", default=None, metavar="FILE_OR_SPEC",
                   help=f"also serve a routed model over MODELS (cheapest first): {SPEC_HELP}")
    p.add_argument("--router-name", default="router", help="the routed model's id (default 'router')")
    add_load_options(p)
    p.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    """Load every model, then serve them over HTTP until Ctrl-C or SIGTERM; the models are closed
    on the way out."""
    _check_serve_args(args)
    trained = check_spec(args.router) if args.router else None  # a bad spec or file before any load
    try:
        from ..server import ServerOptions
        from ..server import serve as run_server
        from ..server.guards import is_loopback
    except ImportError as exc:
        raise EdgeInferError(f"the server needs fastapi and uvicorn ({exc}): "
                             "pip install 'edgeinfer[server]'") from None
    if not is_loopback(args.host.strip("[]")) and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach this machine "
              "can use the models", file=sys.stderr)
    options = ServerOptions(api_key=args.api_key, max_queue=args.max_queue, max_body=args.max_body)
    with contextlib.ExitStack() as stack:
        # a sequence per request running at once (--max-sequences at most), not per idle prompt
        sequences, kv = args.max_sequences or Preferred(SERVE_SEQUENCES), KVOptions(keep_sequences=False)
        aliases = {name: stack.enter_context(load_model(args, name, max_sequences=sequences, kv=kv))
                   for name in dict.fromkeys(args.models)}
        served: list = list(aliases.values())
        if args.router:
            def embedder(router: TrainedRouter) -> Any:
                name = router.embedder.get("load") or router.embedder["name"]
                return stack.enter_context(load_model(args, name))

            kind, _, tier = args.router.partition(":")
            spec = f"always:{aliases[tier].name}" if kind == "always" and tier in aliases else args.router
            served.append(router_from_spec(spec, list(aliases.values()), name=args.router_name,
                                           embedder=embedder if trained is not None else None))
        names = ", ".join(m.name for m in served)

        def ready(url: str) -> None:
            print(f"edgeinfer serve: {url}/v1 ({names}); Ctrl-C stops", flush=True)

        try:
            run_server(served, options, host=args.host, port=args.port, aliases=aliases,
                       log_level="info" if args.verbose else "warning", on_ready=ready)
        except OSError as exc:
            raise EdgeInferError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print("edgeinfer serve: stopped", file=sys.stderr)
    return 0


def _check_serve_args(args: argparse.Namespace) -> None:
    """Refuse limits below their least useful value before any model loads."""
    for flag, value, least in (("--max-sequences", args.max_sequences, 1), ("--max-queue", args.max_queue, 0),
                               ("--max-body", args.max_body, 1), ("--port", args.port, 0)):
        if value is not None and value < least:
            raise InvalidRequestError(f"{flag} must be >= {least}")
