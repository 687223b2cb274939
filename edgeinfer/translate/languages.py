"""The languages the translator knows, and a small detector for them (function words + letters).

The detector only has to tell these six apart, to catch a text in the wrong source language and to pick
the source when none is given; it abstains when the evidence is thin (a name, a number, two words).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
    "fr": "çœêîûëùâ",
    "es": "ñ¿¡",
    "de": "ßäöü",
    "it": "ìò",
    "pt": "ãõ",
}
MIN_EVIDENCE = 2  # fewer votes than this: no opinion
MIN_LEAD = 2  # votes by which another language must lead the declared one to call it wrong
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


@dataclass(frozen=True)
class Detection:
    """The likeliest language (None when the text gives too little evidence) and the votes per language."""

    language: str | None
    votes: dict[str, float]

    def contradicts(self, declared: str) -> bool:
        """The text is clearly not in ``declared``: another language leads by MIN_LEAD votes and has at
        least twice as many (shared function words make close calls common: those are let through)."""
        if self.language is None or self.language == declared:
            return False
        mine, theirs = self.votes[self.language], self.votes.get(declared, 0.0)
        return mine - theirs >= MIN_LEAD and theirs <= mine / 2


def detect_language(text: str) -> Detection:
    """Vote by function words and distinctive letters among LANGUAGES."""
    votes = dict.fromkeys(LANGUAGES, 0.0)
    for word in _WORD.findall(text.lower()):
        for part in word.split("'"):
            for code, words in FUNCTION_WORDS.items():
                if part in words:
                    votes[code] += 1.0
    lowered = text.lower()
    for code, letters in LETTER_HINTS.items():
        votes[code] += sum(lowered.count(c) for c in letters)
    best = max(votes, key=lambda c: votes[c])
    ranked = sorted(votes.values(), reverse=True)
    if ranked[0] < MIN_EVIDENCE or ranked[0] == ranked[1]:
        return Detection(None, votes)
    return Detection(best, votes)
