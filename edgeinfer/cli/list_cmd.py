"""`edgeinfer list`: the models pinned (packaged, and the user's own), and where each is available here."""

from __future__ import annotations

import argparse
import json

from ..lock import ModelLock
from ..sources import locate


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `list` and its --json."""
    p = sub.add_parser("list", help="pinned models, where each comes from and where it is available")
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
                     "license": e.license, "lock": e.origin, "available": where[1] if where else None})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("name", "role", "format", "quantization", "size_mb", "lock", "available")
    table = [{h: h for h in header}, *rows]
    widths = {h: max(len(str(r[h] or "-")) for r in table) for h in header}
    for r in table:
        print("  ".join(str(r[h] or "-").ljust(widths[h]) for h in header))
    if lock.user_path is not None:
        print(f"\n(packaged: edgeinfer's own models.lock; user: {lock.user_path}, where "
              "`edgeinfer pull hf:…` and `edgeinfer lock add` pin yours)")
    return 0
