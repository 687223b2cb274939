"""ONNX Runtime backend for embedding encoders (BERT / sentence-transformers folders from
``edgeinfer convert --format onnx``): pooled sentence vectors, no generation and no KV sequences.

Texts are run in batches of similar lengths (sorted, padded on the right with an attention mask), so
little compute goes to padding; a text's vector does not depend on the others beyond float rounding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ..errors import BackendError, ContextOverflowError, EmptyPromptError, InvalidRequestError, ModelLoadError
from ..onnx_check import load_checked
from .base import Backend, Capabilities, EvalItem
from .onnx import open_session
from .onnx_tokens import TokenizerJson

MAX_BATCH = 64  # texts per pass
MAX_BATCH_TOKENS = 8192  # padded tokens per pass
MAX_SCORES = 1 << 24  # attention scores per pass (batch * heads * seq * seq floats: 64 MiB)
MAX_PAD_RATIO = 2  # a pass's longest text is at most this many times its shortest


def plan_batches(lengths: Sequence[int], n_heads: int) -> list[list[int]]:
    """Indices of the texts, grouped into passes of similar lengths within the memory bounds above."""
    groups: list[list[int]] = []
    group: list[int] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        n, size = lengths[i], len(group) + 1
        if group and (n > MAX_PAD_RATIO * lengths[group[0]] or size > MAX_BATCH
                      or size * n > MAX_BATCH_TOKENS or size * n_heads * n * n > MAX_SCORES):
            groups.append(group)
            group = []
        group.append(i)
    if group:
        groups.append(group)
    return groups


class OnnxEmbeddingBackend(Backend):
    """One ONNX encoder session that turns token sequences into pooled sentence vectors."""

    name = "onnx"

    def __init__(self, path: str | os.PathLike[str], *, n_ctx: int | None = None,
                 n_threads: int | None = None, device: str = "cpu", **_: Any) -> None:

        folder = Path(path)
        try:
            meta = json.loads((folder / "edgeinfer.json").read_text(encoding="utf-8"))
            self.n_embd, self.n_heads = int(meta["n_embd"]), int(meta.get("n_heads", 1))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{folder} has no usable edgeinfer.json ({exc}); convert it again") from exc
        self.meta = meta
        self.pooling = str(meta.get("pooling", "mean"))
        self.pad_id = int(meta.get("pad_token_id") or 0)
        load_checked(folder, encoder=True)  # external data inside the folder, encoder I/O names right
        self.session = open_session(folder / "model.onnx", device, n_threads)
        self.device = "cuda" if self.session.get_providers()[0].startswith("CUDA") else "cpu"
        self.tokens = TokenizerJson(folder / "tokenizer.json")
        limit = int(meta.get("context_length") or 512)
        n_ctx = min(n_ctx or limit, limit)
        self.caps = Capabilities(
            n_ctx=n_ctx, n_vocab=int(meta.get("vocab_size") or self.tokens.tok.get_vocab_size()),
            max_sequences=1, n_batch=n_ctx, architecture=str(meta.get("arch", "")),
            quantization=str(meta.get("quantization", "")), exact_verify=False,
            embedding=True, n_embd=self.n_embd,
        )

    # --- text <-> tokens
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokens.encode(text, add_special=add_special)

    def token_bytes(self, token: int) -> bytes:
        return self.tokens.token_bytes(token)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.tokens.tok.decode(list(tokens), skip_special_tokens=True)

    def is_end(self, token: int) -> bool:
        return False

    # --- embeddings
    def embed(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Pooled (not normalised) vectors, one float32 row per token sequence."""
        lengths = [len(tokens) for tokens in sequences]
        for i, n in enumerate(lengths):
            if not n:
                raise EmptyPromptError(f"text {i} has no tokens: there is nothing to embed")
            if n > self.caps.n_ctx:
                raise ContextOverflowError(
                    f"text {i} has {n} tokens; this model embeds at most {self.caps.n_ctx}",
                    prompt_tokens=n, n_ctx=self.caps.n_ctx)
        out = np.empty((len(sequences), self.n_embd), dtype=np.float32)
        for group in plan_batches(lengths, self.n_heads):
            out[group] = self._run([sequences[i] for i in group])
        return out

    def _run(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """One pass over a batch of sequences, padded on the right to the longest."""
        width = max(len(tokens) for tokens in sequences)
        ids = np.full((len(sequences), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        for row, tokens in enumerate(sequences):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        try:
            (vectors,) = self.session.run(["sentence_embedding"], feeds)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime failed to embed the batch: {exc}") from exc
        return vectors

    # --- generation: none
    def _refuse(self) -> NoReturn:
        raise InvalidRequestError(
            f"this is an embedding model ({self.pooling} pooling): it has no KV sequences and cannot "
            "generate; use Model.embed"
        )

    def eval(self, items: Sequence[EvalItem]) -> list[int]:
        self._refuse()

    def logits(self, row: int) -> np.ndarray:
        self._refuse()

    def seq_length(self, seq_id: int) -> int:
        self._refuse()

    def kv_truncate(self, seq_id: int, n: int) -> None:
        self._refuse()

    def kv_copy(self, src: int, dst: int, n: int) -> None:
        self._refuse()

    def state_save(self, seq_id: int) -> bytes:
        self._refuse()

    def state_load(self, seq_id: int, data: bytes, n_tokens: int) -> None:
        self._refuse()
