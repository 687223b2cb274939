"""`edgeinfer rm NAME`: forget a model of the user's own models.lock, and its files in the cache."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `rm` and its --lock and --json."""
    p = sub.add_parser("rm", help="remove a model from your models.lock and its cached files")
    p.add_argument("model", help="the name it was pinned under (see `edgeinfer list`)")
    p.add_argument("--lock", default=None,
                   help="the models.lock to change (default: $EDGEINFER_LOCK or your own)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Remove the entry; say what was removed, and what was left (a local file is the user's own)."""
    from ..lock import remove_entry

    entry, removed = remove_entry(args.model, lock_path=args.lock)
    kept = [s.path for s in entry.sources if s.type == "path"]
    if args.json:
        print(json.dumps({"name": entry.name, "lock": entry.origin, "removed": [str(p) for p in removed],
                          "kept": kept}, indent=2))
        return 0
    print(f"removed {entry.name} from {entry.origin}")
    for path in removed:
        print(f"  deleted {path}")
    for path in kept:
        print(f"  kept your file {path}")
    return 0
