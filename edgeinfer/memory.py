"""RAM budgets: what a GGUF model costs in memory, and the largest layout that fits a budget.

A budget bounds the whole process's resident memory (what it holds before the load included). The
cost of a llama.cpp model is its weights (mapped from the file), the KV cache (bytes per token x
context x sequences, by KV element type), the compute buffer (sized by the batch and context) and
the logits buffer. The estimates are upper bounds measured against llama.cpp's own buffer sizes
(tests/test_memory.py), so a layout that fits here fits in the process.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from .errors import InvalidRequestError, MemoryBudgetError

# bytes per element of a KV cache type (ggml blocks: q8_0 is 34 bytes per 32, q4_0 18 per 32)
KV_TYPE_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
DEFAULT_SEQUENCES = 4  # sequences a model may hold when nobody says (allocated only as they are used)
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ
DEFAULT_N_CTX = 4096
DEFAULT_N_BATCH = 512
MIN_N_CTX = 512  # a budget never shrinks the context below this on its own
BUDGET_SHARE = 0.75  # of the RAM available at load time: the default budget leaves a quarter to others
SLACK_BYTES = 16 << 20  # threads, Python objects of the engine, allocator rounding
FOOTPRINT_VERSION = 2  # bump when Footprint's fields change: cached footprints are read again
VOCAB_BYTES_PER_TOKEN = 128  # llama.cpp's vocabulary tables (text, scores, maps) per token

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(value: int | str) -> int:
    """Bytes from an int or a text such as "1.5GB", "800MB", "2GiB" (GB = 10^9 bytes, GiB = 2^30)."""
    if isinstance(value, bool):
        raise InvalidRequestError(f"a memory size must be bytes or a text like '1.5GB', not {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise InvalidRequestError(f"a memory size must be positive, not {value}")
        return value
    match = _SIZE.fullmatch(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise InvalidRequestError(
            f"cannot read {value!r} as a memory size: write bytes or a number with a unit, e.g. '1.5GB', "
            "'800MB', '2GiB'")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise InvalidRequestError(f"a memory size must be positive, not {value!r}")
    return size


def format_size(n: float) -> str:
    """Bytes as a short text: 1.5 GB, 240 MB."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def process_rss() -> int:
    """This process's resident memory now."""
    import psutil

    return psutil.Process().memory_info().rss


def default_budget(held: int | None = None) -> int:
    """The budget when none is given: what this process holds (``held``, or read now) plus 3/4 of the
    RAM available now."""
    import psutil

    return (process_rss() if held is None else held) + int(psutil.virtual_memory().available * BUDGET_SHARE)


def output_rows(max_sequences: int) -> int:
    """Logit rows one eval asks for at most: one per batched sequence, or a verified draft (up to 4
    drafted tokens plus the next) when one sequence decodes alone. llama.cpp sizes its compute and
    logits buffers for this many rows (not the batch's 512: a 262k vocabulary made that 512 MiB) and
    refuses more, so the backend checks first; a caller that wants every row passes ``n_outputs``."""
    return max(max_sequences, 8)


@dataclass(frozen=True)
class Footprint:
    """What a GGUF model's parts cost, read from its header before anything is loaded."""

    weights: int  # tensor bytes, mapped from the file
    n_vocab: int
    n_embd: int
    n_ff: int
    n_head: int
    kv_elements: int  # K and V elements one token holds, over every layer
    n_ctx_train: int
    embedding: bool = False  # a pooled-embedding model: no KV sequences to size
    matrix_types: str = ""  # ggml types of its matrices (2-D tensors), sorted and comma-joined: "Q4_K,Q6_K"

    def kv_bytes(self, n_ctx: int, sequences: int, kv_type: str = "f16", flash_attn: bool = False) -> int:
        """KV cache bytes for ``sequences`` of ``n_ctx`` tokens (V stays f16 without flash attention)."""
        k_bytes = KV_TYPE_BYTES[kv_type]
        v_bytes = k_bytes if flash_attn else KV_TYPE_BYTES["f16"]
        return int(n_ctx * sequences * self.kv_elements / 2 * (k_bytes + v_bytes))

    def kv_bytes_per_token(self, kv_type: str = "f16", flash_attn: bool = False) -> int:
        return self.kv_bytes(1, 1, kv_type, flash_attn)

    def compute_bytes(self, n_ctx: int, n_batch: int, outputs: int) -> int:
        """llama.cpp's compute buffer: attention scores and mask for a batch over the whole context,
        the activations of a batch, and the logits of ``outputs`` rows (an upper bound)."""
        batch = min(n_batch, n_ctx)
        return (n_ctx * batch * (4 * self.n_head + 8) + batch * (self.n_embd + self.n_ff) * 8
                + outputs * self.n_vocab * 4)

    def fixed_bytes(self, n_ctx: int, n_batch: int, sequences: int) -> int:
        """Everything but the KV cache: weights, vocabulary, compute and logits buffers, slack."""
        outputs = output_rows(sequences)
        vocabulary = self.n_vocab * VOCAB_BYTES_PER_TOKEN
        return (self.weights + vocabulary + self.compute_bytes(n_ctx, n_batch, outputs)
                + outputs * self.n_vocab * 4 + SLACK_BYTES)


