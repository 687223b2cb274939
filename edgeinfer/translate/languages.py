"""The languages the translator knows, and a detector for them.

The detector has to tell these six apart, to pick the source when none is given and to catch a text in
the wrong source language, and it must never guess silently wrong: it abstains when the evidence is thin
("taxi", "Maria") and the translator then asks for the source language. With wordfreq installed (the
``translate`` extra, part of ``models``) it is a naive Bayes over words: each word's frequency in each
language (wordfreq's "small" lists, ~30k words per language, ~35 MB of RAM), which reads even one word
("Hello", "Danke"); without it (e.g. on a phone) it votes by function words and distinctive letters,
which needs a few words of evidence.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

LANGUAGES: dict[str, str] = {
    "en": "English",
    "fr": "French",
    "es": "Spanish",
    "de": "German",
    "it": "Italian",
    "pt": "Portuguese",
}

# frequent function words of each language (each counts once per occurrence)
FUNCTION_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the and of to is are was were you i it this that with for not have has be on at what "
                    "where when how would could please my your we they he she there from our last year one "
                    "after by an can do does did will new all about which their who been had if or but just "
                    "us them his her its out up very today tomorrow yesterday".split()),
    "fr": frozenset("le la les et est de des une un du je tu il elle nous vous ils pas que qui dans pour "
                    "avec sur ce cette mon ma mes au aux sont très merci bonjour où comment à notre nos "
                    "votre vos leur ont avons avez été demain aujourd'hui heure heures quelle quel mais ou "
                    "aussi plus bien tout tous ses ne on".split()),
    "es": frozenset("el la los las y es un una de del que en por para con no se está están muy gracias "
                    "hola dónde cómo yo tú usted nosotros pero al lo hoy tengo tiene tienes hemos desde "
                    "cuándo qué quién este esta también hay su sus nuestro nuestra mañana ayer ahora "
                    "porque cuando".split()),
    "de": frozenset("der die das und ist sind ein eine nicht ich du sie wir mit für auf zu den dem des "
                    "bitte danke wo wie auch noch mein dein haben hat habe heute keine kein am um nach vom "
                    "zum zur im unser unsere morgen früh etwa ihr war werden wird kann können über aber "
                    "oder sehr schon jetzt".split()),
    "it": frozenset("il lo la gli le e è un una che di non per con sono ti ci del della dei grazie ciao "
                    "dove come io tu lei noi ma molto questo oggi ho hai abbiamo miei puoi domani ogni nel "
                    "nella alla al alle dal dalla sul sulla più anche perché quando sempre ancora già mio "
                    "mia".split()),
    "pt": frozenset("os é um uma que de não para com em do da das no na se muito obrigado obrigada olá "
                    "onde como eu você nós mas meu está uns umas pelo pela poderia aos às minha só fica "
                    "também ao hoje amanhã ontem agora porque quando seu sua estão são foi tem".split()),
}
# letters that only some of the languages use (each occurrence is a vote)
LETTER_HINTS: dict[str, str] = {
    "fr": "çœîûëù",  # not ê â ô: Portuguese has them too
    "es": "ñ¿¡",
    "de": "ßäöü",
    "it": "ìò",
    "pt": "ãõ",
}
MIN_EVIDENCE = 2  # fewer votes than this: no opinion
MIN_LEAD = 2  # votes by which another language must lead the declared one to call it wrong
# word frequencies: the top language's probability, and its lead over the runner-up, needed to name it
SURE_MIN, SURE_LEAD = 0.6, 0.2
# a declared source is called wrong only when it gets at most this probability and another at least that
CONTRADICT_MAX, CONTRADICT_MIN = 0.001, 0.99
# a word missing from a language's list counts as this rare there (Zipf scale: log10 of uses per 10^9
# words; the "small" lists stop near 3)
ZIPF_FLOOR = 2.0
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
MAX_WORDS = 200  # plenty to tell six languages apart; bounds the work for a long text


@dataclass(frozen=True)
class Detection:
    """The likeliest language (None when the evidence is too thin to name one), the function-word votes per
    language, and the word-frequency probability per language (empty without wordfreq)."""

    language: str | None
    votes: dict[str, float]
    confidence: dict[str, float] = field(default_factory=dict)

    def candidates(self, n: int = 2) -> list[str]:
        """The ``n`` likeliest languages, for a message that asks the user to choose."""
        ranked = self.confidence or self.votes
        return [c for c in sorted(ranked, key=lambda c: -ranked[c]) if ranked[c] > 0][:n]

    def contradicts(self, declared: str) -> bool:
        """The text is clearly not in ``declared``. By word frequencies: another language takes nearly all
        the probability and ``declared`` next to none; by votes: another leads by MIN_LEAD votes and has at
        least twice as many. Close calls are let through: refusing a correct request is worse than a bad
        translation from the source the user chose."""
        if self.confidence:
            top = max(self.confidence, key=lambda c: self.confidence[c])
            return (top != declared and self.confidence[top] >= CONTRADICT_MIN
                    and self.confidence.get(declared, 0.0) <= CONTRADICT_MAX)
        if self.language is None or self.language == declared:
            return False
        mine, theirs = self.votes[self.language], self.votes.get(declared, 0.0)
        return mine - theirs >= MIN_LEAD and theirs <= mine / 2


@lru_cache(maxsize=1)
def _zipf() -> Any:
    """wordfreq's ``zipf_frequency``, or None when wordfreq is not installed."""
    try:
        from wordfreq import zipf_frequency
    except ImportError:
        return None
    return zipf_frequency


