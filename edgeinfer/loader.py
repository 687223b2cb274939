"""ei.load(): name or path -> verified file -> device choice -> backend -> Model."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .backends import format_of, get_backend
from .device import Artifact, Probe, choose, probe_system
from .disk_cache import DiskCache
from .errors import BackendUnavailableError, OutputExistsError, UnknownModelError
from .hashing import cached_digest, sha256_file
from .lock import ModelEntry, ModelLock
from .model import Model
from .paths import cache_root
from .prompt_cache import PromptCache
from .sampling import SamplingParams
from .sources import resolve


@lru_cache(maxsize=1)
def cached_probe() -> Probe:
    """The machine probe, taken once per process."""
    return probe_system()


def artifact_format(path: Path) -> str:
    """'gguf', 'onnx', 'hf' or a plugin's format, from what is on disk ('unknown' if none matches)."""
    return format_of(path)


def _gguf_layers(path: Path) -> int | None:
    """Block count from GGUF metadata (read only when a GPU needs layers sized)."""
    try:
        import gguf

        reader = gguf.GGUFReader(str(path))
        arch = reader.fields["general.architecture"].contents()
        return int(reader.fields[f"{arch}.block_count"].contents())
    except Exception:  # noqa: BLE001 - sizing falls back to a default layer count
        return None


def embedding_gguf(folder: Path, name: str, entry: ModelEntry) -> Path:
    """A pinned HF embedding checkpoint (small: MiniLM is 90 MB) converted to an F16 GGUF once, kept in
    the cache under its checksum, so ``ei.load("all-minilm-l6-v2").embed(...)`` just works."""
    target = cache_root() / "converted" / f"{name}-{entry.sha256[:16]}-F16.gguf"
    if not target.is_file():
        try:
            from converters import convert
        except ImportError as exc:
            raise BackendUnavailableError(
                f"{name} is a Hugging Face checkpoint and converting it needs the converters: "
                "pip install 'edgeinfer[convert]'") from exc
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            convert(folder, target, format="gguf", quant="F16", quality=False)  # temp file, then rename
        except OutputExistsError:  # another process converted it meanwhile
            pass
    return target


@dataclass(frozen=True)
class Located:
    """A model on disk, and its models.lock entry when it came from one."""

    path: Path
    name: str
    entry: ModelEntry | None = None


def locate_model(name_or_path: str | Path, *, offline: bool | None = None,
                 lock: ModelLock | None = None, progress: bool = False) -> Located:
    """The verified file (or folder) for a models.lock name, or the given path as it is."""
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
    max_sequences: int = 4,
    offline: bool | None = None,
    probe: Probe | None = None,
    progress: bool = False,
    kv_ram_bytes: int | None = None,
    kv_disk: str | Path | bool | None = None,
    kv_disk_bytes: int = 2 << 30,
    kv_settle: bool = True,
    max_batch: int | None = None,
    speculation: str | Model | None = "auto",
    **backend_options: object,
) -> Model:
    """Load a model by models.lock name (e.g. 'smollm2-135m-instruct') or by path.

    KV reuse: ``kv_ram_bytes`` bounds the KV kept between requests (None: the context's own size;
    0: nothing kept); ``kv_disk`` (a folder, or True for the cache folder) keeps evicted and saved
    sequence states on disk, at most ``kv_disk_bytes``, so a restarted app resumes without prefill;
    ``kv_settle`` recomputes generated tokens' KV as a prefill in idle time, so a chat's next turn
    reuses it bit-exactly (off: the next turn recomputes the previous answer itself).
    Concurrent requests run as one batch of up to ``max_batch`` sequences (default
    ``max_sequences``); ``speculation`` drafts tokens and verifies them in one pass, greedy output
    unchanged: "auto" (prompt lookup where drafts are checked exactly: llama.cpp with
    ``flash_attn=True``), "prompt-lookup", a smaller loaded Model with the same tokenizer, or None.
    ``backend_options`` go to the backend (llama.cpp: ``n_batch``, ``flash_attn``, ``kv_unified``,
    ``repack``).
    """
    located = locate_model(name_or_path, offline=offline, progress=progress)
    path, name, entry = located.path, located.name, located.entry
    fmt = artifact_format(path)
    if fmt == "hf" and entry is not None and entry.role == "embedding":
        path, fmt = embedding_gguf(path, name, entry), "gguf"
    elif fmt == "hf":
        raise BackendUnavailableError(
            f"{name} is a Hugging Face checkpoint; convert it first: "
            f"edgeinfer convert {path} --format gguf -o {name}.gguf"
        )
    probe = probe or cached_probe()
    size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.iterdir())
    layers = _gguf_layers(path) if fmt == "gguf" and probe.gpus and n_gpu_layers is None else None
    choice = choose(probe, Artifact(fmt, size, layers), backend=backend, device=device,
                    n_gpu_layers=n_gpu_layers, n_threads=n_threads)
    factory = get_backend(choice.backend)
    be = factory(path, n_ctx=n_ctx, n_threads=choice.n_threads, n_gpu_layers=choice.n_gpu_layers,
                 max_sequences=max_sequences, device=choice.device, **backend_options)
    defaults = SamplingParams(**entry.sampling) if entry and entry.sampling else None
    sha = entry.sha256 if entry else None
    disk = None
    if kv_disk:
        sha = sha or cached_digest(path, [path], sha256_file)
        folder = cache_root() / "kv" if kv_disk is True else Path(kv_disk)
        disk = DiskCache(folder, binding={"model_sha256": sha, **be.state_binding()},
                         max_bytes=kv_disk_bytes)
    cache = PromptCache(be, ram_budget_bytes=kv_ram_bytes, disk=disk)
    return Model(be, name=name, path=path, sha256=sha, choice=choice, default_params=defaults,
                 cache=cache, settle=kv_settle, max_batch=max_batch, speculation=speculation)
