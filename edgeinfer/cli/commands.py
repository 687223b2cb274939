"""What each `edgeinfer` subcommand does; the parser lives in main.py."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import json
import platform
import shutil
import signal
import sys
import threading
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from .. import __version__
from ..backends import backend_specs
from ..device import Artifact, choose, onnx_provider_report
from ..engine import CompletionStream
from ..errors import ChecksumMismatchError, EdgeInferError, InvalidRequestError, StorageError
from ..loader import artifact_format, cached_probe, load, locate_model
from ..lock import ModelLock
from ..model import Model, make_params
from ..remote import RemoteModel
from ..routing import Cascade, Learned, Router, Tier, TrainedRouter
from ..sources import cache_path, digest, locate, resolve

_SAMPLING = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed", "stop")


def _load(args: argparse.Namespace, name: str | None = None, **extra: object) -> Model:
    """The model named on the command line (or ``name``), with the loading options given there."""
    return load(name or args.model, backend=args.backend, device=args.device, n_ctx=args.n_ctx,
                n_threads=args.threads, n_gpu_layers=args.gpu_layers, offline=args.offline,
                progress=True, **({"repack": True} if getattr(args, "repack", False) else {}), **extra)


def _options(args: argparse.Namespace) -> dict:
    """Sampling options given on the command line; the rest come from the model's defaults."""
    options = {k: getattr(args, k) for k in _SAMPLING if getattr(args, k) is not None}
    make_params(**options)  # refuse bad values before loading the model
    return options


def _escalation_tier(args: argparse.Namespace) -> Any:
    """The model a cascade escalates to: a server URL becomes a RemoteModel, anything else is loaded."""
    target = args.escalate_to
    if target.startswith(("http://", "https://")):
        return RemoteModel(target, args.remote_model)
    return _load(args, target)


def _is_chat_model(model: Model) -> bool:
    return model.chat_template is not None


def _messages(args: argparse.Namespace, text: str) -> list[dict]:
    system = [{"role": "system", "content": args.system}] if args.system else []
    return [*system, {"role": "user", "content": text}]


def run(args: argparse.Namespace) -> int:
    prompt = args.prompt
    if prompt is None or prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise InvalidRequestError("the prompt is empty: pass some text (or pipe it on stdin)")
    options = _options(args)
    if args.router and not args.escalate_to:
        raise InvalidRequestError("--router picks between MODEL and a larger one: give --escalate-to too")
    # refuse a bad threshold or router file before loading anything
    trained = TrainedRouter.load(args.router) if args.router else None
    if args.escalate_to and trained is None:
        Cascade("small", "large", args.threshold, args.confidence)
    with _load(args) as model, contextlib.ExitStack() as tiers:
        chat = not args.raw and _is_chat_model(model)
        source: Any = model
        if args.escalate_to:
            large = tiers.enter_context(_escalation_tier(args))
            if trained is not None:
                embedder = tiers.enter_context(_load(args, trained.embedder.get("load") or
                                                     trained.embedder["name"]))
                policy: Any = Learned(embedder, trained)
            else:
                policy = Cascade("small", "large", args.threshold, args.confidence)
            source = Router([Tier("small", model), Tier("large", large)], policy)
        stream = (source.stream_chat(_messages(args, prompt), **options) if chat
                  else source.stream(prompt, **options))
        if args.json:
            completion = stream.result()
            print(json.dumps({
                "model": model.name,
                "text": completion.text,
                "finish_reason": completion.finish_reason,
                "mode": "chat" if chat else "completion",
                "stats": completion.stats.to_dict(),
                "route": completion.stats.route or None,
                "router": ({name: asdict(t) for name, t in source.stats.tiers.items()}
                           if isinstance(source, Router) else None),
                "choice": model.choice.to_dict() if model.choice else None,
            }, indent=2, ensure_ascii=False))
            return 0
        print_stream(stream)
    return 0


