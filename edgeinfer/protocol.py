"""The one surface every model kind shares: ``LanguageModel`` (a loaded ``Model``, a ``RemoteModel``, a
``Router`` or your own class), so Router tiers, the Translator and the server take any of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .conversation import Conversation
    from .engine import Completion, CompletionStream
    from .sampling import SamplingParams

Message = dict[str, Any]  # one chat message: {"role": "user" | "assistant" | "system", "content": "..."}
Prompt = str | Sequence[int]  # a text prompt, or token ids


def is_chat(prompt: object) -> bool:
    """True for chat messages (a non-empty sequence of dicts), False for a text prompt or token ids."""
    return not isinstance(prompt, str) and isinstance(prompt, Sequence) and bool(prompt) \
        and isinstance(prompt[0], dict)


@runtime_checkable
class LanguageModel(Protocol):
    """What edgeinfer calls on a model: text in, text out (whole or streamed), as a prompt or a chat."""

    name: str

    def generate(self, prompt: Prompt, params: SamplingParams | None = None,
                 **options: Any) -> Completion:
        """Complete ``prompt`` and return the whole result."""
        ...

    def stream(self, prompt: Prompt, params: SamplingParams | None = None,
               **options: Any) -> CompletionStream:
        """Complete ``prompt``, yielding text pieces as they are generated (a CompletionStream: its own
        iterator; ``result()`` reads the rest; cancelled by ``cancel()``/``close()``/``with``/being
        dropped)."""
        ...

    def complete_chat(self, messages: Sequence[Message], params: SamplingParams | None = None,
                      **options: Any) -> Completion:
        """Answer the conversation ``messages`` and return the whole answer."""
        ...

    def stream_chat(self, messages: Sequence[Message], params: SamplingParams | None = None,
                    **options: Any) -> CompletionStream:
        """Answer the conversation ``messages``, yielding text pieces."""
        ...

    def chat(self, system: str | None = None, messages: Sequence[Message] | None = None, *,
             id: str | None = None) -> Conversation:  # noqa: A002 - the natural name
        """A multi-turn conversation that keeps its messages."""
        ...

    def close(self) -> None:
        """Release what the model holds (threads, memory, connections)."""
        ...


@runtime_checkable
class Tokenizer(Protocol):
    """A model that can count tokens exactly (local models); others are estimated from characters."""

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens``."""
        ...


def count_tokens(model: object, text: str, *, add_special: bool = False, chars_per_token: int = 4) -> int:
    """Exact token count where ``model`` tokenizes, else an estimate from the length of ``text``."""
    if isinstance(model, Tokenizer):
        return len(model.tokenize(text, add_special=add_special))
    return max(1, len(text) // chars_per_token)
