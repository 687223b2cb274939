"""`edgeinfer lock verify|add`: check the models on disk against the locks, or pin a new artifact in the
user's own models.lock."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ChecksumMismatchError
from ..lock import ModelLock, add_entry, default_lock_path
from ..sources import digest, locate


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `lock` with its actions `verify` and `add`."""
    p = sub.add_parser("lock", help="models.lock tools")
    lock_sub = p.add_subparsers(dest="lock_command", required=True, metavar="ACTION")
    v = lock_sub.add_parser("verify", help="re-hash every model on disk against models.lock")
    v.add_argument("--json", action="store_true")
    v.set_defaults(handler=lock_verify)
    a = lock_sub.add_parser("add", help="pin a local artifact (.gguf file, model folder) in your models.lock")
    a.add_argument("artifact", help="the .gguf file (or ONNX / Hugging Face folder) to pin")
    a.add_argument("--name", required=True, help="the name to load it by, e.g. my-model-q4_k_m")
    a.add_argument("--role", choices=("chat", "base", "embedding"), default="chat")
    a.add_argument("--tier", choices=("small", "large"), default="")
    a.add_argument("--description", default="")
    a.add_argument("--license", default=None, help="license id (default: the GGUF's, else 'unknown')")
    a.add_argument("--lock", default=None,
                   help="the models.lock to write (default: $EDGEINFER_LOCK or your own, in the config "
                        "folder; never the packaged one)")
    a.add_argument("--force", action="store_true", help="replace an entry of the same name")
    a.add_argument("--json", action="store_true", help="print the new entry as JSON")
    a.set_defaults(handler=lock_add)


def lock_verify(args: argparse.Namespace) -> int:
    """Re-hash every locked model found on disk (no stamp trusted); a mismatch is an error."""
    results, bad = [], 0
    for e in ModelLock.load().entries.values():
        where = locate(e)
        if where is None or not where[0].exists():
            results.append({"name": e.name, "status": "missing"})
            continue
        actual = digest(e, where[0], trust_stamp=False)
        ok = actual == e.sha256
        bad += not ok
        results.append({"name": e.name, "status": "ok" if ok else "MISMATCH", "path": str(where[0]),
                        "sha256": actual})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['status']:9} {r['name']}  {r.get('path', '')}")
    if bad:
        raise ChecksumMismatchError(f"{bad} model file(s) do not match models.lock; "
                                    "run `edgeinfer pull NAME --force` to fetch them again")
    return 0


def lock_add(args: argparse.Namespace) -> int:
    """Pin the artifact under --name in the chosen models.lock and print the new entry."""
    lock_path = (Path(args.lock) if args.lock else default_lock_path()).expanduser().resolve()
    e = add_entry(Path(args.artifact), name=args.name, role=args.role, tier=args.tier,
                  description=args.description, license=args.license, lock_path=lock_path, force=args.force)
    if args.json:
        print(json.dumps({"name": e.name, "lock": str(lock_path), "format": e.format,
                          "quantization": e.quantization, "sha256": e.sha256, "size": e.size,
                          "license": e.license, "path": e.sources[0].path}, indent=2))
    else:
        print(f"added {e.name} to {lock_path}: {e.format} {e.quantization or '?'}, {e.size} bytes, "
              f"sha256 {e.sha256[:16]}…, {e.sources[0].path}")
    return 0
