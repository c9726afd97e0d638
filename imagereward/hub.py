"""Find the model files ImageReward needs, downloading the missing ones from the Hugging Face Hub.

Layout under a models folder (the WebUI passes its own ``models/ImageReward``)::

    ImageReward.pt                     # or ImageReward.safetensors, a conversion written by another module
    med_config.json
    bert-base-uncased/vocab.txt
    bert-base-uncased/tokenizer_config.json   # optional
    .imagereward-download/             # partial downloads and a lock file

Files already there are used as they are, without any network call, so a WebUI start never waits on the hub. An
empty file, or a checkpoint whose zip directory is missing (an interrupted copy), counts as missing: it is moved aside
(never deleted) and downloaded again.

Why not ``hf_hub_download``: since the switch to process-unique temporary files (huggingface_hub PR #4228, in the
2.x line) it deletes a partial download when it fails, so a 1.8 GB download cut off at 90 % starts again from zero on
the next run. Older versions (e.g. 0.26) kept ``<etag>.incomplete`` files and resumed. To get the same behaviour on
every version from 0.14 on, this module uses huggingface_hub's building blocks whose signatures are stable across that
range: ``get_hf_file_metadata`` (HEAD: etag, size, CDN location; follows repo renames), ``build_hf_headers`` (token,
user agent) and its progress bar. The GET itself is a plain streaming request (``urllib``, proxies from the
environment, ``Range`` resume) rather than ``http_get``, because ``http_get`` writes 10 MB at a time and has only a
per-read timeout: a server trickling a few bytes a second kept it waiting for days with the bar standing still. Here a
download that brings less than 1 MB in ``IMAGEREWARD_DOWNLOAD_STALL_S`` seconds (default 60; nothing at all included)
ends with a message; what it brought is kept and the next run resumes. The partial file is ours and is kept until it
is complete, then checked against the hash the hub announced and renamed into place. Both limits of
``hf_hub_download`` are shown against the installed version by tests/faults/test_download_retries.py. Only public
names of huggingface_hub are used.

Transient failures (HTTP 408, 429, 500, 502, 503, 504; a refused, reset or dropped connection; a failed DNS lookup)
are tried again, for the first question to the hub as for the download, before the first byte as after it: waits of
1, 2, 4, 8 s (a ``Retry-After`` is honoured up to 30 s), at most four retries in a row without new bytes.

Housekeeping of ``.imagereward-download/``: an empty partial file (nothing to resume) is removed when a download fails;
the lock file is removed when no partial download is left in the folder. A download that does not match its
hash is kept as ``<name>.corrupt`` beside the file (one per name, replaced by the next) so it can be looked at; it is
our own download, never a user's file, and it is deleted as soon as a download of that file succeeds.

The three small files take the same path rather than ``hf_hub_download``: one code path, the same hash check for
every file, and nothing but the files themselves in the models folder (``hf_hub_download`` would put a cache, or with
``local_dir`` a ``.cache/huggingface`` folder, beside them).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import math
import os
import re
import shutil
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from .errors import DownloadError, HubUnreachableError, ModelFileMissingError

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
REVISION = "main"
IMAGEREWARD_REPO_ID = "THUDM/ImageReward"
BERT_REPO_ID = "google-bert/bert-base-uncased"
#: The old name of BERT_REPO_ID; the hub redirects it. Tried only if a (mirror) hub does not know the new name.
BERT_LEGACY_REPO_ID = "bert-base-uncased"

CHECKPOINT_NAME = "ImageReward.pt"
SAFETENSORS_NAME = "ImageReward.safetensors"
MED_CONFIG_NAME = "med_config.json"
TOKENIZER_DIRNAME = "bert-base-uncased"
PARTIAL_DIRNAME = ".imagereward-download"

OFFLINE_ENV_VARS = ("IMAGEREWARD_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
#: Transient failures are tried again, before the first byte as after it: the server busy, restarting or rate
#: limiting (these statuses), a refused, reset or dropped connection, a failed DNS lookup. The waits double from
#: _BACKOFF_S up to _BACKOFF_MAX_S (a Retry-After the server sends is honoured up to _RETRY_AFTER_MAX_S); after
#: _RETRIES failures in a row without new bytes the error is reported. A stall is not retried (see _Stalled).
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_RETRIES = 4
_BACKOFF_S = 1.0
_BACKOFF_MAX_S = 8.0
_RETRY_AFTER_MAX_S = 30.0
_MAX_ATTEMPTS = 20  # per file and call, whatever the progress: a connection that drops every few MB ends too
_sleep = time.sleep  # tests record the waits
_HASH_CHUNK = 8 * 1024 * 1024
_READ_SIZE = 1024 * 1024  # at most this much per read; each read returns what has arrived
STALL_ENV_VAR = "IMAGEREWARD_DOWNLOAD_STALL_S"
DEFAULT_STALL_S = 60.0
#: A download that brings less than this in a stall period (STALL_ENV_VAR seconds) counts as stalled.
_STALL_MIN_BYTES = 1_000_000
_LOCK_NAME = "download.lock"


@dataclass(frozen=True)
class HubFile:
    """One file the model needs: where it comes from and where it goes under the models folder."""

    repo_ids: tuple[str, ...]  # the first is canonical; the others are tried in turn if the hub does not know it
    filename: str  # path inside the hub repo
    relpath: str  # path under the models folder, with forward slashes
    required: bool = True
    #: Files not on the hub (OpenAI's, Salesforce's, LAION's original addresses): the full URL, used instead of the
    #: hub; no hub token is sent there.
    url: str | None = None
    #: Known SHA-256 of the content, checked after download (for `url` files, whose servers announce none).
    sha256: str | None = None
    #: Other files under the models folder that stand for this one when present (a safetensors conversion, or an
    #: older format of the same weights: a PyTorch checkpoint counts when its zip directory is complete).
    alternatives: tuple[str, ...] = ()
    #: A PyTorch zip checkpoint: counts as present only when its zip directory is there (not cut off).
    checkpoint: bool = False

    @property
    def repo_id(self) -> str:
        return self.repo_ids[0] if self.repo_ids else ""

    @property
    def display_name(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]


CHECKPOINT_FILE = HubFile(
    (IMAGEREWARD_REPO_ID,), CHECKPOINT_NAME, CHECKPOINT_NAME, alternatives=(SAFETENSORS_NAME,), checkpoint=True
)
MED_CONFIG_FILE = HubFile((IMAGEREWARD_REPO_ID,), MED_CONFIG_NAME, MED_CONFIG_NAME)
VOCAB_FILE = HubFile((BERT_REPO_ID, BERT_LEGACY_REPO_ID), "vocab.txt", f"{TOKENIZER_DIRNAME}/vocab.txt")
TOKENIZER_CONFIG_FILE = HubFile(
    (BERT_REPO_ID, BERT_LEGACY_REPO_ID),
    "tokenizer_config.json",
    f"{TOKENIZER_DIRNAME}/tokenizer_config.json",
    required=False,
)
# Small files first: a failure on the big checkpoint then leaves everything else in place.
HUB_FILES: tuple[HubFile, ...] = (MED_CONFIG_FILE, VOCAB_FILE, TOKENIZER_CONFIG_FILE, CHECKPOINT_FILE)


@dataclass(frozen=True)
class ModelFiles:
    """Paths of the files the scorer loads."""

    checkpoint: Path  # ImageReward.safetensors if a valid conversion exists, else ImageReward.pt
    med_config: Path
    tokenizer_dir: Path  # folder holding vocab.txt (and tokenizer_config.json when the hub has one)
    models_dir: Path


def default_models_dir() -> Path:
    """``$IMAGEREWARD_HOME``, else ``~/.cache/imagereward``."""
    env = os.environ.get("IMAGEREWARD_HOME")
    return Path(env).expanduser() if env else Path("~/.cache/imagereward").expanduser()


def hub_file_url(file: HubFile, endpoint: str | None = None, repo_id: str | None = None) -> str:
    """Direct download URL of ``file`` (what a user can open in a browser to fetch it by hand)."""
    if file.url is not None:
        return file.url
    base = _endpoint(endpoint)
    return f"{base}/{repo_id or file.repo_id}/resolve/{quote(REVISION, safe='')}/{quote(file.filename)}"


def resolve_model_files(
    models_dir: str | Path | None = None,
    *,
    offline: bool | None = None,
    progress: bool = True,
    endpoint: str | None = None,
) -> ModelFiles:
    """Return ImageReward's file paths, downloading whatever required file is missing.

    ``offline=None`` follows the environment (``IMAGEREWARD_OFFLINE``, ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``).
    ``endpoint`` overrides ``HF_ENDPOINT``. Raises ``ModelFileMissingError`` naming every missing file (its path and
    URL) when downloads are off or the hub cannot be reached, and ``DownloadError`` when a download fails or does not
    match what the hub announced. Nothing is created on disk before the hub has answered.
    """
    root = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    resolve_files(root, HUB_FILES, offline=offline, progress=progress, endpoint=endpoint)
    return _model_files(root)


def resolve_files(
    root: Path,
    files: tuple[HubFile, ...],
    *,
    offline: bool | None = None,
    progress: bool = True,
    endpoint: str | None = None,
    what: str = "ImageReward model files",
) -> Path:
    """Make sure every required file of `files` is under `root`, downloading the missing ones; returns `root`.

    The same rules for every model: files already there are used without any network call; missing ones are all
    named at once when downloads are off or the server cannot be reached; downloads resume, are checked (size, and
    the hash the hub announces or the one pinned in `HubFile.sha256`) and renamed into place only when complete.
    """
    root = Path(root).expanduser()
    if not _missing_required(root, files):
        return root  # fast path: no network, not even an import of huggingface_hub

    offline_reason = _offline_reason(offline)
    if offline_reason is not None:
        reason = f"downloads are disabled ({offline_reason})"
        raise ModelFileMissingError(_missing_message(root, _missing_required(root, files), reason, endpoint, what))

    # Ask about every missing file first: when the server cannot be reached, the message names them all at once.
    missing = _missing_required(root, files)
    todo = [f for f in files if f in missing or (not f.required and not (root / f.relpath).exists())]
    answers: list[tuple[HubFile, tuple[str, Any]]] = []
    for file in todo:
        try:
            answer = _fetch_metadata(file, endpoint, root / file.relpath)
        except _NoAnswer as err:
            raise HubUnreachableError(
                _missing_message(
                    root,
                    missing,
                    f"the {'server' if file.url else 'hub'} could not be reached: {err.detail}",
                    endpoint,
                    what,
                )
            ) from err
        except DownloadError as err:
            if file.required:
                raise
            logger.info("Skipping optional file %s: %s", file.relpath, err)
            continue
        if answer is not None:
            answers.append((file, answer))

    partial_dir = root / PARTIAL_DIRNAME
    try:
        partial_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(
            f"Cannot create the models folder {root}: {err}. "
            "Choose a writable folder (IMAGEREWARD_HOME or the models_dir argument) or fix its permissions."
        ) from err

    with _download_lock(partial_dir), _progress_bars(progress):
        # Another process may have finished the downloads while this one waited for the lock.
        missing = _missing_required(root, files)
        for file, answer in answers:
            if file.required and file not in missing:
                continue
            _set_aside_incomplete(root / file.relpath)
            try:
                _download_file(file, root, endpoint, answer)
            except DownloadError as err:
                if file.required:
                    raise
                logger.info("Skipping optional file %s: %s", file.relpath, err)
    return root


# --- what is on disk -------------------------------------------------------------------------------------------


def _checkpoint_path(root: Path) -> Path | None:
    return present_path(root, CHECKPOINT_FILE)


def present_path(root: Path, file: HubFile) -> Path | None:
    """The file on disk that stands for `file`: a valid safetensors alternative first, else the file itself when
    it looks complete; None when neither is there."""
    for alternative in file.alternatives:
        path = root / alternative
        if (
            _looks_like_safetensors(path)
            if alternative.endswith(".safetensors")
            else _looks_complete(path, zip_checkpoint=True)
        ):
            return path
    path = root / file.relpath
    return path if _looks_complete(path, zip_checkpoint=file.checkpoint) else None


def _looks_like_safetensors(path: Path) -> bool:
    """Cheap structural check (header length + JSON start), enough to tell a finished conversion from a stub."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 2 <= header_len <= size - 8 and head[8:9] == b"{"


_ZIP_HEAD = b"PK\x03\x04"
_ZIP_END = b"PK\x05\x06"  # end-of-central-directory record, within the last 64 KiB + 22 bytes of a complete zip
_ZIP_END_SPAN = 65536 + 22


def _looks_complete(path: Path, *, zip_checkpoint: bool | None = None) -> bool:
    """A regular, non-empty file; a `torch.save` zip must also end with its directory (a cut-off copy does not).

    Cheap (reads at most 64 KiB at the end), so a file placed by hand is never hashed or parsed here.
    """
    try:
        if not path.is_file():
            return False
        size = path.stat().st_size
        if size == 0:
            return False
        if not (zip_checkpoint if zip_checkpoint is not None else path.name == CHECKPOINT_NAME):
            return True
        with path.open("rb") as fh:
            if fh.read(4) != _ZIP_HEAD:
                return True  # the legacy (pickle) format: the loader tells whether it is whole
            fh.seek(max(0, size - _ZIP_END_SPAN))
            return _ZIP_END in fh.read()
    except OSError:
        return False


def _missing_required(root: Path, files: tuple[HubFile, ...] = HUB_FILES) -> list[HubFile]:
    return [file for file in files if file.required and present_path(root, file) is None]


def _incomplete_note(path: Path) -> str:
    """Why a file that is there counts as missing ("" when there is none)."""
    try:
        size = path.stat().st_size
    except OSError:
        return ""
    if not path.is_file():
        return " (something that is not a file is in its place)"
    if size == 0:
        return " (the file there is empty)"
    return f" (the file there, {size:,} bytes, is truncated: it lacks the end of a PyTorch checkpoint)"


def _set_aside_incomplete(dest: Path) -> None:
    """Rename an empty or truncated file out of the way of its download (ours never deletes a user's file)."""
    if not dest.is_file():
        return
    for number in range(1, 1000):
        aside = dest.with_name(f"{dest.name}.incomplete" + (f"-{number}" if number > 1 else ""))
        if not aside.exists():
            os.replace(dest, aside)
            logger.warning("%s was empty or truncated; kept as %s and downloading it again", dest, aside)
            return


def _model_files(root: Path) -> ModelFiles:
    checkpoint = _checkpoint_path(root)
    assert checkpoint is not None  # callers check _missing_required first
    return ModelFiles(
        checkpoint=checkpoint,
        med_config=root / MED_CONFIG_NAME,
        tokenizer_dir=root / TOKENIZER_DIRNAME,
        models_dir=root,
    )


# --- settings --------------------------------------------------------------------------------------------------


def _endpoint(endpoint: str | None) -> str:
    """The explicit argument, else ``HF_ENDPOINT`` as set now, else what huggingface_hub read at import."""
    if not endpoint:
        endpoint = os.environ.get("HF_ENDPOINT")
    if not endpoint:
        try:
            from huggingface_hub import constants

            endpoint = getattr(constants, "ENDPOINT", None)
        except ImportError:  # pragma: no cover - huggingface_hub is a dependency
            endpoint = None
    return (endpoint or DEFAULT_ENDPOINT).rstrip("/")


def _offline_reason(offline: bool | None) -> str | None:
    """Why downloads are off (for the error message), or None when they are allowed."""
    if offline is not None:
        return "offline mode was asked for: --offline, or offline=True in Python" if offline else None
    for name in OFFLINE_ENV_VARS:
        value = os.environ.get(name)
        if value and value.strip().upper() in _TRUE_VALUES:
            return f"{name}={value} is set"
    return None


def _absent_folder_note(root: Path) -> str:
    """Why the models folder is not there: a name the user gave may be mistyped; the default one is just not made
    yet (no download has run), and the user never named it."""
    default = default_models_dir()
    try:
        inside_default = root.resolve() == default.resolve() or root.resolve().parent == default.resolve()
    except OSError:
        inside_default = False
    if not inside_default:
        from .scorers.specs import SCORERS  # torch-free

        if root.name in {spec.family for spec in SCORERS.values()} - {""} and root.parent.is_dir():
            return f"the subfolder {root.name} of {root.parent.resolve()} is made by the first download of these files"
        return f"the models folder {root.resolve()} does not exist: is its name right?"
    if os.environ.get("IMAGEREWARD_HOME"):
        return (
            f"the models folder {root.resolve()} does not exist; it comes from IMAGEREWARD_HOME="
            f"{os.environ['IMAGEREWARD_HOME']}: is that name right?"
        )
    return (
        f"the default models folder {root.resolve()} does not exist yet: no download has run; it is made by the "
        "first one. To use model files you already have, pass their folder (--models-dir, or models_dir in Python) "
        "or set IMAGEREWARD_HOME"
    )


def _missing_message(
    root: Path, missing: list[HubFile], reason: str, endpoint: str | None, what: str = "ImageReward model files"
) -> str:
    """Every missing file with its full path and URL, and the two ways out; the same words for every front end."""
    lines = [f"{what} are missing and cannot be downloaded now: {reason}."]
    if not root.exists():
        lines.append(f"  ({_absent_folder_note(root)})")
    for file in missing:
        dest = root / file.relpath
        note = _incomplete_note(dest)
        lines.append(f"  - missing: {dest.resolve()}{note}")
        lines.append(f"    download it from {hub_file_url(file, endpoint)} and save it under exactly that path")
        for alternative in file.alternatives:
            lines.append(f"    (a converted {alternative} in the same folder also works)")
    lines.append(
        "Place the files there (nothing is downloaded then), or allow downloads: leave out --offline (offline=True "
        "in Python), unset " + "/".join(OFFLINE_ENV_VARS) + ", and check the network, proxy and HF_ENDPOINT."
    )
    return "\n".join(lines)


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn huggingface_hub's progress bars off for the duration if asked (a process-wide switch)."""
    if enabled:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


@contextlib.contextmanager
def _download_lock(partial_dir: Path) -> Iterator[None]:
    """One downloader per models folder (WebUI and command line may start at once)."""
    from filelock import FileLock, Timeout  # a dependency of huggingface_hub on every supported version

    path = partial_dir / _LOCK_NAME
    lock = FileLock(str(path))
    for _ in range(5):
        try:
            lock.acquire(timeout=0.5)
        except Timeout:
            logger.info("Waiting for another process downloading ImageReward files into %s", partial_dir.parent)
            lock.acquire()
        if path.exists():
            break
        # The process that held it removed the lock file on its way out (below): lock the file anew, so that a
        # process starting now and this one lock the same file.
        lock.release()
    try:
        yield
    finally:
        try:
            _tidy_partial_dir(partial_dir)
        finally:
            lock.release()


def _tidy_partial_dir(partial_dir: Path) -> None:
    """Under the lock: remove empty partial files (nothing to resume) and, when no partial download is left, the
    lock file (a stale lock is clutter: the lock itself is the operating system's, not the file's existence)."""
    with contextlib.suppress(OSError):
        for part in partial_dir.glob("*.part"):
            if part.is_file() and part.stat().st_size == 0:
                part.unlink()
    with contextlib.suppress(OSError):
        if not any(partial_dir.glob("*.part")):
            (partial_dir / _LOCK_NAME).unlink()


# --- download --------------------------------------------------------------------------------------------------


class _NoAnswer(DownloadError):
    """No answer from the hub at all (connection refused, DNS, timeout): every missing file is reported at once."""

    def __init__(self, message: str, *, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the transfer failed" on the HTTP stack of the installed huggingface_hub."""
    errors: list[type[BaseException]] = [OSError]  # includes requests' errors and HfHubHTTPError
    for module_name in ("httpx2", "httpx"):  # huggingface_hub 1.x/2.x; a module not imported raises nothing
        module = sys.modules.get(module_name)
        if module is not None and isinstance(getattr(module, "HTTPError", None), type):
            errors.append(module.HTTPError)
    from huggingface_hub.utils import HfHubHTTPError

    errors.append(HfHubHTTPError)
    return tuple(errors)


def _describe_error(err: BaseException) -> str:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(err, urllib.error.HTTPError):
        status = err.code
    if isinstance(status, int):
        return f"the server answered HTTP {status}"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else 'no details'}"


def _manual_hint(file: HubFile, dest: Path, endpoint: str | None) -> str:
    return f"You can also download {hub_file_url(file, endpoint)} yourself and save it as {dest}."


def _fetch_metadata(file: HubFile, endpoint: str | None, dest: Path) -> tuple[str, Any] | None:
    """HEAD the file on the hub: ``(repo_id, metadata)``, or None if an optional file does not exist there."""
    if file.url is not None:
        return _fetch_url_metadata(file, dest)
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.utils import EntryNotFoundError, RepositoryNotFoundError

    for index, repo_id in enumerate(file.repo_ids):
        url = hub_file_url(file, endpoint, repo_id)
        try:
            return repo_id, _retrying(lambda url=url: get_hf_file_metadata(url), f"the hub's answer for {url}")
        except RepositoryNotFoundError as err:
            if index + 1 < len(file.repo_ids):
                logger.info("The hub does not know %s, trying %s", repo_id, file.repo_ids[index + 1])
                continue
            raise DownloadError(
                f"The hub at {_endpoint(endpoint)} has no repository {repo_id} ({_describe_error(err)}). "
                "Check HF_ENDPOINT, or place the file by hand."
            ) from err
        except EntryNotFoundError as err:
            if not file.required:
                logger.info("Optional file %s is not on the hub; skipping it", url)
                return None
            raise DownloadError(
                f"The hub has no file at {url} ({_describe_error(err)}). Check HF_ENDPOINT, or place the file by hand "
                f"as {dest}."
            ) from err
        except _network_errors() as err:
            if type(err).__name__ == "OfflineModeIsEnabled":
                raise ModelFileMissingError(
                    f"{dest} is missing and huggingface_hub refuses network access (HF_HUB_OFFLINE was set when it "
                    f"was imported). Download {url} yourself and save it as {dest}."
                ) from err
            message = (
                f"Could not query the hub for {url}: {_describe_error(err)}. Check the network connection, proxy "
                f"and HF_ENDPOINT (or wait if the hub is down), then run again; or download that file yourself and "
                f"save it as {dest}."
            )
            if isinstance(getattr(getattr(err, "response", None), "status_code", None), int):
                raise DownloadError(message) from err  # the hub answered, with an error: about this file
            raise _NoAnswer(message, detail=f"{_endpoint(endpoint)} ({_describe_error(err)})") from err
    return None  # pragma: no cover - the loop returns or raises


@dataclass(frozen=True)
class _UrlAnswer:
    """What a plain web server told about a file: its final address after redirects and its size. The pinned
    SHA-256 stands in for the hub's etag, so the partial file is named after it and the download is checked
    against it."""

    etag: str | None
    size: int | None
    location: str


def _fetch_url_metadata(file: HubFile, dest: Path) -> tuple[str, Any]:
    """HEAD a file outside the hub, following redirects (huggingface_hub's HEAD follows only relative ones)."""
    import urllib.error
    import urllib.request

    assert file.url is not None
    request = urllib.request.Request(file.url, method="HEAD", headers={"User-Agent": "sd-webui-imagereward"})

    def head() -> _UrlAnswer:
        with _opener().open(request, timeout=30) as response:
            length = response.headers.get("Content-Length")
            size = int(length) if length and length.isdigit() else None
            return _UrlAnswer(etag=file.sha256, size=size, location=response.geturl())

    try:
        return "", _retrying(head, f"the answer of {file.url}")
    except urllib.error.HTTPError as err:
        raise DownloadError(
            f"{file.url} answered {err.code} {err.reason}. Download it yourself and save it as {dest}."
        ) from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise _NoAnswer(
            f"Could not reach {file.url}: {reason}. Download it yourself and save it as {dest}.",
            detail=f"{urlparse(file.url).netloc} ({reason})",
        ) from err


def _download_file(file: HubFile, root: Path, endpoint: str | None, answer: tuple[str, Any]) -> None:
    """Download one file the hub described (`answer`, from `_fetch_metadata`), resuming and checking it."""
    dest = root / file.relpath
    repo_id, meta = answer
    url = hub_file_url(file, endpoint, repo_id)
    etag: str | None = meta.etag
    expected_size: int | None = meta.size
    location: str = meta.location or url

    partial = _partial_path(root, file, etag)
    _remove_stale_partials(file, partial)
    headers = _request_headers(url, location)
    if file.url is not None:  # never send a hub token to another server
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    stall_s = download_stall_seconds()
    partial.touch()  # so that an empty file on the hub still yields a (verified) empty file here

    failures = 0  # in a row, without new bytes
    for attempt in range(1, _MAX_ATTEMPTS + 1):
        done = partial.stat().st_size if partial.exists() else 0
        if expected_size is not None and done > expected_size:
            logger.warning("Partial download %s is larger than the file on the hub; starting over", partial)
            partial.unlink()
            done = 0
        if expected_size is not None and done == expected_size:
            break
        if expected_size is not None:
            _check_disk_space(partial.parent, expected_size - done, file)
        if done:
            logger.info("Resuming %s at %s of %s", file.relpath, _mb(done), _mb(expected_size))
        else:
            logger.info("Downloading %s (%s) to %s", url, _mb(expected_size), dest)
        try:
            with partial.open("ab") as fh:
                _http_get(
                    location,
                    fh,
                    resume_size=done,
                    headers=headers,
                    expected_size=expected_size,
                    display_name=file.display_name,
                    stall_s=stall_s,
                )
        except _Stalled as err:  # not retried: a server this slow is not faster a second later
            raise DownloadError(
                f"The download of {file.relpath} from {url} stalled: {err}. {_kept_note(partial)}On a slow "
                f"connection, give it longer: set {STALL_ENV_VAR} to more seconds (now {stall_s:g}). "
                f"{_manual_hint(file, dest, endpoint)}"
            ) from None
        except _network_errors() as err:
            progressed = (partial.stat().st_size if partial.exists() else 0) > done
            failures = 0 if progressed else failures + 1
            if _is_transient(err) and failures <= _RETRIES and attempt < _MAX_ATTEMPTS:
                _wait_before_retry(err, max(0, failures - 1), f"the download of {file.relpath}")
                continue
            raise DownloadError(
                f"Could not download {file.relpath} from {url}: {_describe_error(err)}. {_kept_note(partial)}"
                f"{_manual_hint(file, dest, endpoint)}"
            ) from err
        break

    _verify_and_install(file, partial, dest, etag, expected_size, url, endpoint)


def _status_of(err: BaseException) -> int | None:
    """The HTTP status of an error answer (urllib's, requests', httpx's, huggingface_hub's), else None."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code
    status = getattr(getattr(err, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _is_transient(err: BaseException) -> bool:
    """Whether trying again later may succeed: a status in _TRANSIENT_STATUS, or no answer at all (a refused,
    reset or dropped connection, a timeout before the answer, a failed DNS lookup); never a certificate problem."""
    status = _status_of(err)
    if status is not None:
        return status in _TRANSIENT_STATUS
    if "CERTIFICATE" in str(err).upper() or type(err).__name__ == "OfflineModeIsEnabled":  # (a ConnectionError)
        return False
    transport: list[type[BaseException]] = [
        ConnectionError,
        TimeoutError,
        socket.gaierror,
        http.client.HTTPException,
        urllib.error.URLError,
    ]
    for module_name, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",))):
        module = sys.modules.get(module_name)
        transport += [getattr(module, n) for n in names if isinstance(getattr(module, n, None), type)]
    requests_exceptions = sys.modules.get("requests.exceptions")
    for name in ("ConnectionError", "Timeout", "ChunkedEncodingError"):
        if isinstance(getattr(requests_exceptions, name, None), type):
            transport.append(getattr(requests_exceptions, name))
    return isinstance(err, tuple(transport)) or isinstance(err.__cause__ or err.__context__, tuple(transport))


def _retry_after(err: BaseException) -> float | None:
    """The seconds a `Retry-After: N` header of the error answer asks for, if any."""
    headers = getattr(err, "headers", None) or getattr(getattr(err, "response", None), "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return min(float(value), _RETRY_AFTER_MAX_S) if value is not None else None
    except ValueError:  # an HTTP date: the usual backoff
        return None


def _wait_before_retry(err: BaseException, retry: int, what: str) -> None:
    """Wait before retry number `retry` (0 first): _BACKOFF_S doubled each time up to _BACKOFF_MAX_S, or longer
    when the server asked for it."""
    delay = min(_BACKOFF_S * 2**retry, _BACKOFF_MAX_S)
    delay = max(delay, _retry_after(err) or 0.0)
    logger.warning("%s failed (%s); trying again in %.1f s", what, _describe_error(err), delay)
    _sleep(delay)


def _retrying(call: Any, what: str) -> Any:
    """`call()`, tried again after transient failures (`_is_transient`), at most _RETRIES times, with backoff."""
    for retry in range(_RETRIES + 1):
        try:
            return call()
        except Exception as err:
            if retry == _RETRIES or not _is_transient(err):
                raise
            _wait_before_retry(err, retry, what)
    raise AssertionError("unreachable")  # pragma: no cover


def _kept_note(partial: Path) -> str:
    """What happened to the bytes of a failed download. An empty partial file is removed: nothing to resume."""
    try:
        now = partial.stat().st_size
    except OSError:
        return ""
    if now == 0:
        with contextlib.suppress(OSError):
            partial.unlink()
        return ""
    return f"The {_mb(now)} already downloaded are kept in {partial}; running again resumes from there. "


def download_stall_seconds() -> float:
    """``IMAGEREWARD_DOWNLOAD_STALL_S`` (seconds), else 60; a value that is not a positive number is refused."""
    value = os.environ.get(STALL_ENV_VAR, "").strip()
    if not value:
        return DEFAULT_STALL_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise DownloadError(
            f"{STALL_ENV_VAR}={value!r} is not a positive number of seconds: set it to, e.g., 300 to let a slow "
            f"download go on for 5 minutes with less than {_mb(_STALL_MIN_BYTES)} arriving, or unset it (default "
            f"{DEFAULT_STALL_S:g})."
        )
    return seconds


class _Stalled(Exception):
    """The transfer brought (almost) nothing for the stall period; the message says how little."""


class _NoStrayToken(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never carry the hub token to another host (a signed CDN address)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlparse(newurl).netloc != urlparse(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _opener() -> urllib.request.OpenerDirector:
    """urllib with proxies from the environment (as huggingface_hub), no token carried to another host, and the
    system's certificate authorities plus certifi's (what huggingface_hub's HTTP stack trusts), so a Python without
    system certificates (python.org's on macOS) verifies the hub as huggingface_hub would."""
    import ssl

    context = ssl.create_default_context()
    with contextlib.suppress(ImportError, OSError, ssl.SSLError):
        import certifi  # a dependency of httpx and requests, so of every huggingface_hub

        context.load_verify_locations(certifi.where())
    return urllib.request.build_opener(_NoStrayToken, urllib.request.HTTPSHandler(context=context))


def _http_get(
    url: str,
    fh: Any,
    *,
    resume_size: int,
    headers: dict[str, str],
    expected_size: int | None,
    display_name: str,
    stall_s: float = DEFAULT_STALL_S,
) -> None:
    """Stream `url` into `fh` (opened for appending) from byte `resume_size` on, with a progress bar.

    Raises `_Stalled` when less than `_STALL_MIN_BYTES` arrive in `stall_s` seconds (or nothing at all: the socket
    timeout), `OSError` when the connection ends early or the server answers an error (urllib's `HTTPError`).
    """
    from huggingface_hub.utils import tqdm

    request_headers = dict(headers)
    if resume_size:
        request_headers["Range"] = f"bytes={resume_size}-"
    opener = _opener()
    received = 0
    try:
        with opener.open(urllib.request.Request(url, headers=request_headers), timeout=stall_s) as response:
            if resume_size and response.status != 206:  # the server ignored the range: start again from zero
                fh.seek(0)
                fh.truncate()
                resume_size = 0
            with tqdm(
                total=expected_size,
                initial=resume_size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=display_name,
                file=sys.stderr,
            ) as bar:
                window_start, window_bytes = time.monotonic(), 0
                while chunk := response.read1(_READ_SIZE):
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    window_bytes += len(chunk)
                    now = time.monotonic()
                    if now - window_start >= stall_s:
                        if window_bytes < _STALL_MIN_BYTES:
                            raise _Stalled(
                                f"only {window_bytes:,} bytes arrived in the last {now - window_start:.1f} s "
                                f"(less than {_mb(_STALL_MIN_BYTES)} in {stall_s:g} s counts as stalled)"
                            )
                        window_start, window_bytes = now, 0
    except TimeoutError:
        raise _Stalled(f"nothing arrived for {stall_s:g} s") from None
    except http.client.HTTPException as err:  # a broken chunked answer: a dropped connection
        raise ConnectionError(f"{type(err).__name__}: {err}") from err
    finally:
        fh.flush()
    if expected_size is not None and resume_size + received != expected_size:
        raise ConnectionError(f"the connection closed after {resume_size + received:,} of {expected_size:,} bytes")


def _request_headers(url: str, location: str) -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    headers = dict(build_hf_headers(library_name="sd-webui-imagereward"))
    if urlparse(location).netloc != urlparse(url).netloc:
        # A signed CDN URL: the hub token must not travel there (huggingface_hub does the same).
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    return headers


def _partial_path(root: Path, file: HubFile, etag: str | None) -> Path:
    """Partial files are named after the announced etag, so a partial of an older version is never resumed."""
    tag = re.sub(r"[^A-Za-z0-9_-]", "", etag or "")[:64] or "noetag"
    return root / PARTIAL_DIRNAME / f"{_flat_name(file)}.{tag}.part"


def _flat_name(file: HubFile) -> str:
    return file.relpath.replace("/", "--")


def _remove_stale_partials(file: HubFile, keep: Path) -> None:
    """Delete partials of the same file for other etags; they are ours and can never complete."""
    prefix = _flat_name(file) + "."
    for other in keep.parent.glob("*.part"):
        tag = other.name[len(prefix) : -len(".part")]
        if other != keep and other.name.startswith(prefix) and "." not in tag:
            logger.info("Removing an outdated partial download %s", other)
            with contextlib.suppress(OSError):
                other.unlink()


def _check_disk_space(folder: Path, needed: int, file: HubFile) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed:
        raise DownloadError(
            f"Not enough disk space for {file.relpath}: {_mb(needed)} more are needed in {folder}, {_mb(free)} free. "
            "Free some space or point IMAGEREWARD_HOME / the models folder at another disk."
        )


def _verify_and_install(
    file: HubFile,
    partial: Path,
    dest: Path,
    etag: str | None,
    expected_size: int | None,
    url: str,
    endpoint: str | None,
) -> None:
    """Compare the finished partial with the hub's announcement, then rename it into place (or aside)."""
    size = partial.stat().st_size
    sha256, git_sha1 = _hash_file(partial, with_git_sha1=_is_hex(etag, 40))
    problem = None
    if expected_size is not None and size != expected_size:
        problem = f"it has {size} bytes, the hub announced {expected_size}"
    elif _is_hex(etag, 64) and sha256 != etag:
        problem = f"its sha256 is {sha256}, {'the expected one is' if file.url else 'the hub announced'} {etag}"
    elif _is_hex(etag, 40) and git_sha1 != etag:
        problem = f"its git blob sha1 is {git_sha1}, the hub announced {etag}"
    elif not (_is_hex(etag, 64) or _is_hex(etag, 40)):
        logger.warning("The hub sent no usable hash for %s (etag %r); only its size was checked", url, etag)

    if problem is not None:
        corrupt = dest.with_name(dest.name + ".corrupt")
        os.replace(partial, corrupt)
        raise DownloadError(
            f"The download of {file.relpath} from {url} is corrupt: {problem}. Nothing was installed as {dest}. "
            f"The corrupt download ({_mb(size)}) is kept as {corrupt} for a look; it is our own download, not a file "
            f"of yours: delete it when you like (it is replaced by the next corrupt download of this file and "
            f"deleted once a download of it succeeds). Run again to download it anew; if this keeps happening, check "
            f"any proxy or mirror (HF_ENDPOINT). {_manual_hint(file, dest, endpoint)}"
        )

    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, dest)
    corrupt = dest.with_name(dest.name + ".corrupt")
    if corrupt.is_file() and not corrupt.is_symlink():  # our earlier corrupt download of this file: not needed now
        with contextlib.suppress(OSError):
            corrupt.unlink()
            logger.info("Deleted %s, an earlier corrupt download of %s", corrupt, dest.name)
    logger.info("Installed %s (%s, verified)", dest, _mb(dest.stat().st_size))


def _hash_file(path: Path, *, with_git_sha1: bool) -> tuple[str, str | None]:
    """SHA-256 of the content and, if asked, the git blob id (sha1 of ``b"blob <size>\\0" + content``)."""
    sha256 = hashlib.sha256()
    sha1 = None
    if with_git_sha1:
        sha1 = hashlib.sha1()
        sha1.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            sha256.update(chunk)
            if sha1 is not None:
                sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest() if sha1 is not None else None


def _is_hex(value: str | None, length: int) -> bool:
    return value is not None and len(value) == length and re.fullmatch(r"[0-9a-f]+", value) is not None


def _mb(size: int | None) -> str:
    return "unknown size" if size is None else f"{size / 1e6:.1f} MB"
