"""``ei.Translator``: offline translation among LANGUAGES with any model from models.lock (or a Router).

What makes it cheap: the default model's vocabulary is cut to these languages (a smaller output layer
read per token), the few-shot block is a prefix every request of a pair shares (kept in the prompt
cache), a long text becomes one batch of sentences, and exact repeats come from the translation memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import CompletionStream
from ..errors import (
    EmptyTextError,
    InvalidRequestError,
    TextTooLongError,
    UnsupportedLanguageError,
    WrongSourceLanguageError,
)
from ..model import Model
from ..paths import data_root
from ..prompt_cache import common_prefix
from ..protocol import LanguageModel, Tokenizer, count_tokens
from .languages import LANGUAGES, Detection, detect_language, has_word_lists
from .memory import HistoryEntry, TranslationMemory
from .prompts import DEFAULT_SHOTS, DEFAULT_SIMILAR, chat_messages, few_shot_prefix, few_shot_prompt
from .segment import Segment, segments

DEFAULT_MODEL = "gemma-3-270m"
DEFAULT_MAX_CHARS = 10_000
# KV states kept on disk by a translator with a memory: each language pair's few-shot block, so switching
# pairs (or restarting) restores it in milliseconds instead of recomputing ~200 tokens; about 40 states
KV_DISK_BYTES = 256 << 20
WARM_END = "~"
Progress = Callable[[float, str], None]
log = logging.getLogger(__name__)


@dataclass
class TranslationStats:
    """What one translation cost. ``sentences`` counts the translated ones; ``from_memory`` how many of
    them the translation memory answered."""

    model: str = ""
    backend: str = ""
    device: str = ""
    sentences: int = 0
    from_memory: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0
    total_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.total_s if self.total_s > 0 else 0.0


@dataclass
class Translation:
    text: str
    source: str
    target: str
    source_text: str
    stats: TranslationStats = field(default_factory=TranslationStats)
    finish_reason: str = "stop"  # else the first sentence's that did not stop: "cancelled" or "length"

    @property
    def from_memory(self) -> bool:
        """Every sentence came from the translation memory (nothing was generated)."""
        return self.stats.sentences > 0 and self.stats.from_memory == self.stats.sentences


class TranslationStream(CompletionStream):
    """Text pieces in order as they are generated; ``result()`` gives the Translation. Reading and
    cancelling work as for every CompletionStream (a cancelled translation keeps its text so far).
    ``source`` and ``target`` are known from the start (``source`` detected when it was not given)."""

    source: str = ""
    target: str = ""

    @property
    def translation(self) -> Translation | None:
        return self.completion  # type: ignore[return-value]

    def result(self) -> Translation:  # type: ignore[override]
        return super().result()  # type: ignore[return-value]


class Translator:
    """Translate between LANGUAGES. ``model``: a models.lock name or path (loaded and owned here; the
    default Gemma 3 270M gets the shipped vocabulary shortlist), or a loaded Model or Router (used as it
    is). ``style``: "few_shot" (base models), "chat" (instruction models) or "auto". ``memory``: True
    (the user's data folder), a path, or False: the translation memory (``memory_budget`` is the RAM
    budget a model loaded here is sized to, as ``ei.load(memory=...)``). ``on_progress(fraction, message)``
    reports loading."""

    def __init__(self, model: LanguageModel | str | Path = DEFAULT_MODEL, *, memory: bool | str | Path = True,
                 style: str = "auto",
                 shots: int = DEFAULT_SHOTS, similar: int = DEFAULT_SIMILAR,
                 max_chars: int = DEFAULT_MAX_CHARS, shortlist: bool = True,
                 n_threads: int | None = None, offline: bool | None = None,
                 on_progress: Progress | None = None, memory_budget: int | str | None = None,
                 **load_options: Any) -> None:
        if style not in ("auto", "few_shot", "chat"):
            raise InvalidRequestError(f"style must be 'auto', 'few_shot' or 'chat', got {style!r}")
        report = on_progress or (lambda fraction, message: None)
        self._owned = isinstance(model, (str, Path))
        if self._owned:
            model = _load_model(model, shortlist=shortlist, n_threads=n_threads, offline=offline,
                                report=report, kv_disk=memory is not False, memory=memory_budget,
                                **load_options)
        self.model = model
        self.style = _style_of(model) if style == "auto" else style
        if not (isinstance(similar, int) and 0 <= similar <= 8):
            raise InvalidRequestError(f"similar must be a number of examples from 0 to 8, got {similar!r}")
        self.shots, self.similar, self.max_chars = shots, similar, max_chars
        self._blocks: dict[tuple[str, str], list[int]] = {}
        # memory entries are per model and prompt: another prompt may translate differently
        name = model.sha256 if isinstance(model, Model) and model.sha256 else model.name
        prompt = f"{shots}+{similar}" if similar else str(shots)
        self._model_key = f"{name}|{self.style}|{prompt if self.style == 'few_shot' else ''}"
        if memory is False:
            self.memory: TranslationMemory | None = None
        else:
            where = data_root() / "translations.sqlite3" if memory is True else memory
            self.memory = TranslationMemory(where)
        report(1.0, "ready")

    # --- public surface
    def translate(self, text: str, to: str, source: str | None = None) -> Translation:
        return self.stream(text, to, source).result()

    def stream(self, text: str, to: str, source: str | None = None) -> TranslationStream:
        """Translate ``text`` into ``to`` (from ``source``, detected when None), streaming the output."""
        source, target = self._check(text, to, source)
        started = time.perf_counter()
        parts = segments(text)
        backend, device = self._runs_on()
        stats = TranslationStats(model=self.model.name, backend=backend, device=device)
        if self.style == "few_shot" and sum(p.translate for p in parts) > 1:
            self.warm(source, target)  # the batch's sentences then all start from the cached examples
        # every sentence starts now (the engine batches them); the output is read back in order
        started_jobs = [self._start(p, source, target, stats) if p.translate else (p.text, None)
                        for p in parts]
        jobs = [job for job, _ in started_jobs]
        cancelled = threading.Event()

        def cancel() -> None:
            cancelled.set()
            for job in jobs:
                if not isinstance(job, str):
                    job.cancel()

        def run() -> Iterator[str]:
            out: list[str] = []
            fresh: list[tuple[str, str]] = []
            finish = "stop"
            try:
                for part, (job, end) in zip(parts, started_jobs, strict=True):
                    if isinstance(job, str):
                        out.append(job)
                        yield job
                        continue
                    first = True
                    pieces: list[str] = []
                    for piece in job:
                        if first:
                            piece = piece.lstrip()
                            if piece:
                                first = False
                                stats.ttft_s = stats.ttft_s or time.perf_counter() - started
                        if piece:
                            pieces.append(piece)
                            yield piece
                    done = job.completion
                    if done is not None and end and self._stopped_at(done, end):
                        pieces.append(end)  # the stop string is not part of the text: put it back
                        yield end
                    if done is not None:
                        stats.prompt_tokens += done.stats.prompt_tokens
                        stats.cached_tokens += done.stats.cached_tokens
                        stats.completion_tokens += done.stats.completion_tokens
                        if done.finish_reason == "stop":
                            fresh.append((part.text, "".join(pieces).strip()))
                        elif finish == "stop":
                            finish = done.finish_reason
                    out.append("".join(pieces).strip())
            finally:
                if len(out) < len(parts):
                    cancel()
            stats.total_s = time.perf_counter() - started
            result = Translation("".join(out), source, target, text, stats, finish)
            if self.memory is not None and not cancelled.is_set():
                for sentence, translation in fresh:
                    self.memory.put(self._model_key, source, target, sentence, translation)
                self.memory.add_history(stats.model, source, target, text, result.text)
            return result

        stream = TranslationStream(run(), on_cancel=cancel)
        stream.source, stream.target = source, target
        return stream

    def warm(self, source: str, target: str) -> None:
        """Compute a pair's few-shot block now (e.g. while the app shows its window), so the first
        request only pays for its own sentence."""
        if self.style == "few_shot":
            # a token after the examples that no request has ("~"), so the requests that follow copy the
            # examples from this sequence instead of one of them continuing it in place
            self.model.generate(few_shot_prefix(source, target, self.shots) + WARM_END, max_tokens=1,
                                temperature=0)

    def history(self, limit: int = 20) -> list[HistoryEntry]:
        return self.memory.history(limit) if self.memory is not None else []

    def describe(self) -> dict[str, str]:
        backend, device = self._runs_on()
        return {"model": self.model.name, "backend": backend, "device": device, "style": self.style}

    def close(self) -> None:
        if self.memory is not None:
            self.memory.close()
        if self._owned:
            self.model.close()

    def __enter__(self) -> Translator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals
    def _runs_on(self) -> tuple[str, str]:
        """(backend, device) of a local model; empty for a remote model or a router."""
        if isinstance(self.model, Model):
            return self.model.backend.name, self.model.backend.device
        return "", ""

    def _check(self, text: str, to: str, source: str | None) -> tuple[str, str]:
        if not isinstance(text, str) or not text.strip():
            raise EmptyTextError("there is no text to translate")
        if len(text) > self.max_chars:
            raise TextTooLongError(f"the text has {len(text):,} characters; the translator takes at most "
                                   f"{self.max_chars:,} at once: translate it in parts")
        for code in (to, source):
            if code is not None and code not in LANGUAGES:
                raise UnsupportedLanguageError(
                    f"unsupported language {code!r}; choose one of: "
                    + ", ".join(f"{c} ({n})" for c, n in LANGUAGES.items()))
        detected = detect_language(text)
        if source is None:
            if detected.language is None:
                raise WrongSourceLanguageError(_undetected(text, detected))
            source = detected.language
        elif detected.contradicts(source):
            raise WrongSourceLanguageError(
                f"this text looks {LANGUAGES[detected.language]}, not {LANGUAGES[source]}: choose "
                f"{LANGUAGES[detected.language]} as the source language (or let it be detected)")
        if source == to:
            raise UnsupportedLanguageError(f"the source and target are both {LANGUAGES[to]}: choose two "
                                           "different languages")
        return source, to

    def _start(self, part: Segment, source: str, target: str,
               stats: TranslationStats) -> tuple[Any, str | None]:
        """A stream for one sentence (from the memory, or a request started on the model now), and the
        final mark its generation stops on (None: it stops at a newline or the model's end)."""
        stats.sentences += 1
        sentence = part.text
        if self.memory is not None:
            known = self.memory.get(self._model_key, source, target, sentence)
            if known is not None:
                stats.from_memory += 1
                return _Remembered(known), None
        budget = 2 * count_tokens(self.model, sentence, chars_per_token=3) + 24
        if self.style == "chat":
            return self.model.stream_chat(chat_messages(sentence, source, target), max_tokens=budget,
                                          temperature=0), None
        # one sentence in, one out: stop at its final mark instead of generating the newline after it
        end = _terminal(sentence) if isinstance(self.model, Tokenizer) else None
        prompt = few_shot_prompt(sentence, source, target, self.shots, self.similar)
        stop = ["\n", end] if end else ["\n"]
        options: dict[str, Any] = {"max_tokens": budget, "temperature": 0, "stop": stop}
        if isinstance(self.model, Model):  # afterwards the sequence keeps the pair's block, nothing more
            tokens = self.model.tokenize(prompt)
            block = self._block_tokens(source, target)
            options["keep_kv"] = common_prefix(tokens, block)
            return self.model.stream(tokens, **options), end
        return self.model.stream(prompt, **options), end

    def _block_tokens(self, source: str, target: str) -> list[int]:
        """The token ids of a pair's example block (what its requests share), computed once per pair."""
        key = (source, target)
        if key not in self._blocks:
            self._blocks[key] = self.model.tokenize(few_shot_prefix(source, target, self.shots))
        return self._blocks[key]

    def _stopped_at(self, done: Any, end: str) -> bool:
        """Whether generation stopped on the sentence's final mark (rather than a newline)."""
        return (done.finish_reason == "stop" and bool(done.tokens)
                and end in self.model.detokenize(done.tokens[-1:]))


class _Remembered:
    """A sentence answered by the translation memory, read like a model's stream."""

    def __init__(self, text: str) -> None:
        self.text, self.completion = text, None

    def __iter__(self) -> Iterator[str]:
        yield self.text

    def cancel(self) -> None:
        pass


def _load_model(name: str | Path, *, shortlist: bool, n_threads: int | None, offline: bool | None,
                report: Progress, kv_disk: bool, **load_options: Any) -> Model:
    from ..kv_options import KVOptions
    from ..loader import load, locate_model
    from ..memory import Preferred
    from ..prepared import SHORTLIST, prepared

    report(0.05, f"finding {name}")
    located = locate_model(str(name), offline=offline)
    path = located.path
    cut = prepared(located, SHORTLIST) if shortlist else None
    if cut is not None and cut.done:
        path = cut.target
    elif cut is not None:
        log.warning("%s has a vocabulary shortlist that makes translation faster; it is built once by "
                    "`edgeinfer pull %s` (the full vocabulary is used meanwhile)", located.name, located.name)
    report(0.6, f"loading {located.name}")
    # four sentences decode together; no idle-time settling: a translation is never continued, and a
    # sequence being settled is busy just when the next batch wants the cached examples it holds
    # (keep_sequences: the warmed examples stay in their own sequence for every batch to copy, instead of
    # the first sentence continuing them in place). kv_disk: sequences evicted when requests switch language
    # pairs are saved to disk, so a pair's examples come back from there (a translator told to keep no
    # memory keeps no text on disk either, and recomputes them)
    kv = KVOptions(settle=False, keep_sequences=True, disk=kv_disk, disk_bytes=KV_DISK_BYTES)
    options = {"n_ctx": 2048, "max_sequences": Preferred(4), "kv": kv, **load_options}
    model = load(path, n_threads=n_threads, offline=offline, **options)
    model.name = model.engine.model_name = located.name  # the pinned name, not the cached file's
    return model


def _style_of(model: LanguageModel) -> str:
    """Chat prompts for instruction models, few-shot prompts for base models (and anything unknown)."""
    from ..lock import ModelLock

    try:
        entry = ModelLock.load().get(model.name)
    except Exception:  # noqa: BLE001 - an unknown model: judge by its template
        entry = None
    if entry is not None:
        return "few_shot" if entry.role == "base" else "chat"
    return "chat" if isinstance(model, Model) and model.role == "chat" else "few_shot"


def _undetected(text: str, detected: Detection) -> str:
    """What to say when the source language cannot be told: the likeliest ones, and how to name it."""
    shown = text.strip() if len(text.strip()) <= 40 else text.strip()[:37] + "..."
    maybe = " or ".join(LANGUAGES[c] for c in detected.candidates())
    hint = "" if has_word_lists() else (
        '; pip install "edgeinfer[translate]" adds a detector that reads even a word or two')
    return (f"could not tell which language {shown!r} is in{f' (perhaps {maybe})' if maybe else ''}: give "
            f"the source language: --from LANG on the command line, source='LANG' in Python (LANG one of "
            f"{', '.join(LANGUAGES)}){hint}")


def _terminal(sentence: str) -> str | None:
    """The sentence's final . ! or ? when it is the only such mark in it (so the translation's first one
    ends it too; "It costs 7.50 euros." has two and gets None)."""
    marks = [c for c in sentence if c in ".!?"]
    return marks[0] if len(marks) == 1 and sentence.rstrip().endswith(marks[0]) else None