def print_stream(stream: Iterable[str]) -> None:
    """Write the pieces to stdout as they come, then a newline."""
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def chat(args: argparse.Namespace) -> int:
    options = _options(args)
    with _load(args, kv_disk=True if args.id else None) as model:
        conv = _open_conversation(model, args)
        print(f"edgeinfer chat: {model.name} on {model.backend.name}/{model.backend.device}. "
              "/reset clears the conversation, /exit or Ctrl-D quits, Ctrl-C stops an answer.",
              file=sys.stderr)
        while True:
            try:
                text = input(">>> ")
            except EOFError:
                print(file=sys.stderr)
                return 0
            except KeyboardInterrupt:
                print(file=sys.stderr)
                continue
            command = text.strip()
            if not command:
                continue
            if command in ("/exit", "/quit", "/bye"):
                return 0
            if command == "/reset":
                conv = model.chat(system=args.system or None, id=args.id)
                print("(conversation cleared)", file=sys.stderr)
                continue
            try:
                stream = conv.stream(text, **options)
                if _print_until_stopped(stream):
                    print("(stopped)", file=sys.stderr)
                elif args.show_stats and stream.completion:
                    s = stream.completion.stats
                    print(f"[{s.prompt_tokens} prompt tokens ({s.cached_tokens} cached), "
                          f"TTFT {s.ttft_s * 1000:.0f} ms, {s.decode_tok_s:.1f} tok/s]", file=sys.stderr)
            except KeyboardInterrupt:  # Ctrl-C before the first token: the engine forgot the turn
                print("\n(stopped)", file=sys.stderr)
            except EdgeInferError as exc:  # a bad turn must not end the session
                print(f"error: {exc}", file=sys.stderr)
            if args.id:
                try:
                    conv.save()
                except StorageError as exc:  # a full disk must not end the session either
                    print(f"warning: {exc}", file=sys.stderr)


def _open_conversation(model: Model, args: argparse.Namespace):  # noqa: ANN202
    """A new conversation, or the saved one with ``--id`` (its KV comes back from disk)."""
    if args.id and model.conversation_path(args.id).exists():
        conv = model.resume(args.id)
        turns = sum(m["role"] == "user" for m in conv.messages)
        print(f"(resumed conversation {args.id!r}: {turns} earlier turns)", file=sys.stderr)
        return conv
    return model.chat(system=args.system or None, id=args.id)


def _print_until_stopped(stream: CompletionStream) -> bool:
    """Print a stream; Ctrl-C ends it at the next step (the KV cache stays reusable). True if stopped."""
    stop = threading.Event()

    def on_sigint(*_: object) -> None:
        stop.set()
        stream.cancel()  # the engine stops at its next step, even before the first token

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
            if stop.is_set():
                stream.close()
                break
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.stdout.write("\n")
    return stop.is_set()


def serve(args: argparse.Namespace) -> int:
    """Load every model, then serve them over HTTP until Ctrl-C or SIGTERM; the models are closed
    on the way out."""
    _check_serve_args(args)
    try:
        from ..server import ServerOptions
        from ..server import serve as run_server
        from ..server.guards import is_loopback
    except ImportError as exc:
        raise EdgeInferError(f"the server needs fastapi and uvicorn ({exc}): "
                             "pip install 'edgeinfer[server]'") from None
    if not is_loopback(args.host.strip("[]")) and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach this machine "
              "can use the models", file=sys.stderr)
    options = ServerOptions(api_key=args.api_key, max_queue=args.max_queue, max_body=args.max_body)
    with contextlib.ExitStack() as stack:
        aliases = {name: stack.enter_context(_load(args, name, max_sequences=args.max_sequences))
                   for name in dict.fromkeys(args.models)}
        names = ", ".join(m.name for m in aliases.values())

        def ready(url: str) -> None:
            print(f"edgeinfer serve: {url}/v1 ({names}); Ctrl-C stops", flush=True)

        try:
            run_server(list(aliases.values()), options, host=args.host, port=args.port, aliases=aliases,
                       log_level="info" if args.verbose else "warning", on_ready=ready)
        except OSError as exc:
            raise EdgeInferError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print("edgeinfer serve: stopped", file=sys.stderr)
    return 0


