"""`edgeinfer` command: the parser built from every command module, and the exit codes of its errors."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import EdgeInferError, InvalidRequestError
from . import (
    bench_cmd,
    chat_cmd,
    convert_cmd,
    env_cmd,
    list_cmd,
    lock_cmd,
    pull_cmd,
    rm_cmd,
    router_cmd,
    run_cmd,
    serve_cmd,
    translate_cmd,
)

# every command, in the order `edgeinfer --help` lists them; each module's add_parser(sub) registers its
# arguments and its handler (set_defaults(handler=...): Namespace -> exit code)
COMMANDS = (run_cmd, chat_cmd, serve_cmd, env_cmd, list_cmd, pull_cmd, rm_cmd, convert_cmd, router_cmd,
            translate_cmd, bench_cmd, lock_cmd)


def build_parser() -> argparse.ArgumentParser:
    """The `edgeinfer` parser: global flags, then one subcommand per module of COMMANDS."""
    parser = argparse.ArgumentParser(
        prog="edgeinfer", description="Run language models cheaply on this device."
    )
    parser.add_argument("--version", action="version", version=f"edgeinfer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs (llama.cpp included)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: exit 2 for a bad request, 1 for any other edgeinfer error, 130 on Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
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
    """Report the error: as a JSON object under --json (what a script parses), else on stderr."""
    if getattr(args, "json", False):
        print(json.dumps({"error": {"type": type(exc).__name__, "message": str(exc)}}))
    else:
        print(f"error: {exc}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
