"""The Hugging Face Hub, read through huggingface_hub: ``hf:ORG/REPO[@REVISION][:FILE]`` specs, a commit's
file list with the hub's metadata (LFS sha256, git blob id), and downloads (its cache, resumed after a cut
connection, ``HF_TOKEN``, progress bars) checked against that metadata. What to download and how it is
pinned: ``edgeinfer.pull``.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import (
    ChecksumMismatchError,
    GatedModelError,
    ModelNotAvailableError,
    UnknownModelError,
)
from .hashing import sha256_file
from .lock import ModelEntry, Source
from .untrusted import relative_path

HF_PREFIX = "hf:"
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
COMMIT = re.compile(r"[0-9a-f]{40}")

NOT_A_MODEL = ("mmproj", "imatrix")  # vision projectors and importance matrices ship as .gguf too
STALE_PARTIAL_SECONDS = 600  # a partial download untouched this long belongs to a process that died


@dataclass(frozen=True)
class HubSpec:
    """``hf:ORG/REPO[@REVISION][:FILE]``, parsed and checked (the text comes from a user or a request)."""

    repo: str
    revision: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        return HF_PREFIX + self.repo + (f"@{self.revision}" if self.revision else "") + (
            f":{self.file}" if self.file else "")


def is_hub_spec(text: object) -> bool:
    return isinstance(text, str) and text.startswith(HF_PREFIX)


def parse_spec(text: str) -> HubSpec:
    """Parse ``hf:ORG/REPO[@REVISION][:FILE]``; anything else is an UnknownModelError saying the form."""
    body = text[len(HF_PREFIX):] if is_hub_spec(text) else text
    head, _, file = body.partition(":")
    repo, _, revision = head.partition("@")
    bad = (not _REPO.fullmatch(repo) or ".." in repo or (revision and (not _REVISION.fullmatch(revision)
           or ".." in revision)) or (file and not relative_path(file)))
    if bad or ("@" in head and not revision) or (":" in body and not file):
        raise UnknownModelError(f"{text!r} is not a hub model: write hf:ORG/REPO, optionally with @REVISION "
                                "(a branch, tag or commit) and :FILE (a file in the repo)")
    return HubSpec(repo, revision or None, file or None)


@dataclass(frozen=True)
class RemoteFile:
    """A file of a repo commit, with what the hub says of it."""

    name: str
    size: int | None = None
    sha256: str | None = None  # LFS files: the hub's sha256 of the content
    blob_id: str | None = None  # other files: the git blob sha1

    def check(self, path: Path, spec: HubSpec) -> str:
        """The file's sha256, after comparing it with the hub's metadata; a mismatch deletes the download
        (from the hub cache too, so a retry fetches it again) and raises ChecksumMismatchError."""
        actual = sha256_file(path)
        if self.sha256 is not None:
            expected, got = self.sha256.lower(), actual
        elif self.blob_id is not None:
            expected, got = self.blob_id.lower(), git_blob_id(path)
        else:
            return actual
        if got != expected:
            _forget_download(path)
            raise ChecksumMismatchError(
                f"{spec.repo}/{self.name}: the downloaded file has {'sha256' if self.sha256 else 'git id'} "
                f"{got[:16]}…, but the hub says {expected[:16]}…: the download was damaged and has been "
                f"deleted. Run `edgeinfer pull {spec}` again.")
        return actual


@dataclass(frozen=True)
class RepoListing:
    """One commit of a repo: its files and what the hub says about access and license."""

    spec: HubSpec
    commit: str
    files: dict[str, RemoteFile]
    license: str = ""
    gated: bool = False

    @property
    def kind(self) -> str:
        """"gguf" when the repo (or the named file) is GGUF, "safetensors" for a checkpoint, else "". A repo
        with both is read as GGUF: its files are ready to run, a conversion takes minutes."""
        if self.spec.file:
            return "gguf" if self.spec.file.lower().endswith(".gguf") else ""
        if any(is_model_gguf(n) for n in self.files):
            return "gguf"
        if any(n.endswith(".safetensors") for n in self.files) and "config.json" in self.files:
            return "safetensors"
        return ""


def is_model_gguf(name: str) -> bool:
    """A .gguf file that holds a model (not a vision projector or an importance matrix)."""
    low = Path(name).name.lower()
    return low.endswith(".gguf") and not any(word in low for word in NOT_A_MODEL)


def pinned_files(entry: ModelEntry, src: Source) -> tuple[str, ...]:
    """The repo files a hub source of ``entry`` pins: a checkpoint's files, or one GGUF."""
    return entry.files if entry.format == "hf" else (src.filename or entry.file,)


def checkpoint_folder(paths: dict[str, Path]) -> Path | None:
    """The snapshot folder of downloaded checkpoint files: the folder of one at the top of the repo."""
    return next((path.parent for name, path in paths.items() if "/" not in name), None)


def git_blob_id(path: Path) -> str:
    """The git blob sha1 of a file (the id the hub lists for files not stored in LFS)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # noqa: S324 - git's id, not security
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _forget_download(path: Path) -> None:
    """Delete a downloaded file: the hub cache's blob and the snapshot link to it."""
    blob = path.resolve()
    for item in (path, blob):
        item.unlink(missing_ok=True)


