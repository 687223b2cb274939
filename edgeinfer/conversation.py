"""Multi-turn chat over any LanguageModel: ``model.chat()`` gives a Conversation that keeps its messages,
can be saved under an id and resumed (a local Model also keeps its KV cache for the next turn)."""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine import Completion, CompletionStream
from .errors import InvalidRequestError, StorageError
from .paths import atomic_write, cache_root
from .protocol import Message

if TYPE_CHECKING:
    from .sampling import SamplingParams

SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class Chats(ABC):
    """``chat`` / ``resume`` for a class with ``name`` and ``stream_chat``: Model, RemoteModel, Router."""

    name: str

    @abstractmethod
    def stream_chat(self, messages: Sequence[Message], params: SamplingParams | None = None,
                    **options: Any) -> CompletionStream:
        """Answer ``messages``, yielding text pieces: what each turn of a Conversation runs."""

    def chat(self, system: str | None = None, messages: Sequence[Message] | None = None, *,
             id: str | None = None) -> Conversation:  # noqa: A002 - the natural name
        """A multi-turn conversation. With ``id`` it can be saved (``Conversation.save``) and resumed
        later (``resume``)."""
        return Conversation(self, system=system, messages=messages, id=id)

    def conversation_key(self) -> str:
        """The folder a conversation of this model is saved in: the model's name when it is a plain
        file name, else a hash of it (a remote model id like "org/model" must not become a path)."""
        name = self.name
        if SAFE_ID.fullmatch(name) and not name.startswith("."):
            return name[:16]
        return "name-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def conversation_path(self, id: str) -> Path:  # noqa: A002
        if not SAFE_ID.fullmatch(id) or id.startswith("."):
            raise InvalidRequestError("a conversation id is 1-128 letters, digits, '.', '_' or '-'")
        return cache_root() / "conversations" / self.conversation_key() / f"{id}.json"

    def resume(self, id: str) -> Conversation:  # noqa: A002
        """A conversation saved with ``Conversation.save``."""
        path = self.conversation_path(id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            messages = data["messages"]
        except FileNotFoundError:
            raise InvalidRequestError(f"no saved conversation {id!r} for {self.name}") from None
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise InvalidRequestError(f"saved conversation {id!r} is unreadable ({exc})") from exc
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise InvalidRequestError(f"saved conversation {id!r} is damaged (its messages are not a list of "
                                      "role/content texts); start a new one or remove it")
        return Conversation(self, messages=messages, id=id)

    def save_cache(self) -> None:
        """Keep what makes a resumed conversation fast (a local Model: its KV cache); nothing here."""
        return None


class Conversation:
    """Messages so far, plus the model that answers them."""

    def __init__(self, model: Chats, *, system: str | None = None,
                 messages: Sequence[Message] | None = None, id: str | None = None) -> None:  # noqa: A002
        self.model = model
        self.id = id
        self.messages: list[Message] = [dict(m) for m in messages or ()]
        if system:
            self.messages.insert(0, {"role": "system", "content": system})

    def stream(self, text: str, params: SamplingParams | None = None, **options: Any) -> CompletionStream:
        """Add a user turn and stream the answer. The turn is recorded when the stream ends, with the
        partial answer when it was cancelled (the user pressed stop), and not at all when it was
        cancelled before any text."""
        if not text.strip():
            raise InvalidRequestError("the message is empty")
        turn = [*self.messages, {"role": "user", "content": text}]
        inner = self.model.stream_chat(turn, params, **options)

        def run():  # noqa: ANN202
            pieces: list[str] = []
            try:
                for piece in inner:
                    pieces.append(piece)
                    yield piece
            finally:
                done = inner.completion
                text = done.text if done is not None else "".join(pieces)
                if text or (done is not None and done.finish_reason != "cancelled"):  # not: stopped at once
                    self.messages[:] = [*turn, {"role": "assistant", "content": text}]
            return done

        return CompletionStream(run(), on_cancel=inner.cancel)

    def send(self, text: str, params: SamplingParams | None = None, **options: Any) -> Completion:
        """Add a user turn and return the whole answer."""
        return self.stream(text, params, **options).result()

    def save(self) -> Path:
        """Persist the messages (and, with a disk cache, the KV state) under this conversation's id."""
        if not self.id:
            raise InvalidRequestError("give the conversation an id to save it: model.chat(id='...')")
        path = self.model.conversation_path(self.id)
        try:
            with atomic_write(path, "w", private=True) as handle:  # the user's text: 0600 in a 0700 folder
                json.dump({"model": self.model.name, "messages": self.messages}, handle, ensure_ascii=False)
        except OSError as exc:
            raise StorageError(f"could not save conversation {self.id!r} to {path.parent} ({exc}); "
                               "free some disk space, or go on without saving") from exc
        self.model.save_cache()
        return path
