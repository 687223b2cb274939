"""ei.load(): name or path -> verified file -> device choice -> backend -> Model."""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from .backends import format_of, get_backend, get_spec
from .compute import device_queue
from .device import Artifact, Choice, Probe, choose, probe_system
from .disk_cache import DiskCache
from .errors import BackendUnavailableError, ModelNotPreparedError, UnknownModelError
from .gguf_check import ensure_gguf_checked, require_gguf_magic
from .hashing import cached_digest, sha256_file
from .kv_options import KVOptions
from .lock import ModelLock
from .memory import (
    DEFAULT_N_BATCH,
    DEFAULT_N_CTX,
    DEFAULT_SEQUENCES,
    Layout,
    Preferred,
    Wanted,
    default_budget,
    footprint_of,
    format_size,
    parse_size,
    plan_layout,
    process_rss,
)
from .model import Model
from .paths import cache_root
from .prepared import CHECKPOINT_GGUF, GGUF_ONNX, Located, prepared
from .prompt_cache import PromptCache
from .sampling import SamplingParams
from .sources import resolve
from .speculative import Speculation

log = logging.getLogger(__name__)


def _prepared_checkpoint(located: Located) -> Path:
    """The GGUF prepared from a pinned Hugging Face checkpoint at pull time; a checkpoint is never converted
    at load time (that is the converters' work, and can take minutes)."""
    preparation = prepared(located, CHECKPOINT_GGUF)
    if preparation is None:
        raise BackendUnavailableError(
            f"{located.name} is a Hugging Face checkpoint; convert it first: "
            f"edgeinfer convert {located.path} --format gguf -o {located.name}.gguf")
    if not preparation.done:
        raise ModelNotPreparedError(
            f"{located.name} is a Hugging Face checkpoint that is converted to GGUF once, before its first "
            f"use: run `edgeinfer pull {located.name}` (or edgeinfer_converters.prepare({located.name!r}))")
    return preparation.target


def _prepared_onnx(located: Located) -> Path:
    """The ONNX folder prepared from a GGUF for the onnx backend (its own weights, converted once)."""
    preparation = prepared(located, GGUF_ONNX)
    if preparation is not None and preparation.done:
        return preparation.target
    how = (f"run `edgeinfer pull {located.name} --backend onnx`" if located.entry is not None else
           f"run `edgeinfer convert {located.path} --format onnx -o DIR` and load DIR")
    raise ModelNotPreparedError(
        f"{located.name} is a GGUF; on the onnx backend it runs as an ONNX folder made from it once, before "
        f"its first use: {how} (llama-architecture GGUFs; or edgeinfer_converters.prepare(...,"
        " kinds=['gguf-onnx']))")


