"""A local Hugging Face Hub for tests: the real ``huggingface_hub`` client talks to it through
``HF_ENDPOINT=hub.url`` (or ``endpoint=``), so downloads, resumes and errors run for real, offline.

Serves ``/api/models/{repo}[/revision/{rev}]`` (``?blobs=true``, ``?expand=``),
``/api/models/{repo}/tree/{rev}`` (``?recursive=``) and ``HEAD``/``GET /{repo}/resolve/{rev}/{file}``
(``Range`` -> 206), files directly (no CDN redirect, no ``X-Xet-*`` headers: the client uses plain HTTP).
Errors carry the hub's ``X-Error-Code``, which the client maps to ``RepositoryNotFoundError``,
``GatedRepoError``, ``RevisionNotFoundError`` and ``EntryNotFoundError``. As on the real hub, a gated repo's
metadata (model_info, tree) is public (``gated="manual"``); its files are refused: 401 without a token, 403
with one the hub does not know.

What huggingface_hub 2.4.0 does with the fault knobs (tests/test_local_hub.py checks it):

- ``interrupt``: ``http_get`` retries within the same call (1 s sleep, up to 5 times), with
  ``Range: bytes=N-`` where N is what it wrote. It writes whole 10 MiB chunks only (httpx's ``iter_bytes``
  drops a partial chunk on error): N is ``after_bytes`` rounded down to 10 MiB, 0 (no Range) for a cut below.
- ``stall`` + killing the client: the partial file stays as ``blobs/<etag>.<8 hex>.incomplete`` (a name unique
  to the process; 10 MiB steps again). No later call resumes from it: the next one downloads the whole file
  into a new temporary file, without Range, and the stale one is left behind.
- ``corrupt``: the client checks the size only, never the sha256: the download "succeeds" with wrong bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin")
LFS_MIN_SIZE = 10 * 1024
_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"  # "name" or "org/name"
_API = re.compile(rf"^/api/models/{_REPO}(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?P<sub>/.*)?)?$")
_RESOLVE = re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def default_lfs(name: str, size: int) -> bool:
    """The hub's usual .gitattributes: weights and anything large go to LFS."""
    return name.endswith(LFS_SUFFIXES) or size > LFS_MIN_SIZE


@dataclass
class Blob:
    """One file's bytes and the ids the hub gives it."""

    data: bytes
    lfs: bool

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        spec = "version https://git-lfs.github.com/spec/v1"
        return f"{spec}\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @cached_property
    def blob_id(self) -> str:
        """The git blob sha1 of what git stores: the LFS pointer for LFS files, the bytes otherwise."""
        raw = self.pointer if self.lfs else self.data
        return hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id

    def lfs_json(self, sha_key: str) -> dict:
        """The ``lfs`` entry: model_info calls the sha256 ``sha256``, the tree calls it ``oid``."""
        return {sha_key: self.sha256, "size": len(self.data), "pointerSize": len(self.pointer)}


@dataclass
class Repo:
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)
    main: str = ""
    gated: bool = False
    private: bool = False
    card_data: dict | None = None


@dataclass(frozen=True)
class Request:
    """One request the hub answered (``range`` is the raw ``Range`` header)."""

    method: str
    path: str
    query: str
    range: str | None
    auth: bool
    status: int


class Stall(threading.Event):
    """A held GET, and the event that lets it go on (``release()``, alias of ``set()``): ``reached`` is set
    once ``after_bytes`` are sent, ``disconnected`` if the client went away while held."""

    def __init__(self, after_bytes: int) -> None:
        super().__init__()
        self.after_bytes, self.reached, self.disconnected = after_bytes, threading.Event(), threading.Event()

    release = threading.Event.set


@dataclass
class _Error(Exception):
    """A refusal, as the hub words it: status, ``X-Error-Code``, message, and the commit when known."""

    status: int
    code: str
    message: str
    commit: str | None = None


