"""The backend contract: backends own tensors and KV memory; the engine owns the decode loop."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import BackendError, InvalidRequestError
from ..sampling import NumpySampler, SamplingParams

# Prefill batches shorter than this may run other kernels than longer ones, so KV they computed
# is not reproduced bit for bit by a longer batch (see prompt_cache); backends may say more.
EXACT_MIN_BATCH = 16


class EvalInterrupted(BackendError):
    """An interruptible eval was stopped by ``Backend.interrupt`` (a request arrived during idle work); the
    sequences hold what they held before it, less any prefill pieces the caller must truncate."""


def prefill_cuts(start: int, end: int, n_batch: int, min_batch: int = EXACT_MIN_BATCH) -> list[int]:
    """Positions where a prefill of [start, end) is cut into llama_decode calls: where a fresh
    prefill from 0 is cut (multiples of n_batch), so reused KV stays bit-exact, except a last cut
    whose tail is long enough (``min_batch``) to share a call with the piece before it (the
    kernels treat its rows alike either way) - one weight pass instead of two."""
    cuts = list(range(start - start % n_batch + n_batch, end, n_batch))
    if cuts and end - cuts[-1] >= min_batch and end - (cuts[-2] if len(cuts) > 1 else start) <= n_batch:
        cuts.pop()
    return cuts


@dataclass(frozen=True)
class Capabilities:
    """What a loaded model can do; read by the engine, never changed after load."""

    n_ctx: int  # context window of each sequence, in tokens
    n_vocab: int
    max_sequences: int  # KV sequences that can live at once (seq ids 0..max_sequences-1)
    n_batch: int  # most tokens one eval may carry
    bos_token: str = ""
    eos_token: str = ""
    chat_template: str | None = None
    architecture: str = ""
    quantization: str = ""
    # KV computed for a prompt split at a multiple of this equals a fresh prefill's bit for bit
    # (matmul kernels tile the batch's rows); the prompt cache reuses only at such multiples
    reuse_align: int = 16
    # batches of at least this many tokens compute each row alike, whatever their length
    exact_min_batch: int = EXACT_MIN_BATCH
    # a few tokens of one sequence evaluated together get exactly the logits of one-by-one steps
    # (speculative drafts can be checked without changing greedy output)
    exact_verify: bool = True
    # sequences evaluated in one eval get exactly the logits each would get in an eval of its own
    # (continuous batching does not change greedy output)
    exact_batch: bool = True
    # an eval computes each of up to this many rows exactly as an eval of that row alone (0: any number);
    # the engine decodes at most this many sequences at once by default and drafts fewer tokens than it
    exact_rows: int = 0
    # an embedding model (pooled sentence vectors of n_embd floats; no generation, no KV sequences)
    embedding: bool = False
    n_embd: int = 0


@dataclass(frozen=True)
class EvalItem:
    """Tokens to append to one sequence; logits come back for its last ``n_outputs`` positions
    (1: the next token; more: to verify a speculative draft)."""

    seq_id: int
    tokens: Sequence[int]
    n_outputs: int = 1


class Sampler(Protocol):
    """Picks a token from one output row of the last eval."""

    def accept(self, token: int) -> None: ...
    def sample(self, row: int) -> int: ...
    def close(self) -> None: ...


class LogitsSampler:
    """A Sampler for any backend: numpy sampling on ``backend.logits(row)``."""

    def __init__(self, backend: Backend, params: SamplingParams) -> None:
        self._backend = backend
        self._inner = NumpySampler(params)

    def accept(self, token: int) -> None:
        self._inner.accept(token)

    def sample(self, row: int) -> int:
        token = self._inner.sample(self._backend.logits(row))
        self._inner.accept(token)
        return token

    def close(self) -> None:
        pass


class Backend(ABC):
    """A loaded model. Sequence ids are small ints below ``caps.max_sequences``."""

    name: str = ""
    device: str = "cpu"
    caps: Capabilities
    threads: int = 0  # compute threads in use (0: not known, or not the backend's to choose)

    # --- text <-> tokens
    @abstractmethod
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_special`` adds BOS where the model wants it."""

    @abstractmethod
    def token_bytes(self, token: int) -> bytes:
        """The bytes a generated token stands for (control tokens render as b'')."""

    @abstractmethod
    def is_end(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT, ...)."""

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    # --- compute
    @abstractmethod
    def eval(self, items: Sequence[EvalItem]) -> list[int]:
        """Append tokens to sequences and run the model; returns the output rows, ``n_outputs`` per
        item in item order (positions in order).

        A row stays valid until the next ``eval``; read it with ``logits(row)`` or a Sampler.
        """

    @abstractmethod
    def logits(self, row: int) -> np.ndarray:
        """Next-token logits (n_vocab floats) of an output row of the last eval."""

    def embed(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Pooled embeddings (one float32 row per token sequence) of an embedding model."""
        raise InvalidRequestError("this model is not an embedding model: it cannot embed")

    def make_sampler(self, params: SamplingParams) -> Sampler:
        """A sampler for ``params``; backends with native samplers override this."""
        return LogitsSampler(self, params)

    # --- KV memory of one sequence
    @abstractmethod
    def seq_length(self, seq_id: int) -> int:
        """Tokens currently held in the KV cache of ``seq_id``."""

    @abstractmethod
    def kv_truncate(self, seq_id: int, n: int) -> None:
        """Keep only the first ``n`` positions of ``seq_id``."""

    @abstractmethod
    def kv_copy(self, src: int, dst: int, n: int) -> None:
        """Make ``dst`` hold the first ``n`` positions of ``src`` (``dst`` is cleared first)."""

    def kv_drop(self, seq_id: int) -> None:
        self.kv_truncate(seq_id, 0)

    @abstractmethod
    def state_save(self, seq_id: int) -> bytes:
        """Serialize the KV state of one sequence."""

    @abstractmethod
    def state_load(self, seq_id: int, data: bytes, n_tokens: int) -> None:
        """Restore a state from ``state_save`` into ``seq_id`` (which is cleared first)."""

    def state_size(self, seq_id: int) -> int:
        """Bytes ``state_save(seq_id)`` would return."""
        return len(self.state_save(seq_id))

    def state_binding(self) -> dict:
        """What a saved state depends on besides the model file (states load only when equal)."""
        return {"backend": self.name, "n_ctx": self.caps.n_ctx}

    @property
    def sequences_allocated(self) -> int:
        """Sequences the backend holds memory for now (ids below this); the rest come on demand."""
        return self.caps.max_sequences

    def grow_sequences(self, n: int) -> int:
        """Make room for at least ``n`` sequences if the backend allocates them lazily (and its memory
        budget allows); returns the sequences held afterwards."""
        return self.sequences_allocated

    def kv_bytes_per_token(self) -> int:
        """KV cache bytes one token of one sequence holds (0: not known)."""
        return 0

    def kv_bytes_allocated(self) -> int:
        """KV cache bytes allocated now (0: not known)."""
        return 0

    threads_adjustable: bool = False  # set_threads works, and outputs do not depend on the count

    def set_threads(self, n: int) -> bool:
        """Use ``n`` compute threads from the next eval on, if the backend can change them while loaded
        (the compute queue's thread tuner asks); False when it cannot."""
        return False

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Evals inside may be stopped by ``interrupt()`` from another thread (raising ``EvalInterrupted``);
        backends that cannot stop a running eval ignore it and the eval runs to its end."""
        yield

    def interrupt(self) -> None:
        """Stop the interruptible eval running now, if any, as soon as the backend can."""
        return None

    def close(self) -> None:
        """Free native memory; the backend is unusable afterwards."""
        return None
