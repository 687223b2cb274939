"""The loading and sampling options several commands share: their flags, and what they ask for."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InvalidRequestError
from ..loader import load
from ..model import Model, make_params
from ..prepared import CHECKPOINT_GGUF

DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"
DEFAULT_SYSTEM = "You are a helpful assistant."
_SAMPLING = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed", "stop")


def add_load_options(p: argparse.ArgumentParser) -> None:
    """The 'loading' flags (backend, device, context, threads, offload) of a command that loads a model."""
    g = p.add_argument_group("loading")
    g.add_argument("--backend", default="auto", help="auto, llama.cpp, onnx")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda[:N], metal")
    g.add_argument("--n-ctx", type=int, default=None, help="context window in tokens")
    add_memory_option(g)
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    g.add_argument("--gpu-layers", type=int, default=None,
                   help="layers to offload (default: sized from free VRAM)")
    g.add_argument("--offline", action="store_true", default=None, help="never contact the hub")
    g.add_argument("--repack", action="store_true", default=False,
                   help="let llama.cpp repack Q4_0/IQ4_NL weights for AVX2/NEON (faster, but a token's "
                        "numerics then depend on its batch)")


def add_memory_option(g: argparse._ActionsContainer) -> None:
    """``--memory``: the RAM budget a command's models are sized to."""
    g.add_argument("--memory", default=None, metavar="SIZE",
                   help="RAM budget for the process, e.g. 1.5GB or 800MB: the context, sequences and KV type "
                        "are sized to fit, or loading fails saying what would (default: 3/4 of free RAM)")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """The 'sampling' flags (and the system prompt) of a command that generates text."""
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=None)
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--repeat-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--system", default=DEFAULT_SYSTEM, help="system prompt for chat models ('' for none)")


def prepare_to_load(model: str, *, offline: bool | None, backend: str = "auto") -> None:
    """What a model needs before ``ei.load`` takes it (an embedding checkpoint converted to GGUF; a GGUF
    on the onnx backend, its ONNX folder), done once, as `edgeinfer pull` would: the command line does
    for the user what the runtime never does."""
    from edgeinfer_converters.preparation import prepare_for_use

    prepare_for_use(model, offline=offline, kinds=(CHECKPOINT_GGUF,), backend=backend,
                    on_progress=lambda message: print(message, file=sys.stderr))


def load_model(args: argparse.Namespace, name: str | None = None, **extra: object) -> Model:
    """The model named on the command line (or ``name``), with the loading options given there."""
    prepare_to_load(name or args.model, offline=args.offline, backend=args.backend)
    return load(name or args.model, backend=args.backend, device=args.device, n_ctx=args.n_ctx,
                memory=args.memory, n_threads=args.threads, n_gpu_layers=args.gpu_layers,
                offline=args.offline, progress=True,
                **({"repack": True} if getattr(args, "repack", False) else {}), **extra)


def sampling_options(args: argparse.Namespace) -> dict:
    """Sampling options given on the command line; the rest come from the model's defaults."""
    options = {k: getattr(args, k) for k in _SAMPLING if getattr(args, k) is not None}
    make_params(**options)  # refuse bad values before loading the model
    return options


def add_output_options(p: argparse.ArgumentParser) -> None:
    """The 'output' flags: the answer must match a JSON schema or a Lark grammar read from a file."""
    g = p.add_argument_group("output").add_mutually_exclusive_group()
    g.add_argument("--json-schema", default=None, metavar="FILE",
                   help="the answer is JSON matching the JSON schema in FILE")
    g.add_argument("--grammar", default=None, metavar="FILE",
                   help="the answer matches the Lark grammar in FILE (llguidance's dialect)")


def output_options(args: argparse.Namespace) -> dict:
    """``json_schema=`` (the file's JSON) or ``grammar=`` (its text) for the --json-schema / --grammar
    file, checked before the model loads: an unreadable file, invalid JSON or a schema or grammar that
    cannot be enforced is an InvalidRequestError."""
    options: dict = {}
    if getattr(args, "json_schema", None) is not None:
        text = _read(args.json_schema, "--json-schema")
        try:
            options["json_schema"] = json.loads(text)
        except ValueError as exc:
            raise InvalidRequestError(f"--json-schema {args.json_schema}: not valid JSON ({exc})") from None
        if not isinstance(options["json_schema"], dict):
            raise InvalidRequestError(f"--json-schema {args.json_schema}: a JSON schema is a JSON object")
    elif getattr(args, "grammar", None) is not None:
        options["grammar"] = _read(args.grammar, "--grammar")
    if options:
        make_params(**options)  # compiles it: refuse what cannot be enforced before loading the model
    return options


def _read(path: str, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"{flag}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") \
            from None
