"""ONNX Runtime backend: a decoder exported by ``edgeinfer convert --format onnx``, in the same engine.

KV memory is one pool per layer and kind, ``[slots, kv_heads, capacity, head_dim]``: a sequence is a slot
(its id), and a range of adjacent slots ``pool[lo:hi]`` is one contiguous block, bound through IOBinding
as both ``past_key_values.*`` and ``present.*`` of a batch of ``hi - lo`` rows. GroupQueryAttention writes
the new positions in place and reads each row up to its own length (``seqlens_k`` from a right-padded
attention mask), so a decode step copies nothing and rows of different lengths share one run.

Batching: the one-token items of an eval (decode steps) run together, one session run per range of
nearby slots; a slot between two of them that the eval does not use rides along as a padding row (it
writes one position past its own length, which nothing reads). Items of several tokens run alone:
GroupQueryAttention refuses a batch of several new tokens per row over a past. Rows are computed alike
whatever the batch (measured bit for bit: fp32 MatMul/Gemm with prepacked weights, MatMulNBits at
accuracy_level 4, int8 activations); MatMulNBits at a lower accuracy level dequantizes to an fp32 GEMM
for several rows but not for one (logits differ by ~6e-5), so such a model runs its items one by one
unless ``batch=True``. ``caps.exact_batch`` says which.

Growth: the pool has as many slots as the sequences used so far (``grow_sequences``), and one capacity,
doubled (up to n_ctx) when a sequence outgrows it; either growth copies the held positions into a new
pool, the only copies. Truncation is a length change; prefix copies copy positions between slots.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..device import onnx_providers_for
from ..errors import BackendError, InvalidRequestError, KVCacheFullError, ModelLoadError
from ..memory import DEFAULT_N_CTX
from ..onnx_check import load_checked
from .base import Backend, Capabilities, EvalInterrupted, EvalItem
from .onnx_tokens import TokenizerJson

log = logging.getLogger("edgeinfer.onnx")
FIRST_CAPACITY = 256  # KV positions per slot at first; doubled as the longest sequence grows
# slots an eval does not use that may pad a batch between two that it does: a padding row costs a
# row of compute, a second session run its whole fixed cost (several rows' worth for a small model)
MAX_GAP = 2
EXACT_ACCURACY_LEVEL = 4  # MatMulNBits computing with int8 activations: rows alike for any batch
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


def rows_computed_alike(model: Any) -> bool:
    """Whether the graph's kernels give a batch row exactly the outputs it gets alone: false when a
    MatMulNBits computes below accuracy level 4 (its one-row kernel and its several-row path, a
    dequantized fp32 GEMM, sum in different orders)."""
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            level = next((a.i for a in node.attribute if a.name == "accuracy_level"), 0)
            if level != EXACT_ACCURACY_LEVEL:
                return False
    return True


def plan_runs(items: Sequence[EvalItem], can_pad: Callable[[int], bool],
              max_gap: int = MAX_GAP) -> list[list[int]]:
    """The session runs of an eval, as lists of item indexes: one-token items in runs of nearby slots
    (sorted by slot; a gap of at most ``max_gap`` slots that ``can_pad`` is filled with padding rows),
    every other item alone. When a sequence has two items they depend on each other: all run alone,
    in order."""
    seqs = [item.seq_id for item in items]
    if len(set(seqs)) < len(seqs):
        return [[i] for i in range(len(items))]
    runs: list[list[int]] = []
    for i in sorted((i for i, item in enumerate(items) if len(item.tokens) == 1), key=seqs.__getitem__):
        if runs and _joinable(seqs[runs[-1][-1]], seqs[i], can_pad, max_gap):
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs + [[i] for i, item in enumerate(items) if len(item.tokens) != 1]


def _joinable(last: int, seq: int, can_pad: Callable[[int], bool], max_gap: int) -> bool:
    """Whether slot ``seq`` can join a run ending at slot ``last`` (padding the slots between)."""
    return seq - last - 1 <= max_gap and all(can_pad(s) for s in range(last + 1, seq))


class OnnxBackend(Backend):
    """One ONNX decoder session holding up to ``max_sequences`` KV sequences.

    ``batch``: run the one-token items of an eval as one batch (None: where rows are computed exactly
    as alone, see ``rows_computed_alike``; False: every item in a run of its own)."""

    name = "onnx"

    def __init__(self, path: str | os.PathLike[str], *, n_ctx: int | None = None,
                 n_threads: int | None = None, n_gpu_layers: int | None = None, max_sequences: int = 4,
                 device: str = "cpu", batch: bool | None = None, **_: Any) -> None:
        folder = Path(path)
        try:
            meta = json.loads((folder / "edgeinfer.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{folder} has no readable edgeinfer.json; convert the model again") from exc
        self.meta = meta
        self.n_layers = int(meta["n_layers"])
        graph = load_checked(folder, n_layers=self.n_layers)  # external data inside the folder, I/O names
        exact = rows_computed_alike(graph)
        del graph
        self.batching = exact if batch is None else bool(batch)
        if device != "cpu":  # KV buffers are host memory bound in place; on a GPU provider onnxruntime
            # would copy them each step and GroupQueryAttention could not share them: not done yet
            log.warning("ONNX decoders run on the CPU provider (asked for %s): device-resident KV "
                        "buffers are not implemented; use the llama.cpp backend for GPU decoding", device)
        self.session = open_session(folder / "model.onnx", "cpu", n_threads)
        self.device = "cuda" if self.session.get_providers()[0].startswith("CUDA") else "cpu"
        past = next(i for i in self.session.get_inputs() if i.name == "past_key_values.0.key")
        self._keep_input = any(i.name == "num_logits_to_keep" for i in self.session.get_inputs())
        kv_dtype = np.float16 if "float16" in past.type else np.float32
        self.kv_shape = (1, int(meta["n_kv_heads"]), 0, int(meta["head_dim"]))
        self.tokens = TokenizerJson(folder / "tokenizer.json")
        self.ends = {int(t) for t in np.atleast_1d(meta.get("eos_token_id", []))}
        self.ends |= {i for t in END_OF_TURN if (i := self.tokens.id_of(t)) is not None}
        limit = int(meta.get("context_length") or DEFAULT_N_CTX)
        n_ctx = min(n_ctx or DEFAULT_N_CTX, limit)  # as llama.cpp's default; KV grows only as it is used
        self._pool = _KVPool(self.session, self.kv_shape[1], self.kv_shape[3], kv_dtype, self.n_layers,
                             max_sequences, n_ctx)
        self._pool.reserve(1, 1)  # one sequence of FIRST_CAPACITY positions (at most n_ctx)
        self._rows: list[np.ndarray] = []
        self._run_options: Any = None  # an interruptible eval's RunOptions (interrupt() sets terminate)
        self.session_runs = 0  # onnxruntime runs so far (a batched eval makes one per range of slots)
        self.padding_rows = 0  # rows run for slots the eval did not use (gaps inside a batch)
        bos = meta.get("bos_token_id")
        self.caps = Capabilities(
            n_ctx=n_ctx, n_vocab=int(meta["vocab_size"]), max_sequences=max_sequences, n_batch=n_ctx,
            bos_token=self._text(bos), eos_token=self._text(meta.get("eos_token_id")),
            chat_template=meta.get("chat_template"), architecture=str(meta.get("arch", "")),
            quantization=str(meta.get("quantization", "")), exact_verify=False,
            exact_batch=exact or not self.batching,
            # rows computed alike: a prefill split anywhere gives the same KV, as long as no piece is a
            # single token, so prefixes are reused to the token (measured on SmolLM2's GGUF weights and
            # int4). A one-token run differs in GroupQueryAttention alone: for one query row MLAS takes
            # its one-row kernel (multiply, then add) for probabilities x V, for several its FMA kernel
            # (benchmarks/onnx_one_token.py); hence no exact draft checks (exact_verify=False)
            **({"reuse_align": 1, "exact_min_batch": 2} if exact else {}),
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
    def _check_id(self, seq_id: int) -> int:
        if not 0 <= seq_id < self.caps.max_sequences:
            raise InvalidRequestError(f"sequence id {seq_id} out of range")
        return seq_id

    def _lengths_after(self, items: Sequence[EvalItem]) -> dict[int, int]:
        """The length each sequence will have after the eval; refuses it before anything runs: bad
        ids, empty items, or a sequence past n_ctx (KVCacheFullError, which the engine answers by
        evicting or failing the request)."""
        ends: dict[int, int] = {}
        for item in items:
            seq = self._check_id(item.seq_id)
            if not item.tokens or not 1 <= item.n_outputs <= len(item.tokens):
                raise InvalidRequestError("each eval item needs tokens and n_outputs in 1..len(tokens)")
            ends[seq] = ends.get(seq, self._pool.lengths[seq]) + len(item.tokens)
            if ends[seq] > self.caps.n_ctx:
                raise KVCacheFullError(
                    f"sequence {seq} would hold {ends[seq]} tokens; the context is {self.caps.n_ctx}"
                )
        return ends

    def eval(self, items: Sequence[EvalItem]) -> list[int]:
        ends = self._lengths_after(items)
        if not ends:
            self._rows = []
            return []
        pool = self._pool
        pool.reserve(max(ends) + 1, max(ends.values()))
        used = set(ends)
        if self.batching:
            runs = plan_runs(items, lambda s: s not in used and pool.lengths[s] < pool.capacity)
        else:
            runs = [[i] for i in range(len(items))]
        rows: list[list[np.ndarray]] = [[] for _ in items]
        for run in runs:
            if len(items[run[0]].tokens) > 1:
                rows[run[0]] = self._run_alone(items[run[0]])
                continue
            for i, row in zip(run, self._run_batch([items[i] for i in run]), strict=True):
                rows[i] = [row]
        self._rows = [row for item_rows in rows for row in item_rows]
        return list(range(len(self._rows)))

    def _run_alone(self, item: EvalItem) -> list[np.ndarray]:
        """One item in a run of its own (a prefill, or tokens with a draft); its last n_outputs rows."""
        n = len(item.tokens)
        kept = item.n_outputs if self._keep_input else n  # only the rows the engine reads, if it can say
        logits = self._run(item.seq_id, [list(item.tokens)], kept)
        self._pool.lengths[item.seq_id] += n
        return list(logits[0, kept - item.n_outputs:])

    def _run_batch(self, items: Sequence[EvalItem]) -> list[np.ndarray]:
        """One-token items (sorted by slot) in one run over their slots, gaps padded; a row each."""
        lo, hi = items[0].seq_id, items[-1].seq_id + 1
        token_of = {item.seq_id: item.tokens[0] for item in items}
        tokens = [[token_of.get(s, 0)] for s in range(lo, hi)]  # a padding row's token does not matter
        self.padding_rows += hi - lo - len(items)
        logits = self._run(lo, tokens, 1)
        for item in items:
            self._pool.lengths[item.seq_id] += 1
        return [logits[item.seq_id - lo, 0] for item in items]

    def _run(self, lo: int, tokens: list[list[int]], kept: int) -> np.ndarray:
        """One session run over slots lo..lo+len(tokens)-1, each row appending its tokens (as many per
        row) after its own length; the logits of each row's last ``kept`` positions, [rows, kept, vocab]."""
        pool = self._pool
        rows, n = len(tokens), len(tokens[0])
        ends = np.asarray(pool.lengths[lo:lo + rows], dtype=np.int64) + n
        ids = np.asarray(tokens, dtype=np.int64)
        mask = (np.arange(ends.max()) < ends[:, None]).astype(np.int64)  # right-padded: row r holds ends[r]
        positions = ends[:, None] - n + np.arange(n)
        binding = pool.binding(lo, lo + rows)
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_cpu_input("position_ids", positions)
        if self._keep_input:
            binding.bind_cpu_input("num_logits_to_keep", np.asarray(kept, dtype=np.int64))
        logits = np.empty((rows, kept, self.caps.n_vocab), dtype=np.float32)  # written in place by the run
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        options = self._run_options
        try:
            self.session.run_with_iobinding(binding, options)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            if options is not None and options.terminate:  # it wrote only past the row's length
                raise EvalInterrupted("the eval was interrupted for a request") from None
            raise BackendError(f"onnxruntime failed to run the model: {exc}") from exc
        self.session_runs += 1
        return logits

    def logits(self, row: int) -> np.ndarray:
        return self._rows[row]

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        # onnxruntime checks RunOptions.terminate between two nodes of the graph
        import onnxruntime as ort

        self._run_options = ort.RunOptions()
        try:
            yield
        finally:
            self._run_options = None

    def interrupt(self) -> None:
        options = self._run_options
        if options is not None:
            options.terminate = True

    # --- KV memory
    @property
    def sequences_allocated(self) -> int:
        return self._pool.slots

    def grow_sequences(self, n: int) -> int:
        self._pool.reserve(min(n, self.caps.max_sequences), 0)
        return self._pool.slots

    def kv_bytes_per_token(self) -> int:
        return self._pool.bytes_per_position

    def kv_bytes_allocated(self) -> int:
        return self._pool.nbytes

    def seq_length(self, seq_id: int) -> int:
        return self._pool.lengths[self._check_id(seq_id)]

    def kv_truncate(self, seq_id: int, n: int) -> None:
        lengths = self._pool.lengths
        lengths[self._check_id(seq_id)] = max(0, min(lengths[seq_id], n))

    def kv_copy(self, src: int, dst: int, n: int) -> None:
        pool = self._pool
        n = max(0, min(n, pool.lengths[self._check_id(src)]))
        pool.reserve(self._check_id(dst) + 1, n)
        for array in pool.arrays:
            array[dst, :, :n] = array[src, :, :n]
        pool.lengths[dst] = n

    def state_save(self, seq_id: int) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, *self._pool.filled(self._check_id(seq_id)))
        return buffer.getvalue()

    def state_load(self, seq_id: int, data: bytes, n_tokens: int) -> None:
        self._check_id(seq_id)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                state = [arrays[f"arr_{i}"] for i in range(2 * self.n_layers)]
        except (OSError, ValueError, KeyError) as exc:
            raise BackendError(f"not a KV state of this model ({exc})") from exc
        expected = (*self.kv_shape[:2], n_tokens, self.kv_shape[3])
        if any(a.shape != expected for a in state) or n_tokens > self.caps.n_ctx:
            raise BackendError("the KV state does not match this model or its token count")
        pool = self._pool
        pool.reserve(seq_id + 1, n_tokens)
        for a, b in zip(state, pool.arrays, strict=True):
            b[seq_id, :, :n_tokens] = a[0]
        pool.lengths[seq_id] = n_tokens

    def close(self) -> None:
        self._pool.release()
        self._rows = []


