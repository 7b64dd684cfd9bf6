"""A loopback Hugging Face hub for the tests: what ``huggingface_hub`` needs through ``HF_ENDPOINT``.

:class:`LocalHub` is a threaded stdlib HTTP server on ``127.0.0.1`` (the hermetic guard allows
loopback) serving model repositories held in memory, one per hub id, each a list of commits
(files: path -> bytes; :meth:`LocalHub.add_commit` from a folder written by ``tests/tiny_models``).
Endpoints, as the installed huggingface_hub calls them (``hf_api.py``, ``file_download.py``,
``_snapshot_download.py``):

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (``model_info`` /
  ``repo_info``): ``id``, ``sha``, ``gated``, ``siblings`` (``rfilename``; with ``?blobs=true``
  also ``size``, ``blobId``, ``lfs``);
- ``GET /api/models/{repo}/tree/{rev}`` (``list_repo_tree``, ``recursive``): files and folders
  with ``oid``, ``size``, ``lfs``;
- ``HEAD`` / ``GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag`` (the sha256 of an
  LFS file, the git blob id of another, as the hub), ``Content-Length``, ``Accept-Ranges``; a
  ``Range: bytes=N-`` request gets ``206`` and ``Content-Range`` (resumed downloads).

Errors as the hub sends them (``X-Error-Code``): an unknown repository ``401 RepoNotFound``, an
unknown revision ``404 RevisionNotFound``, an unknown file ``404 EntryNotFound``, and a gated
repository's files ``401 GatedRepo`` without a token / ``403 GatedRepo`` with a token that has not
accepted the licence (:meth:`LocalHub.gate`). Every request is recorded (:attr:`LocalHub.requests`:
method, path, ``Range`` header, bytes of body sent); :attr:`LocalHub.throttle` slows a file down
(bytes per second) so that a test can interrupt its download.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

#: Files stored with Git LFS on the hub (their ETag is the content's sha256).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".zip", ".npz", ".onnx", ".msgpack", ".h5")


@dataclass
class HubFile:
    data: bytes
    sha256: str = ""
    oid: str = ""  # git blob id
    lfs: bool = False

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.oid = hashlib.sha1(b"blob %d\x00" % len(self.data) + self.data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass
class Repo:
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    tokens: set[str] = field(default_factory=set)


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    status: int
    sent: int = 0


class LocalHub:
    """A hub on ``127.0.0.1`` (use as a context manager; :attr:`url` is its ``HF_ENDPOINT``)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        #: (repo id, path) -> bytes per second of that file's downloads
        self.throttle: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- content -----------------------------------------------------------------------
    def add_commit(self, repo_id: str, files: dict[str, bytes] | str | Path, sha: str | None = None,
                   ref: str = "main") -> str:
        """A new commit of ``repo_id`` (its files: a folder or path -> bytes) that ``ref`` points to;
        ``sha`` forces its id (e.g. the commit a registry entry pins). Returns the commit id."""
        if not isinstance(files, dict):
            root = Path(files)
            files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        repo = self.repos.setdefault(repo_id, Repo())
        parent = repo.refs.get(ref, "")
        content = {path: HubFile(data, lfs=path.endswith(LFS_SUFFIXES)) for path, data in files.items()}
        digest = hashlib.sha1(f"{repo_id}\n{parent}\n".encode())
        for path, f in sorted(content.items()):
            digest.update(f"{path}\x00{f.sha256}\n".encode())
        sha = sha or digest.hexdigest()
        repo.commits[sha] = content
        repo.refs[ref] = sha
        return sha

    def gate(self, repo_id: str, tokens: tuple[str, ...] = ()) -> None:
        """Make ``repo_id`` gated; ``tokens`` have accepted its licence."""
        repo = self.repos[repo_id]
        repo.gated, repo.tokens = True, set(tokens)

    def head(self, repo_id: str, ref: str = "main") -> str:
        return self.repos[repo_id].refs[ref]

    def count(self, method: str | None = None, contains: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests if (method is None or r.method == method) and contains in r.path)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- server ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "the hub is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- lookups -----------------------------------------------------------------------
    def _commit(self, repo: Repo, rev: str) -> str | None:
        if rev in repo.commits:
            return rev
        return repo.refs.get(rev)


