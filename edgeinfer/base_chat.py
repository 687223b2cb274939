"""Chat messages for a base model (no chat template): a plain question-and-answer transcript.

A base model continues text; given chat markup it has never seen (ChatML, say), it goes on writing
markup. Written as a transcript that opens with one worked exchange, a question gets a short answer,
and the answer ends where the model starts the next question (``TRANSCRIPT_STOPS``).
"""

from __future__ import annotations

from collections.abc import Sequence

from .chat_template import validate_messages
from .protocol import Message

# one worked exchange: it shows the model the format and the length of an answer
EXAMPLE = ("What is the boiling point of water at sea level?",
           "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level.")
TRANSCRIPT_STOPS = ("\nQuestion:", "\n\n")


def transcript(messages: Sequence[Message]) -> str:
    """``messages`` as "Question: ...\\nAnswer: ..." blocks after the system text, ending in "Answer:"
    when the last message asks something (a user message, or a tool's result)."""
    system: list[str] = []
    pairs: list[list[str]] = [[EXAMPLE[0], EXAMPLE[1]]]  # [question, answer]; answer "" while pending
    for m in validate_messages(messages):
        role, text = m["role"], m["content"].strip()
        if role in ("system", "developer"):
            system.append(text)
        elif role == "assistant":
            if pairs[-1][1]:
                pairs.append(["", text])  # an answer with no question before it
            else:
                pairs[-1][1] = text
        elif pairs[-1][1]:
            pairs.append([text, ""])
        else:  # two questions in a row: one question
            pairs[-1][0] = f"{pairs[-1][0]}\n{text}".strip()
    blocks = [f"Question: {q}\nAnswer: {a}".rstrip() if q else f"Answer: {a}" for q, a in pairs]
    return "\n\n".join([*system, *blocks])
