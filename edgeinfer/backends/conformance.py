"""Conformance checks every backend must pass: pure assertions over a loaded ``Backend`` (see base.py).

A plugin author runs them on a small model of theirs (they raise AssertionError with what is wrong)::

    from edgeinfer.backends import conformance
    conformance.check_backend(MyBackend("tiny.bin", n_ctx=256, max_sequences=2))

Each check uses only what the contract promises; KV and state checks apply to generative models (an
embedding model has no KV sequences and is checked through ``embed`` instead). Sequences 0 and 1 are used
and left dropped. Logits are compared with ``atol`` since a batch's shape may change float rounding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from .base import Backend, Capabilities, EvalItem

TEXT = "Hello world, the quick brown fox"
ATOL = 2e-2


def _expect(condition: object, message: str) -> None:
    """An assertion that survives ``python -O`` and says what the contract wanted."""
    if not condition:
        raise AssertionError(message)


def _prompt(backend: Backend, text: str) -> list[int]:
    """A prompt of at least 4 tokens (BOS where the model wants it), short enough that it and two more
    tokens fit in one eval (``caps.n_batch``)."""
    tokens = backend.tokenize(text)[: backend.caps.n_batch - 2]
    _expect(len(tokens) >= 4, f"{text!r} tokenized to {len(tokens)} tokens; use a longer text")
    return tokens


def _last_logits(backend: Backend, seq_id: int, tokens: Sequence[int]) -> np.ndarray:
    """Append ``tokens`` to ``seq_id`` and return a copy of the next-token logits."""
    (row,) = backend.eval([EvalItem(seq_id, list(tokens))])
    return np.array(backend.logits(row), dtype=np.float32)


def _same(a: np.ndarray, b: np.ndarray, what: str, atol: float) -> None:
    gap = float(np.max(np.abs(a - b)))
    _expect(gap <= atol, f"{what}: logits differ by up to {gap:.4g} (allowed {atol})")


def check_capabilities(backend: Backend) -> None:
    """``caps`` is a Capabilities with positive sizes; ``name`` and ``device`` are set."""
    caps = backend.caps
    _expect(isinstance(caps, Capabilities), f"caps is a {type(caps).__name__}, not Capabilities")
    _expect(isinstance(backend.name, str) and backend.name, "backend.name is empty")
    _expect(isinstance(backend.device, str) and backend.device, "backend.device is empty")
    for field in ("n_ctx", "n_vocab", "max_sequences", "n_batch", "reuse_align", "exact_min_batch"):
        value = getattr(caps, field)
        _expect(isinstance(value, int) and value >= 1, f"caps.{field} = {value!r}; expected an int >= 1")
    _expect(not caps.embedding or caps.n_embd >= 1, "an embedding model needs caps.n_embd >= 1")


def check_tokenize_round_trip(backend: Backend, text: str = TEXT) -> None:
    """Token ids lie in the vocabulary, and detokenizing them gives the text back."""
    tokens = backend.tokenize(text, add_special=False)
    _expect(tokens and all(isinstance(t, int) for t in tokens), f"tokenize({text!r}) gave {tokens!r}")
    _expect(all(0 <= t < backend.caps.n_vocab for t in tokens), "a token id is outside 0..n_vocab-1")
    _expect(all(isinstance(backend.token_bytes(t), bytes) for t in tokens), "token_bytes must return bytes")
    _expect(backend.detokenize(tokens) == text, f"round trip gave {backend.detokenize(tokens)!r}")


def check_eval_rows(backend: Backend, text: str = TEXT, atol: float = ATOL) -> None:
    """``eval`` returns ``n_outputs`` rows per item in item order, each ``n_vocab`` finite floats."""
    tokens = _prompt(backend, text)
    backend.kv_drop(0)
    rows = backend.eval([EvalItem(0, tokens, n_outputs=3)])
    _expect(len(rows) == 3, f"n_outputs=3 gave {len(rows)} rows")
    last = None
    for row in rows:
        logits = np.asarray(backend.logits(row))
        _expect(logits.shape == (backend.caps.n_vocab,), f"row {row} has shape {logits.shape}")
        _expect(np.all(np.isfinite(logits)), f"row {row} holds non-finite logits")
        last = np.array(logits, dtype=np.float32)
    _expect(backend.seq_length(0) == len(tokens), "seq_length does not count the evaluated tokens")
    backend.kv_drop(0)
    _same(_last_logits(backend, 0, tokens), last, "the last of 3 output rows vs n_outputs=1", atol)
    backend.kv_drop(0)
    if backend.caps.max_sequences >= 2:  # two sequences in one eval: rows in item order
        backend.kv_drop(1)
        rows = backend.eval([EvalItem(0, tokens[:2]), EvalItem(1, tokens, n_outputs=2)])
        _expect(len(rows) == 3, f"items with 1 + 2 outputs gave {len(rows)} rows")
        _same(np.asarray(backend.logits(rows[-1]), dtype=np.float32), last, "second item's last row", atol)
        _expect(backend.seq_length(0) == 2 and backend.seq_length(1) == len(tokens),
                "seq_length after a two-item eval")
        backend.kv_drop(0)
        backend.kv_drop(1)


def check_kv_ops(backend: Backend, text: str = TEXT, atol: float = ATOL) -> None:
    """Truncate, copy and drop change what the next eval sees as a fresh prefill of the same tokens."""
    tokens = _prompt(backend, text)
    backend.kv_drop(0)
    whole = _last_logits(backend, 0, tokens)
    backend.kv_truncate(0, len(tokens) - 1)
    _expect(backend.seq_length(0) == len(tokens) - 1, "kv_truncate did not shorten the sequence")
    _same(_last_logits(backend, 0, tokens[-1:]), whole, "truncate then re-eval the last token", atol)
    if backend.caps.max_sequences >= 2:
        backend.kv_copy(0, 1, len(tokens) - 1)
        _expect(backend.seq_length(1) == len(tokens) - 1, "kv_copy did not copy n positions")
        _expect(backend.seq_length(0) == len(tokens), "kv_copy changed its source")
        _same(_last_logits(backend, 1, tokens[-1:]), whole, "copied prefix then the last token", atol)
        backend.kv_drop(1)
        _expect(backend.seq_length(1) == 0, "kv_drop left tokens behind")
        _same(_last_logits(backend, 1, tokens), whole, "a dropped sequence evaluated afresh", atol)
        backend.kv_drop(1)
    backend.kv_drop(0)
    _expect(backend.seq_length(0) == 0, "kv_drop left tokens behind")


def check_state_round_trip(backend: Backend, text: str = TEXT, atol: float = ATOL) -> None:
    """A saved state loads into another sequence and continues exactly as the original; the binding is
    a JSON object naming the backend, the same on every call."""
    binding = backend.state_binding()
    _expect(isinstance(binding, dict) and binding.get("backend") == backend.name,
            f"state_binding() = {binding!r}; it must be a dict with backend={backend.name!r}")
    _expect(json.dumps(binding, sort_keys=True) == json.dumps(backend.state_binding(), sort_keys=True),
            "state_binding() changes between calls")
    tokens = _prompt(backend, text)
    target = 1 if backend.caps.max_sequences >= 2 else 0
    backend.kv_drop(0)
    backend.eval([EvalItem(0, tokens[:-1])])
    data = backend.state_save(0)
    _expect(isinstance(data, bytes) and data, "state_save returned no bytes")
    _expect(backend.state_size(0) == len(data), f"state_size {backend.state_size(0)} != {len(data)} saved")
    expected = _last_logits(backend, 0, tokens[-1:])
    backend.kv_drop(0)
    if target != 0:
        backend.eval([EvalItem(target, tokens[:2])])  # state_load clears what the target held
    backend.state_load(target, data, len(tokens) - 1)
    _expect(backend.seq_length(target) == len(tokens) - 1, "state_load restored another length")
    _same(_last_logits(backend, target, tokens[-1:]), expected, "a loaded state's continuation", atol)
    backend.kv_drop(target)


def check_sequences_grow(backend: Backend, text: str = TEXT, atol: float = ATOL) -> None:
    """Sequences may be allocated lazily: ``sequences_allocated`` is in 1..max_sequences, and
    ``grow_sequences`` never shrinks it nor loses what a held sequence holds."""
    tokens = _prompt(backend, text)
    held = backend.sequences_allocated
    _expect(1 <= held <= backend.caps.max_sequences, f"sequences_allocated = {held}")
    backend.kv_drop(0)
    expected = _last_logits(backend, 0, tokens)
    backend.kv_truncate(0, len(tokens) - 1)
    grown = backend.grow_sequences(backend.caps.max_sequences)
    _expect(held <= grown == backend.sequences_allocated <= backend.caps.max_sequences,
            f"grow_sequences went from {held} to {grown} (now {backend.sequences_allocated})")
    _expect(backend.seq_length(0) == len(tokens) - 1, "a held sequence lost tokens when sequences grew")
    _same(_last_logits(backend, 0, tokens[-1:]), expected, "a sequence carried across growth", atol)
    backend.kv_drop(0)


def check_is_end(backend: Backend, eos: int | None = None) -> None:
    """``is_end`` holds for the EOS token (``eos``, else ``caps.eos_token``) and not for plain text,
    and the EOS token renders as no bytes."""
    _expect(not any(backend.is_end(t) for t in backend.tokenize(TEXT, add_special=False)),
            "is_end is true for a token of plain text")
    if eos is None and backend.caps.eos_token:
        ids = backend.tokenize(backend.caps.eos_token, add_special=False, parse_special=True)
        _expect(len(ids) == 1, f"the EOS text {backend.caps.eos_token!r} tokenized to {ids}")
        eos = ids[0]
    if eos is not None:
        _expect(backend.is_end(eos), f"is_end({eos}) is false for the EOS token")
        _expect(backend.token_bytes(eos) == b"", "the EOS token must render as b''")


def check_embed(backend: Backend, text: str = TEXT) -> None:
    """An embedding model returns one finite row of ``n_embd`` floats per token sequence."""
    tokens = backend.tokenize(text)
    out = np.asarray(backend.embed([tokens, tokens[:3]]))
    _expect(out.shape == (2, backend.caps.n_embd), f"embed gave shape {out.shape}")
    _expect(np.all(np.isfinite(out)), "embed returned non-finite values")


def check_close(backend: Backend) -> None:
    """``close`` frees the backend and may be called again (the engine and __del__ both may)."""
    backend.close()
    backend.close()


def check_backend(backend: Backend, *, eos: int | None = None, text: str = TEXT, atol: float = ATOL) -> None:
    """Every check above that applies to ``backend``, then close it."""
    check_capabilities(backend)
    check_tokenize_round_trip(backend, text)
    check_is_end(backend, eos)
    if backend.caps.embedding:
        check_embed(backend, text)
    else:
        check_eval_rows(backend, text, atol)
        check_kv_ops(backend, text, atol)
        check_state_round_trip(backend, text, atol)
        check_sequences_grow(backend, text, atol)
    check_close(backend)
