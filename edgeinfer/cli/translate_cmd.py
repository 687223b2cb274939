"""`edgeinfer translate`: translate text (an argument or stdin) offline, streaming the result."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from ..translate.languages import LANGUAGES
from .options import add_memory_option


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `translate`: the text, languages, model and memory flags."""
    codes = ", ".join(f"{c} ({n})" for c, n in LANGUAGES.items())
    p = sub.add_parser("translate", help="translate text offline (en, fr, es, de, it, pt)",
                       description=f"Languages: {codes}.")
    p.add_argument("text", nargs="?", help="the text ('-' or omitted: read stdin)")
    p.add_argument("--to", required=True, metavar="LANG", help="target language code")
    p.add_argument("--from", dest="source", default=None, metavar="LANG",
                   help="source language code (default: detect it)")
    p.add_argument("--model", default=None, help="a models.lock name or path (default gemma-3-270m)")
    p.add_argument("--no-memory", action="store_true",
                   help="neither read nor write the translation memory (and history)")
    p.add_argument("--threads", type=int, default=None)
    add_memory_option(p)
    p.add_argument("--offline", action="store_true", default=None)
    p.add_argument("--json", action="store_true", help="print the translation and its stats as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Translate the text (argument or stdin), streamed, or as JSON with its stats."""
    from edgeinfer_converters.preparation import prepare_for_use

    from ..translate.translator import DEFAULT_MODEL, Translator
    from .output import print_stream

    text = args.text
    if text is None or text == "-":
        text = sys.stdin.read()
    # e.g. the vocabulary shortlist, built once (about a second): said on stderr, never a silent wait
    prepare_for_use(args.model or DEFAULT_MODEL, offline=args.offline,
                    on_progress=lambda message: print(f"{message}…", file=sys.stderr, flush=True))
    with Translator(args.model or DEFAULT_MODEL, memory=not args.no_memory, n_threads=args.threads,
                    offline=args.offline, memory_budget=args.memory) as translator:
        stream = translator.stream(text, args.to, args.source)  # bad input is refused here, before output
        if args.source is None and not args.json:  # a detected source is said, never silently assumed
            print(f"(from {LANGUAGES[stream.source]}, detected; --from to choose)", file=sys.stderr,
                  flush=True)
        if args.json:
            done = stream.result()
            print(json.dumps({"text": done.text, "source": done.source, "target": done.target,
                              "from_memory": done.from_memory,
                              "stats": {**asdict(done.stats), "tokens_per_s": done.stats.tokens_per_s}},
                             ensure_ascii=False, indent=2))
            return 0
        print_stream(stream)
    return 0
