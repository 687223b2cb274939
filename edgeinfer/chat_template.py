"""Chat templates from the model file, rendered in a sandboxed Jinja environment."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ChatTemplateError, InvalidRequestError

Message = dict[str, Any]

# Used only when a model file carries no template at all (ChatML is what most small models use).
FALLBACK_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
VALID_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused these messages: {message}")


@lru_cache(maxsize=16)
def _compile(source: str):  # noqa: ANN202 - jinja2 Template
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template does not parse: {exc}") from exc


def validate_messages(messages: Sequence[Message]) -> list[Message]:
    """Check the OpenAI-style message list; return a plain copy."""
    if not messages:
        raise InvalidRequestError("messages must contain at least one message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InvalidRequestError(f"message {i} must be an object with 'role' and 'content'")
        if m["role"] not in VALID_ROLES:
            raise InvalidRequestError(
                f"message {i} has unknown role {m['role']!r}; use one of {sorted(VALID_ROLES)}"
            )
        if not isinstance(m["content"], str):
            raise InvalidRequestError(f"message {i} content must be a string")
        out.append(dict(m))
    return out


def render_chat(
    template: str | None,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """Render ``messages`` with the model's template; unsafe templates raise ChatTemplateError."""
    compiled = _compile(template or FALLBACK_CHATML)
    try:
        return compiled.render(
            messages=validate_messages(messages),
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except SecurityError as exc:
        raise ChatTemplateError(
            f"the chat template tried something unsafe and was stopped ({exc}); "
            "use a template from a trusted model file or pass chat_template= explicitly"
        ) from exc
    except ChatTemplateError:
        raise
    except (TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ChatTemplateError(f"the chat template failed to render: {exc}") from exc
