"""`edgeinfer run`: answer one prompt and exit, optionally routed between MODEL and a larger model."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict
from typing import Any

from ..errors import InvalidRequestError
from ..model import Model
from ..remote import RemoteModel
from ..routing import Cascade, Learned, Router, Tier, TrainedRouter
from ..routing.policies import CONFIDENCE_MEASURES
from .options import (
    add_load_options,
    add_output_options,
    add_sampling_options,
    load_model,
    output_options,
    sampling_options,
)
from .output import print_stream


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `run`: its prompt, output, routing, sampling and loading flags."""
    p = sub.add_parser("run", help="answer one prompt and exit")
    p.add_argument("model")
    p.add_argument("prompt", nargs="?", help="the prompt ('-' or omitted: read stdin)")
    p.add_argument("--raw", action="store_true", help="plain completion: no chat template")
    p.add_argument("--json", action="store_true", help="print the completion and its stats as JSON")
    r = p.add_argument_group("routing (a cascade: answer with MODEL, escalate when unsure; or --router)")
    r.add_argument("--escalate-to", default=None, metavar="MODEL_OR_URL",
                   help="a larger model (name or path), or an OpenAI-compatible server URL "
                        "(see --remote-model)")
    r.add_argument("--remote-model", default="default", help="the model name to ask the server for")
    r.add_argument("--threshold", type=float, default=-1.0,
                   help="escalate when the answer's confidence is below this (default -1.0)")
    r.add_argument("--confidence", default="mean_logprob", choices=sorted(CONFIDENCE_MEASURES),
                   help="how confidence is measured")
    r.add_argument("--router", default=None, metavar="FILE",
                   help="route with a learned router (from `edgeinfer router train`) instead of a cascade: "
                        "MODEL or the --escalate-to model, decided before answering")
    add_sampling_options(p)
    add_output_options(p)
    add_load_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Answer the prompt (argument or stdin), streamed, or as JSON with its stats and route."""
    prompt = args.prompt
    if prompt is None or prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise InvalidRequestError("the prompt is empty: pass some text (or pipe it on stdin)")
    options = {**sampling_options(args), **output_options(args)}
    if args.router and not args.escalate_to:
        raise InvalidRequestError("--router picks between MODEL and a larger one: give --escalate-to too")
    # refuse a bad threshold or router file before loading anything
    trained = TrainedRouter.load(args.router) if args.router else None
    if args.escalate_to and trained is None:
        Cascade("small", "large", args.threshold, args.confidence)
    with load_model(args) as model, contextlib.ExitStack() as tiers:
        chat = not args.raw and _is_chat_model(model)
        source: Any = model
        if args.escalate_to:
            large = tiers.enter_context(_escalation_tier(args))
            if trained is not None:
                embedder = tiers.enter_context(load_model(args, trained.embedder.get("load") or
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
                "parsed": completion.parsed,  # a JSON value (--json-schema) or text (--grammar)
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


def _escalation_tier(args: argparse.Namespace) -> Any:
    """The model a cascade escalates to: a server URL becomes a RemoteModel, anything else is loaded."""
    target = args.escalate_to
    if target.startswith(("http://", "https://")):
        return RemoteModel(target, args.remote_model)
    return load_model(args, target)


def _is_chat_model(model: Model) -> bool:
    """Whether the model has a chat template (else the prompt goes in as plain completion)."""
    return model.role == "chat"


def _messages(args: argparse.Namespace, text: str) -> list[dict]:
    """The prompt as chat messages, after the --system prompt when one is given."""
    system = [{"role": "system", "content": args.system}] if args.system else []
    return [*system, {"role": "user", "content": text}]
