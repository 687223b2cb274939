"""Chat templates from the model file, rendered in a sandboxed Jinja environment with bounded work.

A template comes with the model file, so it is untrusted. Jinja's sandbox stops it from reaching
Python internals; on top of that every render is bounded: the template's own code may run at most
RENDER_STEPS lines and RENDER_SECONDS seconds (a trace on the rendering thread counts them, so
nested loops cannot run for ever), may write at most RENDER_CHARS characters, and no single
operation may build a huge value (``'x' * 10**11``, ``'%099999999d' % 1``, ``'x'|center(10**9)``).
Every failure is a ChatTemplateError.
"""

from __future__ import annotations

import json
import operator
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache, wraps
from typing import Any

from jinja2 import TemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ChatTemplateError, InvalidRequestError
from .protocol import Message

# Used only when a model file carries no template at all (ChatML is what most small models use).
FALLBACK_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
VALID_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


RENDER_STEPS = 2_000_000  # lines of the template's own compiled code, per render
RENDER_SECONDS = 5.0
RENDER_CHARS = 8 << 20  # characters of output (a prompt must fit a context of at most ~10^6 tokens)
MAX_ITEMS = 1_000_000  # the largest string or list one operation may build; the largest number argument
_HUGE_FORMAT = re.compile(r"\d{7,}")  # a width or precision of 10^6 or more in a format string


class TemplateLimitError(ChatTemplateError):
    """A render went over its budget (steps, time, output size, or one oversized operation)."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused these messages: {message}")


def _too_big(what: str) -> TemplateLimitError:
    return TemplateLimitError(f"the chat template tried to build {what}; refused (a template may not "
                              "build values over a million items)")


def _check_args(args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """No call in a template takes a number of a million or more (widths, counts, repeats)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= MAX_ITEMS:
            raise _too_big(f"something sized {value}")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 1


def _multiply(left: Any, right: Any) -> Any:
    for seq, count in ((left, right), (right, left)):
        if isinstance(count, int) and _size(seq) * abs(count) > MAX_ITEMS:
            raise _too_big(f"a value of {_size(seq) * abs(count)} items")
    return operator.mul(left, right)


def _power(left: Any, right: Any) -> Any:
    numbers = isinstance(left, (int, float)) and isinstance(right, (int, float))
    if numbers and abs(right) > 1000 and abs(left) > 1:
        raise _too_big(f"the number {left}**{right}")
    return operator.pow(left, right)


def _huge_format(fmt: Any, args: Any = ()) -> bool:
    """A format string with a width or precision of a million or more, written or passed by '*'."""
    if not isinstance(fmt, str):
        return False
    values = args if isinstance(args, (tuple, list)) else (args,)
    big = any(isinstance(v, int) and abs(v) >= MAX_ITEMS for v in values)
    return bool(_HUGE_FORMAT.search(fmt)) or ("*" in fmt and big)


def _modulo(left: Any, right: Any) -> Any:
    if _huge_format(left, right):
        raise _too_big("a string formatted with a width of a million or more")
    return operator.mod(left, right)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with every call, filter and operator checked for oversized values."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters["tojson"] = _tojson
        self.binop_table.update({"*": _multiply, "**": _power, "%": _modulo})
        for name, fn in list(self.filters.items()):
            self.filters[name] = _checked(fn)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_args(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None and _huge_format(value.__self__):

            def refused(*args: Any, **kwargs: Any) -> str:
                raise _too_big("a string formatted with a width of a million or more")

            return refused
        return wrapped


def _tojson(value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False,
            ensure_ascii: bool = False) -> str:
    """JSON as Hugging Face renders templates with it (not HTML-escaped, unlike Jinja's own): templates
    write tool definitions and call arguments this way."""
    return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys,
                      ensure_ascii=ensure_ascii)


def _checked(fn: Any) -> Any:
    """A filter whose arguments (not the value it filters) are checked like a call's."""
    first = 2 if getattr(fn, "jinja_pass_arg", None) is not None else 1  # context/env, then the value

    @wraps(fn)
    def filter_(*args: Any, **kwargs: Any) -> Any:
        _check_args(args[first:], kwargs)
        value = args[first - 1] if len(args) >= first else None
        if fn.__name__ == "do_format" and _huge_format(value, args[first:]):
            raise _too_big("a string formatted with a width of a million or more")
        if fn.__name__ == "do_join" and isinstance(value, (list, tuple)) and len(args) > first:
            joined = len(value) * _size(args[first])
            if joined > MAX_ITEMS:
                raise _too_big(f"a string of {joined} characters")
        return fn(*args, **kwargs)

    return filter_


class _Budget:
    """Counts the lines the template's compiled code runs on this thread and stops it when over."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.steps = 0
        self.deadline = time.monotonic() + RENDER_SECONDS

    def on_call(self, frame: Any, event: str, arg: Any) -> Any:
        return self.on_line if frame.f_code.co_filename == self.filename else None

    def on_line(self, frame: Any, event: str, arg: Any) -> Any:
        self.steps += 1
        if self.steps > RENDER_STEPS:
            raise TemplateLimitError(f"the chat template ran more than {RENDER_STEPS:,} steps; stopped")
        if self.steps % 4096 == 0 and time.monotonic() > self.deadline:
            raise TemplateLimitError(f"the chat template ran longer than {RENDER_SECONDS:g} s; stopped")
        return self.on_line


def _bounded_render(compiled: Any, **variables: Any) -> str:
    """Render with the step, time and output budgets (see the module docstring)."""
    budget = _Budget(compiled.root_render_func.__code__.co_filename)
    previous = sys.gettrace()
    sys.settrace(budget.on_call)
    try:
        out: list[str] = []
        size = 0
        for piece in compiled.generate(**variables):
            size += len(piece)
            if size > RENDER_CHARS:
                raise TemplateLimitError(f"the chat template wrote more than {RENDER_CHARS:,} characters; "
                                         "stopped")
            out.append(piece)
        return "".join(out)
    finally:
        sys.settrace(previous)


@lru_cache(maxsize=16)
def _compile(source: str):  # noqa: ANN202 - jinja2 Template
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
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
    tools: Sequence[dict] | None = None,
) -> str:
    """Render ``messages`` with the model's template (``tools``: the tool definitions a template with its
    own tool format describes); unsafe templates raise ChatTemplateError."""
    compiled = _compile(template or FALLBACK_CHATML)
    try:
        return _bounded_render(
            compiled,
            messages=validate_messages(messages),
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
            tools=list(tools) if tools else None,
        )
    except SecurityError as exc:
        raise ChatTemplateError(
            f"the chat template tried something unsafe and was stopped ({exc}); "
            "use a template from a trusted model file or pass chat_template= explicitly"
        ) from exc
    except ChatTemplateError:
        raise
    except RecursionError as exc:
        raise TemplateLimitError("the chat template recursed too deeply; stopped") from exc
    except (MemoryError, OverflowError) as exc:
        raise TemplateLimitError(f"the chat template tried to build a value too large ({exc!r})") from exc
    except (TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError,
            ZeroDivisionError, ArithmeticError) as exc:
        raise ChatTemplateError(f"the chat template failed to render: {exc}") from exc
