"""llama.cpp backend on llama-cpp-python's low-level API: llama_batch with several sequences,
per-sequence KV memory and state, and llama.cpp's native sampler chain."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import platform
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import llama_cpp as ll
import numpy as np

from ..errors import (
    BackendError,
    ContextOverflowError,
    EmptyPromptError,
    InvalidRequestError,
    KVCacheFullError,
    ModelLoadError,
)
from ..gguf_check import diagnose_gguf, ensure_gguf_checked, require_gguf_magic
from ..memory import footprint_of, output_rows
from ..sampling import SamplingParams
from . import llama_state
from .base import (
    EXACT_MIN_BATCH,
    Backend,
    Capabilities,
    EvalInterrupted,
    EvalItem,
    LogitsSampler,
    prefill_cuts,
)

log = logging.getLogger("edgeinfer.llama_cpp")

_init_lock = threading.Lock()
_initialized = False
# Recent llama.cpp error lines, quoted in load errors (llama.cpp reports load failures only there).
_recent_errors: collections.deque[str] = collections.deque(maxlen=20)
_FTYPE_NAMES = {
    getattr(ll, k): k.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_")
    for k in dir(ll) if k.startswith("LLAMA_FTYPE_") and "GUESSED" not in k
}
# ggml's CPU flash attention runs batches of 64+ query rows through a tiled kernel and shorter
# ones row by row (measured: a prefill split leaving 63 rows differs in the last bits, 64 does not)
FLASH_TILE_ROWS = 64
_NO_ABORT = ll.ggml_abort_callback()  # a NULL callback: evals run to their end
# Rows one CPU eval computes bit for bit as a one-row eval does, by the ggml type of a model's matrices
# (0: any number). Measured on x86 AVX-512 with llama.cpp 0.3.36 (one decode step of 2..16 sequences
# against each alone): the legacy quants run the same dot product per row whatever the batch; K-quant
# matrices take another path from 8 rows on; ggml's tinyBLAS takes F32, F16 and BF16 matrices (and the
# IQ types) from 2 rows on. A type not listed counts as 1. The GPU backends are not measured here.
EXACT_ROWS_BY_TYPE: dict[str, int] = {
    "Q4_0": 0, "Q4_1": 0, "Q5_0": 0, "Q5_1": 0, "Q8_0": 0,
    "Q2_K": 7, "Q3_K": 7, "Q4_K": 7, "Q5_K": 7, "Q6_K": 7,
}
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.DEBUG, 4: logging.INFO}
# GGUF pooling types that make a model an embedding model (NONE: per-token; RANK: a reranker)
EMBEDDING_POOLING = {"1": "mean", "2": "cls", "3": "last"}
EMBED_SEQUENCES = 64  # texts one encoder pass may carry (they share its n_ctx-token batch)
EMBED_MAX_CTX = 8192  # default window of long-context embedding models (one pass holds n_ctx tokens)
# KV cache element types a context may use (llama.cpp quantizes V only with flash attention)
KV_TYPES = {"f16": ll.GGML_TYPE_F16, "q8_0": ll.GGML_TYPE_Q8_0, "q4_0": ll.GGML_TYPE_Q4_0}


def exact_rows(matrix_types: str) -> int:
    """The rows an eval computes exactly as alone for a model whose matrices have these ggml types."""
    limits = [EXACT_ROWS_BY_TYPE.get(t, 1) for t in matrix_types.split(",") if t]
    bounded = [n for n in limits if n]
    return min(bounded) if bounded else 0


def _on_llama_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    message = (text or b"").decode(errors="replace").rstrip("\n")
    if not message:
        return
    if level == 4:
        _recent_errors.append(message)
    log.log(_LEVELS.get(level, logging.DEBUG), "%s", message)


_log_callback = None  # a live reference: a collected ctypes callback crashes the process


def ensure_initialized() -> None:
    """Initialise llama.cpp once and route its logging to Python's ``logging``."""
    global _initialized, _log_callback
    with _init_lock:
        if _initialized:
            return
        _log_callback = ll.llama_log_callback(_on_llama_log)
        ll.llama_log_set(_log_callback, ctypes.c_void_p(0))
        ll.llama_backend_init()
        _initialized = True


