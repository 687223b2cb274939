"""The routing evaluation set: its cases (EvalCase), a strict JSONL loader, scorers and prompt styles.

Scoring rules (all scorers return a float in [0, 1] and look only at what a small model puts first):

- ``normalize``: NFKC, casefold, punctuation and symbols become spaces, the articles a/an/the are
  dropped, whitespace collapsed.
- The *answer line* is the first non-empty line of the answer, without a leading ``A:``/``Answer:``
  label (few-shot base models keep writing ``Q: ...`` on the next lines; chat models add prose).
- qa: 1.0 if a normalized reference occurs, as whole words, in the first ``QA_WINDOW`` words of the
  normalized answer line ("Ottawa", "The capital of Canada is Ottawa." count; "Toronto" does not).
- arithmetic: the first line holding a number, read after its last ``=`` ("equals" counts as one)
  if a number follows it ("2 + 3 = 5"); its first number (digits with thousands commas, decimals,
  ``a/b``, or a number word up to twenty) must equal the reference exactly (compared as fractions).
- translation: sentence chrF (sacrebleu defaults: char order 6, beta 2) / 100 of the answer line,
  stripped of quotes and a leading "French:"-style label, against all references (sacrebleu takes
  the best). Standard chrF counts punctuation: "Bonjour" vs "Bonjour." scores about 0.83.
- classification: 1.0 if exactly one label occurs (whole words, a longer label like "not spam"
  hides the shorter "spam" inside it) in the normalized answer line and it is the reference.
- extraction: 1.0 if the normalized answer line, after a short lead-in such as "The date is" or
  "Email:", equals a normalized reference; items with ``spans`` need exactly that set of spans,
  split on commas, semicolons and "and", in any order.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from ..errors import EvaluationError, InvalidDatasetError, InvalidRequestError

T = TypeVar("T")

TASKS = ("qa", "arithmetic", "translation", "classification", "extraction")
LANGS = {"en": "English", "fr": "French", "es": "Spanish", "de": "German"}
QA_WINDOW = 24  # words of the answer line a qa reference must appear in
FEW_SHOT_K = 3  # examples per few-shot prompt

_FIELDS = {"id", "task", "prompt", "reference", "references", "subtask", "difficulty", "labels",
           "source_lang", "target_lang", "source", "spans"}


@dataclass(frozen=True)
class EvalCase:
    """One request of the routing evaluation set with what counts as a right answer."""

    id: str
    task: str
    prompt: str
    references: tuple[str, ...]
    subtask: str = ""
    difficulty: str = ""
    labels: tuple[str, ...] = ()
    source_lang: str = ""
    target_lang: str = ""
    source: str = ""
    spans: tuple[str, ...] = ()

    @property
    def reference(self) -> str:
        """The first (canonical) reference answer, as shown in few-shot examples."""
        return self.references[0]


# --- loading -------------------------------------------------------------------------------------
def default_evalset_path() -> Path:
    """Path of the evaluation set shipped inside the package."""
    return Path(str(resources.files("edgeinfer") / "data" / "routing_eval.jsonl"))


def default_fewshot_path() -> Path:
    """Path of the shipped few-shot examples (same format, never part of the evaluation set)."""
    return Path(str(resources.files("edgeinfer") / "data" / "routing_fewshot.jsonl"))


def _str_list(value: Any, name: str) -> tuple[str, ...]:
    """A non-empty list of non-empty strings, or a ValueError saying what is wrong."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"'{name}' must be a non-empty list of non-empty strings")
    return tuple(value)


def _item_from(row: Any) -> EvalCase:
    """Build and validate one item from a decoded JSON line (ValueError on any problem)."""
    if not isinstance(row, dict):
        raise ValueError("a line must be a JSON object")
    unknown = set(row) - _FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    for name in ("id", "task", "prompt"):
        if not isinstance(row.get(name), str) or not row[name].strip():
            raise ValueError(f"missing or empty field '{name}'")
    task = row["task"]
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
    if ("reference" in row) == ("references" in row):
        raise ValueError("give exactly one of 'reference' (a string) or 'references' (a list)")
    if "reference" in row:
        refs = _str_list([row["reference"]], "reference")
    else:
        refs = _str_list(row["references"], "references")
    extra: dict[str, Any] = {k: row[k] for k in ("subtask", "difficulty", "source_lang", "target_lang",
                                                  "source") if k in row}
    for k, v in extra.items():
        if not isinstance(v, str):
            raise ValueError(f"'{k}' must be a string")
    if "labels" in row:
        extra["labels"] = _str_list(row["labels"], "labels")
    if "spans" in row:
        extra["spans"] = _str_list(row["spans"], "spans")
    item = EvalCase(id=row["id"], task=task, prompt=row["prompt"], references=refs, **extra)
    _check_task_fields(item)
    return item


