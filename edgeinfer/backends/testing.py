"""Testing helpers for backend authors: FakeBackend, a deterministic toy model behind the Backend contract.

What it is for: exercising engine logic (batching, KV reuse, speculation, routing) without a real model,
and giving a backend author a reference implementation of ``edgeinfer.backends.base.Backend`` to read
and to subclass when testing a plugin's registration.

Vocabulary: token i < 256 is the byte i; 256 is EOS. The "model" predicts (last token + step) mod 256
(or, with ``whole_history=True``, a letter from the sum of the sequence's tokens), so the continuation of
any prompt is known in advance.

How a backend author uses it:

- run the conformance checks on both backends, yours and this one, so a failure is easy to compare::

      from edgeinfer.backends import conformance
      from edgeinfer.backends.testing import EOS, FakeBackend

      conformance.check_backend(FakeBackend(whole_history=True), eos=EOS)
      conformance.check_backend(MyBackend("model.bin", n_ctx=256, max_sequences=2))

- test a plugin's registration end to end: a factory that returns a FakeBackend subclass (accepting
  the loader's ``path`` and keyword options) is served by ``edgeinfer.load`` like any backend.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..errors import BackendError, KVCacheFullError
from .base import Backend, Capabilities, EvalItem

EOS = 256


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, *, n_ctx: int = 64, max_sequences: int = 2, step: int = 1,
                 eos_after: int | None = None, fail_on_eval: int | None = None,
                 kv_cells: int | None = None, whole_history: bool = False, delay: float = 0.0) -> None:
        self.caps = Capabilities(n_ctx=n_ctx, n_vocab=257, max_sequences=max_sequences, n_batch=16)
        self.step = step
        self.eos_after = eos_after  # emit EOS once a sequence holds this many tokens
        self.fail_on_eval = fail_on_eval
        self.kv_cells = kv_cells  # all sequences together hold at most this many tokens
        # predict from the whole sequence (a letter from the sum of its tokens), so that a KV cache
        # missing or holding extra tokens changes the output, as it would with a real model
        self.whole_history = whole_history
        self.delay = delay  # seconds per eval, to make requests overlap in time
        self.seqs: dict[int, list[int]] = {i: [] for i in range(max_sequences)}
        self.evaluated_tokens = 0  # how much work was done (cache reuse lowers it)
        self.evals = 0
        self._rows: list[np.ndarray] = []

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def token_bytes(self, token: int) -> bytes:
        return b"" if token == EOS else bytes([token])

    def is_end(self, token: int) -> bool:
        return token == EOS

    def eval(self, items: Sequence[EvalItem]) -> list[int]:
        self.evals += 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on_eval is not None and self.evals >= self.fail_on_eval:
            raise RuntimeError("injected failure")
        self._rows = []
        if self.kv_cells is not None:
            held = sum(len(s) for s in self.seqs.values()) + sum(len(i.tokens) for i in items)
            if held > self.kv_cells:
                raise KVCacheFullError("fake KV cells exhausted")
        for item in items:
            seq = self.seqs[item.seq_id]
            first_output = len(item.tokens) - item.n_outputs
            for j, token in enumerate(item.tokens):
                seq.append(token)
                if j >= first_output:
                    self._rows.append(self._predict(seq))
            self.evaluated_tokens += len(item.tokens)
        return list(range(len(self._rows)))

    def _predict(self, seq: list[int]) -> np.ndarray:
        logits = np.full(257, -10.0, dtype=np.float32)
        if self.eos_after is not None and len(seq) >= self.eos_after:
            logits[EOS] = 10.0
        elif self.whole_history:
            logits[97 + sum(seq) % 26] = 10.0
        else:
            logits[(seq[-1] + self.step) % 256] = 10.0
            logits[(seq[-1] + self.step + 1) % 256] = 9.0
        return logits

    def logits(self, row: int) -> np.ndarray:
        return self._rows[row]

    def seq_length(self, seq_id: int) -> int:
        return len(self.seqs[seq_id])

    def kv_truncate(self, seq_id: int, n: int) -> None:
        del self.seqs[seq_id][n:]

    def kv_copy(self, src: int, dst: int, n: int) -> None:
        self.seqs[dst] = list(self.seqs[src][:n])

    def state_save(self, seq_id: int) -> bytes:
        return np.asarray(self.seqs[seq_id], dtype=np.int32).tobytes()

    def state_load(self, seq_id: int, data: bytes, n_tokens: int) -> None:
        tokens = np.frombuffer(data, dtype=np.int32).tolist()
        if len(tokens) != n_tokens:
            raise BackendError("state does not hold the expected tokens")
        self.seqs[seq_id] = tokens