class NativeSampler:
    """llama.cpp's sampler chain: penalties -> top-k -> top-p -> min-p -> temperature -> dist."""

    def __init__(self, backend: LlamaCppBackend, params: SamplingParams) -> None:
        self._ll = ll
        self._backend = backend  # its context is re-made when sequences are added: read it per call
        self._chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        add = lambda s: ll.llama_sampler_chain_add(self._chain, s)  # noqa: E731
        if params.repeat_penalty != 1.0:
            add(ll.llama_sampler_init_penalties(
                backend.caps.n_vocab, params.repeat_last_n, params.repeat_penalty, 0.0, 0.0))
        if params.greedy:
            add(ll.llama_sampler_init_greedy())
            return
        if params.top_k:
            add(ll.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(ll.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0:
            add(ll.llama_sampler_init_min_p(params.min_p, 1))
        add(ll.llama_sampler_init_temp(params.temperature))
        seed = ll.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        add(ll.llama_sampler_init_dist(seed))

    def accept(self, token: int) -> None:
        self._ll.llama_sampler_accept(self._chain, token)

    def sample(self, row: int) -> int:
        # llama_sampler_sample also accepts the token into the chain (penalty history).
        return self._ll.llama_sampler_sample(self._chain, self._backend._ctx, row)

    def close(self) -> None:
        if self._chain:
            self._ll.llama_sampler_free(self._chain)
            self._chain = None


def reuse_align(device: str) -> int:
    """Prompt split granularity at which llama.cpp's KV is bit-identical to a fresh prefill.

    Measured on x86-64 (AVX2/AVX512 builds, Q4_1 and Q4_K_M): exact at any split for Q4_1 and at
    multiples of 4 for Q4_K_M (4-row tiles). Elsewhere (ARM, GPUs) it is not measured: 16 covers
    the 2-, 4- and 8-row tiles of the kernels we know of.
    """
    return 4 if device == "cpu" and platform.machine().lower() in ("x86_64", "amd64") else 16


class ArgmaxSampler:
    """Greedy without penalties: argmax over the logits row, read in place.

    About 6x cheaper per token than llama.cpp's greedy sampler, which first copies the whole
    vocabulary into a candidate array; the pick is the same (the first maximum).
    """

    def __init__(self, backend: LlamaCppBackend) -> None:
        self._logits = backend.logits

    def accept(self, token: int) -> None:
        pass

    def sample(self, row: int) -> int:
        return int(self._logits(row).argmax())

    def close(self) -> None:
        pass


class LlamaCppBackend(Backend):
    """One llama.cpp model and context holding up to ``max_sequences`` KV sequences."""

    name = "llama.cpp"

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int | None = None,
        n_batch: int = 512,
        n_threads: int = 0,
        n_gpu_layers: int = 0,
        max_sequences: int = 4,
        device: str = "cpu",
        flash_attn: bool = False,
        kv_unified: bool = False,
        repack: bool = False,
        kv_type: str = "f16",
        initial_sequences: int = 1,
        kv_budget: int | None = None,
        n_outputs: int | None = None,
    ) -> None:
        ensure_initialized()
        self._ll = ll
        self._model = self._ctx = self._batch = self._mem = None
        # ggml's CPU graph asks this between nodes while an interruptible eval runs (a list, so the
        # callback holds no reference to the backend)
        self._stop = [False]
        self._abort_check = ll.ggml_abort_callback(lambda _data, stop=self._stop: stop[0])
        self._allocated = 0
        self.device = device
        path = Path(path)
        require_gguf_magic(path)
        ensure_gguf_checked(path)  # what llama.cpp would abort the process on is refused here first

        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        self._cpu_only = n_gpu_layers == 0
        if self._cpu_only:  # an empty device list: a GPU build then keeps no weights on a GPU, runs no
            # prefill matmuls there (llama.cpp's op offload) and takes none of its memory
            self._no_devices = (ctypes.c_void_p * 1)()
            mparams.devices = ctypes.addressof(self._no_devices)
        # Repacked CPU weights run other kernels for 1 row than for tiles of 4+, so a token's
        # logits would depend on how many tokens share its batch. Off (the default), a row's
        # numerics never depend on the batch: batched and speculative decoding give exactly the
        # unbatched output (measured: no speed cost for Q4_1/Q4_K_M here; Q4_0 gains from repack).
        self.repack_refused = ""  # why ``repack=True`` was not honoured here, if it was not
        if repack and n_gpu_layers == 0:
            from .extra_buffers import extra_buffers_usable

            repack, self.repack_refused = extra_buffers_usable(path)
            if not repack:
                log.warning("%s: loading without repacking: %s", path.name, self.repack_refused)
        mparams.use_extra_bufts = repack
        _recent_errors.clear()
        model = ll.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise diagnose_gguf(path, list(_recent_errors))
        self._model = model
        self._vocab = ll.llama_model_get_vocab(model)
        n_ctx_train = ll.llama_model_n_ctx_train(model)
        arch = self.metadata("general.architecture")
        self._pooling = EMBEDDING_POOLING.get(self.metadata(f"{arch}.pooling_type"))
        embedding = self._pooling is not None
        if not embedding and self.metadata(f"{arch}.attention.causal") == "false":
            self.close()
            raise ModelLoadError(
                f"{path.name} is an encoder without a pooling type (per-token vectors only), which "
                "edgeinfer cannot serve: convert it from a sentence-transformers folder (modules.json "
                "with a Pooling module) so the GGUF records MEAN or CLS pooling"
            )
        if embedding:  # absolute position embeddings end at n_ctx_train; texts are not split
            max_sequences = EMBED_SEQUENCES
            n_ctx = min(n_ctx or EMBED_MAX_CTX, n_ctx_train)
            n_batch, kv_unified = n_ctx, True  # one pass holds a whole text (encoders do not split)
        n_ctx = n_ctx or min(4096, n_ctx_train)
        if n_ctx < 16:
            self.close()
            raise InvalidRequestError(f"n_ctx={n_ctx} is too small; use at least 16")

        if kv_type not in KV_TYPES:
            self.close()
            raise InvalidRequestError(f"kv_type must be one of {', '.join(KV_TYPES)}, not {kv_type!r}")
        # Flash attention computes each query row of a short batch alone, so a row's attention does
        # not depend on how many tokens of its sequence share the batch: verified speculative drafts
        # then give exactly the plain greedy output. Off (the default), a 2-9-token check runs
        # another attention kernel than a one-token step, but exact prefix reuse needs only 16
        # tokens computed instead of 64 (flash runs batches of 64+ rows through a tiled kernel).
        self._flash_attn = flash_attn
        self._kv_unified = kv_unified
        self._repack = repack
        self._kv_type = kv_type
        self._embedding = embedding
        self._n_ctx_seq = n_ctx
        self._n_batch = min(n_batch, n_ctx)
        self._n_seq = max_sequences
        # logit rows one eval may ask for (llama.cpp aborts beyond the rows its buffers were made for)
        # (and at context creation it needs a row per sequence)
        self._n_outputs = max(n_outputs or output_rows(max_sequences), max_sequences)
        self._kv_budget = kv_budget  # bytes the KV cache may take, growth included (None: no bound)
        footprint = footprint_of(path)
        self._kv_per_token = footprint.kv_bytes_per_token(kv_type, flash_attn)
        self.threads = n_threads or 1
        # Split KV (the default) gives each sequence its own n_ctx-cell stream, allocated (and
        # zeroed) when the context is made: streams are made as sequences are first needed (one at
        # load; the context is re-made with more, live sequences carried across by their state).
        # Unified KV shares n_ctx cells between all sequences: its size does not depend on them.
        # recurrent and hybrid models keep per-sequence state in another format: no re-made contexts
        self._attention_kv = not (ll.llama_model_is_recurrent(model) or ll.llama_model_is_hybrid(model))
        self._growable = self._attention_kv and not kv_unified
        first = min(max_sequences, initial_sequences) if self._growable else max_sequences
        if not self._open_context(first):
            errors = " | ".join(_recent_errors)
            self.close()
            raise ModelLoadError(
                f"llama.cpp could not create a context for {path.name} (n_ctx={n_ctx}): "
                "try a smaller n_ctx or a memory budget (memory=...). " + errors
            )
        # llama.cpp may round the window up (not an embedding model's: positions end at n_ctx)
        n_ctx = n_ctx if embedding else ll.llama_n_ctx_seq(self._ctx)
        self._n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self.n_ctx_train = n_ctx_train
        self.n_layers = ll.llama_model_n_layer(model)
        template = ll.llama_model_chat_template(model, None)
        self.caps = Capabilities(
            n_ctx=n_ctx,
            n_vocab=self._n_vocab,
            max_sequences=max_sequences,
            n_batch=self._n_batch,
            bos_token=self._special_text(ll.llama_vocab_bos(self._vocab)),
            eos_token=self._special_text(ll.llama_vocab_eos(self._vocab)),
            chat_template=template.decode("utf-8", errors="replace") if template else None,
            architecture=self.metadata("general.architecture"),
            quantization=_FTYPE_NAMES.get(ll.llama_model_ftype(model), self._describe()),
            reuse_align=reuse_align(device),
            exact_min_batch=FLASH_TILE_ROWS if flash_attn else EXACT_MIN_BATCH,
            exact_verify=flash_attn,
            exact_rows=exact_rows(footprint.matrix_types) if n_gpu_layers == 0 else 0,
            embedding=embedding,
            n_embd=ll.llama_model_n_embd_out(model) if embedding else ll.llama_model_n_embd(model),
        )
        # encoder-only models (T5 encoders) are run with llama_encode, the rest with llama_decode
        self._encode = ll.llama_model_has_encoder(model) and not ll.llama_model_has_decoder(model)

    # --- the context: KV streams, compute buffers
    def _open_context(self, n_seq: int) -> bool:
        """Make the llama.cpp context and batch for ``n_seq`` sequences; False if llama.cpp cannot."""
        ll = self._ll
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = self._n_ctx_seq if self._kv_unified else self._n_ctx_seq * n_seq
        cparams.n_batch = cparams.n_ubatch = self._n_batch
        cparams.n_seq_max = n_seq
        if not self._embedding:
            # The compute buffer is sized for this many logit rows per eval, not n_batch of them
            # (a prefill asks for one; 512 rows of a 262k vocabulary would reserve 512 MiB).
            cparams.n_outputs_max = self._n_outputs
        cparams.n_threads = cparams.n_threads_batch = self.threads
        cparams.kv_unified = self._kv_unified
        cparams.swa_full = True  # keep sliding-window layers whole so prefixes can be reused
        cparams.no_perf = True
        cparams.op_offload = not self._cpu_only
        cparams.type_k = KV_TYPES[self._kv_type]
        # llama.cpp quantizes V only with flash attention (V is read transposed without it)
        cparams.type_v = KV_TYPES[self._kv_type] if self._flash_attn else KV_TYPES["f16"]
        if self._embedding:  # pooled sentence vectors, with the model's own pooling
            cparams.embeddings = True
            cparams.pooling_type = ll.LLAMA_POOLING_TYPE_UNSPECIFIED
        cparams.flash_attn_type = (
            ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if self._flash_attn else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        ctx = ll.llama_init_from_model(self._model, cparams)
        if not ctx:
            return False
        self._ctx = ctx
        self._mem = ll.llama_get_memory(ctx)
        self._batch = ll.llama_batch_init(self._n_batch, 0, n_seq)
        b = self._batch
        self._fields = (b.token, b.pos, b.seq_id, b.logits)  # pointer objects, made once
        for i in range(self._n_batch):
            b.n_seq_id[i] = 1  # every token belongs to exactly one sequence
        self._allocated = n_seq
        return True

    def _close_context(self) -> None:
        if self._batch is not None:
            self._ll.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            self._ll.llama_free(self._ctx)
            self._ctx = self._mem = None
        self._allocated = 0

    @property
    def sequences_allocated(self) -> int:
        return self._allocated

    def grow_sequences(self, n: int) -> int:
        """Re-make the context with room for ``n`` sequences (at most ``max_sequences``; fewer, but more
        than now, when the KV budget holds fewer). Live sequences are carried across as their state
        bytes, after the old context is freed, so memory never holds both contexts; their KV is
        restored bit for bit. Returns the sequences held afterwards."""
        n = min(n, self._n_seq)
        if n <= self._allocated or not self._growable:
            return self._allocated
        old = self._allocated
        lengths = {s: length for s in range(old) if (length := self.seq_length(s))}
        n = self._within_budget(n, old + 1, sum(lengths.values()))
        if n <= old:
            return old
        held = {s: (self.state_save(s), length) for s, length in lengths.items()}
        self._close_context()
        if not self._open_context(n):
            log.warning("llama.cpp could not make room for %d sequences; keeping %d: %s",
                        n, old, " | ".join(_recent_errors))
            if not self._open_context(old):
                raise BackendError("llama.cpp could not re-make its context after failing to grow it")
        for seq_id, (state, length) in held.items():
            self.state_load(seq_id, state, length)
        return self._allocated

    def kv_bytes_allocated(self) -> int:
        """KV cache bytes the context holds now (every allocated sequence's n_ctx cells)."""
        streams = 1 if self._kv_unified else self._allocated
        return streams * self._n_ctx_seq * self._kv_per_token

    def kv_bytes_per_token(self) -> int:
        return self._kv_per_token

    def _within_budget(self, target: int, least: int, held_tokens: int) -> int:
        """The most sequences, from ``target`` down to ``least``, whose KV fits the budget while the
        held tokens' states are carried across (twice: saved, then re-written for the new context);
        0 when not even ``least`` fits."""
        if self._kv_budget is None:
            return target
        carried = 2 * held_tokens * self._kv_per_token
        for n in range(target, least - 1, -1):
            if n * self._n_ctx_seq * self._kv_per_token + carried <= self._kv_budget:
                return n
        return 0

    # --- metadata
    def metadata(self, key: str) -> str:
        buf = ctypes.create_string_buffer(4096)
        n = self._ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace") if n >= 0 else ""

    def _describe(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self._ll.llama_model_desc(self._model, buf, len(buf))
        return buf.value.decode(errors="replace")

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", errors="replace")

    # --- text <-> tokens
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (self._ll.llama_token * n_max)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            buf = (self._ll.llama_token * n_max)()
            n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            raise BackendError(f"llama.cpp failed to tokenize the text ({n})")
        return list(buf[:n])

    def _piece(self, token: int, *, special: bool) -> bytes:
        buf = self._piece_buf
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece(token, special=False)
        return piece

    def is_end(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_eog(self._vocab, token))

    # --- compute
    def _check_seq(self, seq_id: int) -> None:
        if self._pooling is not None:
            raise InvalidRequestError(
                f"this is an embedding model ({self._pooling} pooling): it has no KV sequences and "
                "cannot generate; use Model.embed"
            )
        if not 0 <= seq_id < self._allocated:
            if not 0 <= seq_id < self._n_seq:
                raise InvalidRequestError(f"sequence id {seq_id} out of range 0..{self._n_seq - 1}")
            if self.grow_sequences(seq_id + 1) <= seq_id:
                raise KVCacheFullError(
                    f"sequence {seq_id} does not fit the memory budget ({self._allocated} sequences do)")

    def eval(self, items: Sequence[EvalItem]) -> list[int]:
        if len(items) == 1 and len(items[0].tokens) == 1:  # a decode step: the hot path
            seq_id, token = items[0].seq_id, items[0].tokens[0]
            pos = self.seq_length(seq_id)
            if pos < self.caps.n_ctx:
                self._decode(((token, pos, seq_id),), 0)
                return [0]
        return self._eval_many(items)

    def _eval_many(self, items: Sequence[EvalItem]) -> list[int]:
        n_ctx = self.caps.n_ctx
        body: list[tuple[int, int, int]] = []  # (token, pos, seq) that need no logits
        outs: list[tuple[int, int, int]] = []  # each item's last n_outputs tokens: logits wanted
        for item in items:
            self._check_seq(item.seq_id)
            n0, toks = self.seq_length(item.seq_id), item.tokens
            if not toks:
                raise InvalidRequestError("eval needs at least one token per sequence")
            if n0 + len(toks) > n_ctx:
                raise ContextOverflowError(
                    f"sequence {item.seq_id} would hold {n0 + len(toks)} tokens; the context "
                    f"holds {n_ctx}",
                    prompt_tokens=n0 + len(toks),
                    n_ctx=n_ctx,
                )
            k = item.n_outputs
            if not 1 <= k <= len(toks):
                raise InvalidRequestError(f"n_outputs must be in 1..{len(toks)} for this item")
            body.extend((t, n0 + j, item.seq_id) for j, t in enumerate(toks[:-k]))
            outs.extend((t, n0 + len(toks) - k + j, item.seq_id) for j, t in enumerate(toks[-k:]))
        if len(outs) > min(self._n_outputs, self._n_batch):
            raise InvalidRequestError(f"at most {min(self._n_outputs, self._n_batch)} output positions per "
                                      "eval (load with n_outputs=N for more)")
        if len(items) == 1 and len(outs) == 1:  # a prefill: cut where a fresh one is cut
            entries = body + outs
            start = entries[0][1]
            cuts = [c - start for c in prefill_cuts(start, start + len(entries), self._n_batch,
                                                    self.caps.exact_min_batch)]
            edges = [0, *cuts, len(entries)]
            pieces = [entries[a:b] for a, b in zip(edges, edges[1:], strict=False)]
            for piece in pieces[:-1]:
                self._decode(piece, len(piece))
            self._decode(pieces[-1], len(pieces[-1]) - 1)
            return [len(pieces[-1]) - 1]
        chunks = [body[i : i + self._n_batch] for i in range(0, len(body), self._n_batch)]
        if chunks and len(chunks[-1]) + len(outs) <= self._n_batch:
            final = chunks.pop() + outs
        else:
            final = outs
        for chunk in chunks:
            self._decode(chunk, len(chunk))  # no logits for prompt tokens
        self._decode(final, len(final) - len(outs))
        return list(range(len(final) - len(outs), len(final)))

    def _decode(self, entries: Sequence[tuple[int, int, int]], first_output: int) -> None:
        batch = self._batch
        token, pos, seq, want = self._fields
        for i, (t, p, s) in enumerate(entries):
            token[i] = t
            pos[i] = p
            seq[i][0] = s
            want[i] = i >= first_output
        batch.n_tokens = len(entries)
        rc = self._ll.llama_decode(self._ctx, batch)
        if rc == 2:  # interrupted: llama.cpp removed this batch's positions from the KV cache
            raise EvalInterrupted("the eval was interrupted for a request")
        if rc == 1:
            raise KVCacheFullError("no free KV cells: free sequences or load with a larger n_ctx")
        if rc != 0:
            raise BackendError(f"llama_decode failed ({rc}): the batch was rejected or computation failed")

    def embed(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Pooled embeddings, one row per sequence; as many sequences per pass as fit in n_batch."""
        if self._pooling is None:
            return super().embed(sequences)
        out = np.empty((len(sequences), self.caps.n_embd), dtype=np.float32)
        group: list[int] = []
        held = 0
        for i, tokens in enumerate(sequences):
            if not tokens:
                raise EmptyPromptError(f"text {i} has no tokens: there is nothing to embed")
            if len(tokens) > self.caps.n_ctx:
                raise ContextOverflowError(
                    f"text {i} has {len(tokens)} tokens; this model embeds at most {self.caps.n_ctx}",
                    prompt_tokens=len(tokens), n_ctx=self.caps.n_ctx)
            if group and (held + len(tokens) > self._n_batch or len(group) == self._n_seq):
                self._embed_pass([sequences[j] for j in group], out[group[0] : group[-1] + 1])
                group, held = [], 0
            group.append(i)
            held += len(tokens)
        if group:
            self._embed_pass([sequences[j] for j in group], out[group[0] : group[-1] + 1])
        return out

    def _embed_pass(self, sequences: Sequence[Sequence[int]], out: np.ndarray) -> None:
        """One forward pass over several whole sequences (seq ids 0..n-1); pooled rows into ``out``."""
        if self._mem:  # a causal embedding model keeps KV: start each pass from nothing
            self._ll.llama_memory_clear(self._mem, True)
        batch = self._batch
        token, pos, seq, want = self._fields
        i = 0
        for s, tokens in enumerate(sequences):
            for p, t in enumerate(tokens):
                token[i], pos[i], want[i] = t, p, True
                seq[i][0] = s
                i += 1
        batch.n_tokens = i
        run = self._ll.llama_encode if self._encode else self._ll.llama_decode
        rc = run(self._ctx, batch)
        if rc != 0:
            raise BackendError(f"llama.cpp failed to embed the batch ({rc})")
        for s in range(len(sequences)):
            ptr = self._ll.llama_get_embeddings_seq(self._ctx, s)
            if not ptr:
                raise BackendError(f"llama.cpp returned no pooled embedding for sequence {s}")
            out[s] = np.ctypeslib.as_array(ptr, shape=(self.caps.n_embd,))

    def logits(self, row: int) -> np.ndarray:
        ptr = self._ll.llama_get_logits_ith(self._ctx, row)
        if not ptr:
            raise BackendError(f"no logits for output row {row}")
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def make_sampler(self, params: SamplingParams) -> NativeSampler | ArgmaxSampler | LogitsSampler:
        """Greedy picks run on the logits row in numpy (the same pick as llama.cpp's chain, whose
        sampler call first copies the whole vocabulary into candidates: 240 µs a token on SmolLM2's 49k
        vocabulary, vs 66 µs with a repeat penalty and 3 µs without); sampling uses llama.cpp's chain."""
        if params.greedy:
            return ArgmaxSampler(self) if params.repeat_penalty == 1.0 else LogitsSampler(self, params)
        return NativeSampler(self, params)

    # --- KV memory
    def seq_length(self, seq_id: int) -> int:
        # Asked of llama.cpp each time: no Python-side count that an interrupt could leave stale.
        self._check_seq(seq_id)
        return ll.llama_memory_seq_pos_max(self._mem, seq_id) + 1

    def kv_truncate(self, seq_id: int, n: int) -> None:
        self._check_seq(seq_id)
        if not self._ll.llama_memory_seq_rm(self._mem, seq_id, n, -1):
            raise BackendError(f"this model's memory cannot drop part of a sequence (seq {seq_id})")

    def kv_copy(self, src: int, dst: int, n: int) -> None:
        self._check_seq(src)
        self._check_seq(dst)
        if src == dst:
            raise InvalidRequestError("kv_copy needs two different sequences")
        mem = self._mem
        self._ll.llama_memory_seq_rm(mem, dst, -1, -1)
        if self._kv_unified:  # cells are shared: the copy only tags them with dst
            self._ll.llama_memory_seq_cp(mem, src, dst, 0, n)
        elif (held := self.seq_length(src)) * 4 < self.caps.n_ctx:  # short: copy its cells' bytes
            self._load_raw(dst, self._raw_state(src), held)
            self._ll.llama_memory_seq_rm(mem, dst, n, -1)
        else:  # llama.cpp copies a whole stream between split sequences (one buffer memcpy)
            self._ll.llama_memory_seq_cp(mem, src, dst, -1, -1)
            self._ll.llama_memory_seq_rm(mem, dst, n, -1)

    def kv_drop(self, seq_id: int) -> None:
        self._check_seq(seq_id)
        self._ll.llama_memory_seq_rm(self._mem, seq_id, -1, -1)

    def _raw_state(self, seq_id: int) -> bytes:
        size = self._ll.llama_state_seq_get_size(self._ctx, seq_id)
        buf = (ctypes.c_uint8 * size)()
        written = self._ll.llama_state_seq_get_data(self._ctx, buf, size, seq_id)
        return ctypes.string_at(buf, written)  # one memcpy (slicing a c_uint8 array makes a list)

    def _load_raw(self, seq_id: int, data: bytes, n_tokens: int) -> None:
        self.kv_drop(seq_id)
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if not self._ll.llama_state_seq_set_data(self._ctx, buf, len(data), seq_id):
            raise BackendError("llama.cpp rejected the saved state (another model or settings?)")
        if self.seq_length(seq_id) != n_tokens:
            self.kv_drop(seq_id)
            raise BackendError(f"the saved state holds a different number of tokens than {n_tokens}")

    def _sections(self, seq_id: int, raw_size: int) -> list[int]:
        """The sizes of the caches' sections in a raw state of ``raw_size`` bytes: a sliding-window
        model keeps two caches, and the second alone is what llama.cpp calls the "partial" state."""
        partial = self._ll.llama_state_seq_get_size_ext(
            self._ctx, seq_id, ll.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY)
        prefix = llama_state.PREFIX
        if prefix < partial < raw_size:
            return [raw_size - partial, partial - prefix]
        return [raw_size - prefix]

    def state_save(self, seq_id: int) -> bytes:
        """The sequence's state, loadable into this model's context whatever its sequence count."""
        self._check_seq(seq_id)
        raw = self._raw_state(seq_id)
        if not self._attention_kv:
            return raw
        return llama_state.to_canonical(raw, self._sections(seq_id, len(raw)))

    def state_size(self, seq_id: int) -> int:
        self._check_seq(seq_id)
        raw = self._ll.llama_state_seq_get_size(self._ctx, seq_id)
        if not self._attention_kv:
            return raw
        streams = 1 if self._kv_unified else self._allocated
        return llama_state.canonical_size(raw, len(self._sections(seq_id, raw)), streams)

    @property
    def threads_adjustable(self) -> bool:
        """Without flash attention, outputs do not depend on the thread count (measured bit-identical
        at 1, 2 and 3 threads); with it, a long sequence's decode step splits attention by thread."""
        return not self._flash_attn

    def set_threads(self, n: int) -> bool:
        """llama.cpp takes a new thread count between evals."""
        if not (self._ctx and self.threads_adjustable):
            return False
        if n != self.threads:
            self._ll.llama_set_n_threads(self._ctx, n, n)
            self.threads = n
        return True

    def state_binding(self) -> dict:
        return {"backend": self.name, "llama_cpp_python": ll.__version__, "n_ctx": self.caps.n_ctx,
                "flash_attn": self._flash_attn, "swa_full": True, "kv_type": self._kv_type,
                "kv_unified": self._kv_unified, "repack": self._repack,
                "state_format": llama_state.MAGIC.decode() if self._attention_kv else "raw"}

    def state_load(self, seq_id: int, data: bytes, n_tokens: int) -> None:
        self._check_seq(seq_id)
        if data.startswith(llama_state.MAGIC):
            try:
                data = llama_state.from_canonical(data, 1 if self._kv_unified else self._allocated)
            except ValueError as exc:
                raise BackendError(f"the saved state is malformed ({exc})") from None
        self._load_raw(seq_id, data, n_tokens)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        # a Python call per graph node: only idle-time evals carry it (CPU graphs only: GPU backends
        # run a graph to its end)
        self._stop[0] = False
        self._ll.llama_set_abort_callback(self._ctx, self._abort_check, None)
        try:
            yield
        finally:
            if self._ctx:
                self._ll.llama_set_abort_callback(self._ctx, _NO_ABORT, None)
            self._stop[0] = False

    def interrupt(self) -> None:
        self._stop[0] = True

    def close(self) -> None:
        ll = self._ll
        self._close_context()
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
