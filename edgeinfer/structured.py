"""Constrained decoding: output that must match a JSON schema, a Lark grammar or a regex.

llguidance compiles the constraint lazily and gives, per step, the set of tokens that keep the output
valid (a bitmask over the vocabulary, ~50 µs) and the tokens the grammar forces (``compute_ff_tokens``:
keys, braces, enum tails). The engine masks the logits before sampling, and appends forced tokens to
the next eval without a sampling step of their own. Everything here works on logits rows and token
bytes, so it serves every backend.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import unique_items
from .errors import InvalidRequestError

if TYPE_CHECKING:
    from .backends.base import Backend
    from .sampling import SamplingParams

# a schema is untrusted input: its size is bounded before it is compiled, and llguidance's default parser
# limits (grammar size, lexer fuel per step, Earley items per step) bound the work done for it
MAX_SCHEMA_BYTES = 256 * 1024
# JSON is written compactly, with one space after ":" and ",": the model gets no choice of layout, so
# keys, braces and separators are forced tokens (appended without a sampling step) and the output is
# shorter than the indented JSON small models like to write
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# uniqueItems: how many tokens that would complete a duplicate item are set aside before the sampler gives up
MAX_REFUSED_TOKENS = 64


def _llguidance():  # noqa: ANN202 - imported on first use: plain generation never pays for it
    try:
        import llguidance
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise InvalidRequestError("structured output needs llguidance: pip install llguidance") from exc
    return llguidance


@dataclass(frozen=True, eq=False)
class OutputFormat:
    """What a request's output must match: the llguidance grammar, what it was made from (``kind``:
    "json_schema", "json_object", "lark" or "regex"), the JSON schema if any, and how ``parse`` turns a
    complete output into ``Completion.parsed`` (JSON decoded; a pydantic model or dataclass built)."""

    grammar: str
    kind: str
    schema: dict | None = None
    source: str = ""  # the Lark or regex text
    build: Callable[[Any], Any] | None = None  # decoded JSON -> the caller's type
    unique_items: bool = False  # the schema has uniqueItems: kept at decode time (unique_items.py)

    @property
    def is_json(self) -> bool:
        return self.kind in ("json_schema", "json_object")

    def parse(self, text: str) -> Any:
        """The decoded output: a JSON value (built into the caller's type) or, for Lark and regex, the
        text itself. Raises ValueError if ``text`` is not a complete match."""
        if not self.is_json:
            return text
        value = json.loads(text)
        return self.build(value) if self.build is not None else value

    def response_format(self) -> dict:
        """The OpenAI ``response_format`` that asks a server for this output (JSON kinds only)."""
        if self.kind == "json_object":
            return {"type": "json_object"}
        if self.kind == "json_schema":
            return {"type": "json_schema",
                    "json_schema": {"name": "output", "strict": True, "schema": self.schema}}
        raise InvalidRequestError(f"an OpenAI-compatible server takes JSON schemas, not a {self.kind} "
                                  "grammar")


def parsed_output(output: OutputFormat | None, text: str, finish_reason: str) -> Any:
    """``Completion.parsed``: the output decoded (and built into the caller's type) when it ended on its
    own; None when no format was asked for, it was cut off, or it does not parse (a stop string cut it
    short, or a remote server did not hold it to the schema; pydantic's ValidationError is a ValueError)."""
    if output is None or finish_reason != "stop":
        return None
    try:
        return output.parse(text)
    except (ValueError, TypeError):
        return None


def output_format(*, json_schema: Any = None, grammar: str | None = None, regex: str | None = None,
                  ) -> OutputFormat | None:
    """An OutputFormat from the user's options (at most one of them), checked now: an invalid or
    unsupported schema or grammar is an InvalidRequestError that names what llguidance refused.

    ``json_schema``: a JSON-schema dict, ``True`` or ``"json_object"`` (any JSON object), a pydantic
    model class, or a dataclass type. ``grammar``: a Lark grammar (llguidance's dialect, which also takes
    ``%json {...}`` and regex terminals). ``regex``: the whole output matches it."""
    given = [name for name, value in (("json_schema", json_schema), ("grammar", grammar), ("regex", regex))
             if value is not None]
    if not given:
        return None
    if len(given) > 1:
        raise InvalidRequestError(f"give one output constraint, not {' and '.join(given)}")
    llg = _llguidance()
    if json_schema is not None:
        schema, build, kind = _schema_of(json_schema)
        text = json.dumps(schema)
        if len(text) > MAX_SCHEMA_BYTES:
            raise InvalidRequestError(f"the JSON schema is {len(text):,} bytes; at most {MAX_SCHEMA_BYTES:,}")
        unique = unique_items.uses_unique_items(schema)
        if unique:  # the grammar cannot say it: compiled without, kept by the sampler
            unique_items.check_supported(schema)
            text = json.dumps(unique_items.without_unique_items(schema))
        try:
            compiled = llg.LLMatcher.grammar_from_json_schema(text, defaults=JSON_LAYOUT)
        except ValueError as exc:
            raise InvalidRequestError(f"the JSON schema is not valid: {exc}") from None
        fmt = OutputFormat(compiled, kind, schema, build=build, unique_items=unique)
    else:
        source = grammar if grammar is not None else regex
        if not isinstance(source, str) or not source.strip():
            raise InvalidRequestError(f"{given[0]} must be a non-empty string")
        if len(source) > MAX_SCHEMA_BYTES:
            raise InvalidRequestError(f"the {given[0]} is {len(source):,} bytes; at most "
                                      f"{MAX_SCHEMA_BYTES:,}")
        compiled = (llg.LLMatcher.grammar_from_lark(source) if grammar is not None
                    else llg.LLMatcher.grammar_from_regex(source))
        fmt = OutputFormat(compiled, "lark" if grammar is not None else "regex", source=source)
    error = llg.LLMatcher.validate_grammar(fmt.grammar)
    if error:
        what = {"lark": "Lark grammar", "regex": "regex"}.get(fmt.kind, "JSON schema")
        raise InvalidRequestError(f"the {what} is not supported: {error}")
    return fmt


def _schema_of(value: Any) -> tuple[dict, Callable[[Any], Any] | None, str]:
    """(JSON schema, builder of the caller's type, kind) for a ``json_schema=`` value."""
    if value is True or value == "json_object":
        return {"type": "object"}, None, "json_object"
    if isinstance(value, dict):
        return value, None, "json_schema"
    if isinstance(value, type):
        try:
            import pydantic
        except ImportError:
            raise InvalidRequestError("a class as json_schema needs pydantic (pip install pydantic); "
                                      "or give the JSON schema as a dict") from None
        if issubclass(value, pydantic.BaseModel):
            return _closed(value.model_json_schema()), value.model_validate, "json_schema"
        if dataclasses.is_dataclass(value):
            adapter = pydantic.TypeAdapter(value)
            return _closed(adapter.json_schema()), adapter.validate_python, "json_schema"
    raise InvalidRequestError("json_schema must be a JSON-schema dict, a pydantic model class, a dataclass "
                              f"type, or 'json_object'; got {type(value).__name__}")


def _closed(schema: Any) -> Any:
    """A class's schema with its objects closed (``additionalProperties: false`` where unset): the class
    has exactly its fields, and extra keys would only cost tokens (a small model goes on inventing them)."""
    if isinstance(schema, dict):
        schema = {key: _closed(value) for key, value in schema.items()}
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [_closed(value) for value in schema]
    return schema


# --- the vocabulary as llguidance sees it: built once per backend ----------------------------------
_vocabularies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_vocabulary_lock = threading.Lock()


@dataclass(frozen=True)
class _Vocabulary:
    tokenizer: Any  # llguidance.LLTokenizer
    tokens: list[bytes]  # each token's bytes
    # per token: does it go on with a number / a string rather than end it? (by its first character)
    goes_on: dict[str, np.ndarray]


def vocabulary_for(backend: Backend) -> Any:
    """llguidance's tokenizer for ``backend``: every token's bytes (control tokens have none, so no
    grammar allows them) and its end tokens; built on first use (~0.2 s for 49k tokens), then kept."""
    return _vocabulary(backend).tokenizer


def _vocabulary(backend: Backend) -> _Vocabulary:
    with _vocabulary_lock:
        known = _vocabularies.get(backend)
        if known is not None:
            return known
        llg = _llguidance()
        n_vocab = backend.caps.n_vocab
        tokens = [backend.token_bytes(t) for t in range(n_vocab)]
        ends = [t for t in range(n_vocab) if backend.is_end(t)]
        if not ends:
            raise InvalidRequestError("this model has no end token: its output cannot be constrained")

        class _Wrapped:  # what llguidance.TokenizerWrapper reads
            eos_token_id, bos_token_id, special_token_ids = ends[0], None, []

            def __init__(self) -> None:
                self.tokens = tokens

            def __call__(self, text: str | bytes) -> list[int]:
                if isinstance(text, bytes):
                    text = text.decode("utf-8", errors="replace")
                return backend.tokenize(text, add_special=False, parse_special=False)

        tokenizer = llg.LLTokenizer(llg.TokenizerWrapper(_Wrapped()), n_vocab=n_vocab, eos_token=ends)
        number_chars = frozenset(b"0123456789+-.eE")
        goes_on = {"number": np.array([bool(t) and t[0] in number_chars for t in tokens], dtype=bool),
                   "string": np.array([bool(t) and t[0] != ord('"') for t in tokens], dtype=bool)}
        vocabulary = _Vocabulary(tokenizer, tokens, goes_on)
        _vocabularies[backend] = vocabulary
        return vocabulary


class Constraint:
    """One request's grammar state: the mask for the next token, the tokens it forces, and what it has
    accepted. Owned by the engine's thread once the request runs."""

    def __init__(self, fmt: OutputFormat, backend: Backend) -> None:
        llg = _llguidance()
        self.format = fmt
        self._n_vocab = backend.caps.n_vocab
        self._vocabulary = _vocabulary(backend)
        self._matcher = llg.LLMatcher(self._vocabulary.tokenizer, fmt.grammar, log_level=0)
        self._check()
        self._bits = np.full((self._n_vocab + 31) // 32, -1, dtype=np.int32)
        self._unique = unique_items.UniqueTracker(fmt.schema) if fmt.unique_items else None

    def _check(self) -> None:
        if self._matcher.is_error():
            raise InvalidRequestError(f"the output constraint failed: {self._matcher.get_error()}")

    def allowed(self) -> np.ndarray:
        """A bool per vocabulary token: may it come next?"""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        return np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self._n_vocab].astype(bool)

    def masked(self, logits: np.ndarray) -> np.ndarray:
        """A copy of ``logits`` with every token the grammar does not allow next at -inf."""
        return np.where(self.allowed(), logits, np.float32(-np.inf)).astype(np.float32, copy=False)

    def pick(self, logits: np.ndarray, draw: Callable[[np.ndarray], int]) -> int:
        """``draw`` (the sampling chain) on the logits the grammar allows; where the schema wants unique
        items, a token that would complete a duplicate is taken out and ``draw`` asked again."""
        masked = self.masked(logits)
        token = draw(masked)
        for _ in range(MAX_REFUSED_TOKENS):
            if not self._completes_duplicate(token):
                break
            masked[token] = -np.inf
            if not np.isfinite(masked).any():  # nothing unique can follow: the duplicate stays
                break
            token = draw(masked)
        return token

    def _completes_duplicate(self, token: int) -> bool:
        """Would ``token`` (with the tokens the grammar then forces) finish an item of a unique array
        equal to an earlier one, or leave a string or number that can only end as one (a string at its
        maxLength, a number at its maximum: the closing token is then a choice among several, so the
        grammar forces none)?"""
        if self._unique is None or not self._unique.active():
            return False
        matcher = self._matcher
        if matcher.try_consume_tokens([token]) != 1:
            return False  # the grammar refuses it anyway
        forced = matcher.compute_ff_tokens()
        matcher.consume_tokens(forced)
        try:
            trial = self._unique.trial(b"".join(self._vocabulary.tokens[t] for t in (token, *forced)))
            if trial.duplicate:
                return True
            pending = trial.pending_duplicate()
            if pending is None:
                return False
            return not (self.allowed() & self._vocabulary.goes_on[pending]).any()  # it cannot go on
        finally:
            matcher.rollback(1 + len(forced))

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            self._check()
        if self._unique is not None:
            self._unique.feed(self._vocabulary.tokens[token])

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of ``tokens`` (e.g. a speculative draft) the grammar would accept from here."""
        return self._matcher.validate_tokens(tokens) if tokens else 0

    def forced(self, room: int) -> list[int]:
        """The tokens the grammar allows as the only continuation (at most ``room``), accepted now."""
        if room <= 0 or self._matcher.is_stopped():
            return []
        tokens = self._matcher.compute_ff_tokens()[:room]
        if tokens and not self._matcher.consume_tokens(tokens):
            self._check()
        if self._unique is not None:
            self._unique.feed(b"".join(self._vocabulary.tokens[t] for t in tokens))
        return tokens


class ConstrainedSampler:
    """Samples from the logits the grammar allows (the sampling chain of ``params`` on the masked row)
    and advances the grammar with each token it picks."""

    def __init__(self, backend: Backend, params: SamplingParams, constraint: Constraint) -> None:
        from .sampling import NumpySampler

        self._logits = backend.logits
        self._inner = NumpySampler(params)
        self.constraint = constraint

    def accept(self, token: int) -> None:  # a token of the prompt or a forced one (penalty history)
        self._inner.accept(token)

    def sample(self, row: int) -> int:
        token = self.constraint.pick(self._logits(row), self._inner.sample)
        self._inner.accept(token)
        self.constraint.accept(token)
        return token

    def close(self) -> None:
        pass