def _check_serve_args(args: argparse.Namespace) -> None:
    for flag, value, least in (("--max-sequences", args.max_sequences, 1), ("--max-queue", args.max_queue, 0),
                               ("--max-body", args.max_body, 1), ("--port", args.port, 0)):
        if value is not None and value < least:
            raise InvalidRequestError(f"{flag} must be >= {least}")


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"edgeinfer": __version__, "python": platform.python_version()}
    for dist in ("llama-cpp-python", "onnxruntime", "gguf", "huggingface-hub", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def _backends(probe: Any) -> list[dict]:
    """The registered backends (plugins included): installed here?, formats read, priority."""
    return [{"name": spec.name, "installed": spec.is_installed(probe), "formats": list(spec.format_names),
             "priority": spec.priority, "install_hint": spec.install_hint} for spec in backend_specs()]


def env(args: argparse.Namespace) -> int:
    probe = cached_probe()
    plan: dict = {"model": args.model}
    try:
        path = locate_model(args.model, offline=True).path
        size = path.stat().st_size if path.is_file() else 0
        choice = choose(probe, Artifact(artifact_format(path), size))
        plan.update(path=str(path), choice=choice.to_dict())
    except EdgeInferError as exc:
        choice = None
        plan["error"] = str(exc)
    backends = _backends(probe)
    report = {"versions": _versions(), "probe": probe.to_dict(), "backends": backends, "plan": plan}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    gib = 1024**3
    print(f"edgeinfer {__version__} on Python {platform.python_version()}")
    print(f"OS/arch:   {probe.os} {probe.arch}")
    print(f"CPU:       {probe.physical_cores} physical / {probe.logical_cores} logical cores; "
          f"features: {', '.join(sorted(f for f in probe.cpu_features if f in _SHOWN_FEATURES)) or '?'}")
    print(f"RAM:       {probe.ram_total / gib:.1f} GiB total, {probe.ram_available / gib:.1f} GiB available")
    for i, g in enumerate(probe.gpus):
        print(f"GPU {i}:     {g.name} ({g.api}) {g.vram_free / gib:.1f}/{g.vram_total / gib:.1f} GiB free")
    if not probe.gpus:
        print("GPU:       none found")
    print(f"llama.cpp: {probe.llama_cpp_version or 'not installed'}; build backends "
          f"{', '.join(sorted(probe.llama_build_backends)) or '-'}; GPU offload "
          f"{'yes' if probe.llama_gpu_offload else 'no'}")
    print(f"onnxruntime providers: {', '.join(probe.onnx_providers) or 'not installed'}")
    for name, usable, why in onnx_provider_report(probe):
        print(f"  {'+' if usable else '-'} {name}: {why}")
    print("backends (registered):")
    for row in backends:
        mark, formats = "+" if row["installed"] else "-", ", ".join(row["formats"]) or "-"
        state = "installed" if row["installed"] else f"not installed ({row['install_hint'] or 'no hint'})"
        print(f"  {mark} {row['name']}: reads {formats}; priority {row['priority']}; {state}")
    print(f"\nPlan for {args.model}:")
    if choice is None:
        print(f"  {plan['error']}")
    else:
        print(f"  backend={choice.backend} device={choice.device} gpu_layers={choice.n_gpu_layers} "
              f"threads={choice.n_threads}")
        for reason in choice.reasons:
            print(f"  - {reason}")
    return 0


_SHOWN_FEATURES = {"sse3", "ssse3", "avx", "avx2", "fma", "f16c", "avx512", "avx512_vnni", "avx_vnni",
                   "amx_int8", "neon", "dotprod", "i8mm", "sve", "sme"}


def list_models(args: argparse.Namespace) -> int:
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


def pull(args: argparse.Namespace) -> int:
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


def lock_verify(args: argparse.Namespace) -> int:
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
    from pathlib import Path

    from ..lock import add_entry, default_lock_path

    lock_path = Path(args.lock) if args.lock else default_lock_path()
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


__all__ = ["chat", "env", "list_models", "lock_add", "lock_verify", "pull", "run", "serve"]