def _read_footprint(path: Path) -> str:
    from .gguf_check import read_gguf_header

    header = read_gguf_header(path)
    meta = header.metadata
    arch = meta.get("general.architecture", "")

    def number(key: str, default: int = 0) -> int:
        value = meta.get(f"{arch}.{key}", default)
        return value if isinstance(value, int) and value > 0 else default

    n_embd, n_head = number("embedding_length", 1), number("attention.head_count", 1)
    layers = number("block_count", 1)
    kv_heads = number("attention.head_count_kv", n_head)
    key = number("attention.key_length", n_embd // n_head)
    value = number("attention.value_length", key)
    kv_elements = sum(shape[1] for name, shape in header.shapes.items()
                      if name.endswith((".attn_k.weight", ".attn_v.weight")) and len(shape) == 2)
    tokens = header.arrays.get("tokenizer.ggml.tokens")
    return json.dumps(asdict(Footprint(
        weights=header.weight_bytes,
        n_vocab=tokens.count if tokens else number("vocab_size", 32000),
        n_embd=n_embd,
        n_ff=number("feed_forward_length", 4 * n_embd),
        n_head=n_head,
        kv_elements=kv_elements or layers * kv_heads * (key + value),
        n_ctx_train=number("context_length", DEFAULT_N_CTX),
        embedding=number("pooling_type") in (1, 2, 3),  # mean, cls, last (llama.cpp's pooling types)
        matrix_types=",".join(sorted({header.types[name] for name, shape in header.shapes.items()
                                      if len(shape) >= 2})),
    )))


@lru_cache(maxsize=16)
def _footprint(path: str, _size: int, _mtime: int) -> Footprint:
    from .hashing import cached_digest

    kind = f"gguf-footprint-v{FOOTPRINT_VERSION}"
    stored = cached_digest(Path(path), [Path(path)], _read_footprint, kind=kind)
    try:
        footprint = Footprint(**json.loads(stored))
        numbers = [v for k, v in asdict(footprint).items() if k != "matrix_types"]
        if all(isinstance(v, int) and 0 <= v < 1 << 48 for v in numbers) and isinstance(
                footprint.matrix_types, str):
            return footprint
    except (TypeError, ValueError):
        pass
    return Footprint(**json.loads(_read_footprint(Path(path))))  # a damaged cache entry: read the file


def footprint_of(path: str | os.PathLike[str]) -> Footprint:
    """The Footprint of a GGUF file: read from its header once per file version (kept in the cache
    folder with the file's fingerprint, as checksums are), then from memory."""
    stat = Path(path).stat()
    return _footprint(str(path), stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class Layout:
    """How a model is laid out in memory: what ``ei.load`` passes to the backend."""

    n_ctx: int
    sequences: int  # the most sequences held at once (allocated as they are first used)
    kv_type: str = "f16"
    n_batch: int = DEFAULT_N_BATCH
    budget: int = 0  # the process's budget the layout was sized for
    base: int = 0  # what the process held before the load
    fixed: int = 0  # weights, buffers: the model's cost besides its KV cache
    kv_budget: int = 0  # bytes the KV cache (and growing it) may take

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Wanted:
    """What the caller asked for; ``None`` leaves a value to the budget."""

    n_ctx: int | None = None
    sequences: int | None = None
    kv_type: str | None = None
    n_batch: int | None = None
    flash_attn: bool = False
    default_sequences: int = DEFAULT_SEQUENCES


def _fits(fp: Footprint, room: int, n_ctx: int, sequences: int, kv_type: str, n_batch: int,
          flash_attn: bool) -> bool:
    kv = fp.kv_bytes(n_ctx, sequences, kv_type, flash_attn)
    return fp.fixed_bytes(n_ctx, n_batch, sequences) + kv <= room


def most_sequences(fp: Footprint, room: int, n_ctx: int, kv_type: str = "f16", n_batch: int = DEFAULT_N_BATCH,
                   flash_attn: bool = False, limit: int = MAX_SEQUENCES) -> int:
    """The most sequences of ``n_ctx`` (up to ``limit``) that fit in ``room`` bytes (0: not even one)."""
    lo, hi = 0, limit  # the cost grows with the sequences: binary search for the last that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fits(fp, room, n_ctx, mid, kv_type, n_batch, flash_attn):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _halvings(n: int, floor: int) -> list[int]:
    out = [n]
    while out[-1] // 2 >= floor:
        out.append(out[-1] // 2)
    return out


def plan_layout(fp: Footprint, wanted: Wanted, budget: int, base: int, name: str = "the model") -> Layout:
    """The layout closest to ``wanted`` that keeps the process within ``budget`` bytes.

    What the caller left open gives way first, in this order: fewer sequences, a smaller batch, an 8-bit
    KV cache, a shorter context (down to 512). What the caller set is kept; when it cannot fit,
    MemoryBudgetError says what would.
    """
    room = budget - base
    n_ctx0 = wanted.n_ctx or min(DEFAULT_N_CTX, fp.n_ctx_train)
    contexts = [n_ctx0] if wanted.n_ctx else _halvings(n_ctx0, min(MIN_N_CTX, n_ctx0))
    batches = [wanted.n_batch] if wanted.n_batch else [DEFAULT_N_BATCH, 256, 128]
    kv_types = [wanted.kv_type] if wanted.kv_type else ["f16", "q8_0"]
    want_seqs = wanted.sequences or wanted.default_sequences
    for n_ctx in contexts:
        for kv_type in kv_types:
            for n_batch in batches:
                fit = most_sequences(fp, room, n_ctx, kv_type, n_batch, wanted.flash_attn, limit=want_seqs)
                if fit and (fit >= want_seqs or not wanted.sequences):
                    fixed = fp.fixed_bytes(n_ctx, n_batch, fit)
                    return Layout(n_ctx, fit, kv_type, n_batch, budget, base, fixed, room - fixed)
    raise MemoryBudgetError(_what_fits(fp, wanted, budget, base, name), budget=budget,
                            needed=base + fp.fixed_bytes(n_ctx0, batches[0], want_seqs)
                            + fp.kv_bytes(n_ctx0, want_seqs, kv_types[0], wanted.flash_attn))


def what_fits(fp: Footprint, room: int, n_ctx: int, kv_type: str = "f16", n_batch: int = DEFAULT_N_BATCH,
              flash_attn: bool = False, count: int = 2) -> list[tuple[int, int]]:
    """Up to ``count`` (sequences, context) pairs that fit in ``room`` bytes: the most sequences of
    ``n_ctx``, then of halved contexts where more sequences fit (e.g. [(2, 4096), (8, 1024)])."""
    options: list[tuple[int, int]] = []
    for ctx in _halvings(n_ctx, 256):
        fit = most_sequences(fp, room, ctx, kv_type, n_batch, flash_attn)
        if fit and (not options or fit > options[-1][0]):
            options.append((fit, ctx))
        if len(options) == count:
            break
    return options


def describe_fits(options: list[tuple[int, int]]) -> str:
    """[(2, 4096), (8, 1024)] -> "at most 2 sequences of 4096, or 8 of 1024"."""
    (seqs, ctx), *rest = options
    more = "".join(f", or {s} of {c}" for s, c in rest)
    return f"at most {seqs} sequence{'s' * (seqs > 1)} of {ctx}{more}"


def _what_fits(fp: Footprint, wanted: Wanted, budget: int, base: int, name: str) -> str:
    n_ctx = wanted.n_ctx or min(DEFAULT_N_CTX, fp.n_ctx_train)
    seqs = wanted.sequences or 1
    kv_type, n_batch = wanted.kv_type or "f16", wanted.n_batch or DEFAULT_N_BATCH
    need = base + fp.fixed_bytes(n_ctx, n_batch, seqs) + fp.kv_bytes(n_ctx, seqs, kv_type, wanted.flash_attn)
    head = (f"{name} needs about {format_size(need)} for {seqs} sequence{'s' * (seqs > 1)} of {n_ctx} tokens "
            f"but the memory budget is {format_size(budget)} "
            f"(this process already holds {format_size(base)})")
    options = what_fits(fp, budget - base, n_ctx, kv_type, n_batch, wanted.flash_attn)
    if not options:
        least = base + fp.fixed_bytes(256, 128, 1)
        return (f"{head}: the weights and buffers alone need {format_size(least)}; "
                "give a larger budget (memory=...) or use a smaller model")
    return (f"{head}: it fits {describe_fits(options)}. "
            "Pass a larger memory=, or a smaller n_ctx= / max_sequences=")


class Preferred(int):
    """A count the memory budget may lower: a default, not a requirement (``edgeinfer serve`` asks for
    ``Preferred(8)`` sequences; a plain int given to ``ei.load`` must fit or the load fails)."""