class _KVPool:
    """Every sequence's KV: per layer and kind one array [slots, kv_heads, capacity, head_dim], a length
    per sequence, and the IOBindings of slot ranges (past and present bound to the same block)."""

    def __init__(self, session: Any, heads: int, head_dim: int, dtype: type, n_layers: int, max_slots: int,
                 limit: int) -> None:
        self.session, self.heads, self.head_dim, self.dtype = session, heads, head_dim, dtype
        self.n_layers, self.limit = n_layers, limit
        self.lengths = [0] * max_slots  # positions each sequence holds (past them: stale or padding)
        self.arrays: list[np.ndarray] = []
        self._bindings: dict[tuple[int, int], Any] = {}

    @property
    def slots(self) -> int:
        return self.arrays[0].shape[0] if self.arrays else 0

    @property
    def capacity(self) -> int:
        return self.arrays[0].shape[2] if self.arrays else 0

    @property
    def bytes_per_position(self) -> int:
        return 2 * self.n_layers * self.heads * self.head_dim * np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return self.slots * self.capacity * self.bytes_per_position

    def reserve(self, slots: int, positions: int) -> None:
        """Room for ``slots`` sequences of ``positions`` each: a new pool (more slots, capacity doubled
        up to the limit) holding what the old one held, if this one is too small."""
        slots = max(slots, self.slots)
        if slots <= self.slots and positions <= self.capacity:
            return
        capacity = self.capacity or FIRST_CAPACITY
        while capacity < positions:
            capacity *= 2
        capacity = max(min(capacity, self.limit), positions)
        held = max(self.lengths[: self.slots], default=0)
        arrays = [np.zeros((slots, self.heads, capacity, self.head_dim), dtype=self.dtype)
                  for _ in range(2 * self.n_layers)]
        for old, new in zip(self.arrays, arrays, strict=False):
            new[: old.shape[0], :, :held] = old[:, :, :held]
        self.arrays = arrays
        self._bindings.clear()  # they point into the old pool

    def binding(self, lo: int, hi: int) -> Any:
        """The IOBinding of slots lo..hi-1 (made once per pool): each layer's block ``pool[lo:hi]``, a
        contiguous view, bound as both past and present, so the run writes the new positions in place."""
        binding = self._bindings.get((lo, hi))
        if binding is None:
            import onnxruntime as ort

            binding = self.session.io_binding()
            for k, array in enumerate(self.arrays):
                layer, kind = divmod(k, 2)
                name = ("key", "value")[kind]
                value = ort.OrtValue.ortvalue_from_numpy(array[lo:hi])  # shares the numpy buffer
                binding.bind_ortvalue_input(f"past_key_values.{layer}.{name}", value)
                binding.bind_ortvalue_output(f"present.{layer}.{name}", value)
            self._bindings[(lo, hi)] = binding
        return binding

    def filled(self, seq: int) -> list[np.ndarray]:
        """Copies of one sequence's valid positions, [1, kv_heads, length, head_dim] each."""
        n = self.lengths[seq]
        return [np.ascontiguousarray(a[seq : seq + 1, :, :n]) for a in self.arrays]

    def release(self) -> None:
        self._bindings.clear()
        self.arrays = []
        self.lengths = [0] * len(self.lengths)