def _check_task_fields(item: EvalCase) -> None:
    """Per-task requirements: labels for classification, languages for translation, numbers..."""
    if item.task == "classification":
        if len(item.labels) < 2:
            raise ValueError("a classification item needs 'labels' (at least two)")
        if len(item.references) != 1 or item.reference not in item.labels:
            raise ValueError(f"the reference {item.reference!r} must be one of {list(item.labels)}")
    elif item.labels:
        raise ValueError("'labels' is only for classification items")
    if item.task == "translation":
        for lang in (item.source_lang, item.target_lang):
            if lang not in LANGS:
                raise ValueError(f"translation needs source_lang and target_lang in {sorted(LANGS)}, "
                                 f"got {lang!r}")
    if item.task == "arithmetic":
        for ref in item.references:
            if _to_number(ref) is None:
                raise ValueError(f"arithmetic reference {ref!r} is not a number")
    if item.spans and item.task != "extraction":
        raise ValueError("'spans' is only for extraction items")


def read_jsonl(path: str | Path, parse: Callable[[Any], T]) -> list[tuple[int, T]]:
    """``parse`` of every row of a JSONL file with its line number (blank lines skipped). An unreadable
    file, invalid JSON or a row ``parse`` refuses (ValueError) is an InvalidDatasetError naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidDatasetError(f"cannot read the file: {exc}", path=str(path), line=0) from exc
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((lineno, parse(json.loads(line))))
        except json.JSONDecodeError as exc:
            raise InvalidDatasetError(f"invalid JSON: {exc.msg}", path=str(path), line=lineno) from exc
        except ValueError as exc:
            raise InvalidDatasetError(str(exc), path=str(path), line=lineno) from exc
    return out


def load_evalset(path: str | Path | None = None) -> list[EvalCase]:
    """Read an evaluation set (JSONL, one item a line, blank lines skipped); default: the shipped one."""
    path = Path(path) if path is not None else default_evalset_path()
    seen: dict[str, int] = {}
    items = []
    for lineno, item in read_jsonl(path, _item_from):
        if item.id in seen:
            raise InvalidDatasetError(f"duplicate id {item.id!r} (first on line {seen[item.id]})",
                                      path=str(path), line=lineno)
        seen[item.id] = lineno
        items.append(item)
    return items


# --- normalization --------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_LABEL = re.compile(r"^\s*(?:a|answer)\s*:\s*", re.IGNORECASE)


def normalize(text: str) -> str:
    """Casefolded NFKC text without punctuation, symbols or articles, single-spaced."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_line(answer: str) -> str:
    """The first non-empty line of an answer, without a leading 'A:' / 'Answer:' label."""
    for line in answer.splitlines():
        line = _LABEL.sub("", line).strip()
        if line:
            return line
    return ""


def _contains(haystack: str, needle: str) -> bool:
    """Whether normalized ``needle`` occurs in normalized ``haystack`` as whole words."""
    return bool(needle) and f" {needle} " in f" {haystack} "


# --- scorers ----------------------------------------------------------------------------------------
def score_qa(item: EvalCase, answer: str) -> float:
    """1.0 if a reference appears, as whole words, near the start of the answer's first line."""
    head = " ".join(normalize(answer_line(answer)).split()[:QA_WINDOW])
    return 1.0 if any(_contains(head, normalize(r)) for r in item.references) else 0.0


_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_NUMBER = re.compile(
    r"(?<![\w.])(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?)(?![\w])"
    r"|\b(" + "|".join(_WORDS) + r")\b",
    re.IGNORECASE,
)


_EQUALS = re.compile(r"\b(?:equals|is equal to|makes)\b", re.IGNORECASE)


def _to_number(text: str) -> Fraction | None:
    """Parse '1,250', '-8', '17.5', '3/4' or a number word as an exact fraction (None if not one)."""
    text = text.strip().replace(",", "").replace(" ", "")
    if text.casefold() in _WORDS:
        return Fraction(_WORDS[text.casefold()])
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def first_number(answer: str) -> Fraction | None:
    """The first number of the first line that has one, read after its last '=' if any."""
    text = unicodedata.normalize("NFKC", answer).replace("\u2212", "-")
    for line in text.splitlines():
        line = _EQUALS.sub("=", _LABEL.sub("", line))
        if "=" in line and _NUMBER.search(line.rsplit("=", 1)[1]):
            line = line.rsplit("=", 1)[1]
        match = _NUMBER.search(line)
        if match:
            return _to_number(match.group(0))
    return None


def score_arithmetic(item: EvalCase, answer: str) -> float:
    """1.0 if the answer's first number equals the reference number exactly."""
    got = first_number(answer)
    return 1.0 if got is not None and any(got == _to_number(r) for r in item.references) else 0.0


