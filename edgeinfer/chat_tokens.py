"""Chat messages to token ids, where only the template's own markup can become control tokens.

The rendered template is tokenized with special-token parsing, so that its ``<|im_start|>`` and the
like become the model's control tokens. A message whose text spells a control token
(``<|im_end|>\\n<|im_start|>system\\n...``) must not forge a turn: such a message is rendered as a
placeholder, and its text tokenized as plain text in the placeholder's place. Messages without such
text (nearly all) are tokenized exactly as before, in one piece.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence

from .chat_template import render_chat, validate_messages
from .errors import ChatTemplateError
from .protocol import Message

Tokenize = Callable[..., list[int]]  # (text, *, add_special, parse_special) -> token ids
_MARKUP_CHARS = ("<", "[", "|", "{")  # every control token we know of is written with one of these


def spells_control_tokens(tokenize: Tokenize, text: str) -> bool:
    """True when ``text`` would turn into control tokens if special tokens were parsed in it."""
    if not any(c in text for c in _MARKUP_CHARS):
        return False
    return tokenize(text, add_special=False, parse_special=True) != tokenize(
        text, add_special=False, parse_special=False)


def chat_tokens(tokenize: Tokenize, template: str | None, messages: Sequence[Message], *, bos_token: str = "",
                eos_token: str = "", add_generation_prompt: bool = True,
                tools: Sequence[dict] | None = None) -> list[int]:
    """Token ids of ``messages`` rendered with ``template`` (and the ``tools`` it describes, for a
    template with its own tool format); message text never becomes control tokens."""
    messages = validate_messages(messages)
    options = dict(bos_token=bos_token, eos_token=eos_token, add_generation_prompt=add_generation_prompt,
                   tools=tools)
    text = render_chat(template, messages, **options)
    risky = [i for i, m in enumerate(messages) if spells_control_tokens(tokenize, m["content"])]
    if not risky:
        tokens = tokenize(text, add_special=True, parse_special=True)
    else:
        tokens = _with_plain_text(tokenize, template, messages, risky, text, options)
    if len(tokens) >= 2 and tokens[0] == tokens[1] and bos_token and text.startswith(bos_token):
        tokens = tokens[1:]  # the template already wrote BOS; tokenize added another
    return tokens


def _with_plain_text(tokenize: Tokenize, template: str | None, messages: list[Message], risky: list[int],
                     text: str, options: dict) -> list[int]:
    """Render with a placeholder for each risky message, check that the template put each one in
    verbatim, and tokenize the markup (special tokens parsed) and the messages (plain text) apart."""
    nonce = secrets.token_hex(8)
    marks = {i: f"\ue000{nonce}:{i}\ue001" for i in risky}
    skeleton = render_chat(template, [{**m, "content": marks[i]} if i in marks else m
                                      for i, m in enumerate(messages)], **options)
    faithful = all(skeleton.count(mark) == 1 for mark in marks.values())
    rebuilt = skeleton
    for i, mark in marks.items():
        rebuilt = rebuilt.replace(mark, messages[i]["content"])
    if not faithful or rebuilt != text:
        raise ChatTemplateError(
            f"message {risky[0]} contains text that spells the model's control tokens, and this chat "
            "template rewrites messages, so it cannot be sent safely; remove the markup from the message")
    tokens: list[int] = []
    rest, first = skeleton, True
    while True:
        at = min(((rest.find(mark), i) for i, mark in marks.items() if mark in rest), default=None)
        if at is None:
            break
        pos, i = at
        tokens += tokenize(rest[:pos], add_special=first, parse_special=True)
        tokens += tokenize(messages[i]["content"], add_special=False, parse_special=False)
        rest, first = rest[pos + len(marks[i]):], False
    return tokens + tokenize(rest, add_special=first, parse_special=True)
