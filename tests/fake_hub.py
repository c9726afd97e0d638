"""A small fake of the Hugging Face Hub's download endpoints, served on 127.0.0.1, for tests.

What huggingface_hub (0.14 to 2.x) needs from ``HEAD``/``GET {endpoint}/{repo_id}/resolve/{revision}/{filename}``:

- every answer: ``X-Repo-Commit`` (the commit the revision resolves to) and an ``ETag``;
- a regular (git) file: ``ETag`` = its git blob sha1, ``Content-Length``, the body on ``GET``;
- an LFS file: ``302`` to a CDN with ``X-Linked-Etag`` (sha256 of the content) and ``X-Linked-Size``. The CDN is a
  second listening port, so it is another origin, like the real CDN: huggingface_hub does not follow that redirect on
  ``HEAD`` and downloads from the ``Location`` it got;
- ``Range: bytes=N-`` answered with ``206`` and ``Content-Range``;
- errors carry ``X-Error-Code`` (``RepoNotFound``, ``EntryNotFound``, ``RevisionNotFound``), which huggingface_hub
  turns into its typed exceptions.

Faults, per file (:class:`FakeFile`): ``interrupt_after`` (the next GET sends that many body bytes, then drops the
connection; with ``status_after_interrupt``, later GETs then fail with that status), ``get_status`` (GETs answer that
status, HEAD still works), ``status`` (every request answers it), ``head_errors``/``get_errors`` (the next HEADs/GETs
answer these statuses, one each: a busy server), ``served`` (bytes served instead of the content the hashes are
announced for), ``trickle`` (GETs send the body in pieces of that many bytes with that many seconds between them: a
slow or stalled server). ``FakeHub.fail_all`` makes the whole hub answer one status. Every request is recorded
(method, path, Range header, status, body bytes sent).

Use it as a context manager, or through the ``fake_hub`` fixture (``from tests.fake_hub import fake_hub`` in a
conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest

_CHUNK = 64 * 1024


def git_blob_sha1(content: bytes) -> str:
    """The id git gives a blob; the hub's ETag for a non-LFS file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class FakeFile:
    """A file in a fake repo, and the faults to inject when serving it."""

    repo_id: str
    filename: str
    content: bytes
    lfs: bool = False
    served: bytes | None = None  # bytes actually sent instead of ``content`` (hashes still describe ``content``)
    interrupt_after: int | None = None  # one-shot: the next GET drops the connection after this many body bytes
    get_status: int | None = None  # GETs answer this status (HEAD is fine): a download that breaks mid-way
    status_after_interrupt: int | None = None  # once ``interrupt_after`` fired, set ``get_status`` to this
    status: int | None = None  # every request for this file answers this status
    trickle: tuple[int, float] | None = None  # GETs send (bytes, then wait seconds) at a time: a slow server
    head_errors: list[int] = field(default_factory=list)  # the next HEADs answer these statuses, one each, in order
    get_errors: list[int] = field(default_factory=list)  # the next GETs answer these statuses, one each, in order

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else git_blob_sha1(self.content)


