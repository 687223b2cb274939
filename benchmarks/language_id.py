"""Source-language detection: right, abstained and wrong, on whole sentences and on 1-4-word inputs.

Detectors: the translator's (naive Bayes over wordfreq's word frequencies), the function-word voter it
falls back on without wordfreq, and lingua-language-detector (character n-grams, restricted to the six
languages; low- and high-accuracy modes) when it is installed, as the reference a user might reach for.
A detector may abstain (the translator then asks for the source language); a wrong answer is the error
that matters. "Refused" counts correct requests a detector would call the wrong source language.

Sets: the evaluation sentences (translation_eval.jsonl, 72 x 6), the held-out sentences (36 x 6), and
240 short inputs (language_id_short.jsonl: 40 per language, 10 each of 1, 2, 3 and 4 words), and 20
words spelled alike in several of them, where any answer is a guess ("wrong" there counts the guesses).

Run:  python -m benchmarks.language_id      Writes benchmarks/results/language_id.json and .md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import machine_info, markdown_table, publish

DATA = Path(__file__).resolve().parent.parent / "edgeinfer" / "data"
# words spelled the same in several of the six languages: any answer is a guess, abstaining is right
AMBIGUOUS = ["taxi", "no", "Maria", "hotel", "radio", "pizza", "OK", "Internet", "42", "menu", "normal",
             "final", "idea", "animal", "hospital", "general", "video", "banana", "chocolate", "Si"]


def sets() -> dict[str, list[tuple[str, str]]]:
    from edgeinfer.translate.languages import LANGUAGES

    def rows(name: str) -> list[dict[str, str]]:
        return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line]

    return {"sentences (eval)": [(r[c], c) for r in rows("translation_eval.jsonl") for c in LANGUAGES],
            "sentences (held-out)": [(r[c], c) for r in rows("translation_heldout.jsonl") for c in LANGUAGES],
            "1-4 words": [(r["text"], r["lang"]) for r in rows("language_id_short.jsonl")],
            "ambiguous words (any answer is a guess)": [(w, "?") for w in AMBIGUOUS]}


def detectors() -> dict[str, Callable[[str], tuple[str | None, Callable[[str], bool]]]]:
    from edgeinfer.translate.languages import detect_language

    def ours(word_lists: bool) -> Callable[[str], tuple[str | None, Callable[[str], bool]]]:
        def detect(text: str) -> tuple[str | None, Callable[[str], bool]]:
            found = detect_language(text, word_lists=word_lists)
            return found.language, found.contradicts
        return detect

    out = {"edgeinfer: word frequencies (wordfreq)": ours(True),
           "edgeinfer: function words only": ours(False)}
    try:
        from lingua import Language, LanguageDetectorBuilder
    except ImportError:
        return out
    six = [Language.ENGLISH, Language.FRENCH, Language.SPANISH, Language.GERMAN, Language.ITALIAN,
           Language.PORTUGUESE]
    for mode in ("low", "high"):
        builder = LanguageDetectorBuilder.from_languages(*six)
        detector = (builder.with_low_accuracy_mode() if mode == "low" else builder).build()

        def detect(text: str, detector: Any = detector) -> tuple[str | None, Callable[[str], bool]]:
            found = detector.detect_language_of(text)
            code = found.iso_code_639_1.name.lower() if found is not None else None
            return code, lambda declared: code is not None and code != declared
        out[f"lingua ({mode} accuracy), top language"] = detect
    return out


def main() -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    for name, detect in detectors().items():
        for set_name, data in sets().items():
            started, right, abstained, wrong, refused = time.perf_counter(), 0, 0, [], 0
            for text, lang in data:
                found, contradicts = detect(text)
                right += found == lang
                abstained += found is None
                if found is not None and found != lang:
                    wrong.append({"text": text, "language": lang, "detected": found})
                refused += contradicts(lang)
            results.setdefault(name, {})[set_name] = {
                "n": len(data), "right": right, "abstained": abstained, "wrong": len(wrong),
                "refused": refused, "wrong_examples": wrong[:10],
                "ms_per_text": (time.perf_counter() - started) * 1000 / len(data)}
    rows = [[name, set_name, f"{r['right'] / r['n']:.1%}", f"{r['abstained'] / r['n']:.1%}",
             f"{r['wrong']} ({r['wrong'] / r['n']:.1%})", r["refused"], f"{r['ms_per_text']:.2f}"]
            for name, per_set in results.items() for set_name, r in per_set.items()]
    wrongs = [f"- {name}, {set_name}: " + "; ".join(f"{w['text']!r} ({w['language']} taken for "
                                                     f"{w['detected']})" for w in r["wrong_examples"][:4])
              for name, per_set in results.items() for set_name, r in per_set.items() if r["wrong"]]
    md = "\n".join(["# Source-language detection", "",
                    markdown_table(["detector", "set", "right", "abstained", "wrong", "refused (correct "
                                    "source called wrong)", "ms per text"], rows), "",
                    "Wrong answers (first few):", "", *wrongs, "",
                    "Run: `python -m benchmarks.language_id`", ""])
    data = {"machine": machine_info(), "results": results}
    publish("language_id", data, md)
    return data


if __name__ == "__main__":
    main()
