"""ONNX Runtime backend: a decoder exported by ``edgeinfer convert --format onnx``, in the same engine.

Each sequence owns preallocated KV buffers ([1, kv_heads, capacity, head_dim] per layer) bound through
IOBinding as both ``past_key_values.*`` and ``present.*``: GroupQueryAttention writes the new positions
in place, so a decode step copies nothing. Capacity doubles (up to n_ctx) when a sequence outgrows it,
the only time the cache is copied. Truncation is a length change; prefix copies copy rows. Sequences
run one by one within an eval (batch 1, no padding), so outputs never depend on other requests.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..device import onnx_providers_for
from ..errors import BackendError, InvalidRequestError, KVCacheFullError, ModelLoadError
from ..onnx_check import load_checked
from .base import Backend, Capabilities, EvalItem
from .onnx_tokens import TokenizerJson

log = logging.getLogger("edgeinfer.onnx")
FIRST_CAPACITY = 256  # KV positions allocated for a new sequence; doubled as it grows
END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


def open_session(model_path: Path, device: str, n_threads: int | None) -> Any:
    """An onnxruntime session on ``device``'s provider (CPU last); says so in the log when onnxruntime
    fell back to the CPU (e.g. CUDA libraries missing)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings (e.g. about num_logits_to_keep, an input
    # that is meant to be optional) are noise in an app's console; a provider fallback is logged below
    if n_threads:
        options.intra_op_num_threads = n_threads
    providers = onnx_providers_for(device, ort.get_available_providers())
    try:
        session = ort.InferenceSession(str(model_path), options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelLoadError(f"onnxruntime could not load {model_path}: {exc}") from exc
    if session.get_providers()[0] != providers[0]:
        log.warning("onnxruntime could not start %s; running on %s", providers[0], session.get_providers()[0])
    return session


class OnnxBackend(Backend):
    """One ONNX decoder session holding up to ``max_sequences`` KV sequences."""

    name = "onnx"

    def __init__(self, path: str | os.PathLike[str], *, n_ctx: int | None = None,
                 n_threads: int | None = None, n_gpu_layers: int | None = None, max_sequences: int = 4,
                 device: str = "cpu", **_: Any) -> None:
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
        if device != "cpu":  # KV buffers are host memory bound in place; on a GPU provider onnxruntime
            # would copy them each step and GroupQueryAttention could not share them: not done yet
            log.warning("ONNX decoders run on the CPU provider (asked for %s): device-resident KV "
                        "buffers are not implemented; use the llama.cpp backend for GPU decoding", device)
        self.session = open_session(folder / "model.onnx", "cpu", n_threads)
        self.device = "cuda" if self.session.get_providers()[0].startswith("CUDA") else "cpu"
        past = next(i for i in self.session.get_inputs() if i.name == "past_key_values.0.key")
        self._keep_input = any(i.name == "num_logits_to_keep" for i in self.session.get_inputs())
        self.kv_dtype = np.float16 if "float16" in past.type else np.float32
        self.kv_shape = (1, int(meta["n_kv_heads"]), 0, int(meta["head_dim"]))
        self.tokens = TokenizerJson(folder / "tokenizer.json")
        self.ends = {int(t) for t in np.atleast_1d(meta.get("eos_token_id", []))}
        self.ends |= {i for t in END_OF_TURN if (i := self.tokens.id_of(t)) is not None}
        limit = int(meta.get("context_length") or 2048)
        n_ctx = min(n_ctx or 2048, limit)
        self._kv: dict[int, _SequenceKV] = {}
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
    def _seq(self, seq_id: int) -> _SequenceKV:
        if not 0 <= seq_id < self.caps.max_sequences:
            raise InvalidRequestError(f"sequence id {seq_id} out of range")
        if seq_id not in self._kv:
            self._kv[seq_id] = _SequenceKV(self.session, self.kv_shape, self.kv_dtype, self.n_layers)
        return self._kv[seq_id]

    def eval(self, items: Sequence[EvalItem]) -> list[int]:
        rows: list[np.ndarray] = []
        for item in items:
            kv = self._seq(item.seq_id)
            start, n = kv.length, len(item.tokens)
            if start + n > self.caps.n_ctx:
                raise KVCacheFullError(
                    f"sequence {item.seq_id} would hold {start + n} tokens; the context is {self.caps.n_ctx}"
                )
            kv.reserve(start + n, self.caps.n_ctx)
            binding = kv.binding
            binding.bind_cpu_input("input_ids", np.asarray([item.tokens], dtype=np.int64))
            binding.bind_cpu_input("attention_mask", np.ones((1, start + n), dtype=np.int64))
            binding.bind_cpu_input("position_ids", np.arange(start, start + n, dtype=np.int64)[None, :])
            kept = n
            if self._keep_input:  # only the rows the engine reads
                kept = item.n_outputs
                binding.bind_cpu_input("num_logits_to_keep", np.asarray(kept, dtype=np.int64))
            logits = np.empty((1, kept, self.caps.n_vocab), dtype=np.float32)  # written in place by the run
            binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
            try:
                self.session.run_with_iobinding(binding)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
                raise BackendError(f"onnxruntime failed to run the model: {exc}") from exc
            kv.length = start + n
            rows.extend(logits[0, kept - item.n_outputs:])
        self._rows = rows
        return list(range(len(rows)))

    def logits(self, row: int) -> np.ndarray:
        return self._rows[row]

    # --- KV memory
    def seq_length(self, seq_id: int) -> int:
        return self._seq(seq_id).length

    def kv_truncate(self, seq_id: int, n: int) -> None:
        kv = self._seq(seq_id)
        kv.length = min(kv.length, n)

    def kv_copy(self, src: int, dst: int, n: int) -> None:
        source, target = self._seq(src), self._seq(dst)
        n = min(n, source.length)
        target.reserve(n, self.caps.n_ctx)
        for a, b in zip(source.arrays, target.arrays, strict=True):
            b[:, :, :n] = a[:, :, :n]
        target.length = n

    def state_save(self, seq_id: int) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, *self._seq(seq_id).filled())
        return buffer.getvalue()

    def state_load(self, seq_id: int, data: bytes, n_tokens: int) -> None:
        kv = self._seq(seq_id)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                state = [arrays[f"arr_{i}"] for i in range(2 * self.n_layers)]
        except (OSError, ValueError, KeyError) as exc:
            raise BackendError(f"not a KV state of this model ({exc})") from exc
        expected = (*self.kv_shape[:2], n_tokens, self.kv_shape[3])
        if any(a.shape != expected for a in state) or n_tokens > self.caps.n_ctx:
            raise BackendError("the KV state does not match this model or its token count")
        kv.reserve(n_tokens, self.caps.n_ctx)
        for a, b in zip(state, kv.arrays, strict=True):
            b[:, :, :n_tokens] = a
        kv.length = n_tokens

    def close(self) -> None:
        self._kv.clear()
        self._rows = []


class _SequenceKV:
    """One sequence's KV buffers, bound as both past and present, and its IOBinding."""

    def __init__(self, session: Any, shape: tuple[int, int, int, int], dtype: type, n_layers: int) -> None:
        self.session, self.shape, self.dtype, self.n_layers = session, shape, dtype, n_layers
        self.length = 0
        self.arrays: list[np.ndarray] = []
        self.binding = session.io_binding()

    @property
    def capacity(self) -> int:
        return self.arrays[0].shape[2] if self.arrays else 0

    def reserve(self, n: int, limit: int) -> None:
        """Room for ``n`` positions: reallocate (doubling, at most ``limit``) and rebind if needed."""
        if n <= self.capacity:
            return
        import onnxruntime as ort

        capacity = max(self.capacity, FIRST_CAPACITY // 2)
        while capacity < n:
            capacity *= 2
        capacity = max(min(capacity, limit), n)
        batch, heads, _, head_dim = self.shape
        arrays = [np.zeros((batch, heads, capacity, head_dim), dtype=self.dtype)
                  for _ in range(2 * self.n_layers)]
        for old, new in zip(self.arrays, arrays, strict=False):
            new[:, :, : self.length] = old[:, :, : self.length]
        self.arrays = arrays
        for k, array in enumerate(arrays):
            layer, kind = divmod(k, 2)
            name = ("key", "value")[kind]
            value = ort.OrtValue.ortvalue_from_numpy(array)  # shares the numpy buffer
            self.binding.bind_ortvalue_input(f"past_key_values.{layer}.{name}", value)
            self.binding.bind_ortvalue_output(f"present.{layer}.{name}", value)

    def filled(self) -> list[np.ndarray]:
        """Copies of the valid positions, [1, kv_heads, length, head_dim] each."""
        return [np.ascontiguousarray(a[:, :, : self.length]) for a in self.arrays]