_API_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_API_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing ----------------------------------------------------------------------
    def _record(self, status: int, sent: int = 0) -> None:
        with self.hub._lock:
            self.hub.requests.append(Request(self.command, urlsplit(self.path).path, self.headers.get("Range"),
                                             status, sent))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._record(status, 0 if self.command == "HEAD" else len(body))

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})})

    def _json(self, obj) -> None:
        self._send(200, json.dumps(obj).encode())

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found")
        return repo

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    # -- verbs -------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        if m := _API_TREE.match(path):
            return self._tree(m["repo"], m["rev"], m["path"] or "", query)
        if m := _API_INFO.match(path):
            return self._info(m["repo"], m["rev"] or "main", query)
        if m := _RESOLVE.match(path):
            return self._resolve(m["repo"], m["rev"], m["path"])
        self._error(404, "NotFound", f"no route {path}")

    def _repo_at(self, repo_id: str, rev: str):
        """``(repo, commit)``, or None after answering 404 as the hub does (unknown repo or revision)."""
        repo = self._repo(repo_id)
        if repo is None:
            return None
        sha = self.hub._commit(repo, rev)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo, sha

    def _info(self, repo_id: str, rev: str, query: dict) -> None:
        found = self._repo_at(repo_id, rev)
        if found is None:
            return
        repo, sha = found
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for name, f in sorted(repo.commits[sha].items()):
            entry = {"rfilename": name}
            if blobs:
                entry.update(size=len(f.data), blobId=f.oid)
                if f.lfs:
                    entry["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}
            siblings.append(entry)
        self._json({"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                    "gated": "manual" if repo.gated else False, "disabled": False, "siblings": siblings,
                    "lastModified": "2025-01-01T00:00:00.000Z", "tags": []})

    def _tree(self, repo_id: str, rev: str, prefix: str, query: dict) -> None:
        found = self._repo_at(repo_id, rev)
        if found is None:
            return
        repo, sha = found
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = prefix.strip("/")
        entries, folders = [], set()
        for name, f in sorted(repo.commits[sha].items()):
            if prefix and not name.startswith(prefix + "/"):
                continue
            rest = name[len(prefix) + 1:] if prefix else name
            parts = rest.split("/")
            for k in range(1, len(parts)):
                folder = "/".join(filter(None, [prefix, *parts[:k]]))
                if (recursive or k == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                    "size": 0, "path": folder})
            if len(parts) > 1 and not recursive:
                continue
            entry = {"type": "file", "oid": f.oid, "size": len(f.data), "path": name}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}
            entries.append(entry)
        self._json(entries)

    def _resolve(self, repo_id: str, rev: str, name: str) -> None:
        found = self._repo_at(repo_id, rev)
        if found is None:
            return
        repo, sha = found
        if repo.gated and self._token() not in repo.tokens:
            status = 403 if self._token() else 401
            return self._error(status, "GatedRepo",
                               f"Access to model {repo_id} is restricted. You must have access to it and be "
                               "authenticated to access it. Please log in.", {"X-Repo-Commit": sha})
        f = repo.commits[sha].get(name)
        if f is None:
            return self._error(404, "EntryNotFound", f"{name} does not exist on {rev}", {"X-Repo-Commit": sha})
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d+)-", rng.strip())):
            start, status = min(int(m[1]), len(f.data)), 206
        body = f.data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{f.etag}"')
        self.send_header("X-Repo-Commit", sha)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(f.data) - 1}/{len(f.data)}")
        self.end_headers()
        if self.command == "HEAD":
            return self._record(status)
        rate = self.hub.throttle.get((repo_id, name))
        sent = 0
        try:
            if rate:
                step = max(1, rate // 20)
                while sent < len(body):
                    self.wfile.write(body[sent:sent + step])
                    self.wfile.flush()
                    sent += len(body[sent:sent + step])
                    time.sleep(step / rate)
            else:
                self.wfile.write(body)
                sent = len(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        self._record(status, sent)