def artifact_bytes(path: Path) -> int:
    """A model file's size, or the sum of a model folder's files."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.iterdir())


def faster_cpu_path(located: Located, path: Path, choice: Choice, probe: Probe, *, device: str = "auto",
                    n_threads: int | None = None, held_by: str = "") -> tuple[Path, str, Choice]:
    """The artifact a GGUF runs as, when its lock entry says the onnx backend runs it faster on a CPU and
    the choice is the CPU: its prepared ONNX folder, with the reason. Otherwise the GGUF, and why it
    stays on llama.cpp: ``held_by`` (options only llama.cpp takes), no onnxruntime, or not prepared."""
    entry = located.entry
    if entry is None or entry.cpu_backend != "onnx" or choice.device != "cpu":
        return path, "gguf", choice
    preparation = None if held_by else prepared(located, GGUF_ONNX)
    if held_by:
        why = f"{held_by} given, which the onnx backend does not take"
    elif not get_spec("onnx").is_installed(probe):
        why = "its faster onnx path needs onnxruntime: pip install 'edgeinfer[onnx]'"
    elif preparation is None or not preparation.done:
        why = f"its faster onnx path is made once, before use: run `edgeinfer pull {located.name}`"
    else:
        folder = preparation.target
        onnx = choose(probe, Artifact("onnx", artifact_bytes(folder)), backend="onnx", device=device,
                      n_threads=n_threads)
        first = (f"{located.name} runs faster on onnxruntime on a CPU (the GGUF's own weights, as the ONNX "
                 "folder prepared from it) -> onnx backend")
        return folder, "onnx", replace(onnx, reasons=(first, *onnx.reasons[1:]))
    return path, "gguf", replace(choice, reasons=(*choice.reasons, f"llama.cpp: {why}"))


@lru_cache(maxsize=1)
def cached_probe() -> Probe:
    """The machine probe, taken once per process."""
    return probe_system()


def _gguf_layers(path: Path) -> int | None:
    """Block count from GGUF metadata (read only when a GPU needs layers sized)."""
    try:
        import gguf

        reader = gguf.GGUFReader(str(path))
        arch = reader.fields["general.architecture"].contents()
        return int(reader.fields[f"{arch}.block_count"].contents())
    except Exception:  # noqa: BLE001 - sizing falls back to a default layer count
        return None


def locate_model(name_or_path: str | Path, *, offline: bool | None = None,
                 lock: ModelLock | None = None, progress: bool = False) -> Located:
    """The verified file (or folder) for a models.lock name, an ``hf:ORG/REPO`` spec (pinned, or pulled
    now when it is a GGUF repo and edgeinfer is online), or the given path as it is."""
    from .hub import is_hub_spec, parse_spec
    from .pull import find_pinned, pull

    if is_hub_spec(name_or_path):
        spec = parse_spec(str(name_or_path))
        entry = find_pinned(spec, lock) or pull(spec, offline=offline, progress=progress).entry
        return Located(resolve(entry, offline=offline, progress=progress).path, entry.name, entry)
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():
        return Located(candidate, candidate.stem if candidate.is_file() else candidate.name)
    lock = lock or ModelLock.load()
    try:
        entry = lock.get(str(name_or_path))
    except UnknownModelError:
        if any(sep in str(name_or_path) for sep in ("/", "\\")) or Path(str(name_or_path)).suffix:
            raise UnknownModelError(
                f"{name_or_path}: no such file, and not a model name in models.lock "
                f"(known: {', '.join(sorted(lock.entries))})"
            ) from None
        raise
    return Located(resolve(entry, offline=offline, progress=progress).path, entry.name, entry)


def load(
    name_or_path: str | Path,
    *,
    backend: str = "auto",
    device: str = "auto",
    n_ctx: int | None = None,
    n_threads: int | None = None,
    n_gpu_layers: int | None = None,
    max_sequences: int | None = None,
    memory: int | str | None = None,
    offline: bool | None = None,
    probe: Probe | None = None,
    progress: bool = False,
    kv: KVOptions | None = None,
    max_batch: int | None = None,
    speculation: Speculation = "auto",
    chat_template: str | None = None,
    **backend_options: object,
) -> Model:
    """Load a model by models.lock name (e.g. 'smollm2-135m-instruct') or by path.

    ``kv`` (a ``KVOptions``) says how KV is kept and reused between requests: a RAM budget, a disk
    folder that survives restarts, and idle-time settling (the defaults: all of the context in RAM,
    no disk, settling on). Concurrent requests run as one batch of up to ``max_batch`` sequences (default
    ``max_sequences``); ``speculation`` drafts tokens and verifies them in one pass, greedy output
    unchanged: "auto" (prompt lookup where drafts are checked exactly: llama.cpp with
    ``flash_attn=True``), "prompt-lookup", a smaller loaded Model with the same tokenizer, or None.
    ``memory`` bounds the process's resident memory (bytes, or a text like "1.5GB"; default: what the
    process holds plus 3/4 of the RAM available now): a llama.cpp model on the CPU gets the largest
    layout (context, sequences, KV type, batch) that fits, or MemoryBudgetError says what would. Values
    given here (``n_ctx``, ``max_sequences``, ``kv_type``, ``n_batch``) are kept; the rest give way.
    Sequences are allocated as they are first needed, up to ``max_sequences``: given, each one keeps a
    prompt's KV for reuse (a conversation, a few-shot block); left out (at most 4), one is added only
    when requests run at once, so a program used by one user at a time holds one.
    ``chat_template`` (Jinja text) replaces the template in the model file, e.g. for a file without one.
    ``backend_options`` go to the backend (llama.cpp: ``n_batch``, ``flash_attn``, ``kv_unified``,
    ``repack``, ``kv_type``: "f16", "q8_0" or "q4_0").
    """
    located = locate_model(name_or_path, offline=offline, progress=progress)
    path, name, entry = located.path, located.name, located.entry
    fmt = format_of(path)
    if fmt == "hf":
        path, fmt = _prepared_checkpoint(located), "gguf"
    if fmt == "gguf" and backend == "onnx":
        path, fmt = _prepared_onnx(located), "onnx"
    probe = probe or cached_probe()
    size = artifact_bytes(path)
    layers = _gguf_layers(path) if fmt == "gguf" and probe.gpus and n_gpu_layers is None else None
    choice = choose(probe, Artifact(fmt, size, layers), backend=backend, device=device,
                    n_gpu_layers=n_gpu_layers, n_threads=n_threads)
    if backend == "auto" and fmt == "gguf":
        held_by = ", ".join([*(["memory"] if memory is not None else []), *sorted(backend_options)])
        path, fmt, choice = faster_cpu_path(located, path, choice, probe, device=device, n_threads=n_threads,
                                            held_by=held_by)
    factory = get_backend(choice.backend)
    # sequences asked for are kept for reuse as they are first used; by default one is added only for
    # requests that run at once, so a program used by one user at a time holds one
    kv = kv or KVOptions()
    keep = kv.keep_sequences
    if keep is None:
        keep = max_sequences is not None and not isinstance(max_sequences, Preferred)
    layout = None
    if choice.backend == "llama.cpp" and choice.device == "cpu" and fmt == "gguf":
        layout = _layout(path, name, n_ctx, max_sequences, memory, backend_options)
    if layout is not None:
        n_ctx, max_sequences = layout.n_ctx, layout.sequences
        backend_options = {**backend_options, "kv_type": layout.kv_type, "n_batch": layout.n_batch,
                           "kv_budget": layout.kv_budget}
    elif memory is not None:
        parse_size(memory)  # a malformed budget is refused whatever the backend
    be = factory(path, n_ctx=n_ctx, n_threads=choice.n_threads, n_gpu_layers=choice.n_gpu_layers,
                 max_sequences=max_sequences or DEFAULT_SEQUENCES, device=choice.device, **backend_options)
    if n_threads is None and choice.device == "cpu":  # an explicit n_threads pins the count
        device_queue(be.device).adapt_threads(be, choice.n_threads)
    defaults = SamplingParams(**entry.sampling) if entry and entry.sampling else None
    sha = entry.sha256 if entry else None
    disk = None
    if kv.disk:
        sha = sha or cached_digest(path, [path], sha256_file)
        folder = cache_root() / "kv" if kv.disk is True else Path(kv.disk)
        disk = DiskCache(folder, binding={"model_sha256": sha, **be.state_binding()},
                         max_bytes=kv.disk_bytes)
    cache = PromptCache(be, ram_budget_bytes=kv.ram_bytes, disk=disk, keep_sequences=keep, exact=kv.exact)
    return Model(be, name=name, path=path, sha256=sha, choice=choice, default_params=defaults, cache=cache,
                 settle=kv.settle and kv.exact, max_batch=max_batch, speculation=speculation, layout=layout,
                 chat_template=chat_template, role=entry.role if entry else None)


def _layout(path: Path, name: str, n_ctx: int | None, max_sequences: int | None, memory: int | str | None,
            options: dict) -> Layout | None:
    """The memory layout of a llama.cpp model on the CPU within the budget (None: an embedding model,
    whose layout is its own: one pass per text)."""
    require_gguf_magic(path)  # what the backend checks first, so a bad file gets the same errors
    ensure_gguf_checked(path)
    footprint = footprint_of(path)
    if footprint.embedding:
        return None
    base = process_rss()
    budget = parse_size(memory) if memory is not None else default_budget(base)
    soft = max_sequences is None or isinstance(max_sequences, Preferred)
    wanted = Wanted(n_ctx=n_ctx, sequences=None if soft else max_sequences, kv_type=options.get("kv_type"),
                    n_batch=options.get("n_batch"), flash_attn=bool(options.get("flash_attn")),
                    default_sequences=max_sequences or DEFAULT_SEQUENCES)
    layout = plan_layout(footprint, wanted, budget, base, name)
    asked = (n_ctx or min(DEFAULT_N_CTX, footprint.n_ctx_train), wanted.sequences or wanted.default_sequences,
             wanted.kv_type or "f16", wanted.n_batch or DEFAULT_N_BATCH)
    if (layout.n_ctx, layout.sequences, layout.kv_type, layout.n_batch) != asked:
        log.warning("%s: sized to the memory budget (%s): n_ctx=%d, %d sequence(s), %s KV, batch %d",
                    name, format_size(budget), layout.n_ctx, layout.sequences, layout.kv_type, layout.n_batch)
    return layout
