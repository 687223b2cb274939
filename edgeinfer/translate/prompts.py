"""Prompts per language pair: a few-shot block for base models (the same block for every request of a
pair, so the prompt cache keeps it and each request pays only for its own sentence), optionally followed
by the bank sentences most like the request's (chosen per request by BM25, as in Agrawal et al. 2022), or
a chat prompt for instruction models."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .languages import LANGUAGES

DEFAULT_SHOTS = 8
# bank examples chosen per request (see similar_examples), for inputs of at most SIMILAR_MAX_WORDS words:
# a greeting or a fragment ("Good night!", "there") is where a block of whole sentences misleads a small
# model most, and where two short examples cost least. For longer sentences the measured gain (+0.5 chrF
# on the project's set, -0.1 on held-out text) did not pay for the prefill they add (0.47x -> 0.72x of the
# plain prompt's latency; benchmarks/translate.py).
DEFAULT_SIMILAR = 2
SIMILAR_MAX_WORDS = 4
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _data(name: str) -> tuple[dict[str, str], ...]:
    path = Path(str(resources.files("edgeinfer") / "data" / name))
    return tuple(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


@lru_cache(maxsize=1)
def examples() -> tuple[dict[str, str], ...]:
    """The shipped parallel example sentences (one dict per sentence: language code -> text)."""
    return _data("translation_examples.jsonl")


@lru_cache(maxsize=1)
def example_bank() -> tuple[dict[str, str], ...]:
    """Parallel sentences from which ``similar_examples`` picks, per request."""
    return _data("translation_bank.jsonl")


class _BM25:
    """Okapi BM25 over one language's side of the bank (words, lowercased)."""

    def __init__(self, documents: list[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.docs = [Counter(_WORD.findall(d.lower())) for d in documents]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lengths) / max(1, len(self.docs))
        df = Counter(w for d in self.docs for w in d)
        n = len(self.docs)
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}
        self.k1, self.b = k1, b

    def scores(self, query: str) -> list[float]:
        words = [w for w in set(_WORD.findall(query.lower())) if w in self.idf]
        out = []
        for doc, length in zip(self.docs, self.lengths, strict=True):
            norm = self.k1 * (1 - self.b + self.b * length / self.avg)
            out.append(sum(self.idf[w] * doc[w] * (self.k1 + 1) / (doc[w] + norm) for w in words if w in doc))
        return out


@lru_cache(maxsize=len(LANGUAGES))
def _index(source: str) -> _BM25:
    return _BM25([ex[source] for ex in example_bank()])


def similar_examples(text: str, source: str, k: int) -> list[dict[str, str]]:
    """The ``k`` bank sentences sharing the most (rare) words with ``text``, least similar first (so
    the most similar sits right before the request); none when nothing is shared or ``text`` has more
    than SIMILAR_MAX_WORDS words."""
    if k <= 0 or len(_WORD.findall(text)) > SIMILAR_MAX_WORDS:
        return []
    scores = _index(source).scores(text)
    best = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: -scores[i])[:k]
    return [example_bank()[i] for i in reversed(best)]


def few_shot_prefix(source: str, target: str, shots: int = DEFAULT_SHOTS) -> str:
    """The example block for a pair, ending where the request's own line starts."""
    return _pairs(examples()[:shots], source, target)


def _pairs(rows: tuple[dict[str, str], ...] | list[dict[str, str]], source: str, target: str) -> str:
    src, tgt = LANGUAGES[source], LANGUAGES[target]
    return "".join(f"{src}: {ex[source]}\n{tgt}: {ex[target]}\n\n" for ex in rows)


def few_shot_prompt(text: str, source: str, target: str, shots: int = DEFAULT_SHOTS, similar: int = 0) -> str:
    """The pair's example block, then ``similar`` bank examples chosen for ``text``, then ``text``."""
    chosen = _pairs(similar_examples(text, source, similar), source, target)
    block = few_shot_prefix(source, target, shots) + chosen
    return f"{block}{LANGUAGES[source]}: {text}\n{LANGUAGES[target]}:"


def chat_messages(text: str, source: str, target: str) -> list[dict[str, str]]:
    src, tgt = LANGUAGES[source], LANGUAGES[target]
    return [{"role": "system", "content": f"Translate the user's {src} text into {tgt}. Reply with the "
                                          f"{tgt} translation only, nothing else."},
            {"role": "user", "content": text}]
