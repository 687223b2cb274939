"""Prompts per language pair: a few-shot block for base models (the same block for every request of a
pair, so the prompt cache keeps it and each request pays only for its own sentence), or a chat prompt
for instruction models."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .languages import LANGUAGES

DEFAULT_SHOTS = 8


def examples_path() -> Path:
    return Path(str(resources.files("edgeinfer") / "data" / "translation_examples.jsonl"))


@lru_cache(maxsize=1)
def examples() -> tuple[dict[str, str], ...]:
    """The shipped parallel example sentences (one dict per sentence: language code -> text)."""
    lines = examples_path().read_text(encoding="utf-8").splitlines()
    return tuple(json.loads(line) for line in lines if line.strip())


def few_shot_prefix(source: str, target: str, shots: int = DEFAULT_SHOTS) -> str:
    """The example block for a pair, ending where the request's own line starts."""
    src, tgt = LANGUAGES[source], LANGUAGES[target]
    return "".join(f"{src}: {ex[source]}\n{tgt}: {ex[target]}\n\n" for ex in examples()[:shots])


def few_shot_prompt(text: str, source: str, target: str, shots: int = DEFAULT_SHOTS) -> str:
    return f"{few_shot_prefix(source, target, shots)}{LANGUAGES[source]}: {text}\n{LANGUAGES[target]}:"


def chat_messages(text: str, source: str, target: str) -> list[dict[str, str]]:
    src, tgt = LANGUAGES[source], LANGUAGES[target]
    return [{"role": "system", "content": f"Translate the user's {src} text into {tgt}. Reply with the "
                                          f"{tgt} translation only, nothing else."},
            {"role": "user", "content": text}]
