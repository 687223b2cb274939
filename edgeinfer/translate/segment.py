"""Cut a text into what gets translated (sentences) and what passes through untouched (whitespace and
line breaks between sentences, markup tags, HTML entities, emoji), so the output keeps the input's
layout and markup, and long texts become a batch of short requests."""

from __future__ import annotations

import re
from dataclasses import dataclass

# passed through as they are: HTML/XML tags, BBCode tags ([b], [/b], [url=...]), entities,
# emoji/pictographs (with joiners and variation selectors), and line breaks with the spaces around them
_KEEP = re.compile(
    r"(<[^<>\n]{1,200}>|\[/?[a-zA-Z][a-zA-Z0-9*]{0,15}(?:=[^\[\]\n]{0,200})?\]|&[a-zA-Z]{2,8};|&#\d{1,6};"
    r"|[\U0001F000-\U0001FAFF\U00002600-\U000027BF\U0001F1E6-\U0001F1FF\u200d\ufe0f]+"
    r"|[ \t]*\n\s*)"
)
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)
# a sentence ends at . ! ? or … (closing quotes/brackets included) followed by spaces, when what comes
# next starts a sentence: a capital, a digit, or an opening quote or ¿ ¡
_END = re.compile(r"[.!?…]+[\"'”’»)\]]*(\s+)(?=[\"'“‘«(¿¡]?[A-ZÀ-ÖØ-Þ0-9])")
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st sr sra srta jr no nr vs etc e.g i.e z.b u.a bzw ca p.ex fig hr fr mme mlle "
    "dott sig sig.ra ecc av".split()
)


@dataclass(frozen=True)
class Segment:
    text: str
    translate: bool  # False: copied to the output as it is


def _sentences(run: str) -> list[Segment]:
    """Split a run of plain text into sentences, keeping the spaces between them as separate segments."""
    out: list[Segment] = []
    start = 0
    for match in _END.finditer(run):
        head = run[start:match.start(1)]
        last_word = re.findall(r"[\w.]+(?=[.!?…]*[\"'”’»)\]]*$)", head)
        if last_word and last_word[-1].lower().rstrip(".") in ABBREVIATIONS and head.rstrip()[-1:] == ".":
            continue  # "Dr. Rossi", "e.g. this": not the end of a sentence
        out.append(Segment(head, True))
        out.append(Segment(match.group(1), False))
        start = match.end(1)
    out.append(Segment(run[start:], True))
    return out


def segments(text: str) -> list[Segment]:
    """The text as translatable sentences and untouched pieces, in order; joined, they give ``text``."""
    out: list[Segment] = []
    for i, part in enumerate(_KEEP.split(text)):
        if not part:
            continue
        if i % 2 == 1 or not _LETTER.search(part):  # a separator, or no letters at all ("42", "--")
            out.append(Segment(part, False))
            continue
        lead = part[: len(part) - len(part.lstrip())]
        tail = part[len(part.rstrip()):]
        body = part.strip()
        if lead:
            out.append(Segment(lead, False))
        out.extend(s if s.translate and _LETTER.search(s.text) else Segment(s.text, False)
                   for s in _sentences(body))
        if tail:
            out.append(Segment(tail, False))
    return out