# --- talking to the hub ---------------------------------------------------------------------------
def _hub_call(spec: HubSpec, what: str, call: Callable[[], Any], offline: bool = False) -> Any:
    """Run one huggingface_hub call; its errors become EdgeInferErrors that say what to do."""
    from huggingface_hub import errors as hub_errors

    try:
        return call()
    except hub_errors.LocalEntryNotFoundError:
        if not offline:
            raise ModelNotAvailableError(f"could not reach the hub for {what} of {spec.repo}: check the "
                                         f"connection and run `edgeinfer pull {spec}` again (downloads "
                                         "resume)") from None
        raise ModelNotAvailableError(f"{spec.repo}/{what} is not in the hub cache and edgeinfer is offline "
                                     "(HF_HUB_OFFLINE or --offline)") from None
    except hub_errors.GatedRepoError as exc:
        raise GatedModelError(
            f"{spec.repo} is gated: accept its terms on its hub page, then give a token that may read it "
            f"(set HF_TOKEN, or run `hf auth login`){_status(exc)}") from None
    except hub_errors.RevisionNotFoundError:
        raise UnknownModelError(f"{spec.repo} has no revision {spec.revision!r} on the hub") from None
    except hub_errors.EntryNotFoundError:
        raise UnknownModelError(f"{spec.repo} has no file {what!r} at {spec.revision or 'main'}") from None
    except hub_errors.RepositoryNotFoundError:
        raise UnknownModelError(f"{spec.repo}: no such model repository on the hub (a private one needs a "
                                "token: set HF_TOKEN)") from None
    except hub_errors.OfflineModeIsEnabled:
        raise ModelNotAvailableError(offline_advice(spec)) from None
    except (hub_errors.HfHubHTTPError, OSError, *_transport_errors()) as exc:
        raise ModelNotAvailableError(f"could not get {what} of {spec.repo} from the hub "
                                     f"({type(exc).__name__}: {str(exc)[:300]}); check the connection and "
                                     f"run `edgeinfer pull {spec}` again (downloads resume)") from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The network errors of the HTTP library under huggingface_hub (httpx2 for 2.x, httpx for 1.x)."""
    found = []
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _status(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return f" (the hub answered {code})" if code else ""


def offline_advice(spec: HubSpec) -> str:
    return (f"{spec} is not pinned here and edgeinfer is offline (HF_HUB_OFFLINE or --offline): run "
            f"`edgeinfer pull {spec}` once while online; it then loads offline")


def list_repo(spec: HubSpec) -> RepoListing:
    """The repo's files at the spec's revision (default branch when none), with their hub metadata."""
    from huggingface_hub import HfApi

    info = _hub_call(spec, "the file list", lambda: HfApi().model_info(
        spec.repo, revision=spec.revision, files_metadata=True))
    commit = str(info.sha or "")
    if not COMMIT.fullmatch(commit):
        raise ModelNotAvailableError(f"{spec.repo}: the hub gave no commit id for {spec.revision or 'main'}")
    files = {}
    for sibling in info.siblings or []:
        name = str(sibling.rfilename)
        if not relative_path(name):
            continue  # a name that would leave the repo's folder is never used
        lfs = sibling.lfs
        files[name] = RemoteFile(name, sibling.size, getattr(lfs, "sha256", None) if lfs else None,
                                 None if lfs else sibling.blob_id)
    card = info.card_data
    license_ = card.get("license") if card is not None else None
    return RepoListing(spec, commit, files, license_ if isinstance(license_, str) else "",
                       bool(info.gated))


def download(listing: RepoListing, name: str, *, progress: bool = True,
             offline: bool = False) -> tuple[Path, str]:
    """One file of the listed commit through the hub cache (resumed if a download was cut), checked
    against the hub's metadata; its path and sha256."""
    from huggingface_hub import hf_hub_download

    remote = listing.files.get(name)
    if remote is None:
        raise UnknownModelError(f"{listing.spec.repo} has no file {name!r} at {listing.commit[:12]}; "
                                f"its files: {', '.join(sorted(listing.files)[:20])}")
    if not offline:
        _drop_stale_partials(listing.spec.repo, remote)
    path = Path(_hub_call(listing.spec, name, lambda: hf_hub_download(
        listing.spec.repo, name, revision=listing.commit, local_files_only=offline,
        tqdm_class=None if progress else _silent_bar()), offline))
    return path, remote.check(path, listing.spec)


def _drop_stale_partials(repo: str, remote: RemoteFile) -> None:
    """Delete partial downloads of this file that a killed process left in the hub cache. huggingface_hub
    2.x gives each download its own ``<etag>.<id>.incomplete`` file and never reuses one, so such a file
    would stay forever; one still growing (touched in the last STALE_PARTIAL_SECONDS) is another
    process's download and is left alone."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    etag = remote.sha256 or remote.blob_id
    if not etag:
        return
    blobs = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model") / "blobs"
    now = time.time()
    for partial in blobs.glob(f"{etag}.*.incomplete") if blobs.is_dir() else ():
        try:
            if now - partial.stat().st_mtime > STALE_PARTIAL_SECONDS:
                partial.unlink()
        except OSError:
            continue


def pinned_listing(entry: ModelEntry, src: Source) -> RepoListing:
    """The files a models.lock hub source pins, with the sha256 pinned for each (no hub call)."""
    spec = HubSpec(src.repo, src.revision)
    sums = dict(src.checksums) if entry.format == "hf" else {src.filename or entry.file: entry.sha256}
    files = {n: RemoteFile(n, None, sums.get(n)) for n in pinned_files(entry, src)}
    return RepoListing(spec, src.revision, files)


def _silent_bar() -> type:
    from tqdm.auto import tqdm

    class Silent(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


