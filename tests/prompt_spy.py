"""What a model was asked: its chat prompts as text, recorded as they are built (routing tests check
that a base tier never sees another model's chat markup)."""

from __future__ import annotations

from typing import Any

CHAT_MARKUP = ("<|im_start|>", "<|im_end|>", "<start_of_turn>")


def record_chat_prompts(model: Any) -> list[str]:
    """A list that gets the detokenized text of every chat prompt ``model`` builds from now on."""
    prompts: list[str] = []
    real = model.chat_prompt

    def spy(messages, **kw):  # noqa: ANN001, ANN003, ANN202
        tokens = real(messages, **kw)
        prompts.append(model.detokenize(tokens))
        return tokens

    model.chat_prompt = spy
    return prompts