_LANG_LABEL = re.compile(r"^\s*(?:translation|english|french|spanish|german)\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'“”«»‘’„"
_chrf: Any = None


def _chrf_metric() -> Any:
    """The sentence-level chrF metric (sacrebleu is an optional dependency: the 'router' extra)."""
    global _chrf
    if _chrf is None:
        try:
            from sacrebleu.metrics import CHRF
        except ImportError as exc:
            raise EvaluationError("scoring translations needs sacrebleu: pip install 'edgeinfer[router]'") \
                from exc
        _chrf = CHRF()
    return _chrf


def score_translation(item: EvalCase, answer: str) -> float:
    """Sentence chrF / 100 of the answer's first line against the references."""
    hyp = _LANG_LABEL.sub("", answer_line(answer)).strip().strip(_QUOTES).strip()
    if not hyp:
        return 0.0
    value = _chrf_metric().sentence_score(hyp, list(item.references)).score / 100.0
    return min(max(value, 0.0), 1.0)


def found_labels(labels: tuple[str, ...], answer: str) -> set[str]:
    """The labels named in the answer's first line; a longer label hides shorter ones inside it."""
    text = f" {normalize(answer_line(answer))} "
    found: set[str] = set()
    for label in sorted(labels, key=lambda s: -len(normalize(s))):
        needle = f" {normalize(label)} "
        if needle in text:
            found.add(label)
            text = text.replace(needle, " | ")
    return found


def score_classification(item: EvalCase, answer: str) -> float:
    """1.0 if exactly one label appears in the answer and it is the reference."""
    return 1.0 if found_labels(item.labels, answer) == {item.reference} else 0.0


_LEAD_IN = re.compile(r"^[^:]{0,40}?(?:\bis\b|\bare\b|:)\s+", re.IGNORECASE)
_SPAN_SPLIT = re.compile(r"\s*(?:[,;]|\band\b|&)\s*", re.IGNORECASE)


def score_extraction(item: EvalCase, answer: str) -> float:
    """1.0 if the answer, minus a short lead-in ('The date is'), is exactly the span(s) asked for."""
    line = answer_line(answer)
    candidates = [line, _LEAD_IN.sub("", line, count=1)]
    if item.spans:
        want = {normalize(s) for s in item.spans}
        for cand in candidates:
            got = {normalize(p) for p in _SPAN_SPLIT.split(cand)} - {""}
            if got == want:
                return 1.0
        return 0.0
    refs = {normalize(r) for r in item.references}
    return 1.0 if any(normalize(c) in refs for c in candidates) else 0.0


Scorer = Callable[[EvalCase, str], float]
SCORERS: dict[str, Scorer] = {
    "qa": score_qa,
    "arithmetic": score_arithmetic,
    "translation": score_translation,
    "classification": score_classification,
    "extraction": score_extraction,
}


def score(item: EvalCase, answer: str) -> float:
    """Score a model's answer to an item, in [0, 1], with the scorer of the item's task."""
    return SCORERS[item.task](item, answer)


# --- prompts -------------------------------------------------------------------------------------
_fewshot: list[EvalCase] | None = None


def fewshot_examples() -> list[EvalCase]:
    """The shipped few-shot examples (loaded once)."""
    global _fewshot
    if _fewshot is None:
        _fewshot = load_evalset(default_fewshot_path())
    return _fewshot


def examples_for(item: EvalCase, k: int = FEW_SHOT_K) -> list[EvalCase]:
    """Up to k examples of the item's task, those of the same subtask (language pair, label set) first."""
    same_task = [e for e in fewshot_examples() if e.task == item.task and e.id != item.id]
    same_sub = [e for e in same_task if item.subtask and e.subtask == item.subtask]
    if len(same_sub) >= 2:  # e.g. a language pair: never mix in another direction
        return same_sub[:k]
    return (same_sub + [e for e in same_task if e not in same_sub])[:k]


def few_shot_eval_prompt(item: EvalCase, k: int = FEW_SHOT_K) -> str:
    """A case as a few-shot 'Q: ...\\nA: ...' completion prompt for a base model, ending with 'A:'."""
    blocks = [f"Q: {e.prompt}\nA: {e.reference}" for e in examples_for(item, k)]
    blocks.append(f"Q: {item.prompt}\nA:")
    return "\n\n".join(blocks)


def prompt_for(item: EvalCase, style: str = "chat") -> str:
    """The text to send a model: the plain request ('chat') or a few-shot completion ('few_shot')."""
    if style == "chat":
        return item.prompt
    if style == "few_shot":
        return few_shot_eval_prompt(item)
    raise InvalidRequestError(f"unknown prompt style {style!r} (expected 'chat' or 'few_shot')")
