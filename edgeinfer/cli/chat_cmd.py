"""`edgeinfer chat`: an interactive multi-turn chat in the terminal, streamed, optionally saved by id."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ..engine import CompletionStream
from ..errors import EdgeInferError, StorageError
from ..kv_options import KVOptions
from ..model import Model
from .options import DEFAULT_CHAT_MODEL, add_load_options, add_sampling_options, load_model, sampling_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `chat`: the model, stats and conversation-id flags, sampling and loading."""
    p = sub.add_parser("chat", help="interactive multi-turn chat (streaming)")
    p.add_argument("model", nargs="?", default=DEFAULT_CHAT_MODEL)
    p.add_argument("--show-stats", action="store_true", help="print stats after every answer")
    p.add_argument("--id", default=None,
                   help="save the conversation under this id after every turn, and resume it if it exists")
    add_sampling_options(p)
    add_load_options(p)
    p.set_defaults(handler=chat)


def chat(args: argparse.Namespace) -> int:
    """Read turns from the terminal until /exit or Ctrl-D; a bad turn or a full disk ends nothing."""
    options = sampling_options(args)
    with load_model(args, kv=KVOptions(disk=True) if args.id else None) as model:
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
    """Print a stream; Ctrl-C ends it at the next step (the KV cache stays reusable). True if stopped.
    What the engine generated before it stopped is printed too: the screen shows what the conversation
    records."""
    stop = threading.Event()

    def on_sigint(*_: object) -> None:
        stop.set()
        stream.cancel()  # the engine stops at its next step, even before the first token

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.stdout.write("\n")
    return stop.is_set()