class LocalHub:
    """The hub: repos, tokens, fault knobs and the log of requests, served on 127.0.0.1 in a thread."""

    def __init__(self, tokens: tuple[str, ...] | set[str] = ("hf_good",)) -> None:
        self.tokens: set[str] = set(tokens)
        self._repos: dict[str, Repo] = {}
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._interrupts: dict[tuple[str, str], list[int]] = {}
        self._stalls: dict[tuple[str, str], Stall] = {}
        self._held: list[Stall] = []  # every stall handed out, released on close
        self._corrupt: set[tuple[str, str]] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # type: ignore[method-assign] # quiet
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def __enter__(self) -> LocalHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for stall in self._held:
            stall.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- content -------------------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes | Path],
        *,
        gated: bool = False,
        private: bool = False,
        card_data: dict | None = None,
        lfs: Callable[[str], bool] | None = None,
    ) -> str:
        """Commits ``files`` (the whole tree) to ``repo_id``'s "main" and returns the commit sha; earlier
        commits stay reachable by sha."""
        blobs = {}
        for name, content in files.items():
            data = content.read_bytes() if isinstance(content, Path) else bytes(content)
            blobs[name] = Blob(data, lfs(name) if lfs is not None else default_lfs(name, len(data)))
        with self._lock:
            repo = self._repos.setdefault(repo_id, Repo())
            tree = sorted((name, blob.etag) for name, blob in blobs.items())
            seed = json.dumps([repo_id, repo.main, len(repo.commits), tree])
            sha = hashlib.sha1(seed.encode()).hexdigest()
            repo.commits[sha], repo.main = blobs, sha
            repo.gated, repo.private, repo.card_data = gated, private, card_data
        return sha

    # --- fault knobs ---------------------------------------------------------------------------------------

    def interrupt(self, repo_id: str, filename: str, after_bytes: int, times: int = 1) -> None:
        """The next ``times`` GETs of the file send ``after_bytes`` of the body, then close the connection."""
        with self._lock:
            self._interrupts.setdefault((repo_id, filename), []).extend([after_bytes] * times)

    def stall(self, repo_id: str, filename: str, after_bytes: int) -> Stall:
        """The next GET of the file sends ``after_bytes``, then holds until released or the client is gone."""
        handle = Stall(after_bytes)
        with self._lock:
            self._stalls[(repo_id, filename)] = handle
            self._held.append(handle)
        return handle

    def corrupt(self, repo_id: str, filename: str) -> None:
        """Serves the file with its middle byte flipped; its metadata (size, sha256, etag) stays true."""
        with self._lock:
            self._corrupt.add((repo_id, filename))

    def repair(self, repo_id: str, filename: str) -> None:
        """Serves the file's true bytes again."""
        with self._lock:
            self._corrupt.discard((repo_id, filename))

    @property
    def requests(self) -> list[Request]:
        """A snapshot of the requests answered so far."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # --- lookups (raise _Error as the real hub answers) ----------------------------------------------------

    def _lookup(self, repo_id: str, rev: str, token: str | None, files: bool = False) -> tuple[Repo, str]:
        """The repo and the commit ``rev`` names, as ``token`` may see them (``files``: its files too)."""
        repo = self._repos.get(repo_id)
        if repo is None or (repo.private and token not in self.tokens):  # 404 only to a known user
            raise _Error(404 if token in self.tokens else 401, "RepoNotFound", "Repository not found")
        if files and repo.gated and token not in self.tokens:
            message = f"Access to model {repo_id} is restricted. You must be authenticated to access it."
            raise _Error(401 if token is None else 403, "GatedRepo", message)
        sha = repo.main if rev == "main" else rev
        if sha not in repo.commits:
            raise _Error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo, sha

    def _info(self, repo_id: str, rev: str, token: str | None, query: dict[str, list[str]]) -> dict:
        repo, sha = self._lookup(repo_id, rev, token)
        blobs = query.get("blobs", [""])[0].lower() == "true"
        siblings = []
        for name, blob in sorted(repo.commits[sha].items()):
            sibling: dict = {"rfilename": name}
            if blobs:
                sibling.update(size=len(blob.data), blobId=blob.blob_id)
                if blob.lfs:
                    sibling["lfs"] = blob.lfs_json("sha256")
            siblings.append(sibling)
        author = repo_id.split("/")[0] if "/" in repo_id else None
        info = {"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
                "author": author, "sha": sha, "lastModified": "2024-01-01T00:00:00.000Z",
                "createdAt": "2024-01-01T00:00:00.000Z", "private": repo.private,
                "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": list((repo.card_data or {}).get("tags", [])), "cardData": repo.card_data,
                "siblings": siblings}
        if expand := [e for value in query.get("expand", []) for e in value.split(",")]:
            info = {k: v for k, v in info.items() if k in {"_id", "id", *expand}}
        return info

    def _tree(self, repo_id: str, rev: str, sub: str, token: str | None, recursive: bool) -> list[dict]:
        repo, sha = self._lookup(repo_id, rev, token)
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        entries: dict[str, dict] = {}
        for name, blob in sorted(repo.commits[sha].items()):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            depths = range(1, len(parts) if recursive else min(len(parts), 2))  # the folders to list
            for folder in (prefix + "/".join(parts[:depth]) for depth in depths):
                oid = hashlib.sha1(f"{sha}:{folder}".encode()).hexdigest()
                entries.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                entry: dict = {"type": "file", "oid": blob.blob_id, "size": len(blob.data), "path": name}
                if blob.lfs:
                    entry["lfs"] = blob.lfs_json("oid")
                entries[name] = entry
        if prefix and not entries:
            raise _Error(404, "EntryNotFound", f"{sub} does not exist on {rev}", sha)
        return list(entries.values())

    def _file(self, repo_id: str, rev: str, filename: str, token: str | None) -> tuple[str, Blob]:
        repo, sha = self._lookup(repo_id, rev, token, files=True)
        blob = repo.commits[sha].get(filename)
        if blob is None:
            raise _Error(404, "EntryNotFound", "Entry not found", sha)
        return sha, blob

    def _faults(self, repo_id: str, filename: str) -> tuple[int | None, Stall | None, bool]:
        """Takes the faults queued for the next GET of the file: (interrupt after, stall, corrupt)."""
        key = (repo_id, filename)
        with self._lock:
            queue = self._interrupts.get(key)
            cut = queue.pop(0) if queue else None
            return cut, self._stalls.pop(key, None), key in self._corrupt


def _handler_for(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the hub; every response carries Content-Length

        def log_message(self, format: str, *args: object) -> None:  # quiet: no line per request
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            url = urlsplit(self.path)
            path, query = unquote(url.path), parse_qs(url.query)
            self._status = 0
            try:
                self._route(url.path, query, body)
            except _Error as error:
                payload = json.dumps({"error": error.message}).encode()
                headers = {"X-Error-Code": error.code, "X-Error-Message": error.message,
                           "Content-Type": "application/json"}
                if error.commit:
                    headers["X-Repo-Commit"] = error.commit
                self._head(error.status, headers, len(payload))
                if body:
                    self.wfile.write(payload)
            except OSError:  # the client went away
                self.close_connection = True
            finally:
                auth = self.headers.get("Authorization") is not None
                record = Request(self.command, path, url.query, self.headers.get("Range"), auth, self._status)
                with hub._lock:
                    hub._requests.append(record)

        def _token(self) -> str | None:
            value = self.headers.get("Authorization", "")
            return value[len("Bearer ") :] if value.startswith("Bearer ") else None

        def _head(self, status: int, headers: dict[str, str], length: int) -> None:
            self._status = status
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(length)}.items():
                self.send_header(key, value)
            self.end_headers()

        def _json(self, data: object, body: bool) -> None:
            payload = json.dumps(data).encode()
            self._head(200, {"Content-Type": "application/json"}, len(payload))
            if body:
                self.wfile.write(payload)

        def _route(self, raw_path: str, query: dict[str, list[str]], body: bool) -> None:
            if unquote(raw_path) == "/api/agent-harnesses":  # for its user agent, unless telemetry is off
                return self._json({"standardEnvVars": [], "harnesses": {}}, body)
            if match := _API.match(raw_path):
                repo_id, rev = unquote(match["repo"]), unquote(match["rev"] or "main")
                if match["kind"] == "tree":
                    recursive = query.get("recursive", [""])[0].lower() == "true"
                    tree = hub._tree(repo_id, rev, unquote(match["sub"] or ""), self._token(), recursive)
                    return self._json(tree, body)
                if match["sub"] is None:
                    return self._json(hub._info(repo_id, rev, self._token(), query), body)
            if match := _RESOLVE.match(raw_path):
                repo_id, rev, filename = unquote(match["repo"]), unquote(match["rev"]), unquote(match["file"])
                return self._resolve(repo_id, rev, filename, body)
            raise _Error(404, "NotFound", f"no route for {raw_path}")

        def _resolve(self, repo_id: str, rev: str, filename: str, body: bool) -> None:
            sha, blob = hub._file(repo_id, rev, filename, self._token())
            size = len(blob.data)
            headers = {"X-Repo-Commit": sha, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream"}
            if blob.lfs:
                headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(size)})
            start, end = 0, size
            if (spec := _RANGE.fullmatch(self.headers.get("Range", "").strip())) and any(spec.groups()):
                first, last = spec.groups()
                if first:
                    start, end = int(first), min(int(last) + 1, size) if last else size
                else:  # bytes=-N: the last N bytes
                    start = max(size - int(last), 0)
                if start >= end:
                    return self._head(416, {**headers, "Content-Range": f"bytes */{size}"}, 0)
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            cut, stall, corrupt = hub._faults(repo_id, filename) if body else (None, None, False)
            self._head(206 if "Content-Range" in headers else 200, headers, end - start)
            if not body:
                return
            data = bytearray(blob.data) if corrupt else blob.data
            if corrupt and size:
                data[size // 2] ^= 0xFF
            view = memoryview(data)[start:end]
            if cut is not None:
                self.wfile.write(view[:cut])
                self.connection.shutdown(socket.SHUT_WR)  # the announced Content-Length is never reached
                self.close_connection = True
                return
            if stall is not None:
                self.wfile.write(view[: stall.after_bytes])
                stall.reached.set()
                while not stall.wait(0.05):
                    if self._client_gone():
                        stall.disconnected.set()
                        self.close_connection = True
                        return
                view = view[stall.after_bytes :]
            self.wfile.write(view)  # unbuffered: each write is a sendall

        def _client_gone(self) -> bool:
            """Readable while no request is due means end of stream: the client closed (or died)."""
            try:
                readable = select.select([self.connection], [], [], 0)[0]
                return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
            except OSError:
                return True

    return Handler
