"""`edgeinfer list`: the models in models.lock and where each is available on this machine."""

from __future__ import annotations

import argparse
import json

from ..lock import ModelLock
from ..sources import locate


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `list` and its --json."""
    p = sub.add_parser("list", help="models in models.lock and where they are available")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=list_models)


def list_models(args: argparse.Namespace) -> int:
    """Print every locked model as a table (or JSON rows) with where it is found, if anywhere."""
    lock = ModelLock.load()
    rows = []
    for e in lock.entries.values():
        where = locate(e)
        rows.append({"name": e.name, "role": e.role, "tier": e.tier, "format": e.format,
                     "quantization": e.quantization, "size_mb": round(e.size / 1e6, 1),
                     "license": e.license, "available": where[1] if where else None})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("name", "role", "format", "quantization", "size_mb", "available")
    table = [{h: h for h in header}, *rows]
    widths = {h: max(len(str(r[h] or "-")) for r in table) for h in header}
    for r in table:
        print("  ".join(str(r[h] or "-").ljust(widths[h]) for h in header))
    return 0
