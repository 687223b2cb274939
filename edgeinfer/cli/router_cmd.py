"""`edgeinfer router train`: fit a learned router (a classifier on request embeddings) from labelled JSONL."""

from __future__ import annotations

import argparse
import json

from ..routing.learned import DEFAULT_EMBEDDER, read_labelled, summary_lines, train_router


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `router` with its action `train`."""
    p = sub.add_parser("router", help="learned routing tools")
    router_sub = p.add_subparsers(dest="router_command", required=True, metavar="ACTION")
    t = router_sub.add_parser(
        "train", help="train a router from labelled requests (JSONL)",
        description="Each line: {\"prompt\": TEXT} or {\"messages\": [...]}, with "
                    "{\"label\": \"small\"|\"large\"} (the tier that should serve it) or "
                    "{\"small_score\": X, \"large_score\": Y}. Use the "
                    "result with `edgeinfer run SMALL --escalate-to LARGE --router FILE` or "
                    "ei.Learned(embedder, FILE).")
    t.add_argument("file", help="labelled JSONL")
    t.add_argument("-o", "--output", required=True, help="the router file to write (JSON)")
    t.add_argument("--embedder", default=DEFAULT_EMBEDDER,
                   help=f"embedding model, name or path (default {DEFAULT_EMBEDDER})")
    t.add_argument("--large-share", type=float, default=None,
                   help="set the threshold to send this share of requests to the large tier "
                        "(default: those more likely than not to need it)")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--offline", action="store_true", default=None)
    t.add_argument("--json", action="store_true", help="print the training summary as JSON")
    t.set_defaults(handler=train)


def train(args: argparse.Namespace) -> int:
    """Fit a router on the labelled file with the embedder, save it, and print its summary."""
    from ..loader import load
    from .options import prepare_to_load

    examples = read_labelled(args.file)  # bad lines are refused before any model loads
    prepare_to_load(args.embedder, offline=args.offline)
    with load(args.embedder, n_threads=args.threads, offline=args.offline) as embedder:
        trained = train_router(examples, embedder, large_share=args.large_share)
    trained.embedder["load"] = args.embedder  # what `run --router` loads
    trained.save(args.output)
    if args.json:
        print(json.dumps({"router": args.output, "threshold": trained.threshold, "embedder": trained.embedder,
                          **trained.summary}))
        return 0
    for line in summary_lines(trained):
        print(line)
    print(f"wrote {args.output}")
    return 0
