"""ONNX Runtime backend: a decoder exported by ``edgeinfer convert --format onnx``, in the same engine.

Each sequence's KV cache is the ``present.*`` arrays of its last step, fed back as
``past_key_values.*`` on the next: nothing is copied by us between steps (the graph's own Concat
writes the new position). Truncation and prefix copies slice those arrays. Sequences are run one
by one within an eval (batch 1, no padding), so outputs never depend on other requests.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, InvalidRequestError, KVCacheFullError, ModelLoadError
from ..onnx_check import load_checked
from .base import Backend, Capabilities, EvalItem
from .onnx_tokens import TokenizerJson

END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>")
PROVIDERS = {"cuda": "CUDAExecutionProvider", "coreml": "CoreMLExecutionProvider",
             "metal": "CoreMLExecutionProvider"}


def providers_for(device: str, available: Sequence[str]) -> list[str]:
    """The execution providers to ask for, best first, always ending with the CPU one."""
    wanted = PROVIDERS.get(device.split(":")[0], "")
    return [p for p in (wanted, "CPUExecutionProvider") if p and p in available] or ["CPUExecutionProvider"]


class OnnxBackend(Backend):
    """One ONNX decoder session holding up to ``max_sequences`` KV sequences."""

    name = "onnx"

    def __init__(self, path: str | os.PathLike[str], *, n_ctx: int | None = None,
                 n_threads: int | None = None, n_gpu_layers: int | None = None, max_sequences: int = 4,
                 device: str = "cpu", **_: Any) -> None:
        import onnxruntime as ort

        folder = Path(path)
        try:
            meta = json.loads((folder / "edgeinfer.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{folder} has no readable edgeinfer.json; convert the model again") from exc
        self.meta = meta
        self.n_layers = int(meta["n_layers"])
        layers = [(i, kv) for i in range(self.n_layers) for kv in ("key", "value")]
        self._outputs = ["logits", *(f"present.{i}.{kv}" for i, kv in layers)]
        load_checked(folder, n_layers=self.n_layers)  # external data inside the folder, I/O names right
        options = ort.SessionOptions()
        if n_threads:
            options.intra_op_num_threads = n_threads
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options,
                                            providers=providers_for(device, ort.get_available_providers()))
        self.device = "cuda" if self.session.get_providers()[0].startswith("CUDA") else "cpu"
        past = next(i for i in self.session.get_inputs() if i.name == "past_key_values.0.key")
        self.kv_dtype = np.float16 if "float16" in past.type else np.float32
        self.kv_shape = (1, int(meta["n_kv_heads"]), 0, int(meta["head_dim"]))
        self.tokens = TokenizerJson(folder / "tokenizer.json")
        self.ends = {int(t) for t in np.atleast_1d(meta.get("eos_token_id", []))}
        self.ends |= {i for t in END_OF_TURN if (i := self.tokens.id_of(t)) is not None}
        limit = int(meta.get("context_length") or 2048)
        n_ctx = min(n_ctx or 2048, limit)
        self._kv: dict[int, list[np.ndarray]] = {}
        self._rows: list[np.ndarray] = []
        bos = meta.get("bos_token_id")
        self.caps = Capabilities(
            n_ctx=n_ctx, n_vocab=int(meta["vocab_size"]), max_sequences=max_sequences, n_batch=n_ctx,
            bos_token=self._text(bos), eos_token=self._text(meta.get("eos_token_id")),
            chat_template=meta.get("chat_template"), architecture=str(meta.get("arch", "")),
            quantization=str(meta.get("quantization", "")), exact_verify=False,
        )

    def _text(self, token: Any) -> str:
        if isinstance(token, list):
            token = token[0] if token else None
        if token is None:
            return ""
        return self.tokens.tok.id_to_token(int(token)) or ""

    # --- text <-> tokens
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokens.encode(text, add_special=add_special)

    def token_bytes(self, token: int) -> bytes:
        return self.tokens.token_bytes(token)

    def is_end(self, token: int) -> bool:
        return token in self.ends

    # --- compute
    def _past(self, seq_id: int) -> list[np.ndarray]:
        if not 0 <= seq_id < self.caps.max_sequences:
            raise InvalidRequestError(f"sequence id {seq_id} out of range")
        if seq_id not in self._kv:
            empty = np.zeros(self.kv_shape, dtype=self.kv_dtype)
            self._kv[seq_id] = [empty] * (2 * self.n_layers)
        return self._kv[seq_id]

    def eval(self, items: Sequence[EvalItem]) -> list[int]:
        rows: list[np.ndarray] = []
        for item in items:
            past = self._past(item.seq_id)
            start, n = past[0].shape[2], len(item.tokens)
            if start + n > self.caps.n_ctx:
                raise KVCacheFullError(
                    f"sequence {item.seq_id} would hold {start + n} tokens; the context is {self.caps.n_ctx}"
                )
            feeds: dict[str, np.ndarray] = {
                "input_ids": np.asarray([item.tokens], dtype=np.int64),
                "attention_mask": np.ones((1, start + n), dtype=np.int64),
                "position_ids": np.arange(start, start + n, dtype=np.int64)[None, :],
            }
            for layer in range(self.n_layers):
                feeds[f"past_key_values.{layer}.key"] = past[2 * layer]
                feeds[f"past_key_values.{layer}.value"] = past[2 * layer + 1]
            try:
                logits, *present = self.session.run(self._outputs, feeds)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
                raise BackendError(f"onnxruntime failed to run the model: {exc}") from exc
            self._kv[item.seq_id] = present
            rows.extend(logits[0, n - item.n_outputs:])
        self._rows = rows
        return list(range(len(rows)))

    def logits(self, row: int) -> np.ndarray:
        return self._rows[row]

    # --- KV memory
    def seq_length(self, seq_id: int) -> int:
        return self._past(seq_id)[0].shape[2]

    def kv_truncate(self, seq_id: int, n: int) -> None:
        past = self._past(seq_id)
        if n < past[0].shape[2]:
            self._kv[seq_id] = [np.ascontiguousarray(a[:, :, :n]) for a in past]

    def kv_copy(self, src: int, dst: int, n: int) -> None:
        self._past(dst)
        self._kv[dst] = [np.ascontiguousarray(a[:, :, :n]) for a in self._past(src)]

    def state_save(self, seq_id: int) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, *self._past(seq_id))
        return buffer.getvalue()

    def state_load(self, seq_id: int, data: bytes, n_tokens: int) -> None:
        self._past(seq_id)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                state = [arrays[f"arr_{i}"] for i in range(2 * self.n_layers)]
        except (OSError, ValueError, KeyError) as exc:
            raise BackendError(f"not a KV state of this model ({exc})") from exc
        if any(a.shape[2] != n_tokens or a.shape[:2] != self.kv_shape[:2] for a in state):
            raise BackendError("the KV state does not match this model or its token count")
        self._kv[seq_id] = [a.astype(self.kv_dtype, copy=False) for a in state]

    def close(self) -> None:
        self._kv.clear()
        self._rows = []