def has_word_lists() -> bool:
    """Whether wordfreq is installed (without it, a text needs a few function words to be told)."""
    return _zipf() is not None


def word_probabilities(text: str) -> dict[str, float]:
    """P(language | words) for a uniform prior, from each word's frequency per language (naive Bayes);
    {} without wordfreq or when no word of ``text`` is in any list ("Zzzz", "42")."""
    zipf = _zipf()
    if zipf is None:
        return {}
    scores, known = dict.fromkeys(LANGUAGES, 0.0), False
    for word in _WORD.findall(text.lower())[:MAX_WORDS]:
        found = {code: zipf(word, code, wordlist="small") for code in LANGUAGES}
        if max(found.values()) > 0:
            known = True
            for code, value in found.items():
                scores[code] += max(value, ZIPF_FLOOR) * math.log(10)
    if not known:
        return {}
    top = max(scores.values())
    weights = {code: math.exp(value - top) for code, value in scores.items()}
    total = sum(weights.values())
    return {code: w / total for code, w in weights.items()}


def function_word_votes(text: str) -> dict[str, float]:
    """One vote per function word of a language, and per letter only some of the languages use."""
    votes = dict.fromkeys(LANGUAGES, 0.0)
    for word in _WORD.findall(text.lower()):
        for part in word.split("'"):
            for code, words in FUNCTION_WORDS.items():
                if part in words:
                    votes[code] += 1.0
    lowered = text.lower()
    for code, letters in LETTER_HINTS.items():
        votes[code] += sum(lowered.count(c) for c in letters)
    return votes


def detect_language(text: str, *, word_lists: bool = True) -> Detection:
    """The language of ``text`` among LANGUAGES, or None when it cannot be told with confidence
    (``word_lists=False``: by function words only, as without wordfreq)."""
    votes = function_word_votes(text)
    confidence = word_probabilities(text) if word_lists else {}
    if confidence:
        ranked = sorted(confidence.items(), key=lambda kv: -kv[1])
        (best, top), (_, second) = ranked[0], ranked[1]
        return Detection(best if top >= SURE_MIN and top - second >= SURE_LEAD else None, votes, confidence)
    if word_lists and _zipf() is not None:  # not one known word: nothing to go on
        return Detection(None, votes)
    best = max(votes, key=lambda c: votes[c])
    ranked_votes = sorted(votes.values(), reverse=True)
    if ranked_votes[0] < MIN_EVIDENCE or ranked_votes[0] == ranked_votes[1]:
        return Detection(None, votes)
    return Detection(best, votes)