@dataclass
class RecordedRequest:
    method: str
    path: str
    server: str  # "hub" or "cdn"
    range: str | None
    status: int = 0
    bytes_sent: int = 0
    filename: str | None = None  # the FakeFile's filename, when the request was for one
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: FakeHub
    role: str


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_HEAD(self) -> None:
        self.server.hub._handle(self, head=True)

    def do_GET(self) -> None:
        self.server.hub._handle(self, head=False)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class FakeHub:
    """The fake hub; ``url`` is the endpoint to give huggingface_hub (``HF_ENDPOINT``)."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], FakeFile] = {}
        self.requests: list[RecordedRequest] = []
        self.fail_all: int | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # ends trickling answers when the hub stops
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self.url = ""
        self.cdn_url = ""

    # --- set-up ---------------------------------------------------------------------------------------------

    def add_file(self, repo_id: str, filename: str, content: bytes, *, lfs: bool = False) -> FakeFile:
        file = FakeFile(repo_id, filename, content, lfs=lfs)
        self.files[(repo_id, filename)] = file
        return file

    def commit(self, repo_id: str) -> str:
        return hashlib.sha1(f"commit of {repo_id}".encode()).hexdigest()

    def start(self) -> FakeHub:
        for role in ("hub", "cdn"):
            server = _Server(("127.0.0.1", 0), _Handler)
            server.hub = self
            server.role = role
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.02}, name=f"fake-{role}", daemon=True
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        self._stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what happened --------------------------------------------------------------------------------------

    def requests_for(self, filename: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.filename == filename and (method is None or r.method == method)]

    def bytes_sent(self, filename: str) -> int:
        return sum(r.bytes_sent for r in self.requests_for(filename, "GET"))

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # --- serving --------------------------------------------------------------------------------------------

    def _handle(self, handler: _Handler, *, head: bool) -> None:
        role = handler.server.role
        path = unquote(urlsplit(handler.path).path)
        record = RecordedRequest(
            method="HEAD" if head else "GET",
            path=path,
            server=role,
            range=handler.headers.get("Range"),
            headers={k.lower(): v for k, v in handler.headers.items()},
        )
        with self._lock:
            self.requests.append(record)
        try:
            if self.fail_all is not None:
                self._error(handler, record, self.fail_all, "", "Hub is down (fake)", head)
            elif role == "cdn":
                self._cdn(handler, record, path, head)
            elif path.startswith("/api/models/"):
                self._api_model(handler, record, path[len("/api/models/") :], head)
            elif "/resolve/" in path:
                self._resolve(handler, record, path, head)
            else:
                self._error(handler, record, 404, "", "Not found (fake hub)", head)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True

    def _resolve(self, handler: _Handler, record: RecordedRequest, path: str, head: bool) -> None:
        repo_id, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, filename = rest.partition("/")
        if not any(r == repo_id for r, _ in self.files):
            return self._error(handler, record, 404, "RepoNotFound", "Repository not found", head)
        if revision not in ("main", self.commit(repo_id)):
            return self._error(handler, record, 404, "RevisionNotFound", "Invalid rev id", head, repo_id)
        file = self.files.get((repo_id, filename))
        if file is None:
            return self._error(handler, record, 404, "EntryNotFound", "Entry not found", head, repo_id)
        record.filename = file.filename
        if file.status is not None:
            return self._error(handler, record, file.status, "", "Internal error (fake)", head, repo_id)
        if head and file.head_errors:
            return self._error(handler, record, file.head_errors.pop(0), "", "Busy (fake)", head, repo_id)
        if file.lfs:
            location = f"{self.cdn_url}/cdn/{quote(repo_id)}/{quote(filename)}"
            headers = {
                "Location": location,
                "X-Linked-Etag": f'"{file.sha256}"',
                "X-Linked-Size": str(len(file.content)),
                "ETag": f'"{file.sha256}"',
                "X-Repo-Commit": self.commit(repo_id),
                "Content-Length": "0",
            }
            return self._send(handler, record, 302, headers, b"", head)
        return self._serve(handler, record, file, head, {"X-Repo-Commit": self.commit(repo_id)})

    def _cdn(self, handler: _Handler, record: RecordedRequest, path: str, head: bool) -> None:
        key = path[len("/cdn/") :] if path.startswith("/cdn/") else ""
        repo_id, _, filename = key.rpartition("/")
        file = self.files.get((repo_id, filename))
        if file is None or not file.lfs:
            return self._error(handler, record, 404, "", "No such blob (fake CDN)", head)
        record.filename = file.filename
        if file.status is not None:
            return self._error(handler, record, file.status, "", "CDN error (fake)", head)
        return self._serve(handler, record, file, head, {})

    def _serve(
        self, handler: _Handler, record: RecordedRequest, file: FakeFile, head: bool, extra: dict[str, str]
    ) -> None:
        if not head and file.get_status is not None:
            return self._error(handler, record, file.get_status, "", "Download failed (fake)", head)
        if not head and file.get_errors:
            return self._error(handler, record, file.get_errors.pop(0), "", "Busy (fake)", head)
        body = file.served if file.served is not None else file.content
        total = len(body)
        start = 0
        status = 200
        headers = {"ETag": f'"{file.etag}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        headers.update(extra)
        range_header = handler.headers.get("Range")
        if range_header and not head:
            spec = range_header.strip().removeprefix("bytes=")
            first, _, last = spec.partition("-")
            start = int(first or 0)
            end = int(last) + 1 if last else total
            if start >= total:
                headers["Content-Range"] = f"bytes */{total}"
                return self._send(handler, record, 416, headers, b"", head)
            body = body[start:end]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{total}"
        headers["Content-Length"] = str(len(body))
        cut = None
        if not head and file.interrupt_after is not None:
            cut, file.interrupt_after = file.interrupt_after, None
            if file.status_after_interrupt is not None:
                file.get_status = file.status_after_interrupt
        self._send(handler, record, status, headers, body, head, cut=cut, trickle=file.trickle)

    def _api_model(self, handler: _Handler, record: RecordedRequest, rest: str, head: bool) -> None:
        repo_id = rest.split("/revision/")[0].rstrip("/")
        names = [f for r, f in self.files if r == repo_id]
        if not names:
            return self._error(handler, record, 404, "RepoNotFound", "Repository not found", head)
        info = {
            "id": repo_id,
            "modelId": repo_id,
            "sha": self.commit(repo_id),
            "private": False,
            "siblings": [{"rfilename": name} for name in names],
        }
        body = json.dumps(info).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        self._send(handler, record, 200, headers, body, head)

    def _error(
        self,
        handler: _Handler,
        record: RecordedRequest,
        status: int,
        code: str,
        message: str,
        head: bool,
        repo_id: str | None = None,
    ) -> None:
        body = json.dumps({"error": message}).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if repo_id is not None:
            headers["X-Repo-Commit"] = self.commit(repo_id)
        self._send(handler, record, status, headers, body, head)

    def _send(
        self,
        handler: _Handler,
        record: RecordedRequest,
        status: int,
        headers: dict[str, str],
        body: bytes,
        head: bool,
        *,
        cut: int | None = None,
        trickle: tuple[int, float] | None = None,
    ) -> None:
        record.status = status
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        if head:
            return
        limit = len(body) if cut is None else min(cut, len(body))
        step, pause = trickle if trickle is not None else (_CHUNK, 0.0)
        for offset in range(0, limit, step):
            chunk = body[offset : min(offset + step, limit)]
            handler.wfile.write(chunk)
            record.bytes_sent += len(chunk)
            if pause:
                handler.wfile.flush()
                if self._stopping.wait(pause):
                    break
        handler.wfile.flush()
        if cut is not None:
            handler.close_connection = True  # the client sees fewer bytes than Content-Length announced


_ENV_TO_CLEAR = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "IMAGEREWARD_OFFLINE",
    "IMAGEREWARD_HOME",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


def isolate_hf_env(monkeypatch: pytest.MonkeyPatch, hf_home: Path, endpoint: str) -> None:
    """Point huggingface_hub at ``endpoint`` and a throwaway HF_HOME; no token, no proxy, no telemetry.

    huggingface_hub reads most settings once, at import, into ``huggingface_hub.constants``: those are patched too.
    """
    for name in _ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    hf_home.mkdir(parents=True, exist_ok=True)
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_HUB_DISABLE_XET": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from huggingface_hub import constants

    patched = {
        "ENDPOINT": endpoint,
        # Built from ENDPOINT at import; hf_hub_url only swaps in an ``endpoint=`` argument if the two agree.
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
        "HF_HUB_ENABLE_HF_TRANSFER": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
    }
    for name, value in patched.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    from huggingface_hub import file_download

    if hasattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE"):  # a module-level copy in some versions (e.g. 0.26)
        monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", patched["HUGGINGFACE_CO_URL_TEMPLATE"])


def set_download_chunk_size(monkeypatch: pytest.MonkeyPatch, size: int) -> bool:
    """Make huggingface_hub's ``http_get`` write in chunks of ``size`` bytes; False if this version can't.

    It writes ``DOWNLOAD_CHUNK_SIZE`` (10 MB) at a time and loses the unwritten part of a chunk when a connection
    drops, so a few-MB test file cut in the middle only shows a resume with smaller chunks.
    """
    from huggingface_hub import constants, file_download

    patched = False
    for module in (constants, file_download):  # some versions (e.g. 0.20) keep a module-level copy
        if hasattr(module, "DOWNLOAD_CHUNK_SIZE"):
            monkeypatch.setattr(module, "DOWNLOAD_CHUNK_SIZE", size)
            patched = True
    return patched


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running :class:`FakeHub` with huggingface_hub pointed at it (see :func:`isolate_hf_env`)."""
    with FakeHub() as hub:
        isolate_hf_env(monkeypatch, tmp_path / "hf-home", hub.url)
        yield hub
