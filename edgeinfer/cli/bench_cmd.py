"""`edgeinfer bench`: artifacts side by side (speed, first-token time, memory, size, bandwidth bound)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `bench`: the artifacts, workload, repeats and output files."""
    p = sub.add_parser("bench", help="measure models side by side on this machine",
                       description="Each artifact runs in its own process; repeats alternate between them.")
    p.add_argument("artifacts", nargs="+", metavar="MODEL_OR_ARTIFACT",
                   help="models.lock names, .gguf files or ONNX folders")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--offline", action="store_true", default=None)
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    p.add_argument("--json-out", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--markdown", default=None, metavar="FILE", help="also write the table as Markdown")
    p.add_argument("--plot", default=None, metavar="PNG", help="also draw a chart (needs matplotlib)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Measure the artifacts and print the table (or JSON); exit 1 when every one failed."""
    from ..bench import markdown, plot
    from ..bench import run as measure
    from ..errors import InvalidRequestError

    for name, value in (("--prompt-tokens", args.prompt_tokens), ("--gen-tokens", args.gen_tokens),
                        ("--repeats", args.repeats)):
        if value < 1:
            raise InvalidRequestError(f"{name} must be at least 1")
    if args.gen_tokens < 2:
        raise InvalidRequestError("--gen-tokens must be at least 2 (decode speed needs two tokens)")
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # say so before minutes of measuring
        raise InvalidRequestError("--plot needs matplotlib: pip install 'edgeinfer[plot]'")
    progress = None if args.json else (lambda message: print(f"... {message}", file=sys.stderr, flush=True))
    data = measure(args.artifacts, prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens,
                   threads=args.threads, repeats=args.repeats, offline=args.offline, progress=progress)
    table = markdown(data)
    if data["load"]["warning"]:
        print(f"warning: {data['load']['warning']}", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(f"# edgeinfer bench\n\n{table}", encoding="utf-8")
    if args.plot:
        plot(data, args.plot)
    print(json.dumps(data, indent=2) if args.json else table)
    return 1 if all(r["error"] for r in data["results"]) else 0
