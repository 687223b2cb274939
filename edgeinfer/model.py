"""Model: the public face of a loaded artifact (generate, stream, chat, embed, tokenize)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Backend
from .base_chat import TRANSCRIPT_STOPS, transcript
from .chat_tokens import chat_tokens
from .compute import device_queue
from .conversation import Chats, Conversation
from .device import Choice
from .engine import Completion, CompletionStream, Engine
from .errors import ContextOverflowError, InvalidRequestError
from .memory import Layout
from .prompt_cache import PromptCache
from .protocol import Message
from .sampling import SamplingParams
from .speculative import Speculation
from .structured import output_format

_PARAM_NAMES = frozenset(f.name for f in fields(SamplingParams))
OUTPUT_OPTIONS = ("json_schema", "grammar", "regex")  # make_params turns these into SamplingParams.output


def make_params(params: SamplingParams | None = None, **overrides: Any) -> SamplingParams:
    """SamplingParams from an optional base plus keyword overrides; unknown names are refused.
    ``json_schema=``, ``grammar=`` or ``regex=`` set ``output`` (checked now: see edgeinfer.structured)."""
    constraint = {name: overrides.pop(name) for name in OUTPUT_OPTIONS if name in overrides}
    unknown = set(overrides) - _PARAM_NAMES
    if unknown:
        raise InvalidRequestError(
            f"unknown generation option(s) {sorted(unknown)}; "
            f"valid: {sorted(_PARAM_NAMES | set(OUTPUT_OPTIONS))}"
        )
    if any(value is not None for value in constraint.values()):
        overrides["output"] = output_format(**constraint)
    if "stop" in overrides and isinstance(overrides["stop"], str):
        overrides["stop"] = (overrides["stop"],)
    elif overrides.get("stop") is not None:
        overrides["stop"] = tuple(overrides["stop"])
    base = params or SamplingParams()
    return base.with_overrides(**overrides)


class Model(Chats):
    """A loaded model. Calls from several threads run concurrently as one continuous batch."""

    def __init__(
        self,
        backend: Backend,
        *,
        name: str,
        path: Path | None = None,
        sha256: str | None = None,
        choice: Choice | None = None,
        chat_template: str | None = None,
        default_params: SamplingParams | None = None,
        cache: PromptCache | None = None,
        settle: bool = True,
        max_batch: int | None = None,
        speculation: Speculation = "auto",
        layout: Layout | None = None,
        role: str | None = None,
    ) -> None:
        self.backend = backend
        self.layout = layout  # the memory layout ei.load sized within the budget (None: not sized)
        self.default_params = default_params or SamplingParams()
        self.name = name
        self.path = path
        self.sha256 = sha256
        self.choice = choice
        self.chat_template = chat_template or backend.caps.chat_template
        # "chat" (an instruction model: its template), "base" (chat goes in as a plain transcript) or
        # "embedding": the lock's role, unless a template was given; by the template for other files
        self.role = "chat" if chat_template else role or ("chat" if self.chat_template else "base")
        self.engine = Engine(backend, model_name=name, cache=cache, settle=settle, max_batch=max_batch,
                             speculation=speculation)
        self.metrics = self.engine.metrics  # live totals and percentiles: model.metrics.snapshot()

    def __repr__(self) -> str:
        return f"<Model {self.name} {self.backend.name}/{self.backend.device} n_ctx={self.n_ctx}>"

    @property
    def n_ctx(self) -> int:
        return self.backend.caps.n_ctx

    @property
    def is_embedding(self) -> bool:
        """True for an embedding model (``embed`` works; generation does not)."""
        return self.backend.caps.embedding

    def _require_generative(self) -> None:
        if self.is_embedding:
            raise InvalidRequestError(
                f"{self.name} is an embedding model: it cannot generate or chat; use model.embed(texts)"
            )

    # --- embeddings
    def embed(self, texts: str | Sequence[str], *, normalize: bool = True,
              truncate: bool = False) -> np.ndarray:
        """Sentence embeddings, shape (len(texts), dim) float32; L2-normalised unless ``normalize=False``.

        A text longer than the context raises ContextOverflowError, or with ``truncate=True`` keeps
        its first n_ctx - 1 tokens plus its final special token (as sentence-transformers does).
        """
        items = [texts] if isinstance(texts, str) else list(texts)
        if any(not isinstance(t, str) for t in items):
            raise InvalidRequestError("embed takes a string or a sequence of strings")
        if not self.is_embedding:
            raise InvalidRequestError(
                f"{self.name} cannot embed: it is a generative model, not an embedding model; load an "
                "embedding GGUF (e.g. all-MiniLM-L6-v2 converted with `edgeinfer convert`)"
            )
        caps = self.backend.caps
        if not items:
            return np.zeros((0, caps.n_embd), dtype=np.float32)
        sequences = [self.tokenize(t, add_special=True, parse_special=False) for t in items]
        for i, tokens in enumerate(sequences):
            if len(tokens) <= caps.n_ctx:
                continue
            if not truncate:
                raise ContextOverflowError(
                    f"text {i} has {len(tokens)} tokens but {self.name} embeds at most {caps.n_ctx}: "
                    "shorten or split it, or pass truncate=True",
                    prompt_tokens=len(tokens), n_ctx=caps.n_ctx)
            sequences[i] = [*tokens[: caps.n_ctx - 1], tokens[-1]]
        with self.engine.lock:  # the scheduler's step lock: one user of the llama context at a time
            vectors = device_queue(self.backend.device).run(self.backend.embed, sequences)
        if normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    # --- tokens
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.backend.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.backend.detokenize(tokens)

    # --- plain completion
    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                 **options: Any) -> Completion:
        """Complete ``prompt`` (text or token ids) and return the whole result."""
        return self.stream(prompt, params, **options).result()

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
               **options: Any) -> CompletionStream:
        """Complete ``prompt``, yielding text as it is generated."""
        self._require_generative()
        tokens = self._prompt_tokens(prompt)
        return self.engine.submit(tokens, self._params(params, options))

    def _params(self, params: SamplingParams | None, options: dict[str, Any]) -> SamplingParams:
        return make_params(params or self.default_params, **options)

    def _prompt_tokens(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenize(prompt, add_special=True, parse_special=False) if prompt else []
        tokens = list(prompt)
        if any(not isinstance(t, int) or not 0 <= t < self.backend.caps.n_vocab for t in tokens):
            raise InvalidRequestError(f"token ids must be ints in [0, {self.backend.caps.n_vocab})")
        return tokens

    # --- chat
    def chat_prompt(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                    tools: Sequence[dict] | None = None) -> list[int]:
        """Token ids of ``messages`` rendered with the model's chat template (``tools``: OpenAI-style
        tool definitions, for a template that describes tools in its own format)."""
        self._require_generative()
        if self.role == "base":  # no template to follow: a question-and-answer transcript
            return self._prompt_tokens(transcript(messages))
        caps = self.backend.caps
        return chat_tokens(self.tokenize, self.chat_template, messages, bos_token=caps.bos_token,
                           eos_token=caps.eos_token, add_generation_prompt=add_generation_prompt, tools=tools)

    def stream_chat(self, messages: Sequence[Message], params: SamplingParams | None = None, *,
                    tools: Sequence[dict] | None = None, **options: Any) -> CompletionStream:
        tokens = self.chat_prompt(messages, tools=tools)
        params = self._params(params, options)
        if self.role == "base":  # the answer ends where the transcript's next question would begin
            params = replace(params, stop=(*params.stop, *TRANSCRIPT_STOPS))
        return self.engine.submit(tokens, params)

    def complete_chat(self, messages: Sequence[Message], params: SamplingParams | None = None, *,
                      tools: Sequence[dict] | None = None, **options: Any) -> Completion:
        return self.stream_chat(messages, params, tools=tools, **options).result()

    def chat(self, system: str | None = None, messages: Sequence[Message] | None = None, *,
             id: str | None = None) -> Conversation:  # noqa: A002 - the natural name
        """A multi-turn conversation; each turn reuses the KV cache of the turns before it.

        With ``id`` it can be saved (``Conversation.save``) and resumed later (``Model.resume``).
        """
        self._require_generative()
        return super().chat(system, messages, id=id)

    def conversation_key(self) -> str:
        return self.sha256[:16] if self.sha256 else super().conversation_key()

    def save_cache(self) -> None:
        """Write every cached sequence to the disk cache (when one is configured), after making
        its generated tokens' KV exactly reusable."""
        if self.engine.cache.disk is None:
            return
        self.engine.settle()
        with self.engine.lock:
            self.engine.cache.persist_all()

    def close(self) -> None:
        self.engine.close()
        self.backend.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

