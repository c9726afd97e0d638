"""Object storage for collections: inputs and the results store on ``s3://``, ``gs://`` and any fsspec URL.

A text with a scheme (``s3://bucket/shards/*.tar``) names an object; anything else is a local path, and local paths
never come here. URLs go through pyarrow's filesystems (`pyarrow.fs.FileSystem.from_uri` for ``s3``/``gs``/``gcs``;
``PyFileSystem(FSSpecHandler(...))`` for the other schemes when fsspec is installed), so credentials are resolved the
usual way: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE and ``~/.aws``, instance roles,
AWS_ENDPOINT_URL(_S3) for S3-compatible servers, AWS_REGION/AWS_DEFAULT_REGION; GOOGLE_APPLICATION_CREDENTIALS for
GCS. Nothing of them is ever written to a store, a row, a message or a log: rows and keys hold the *canonical* URL
(``s3://bucket/key``: no user name, password or query), and every message shows a URL through `redact`.

A filesystem is resolved once per (scheme, bucket) and process and kept (`locate`), so items that carry only a
canonical URL (shard members read in decode workers) reuse the connection options of the URL the user gave.
"""

from __future__ import annotations

import fnmatch
import io
import os
import posixpath
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..errors import ImageRewardError
from . import deps

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
#: Schemes that pyarrow's own filesystems serve (the others go to fsspec).
ARROW_SCHEMES = frozenset({"s3", "gs", "gcs"})
#: How much of a shard is fetched per request when it is read member after member.
READ_AHEAD = 8 * 1024 * 1024


class StorageError(ImageRewardError):
    """Object storage that cannot be used: missing bucket, no credentials, access denied, no network, bad URL."""


def is_url(text: object) -> bool:
    """Whether `text` names an object by URL (a scheme of two letters or more: ``C://`` stays a Windows path)."""
    return isinstance(text, str) and _SCHEME.match(text) is not None


# ----------------------------------------------------------------------------------------------- secrets


_SECRETS: set[str] = set()  # userinfo and query values of the URLs resolved in this process
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def redact(text: str) -> str:
    """A URL as messages show it: its user name and password (``***@``) and its query values (``key=***``)
    hidden; anything else unchanged."""
    if not is_url(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "&".join(f"{key}=***" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(message: str) -> str:
    """`message` with every secret this process knows of (URL passwords and query values, the AWS secret key and
    session token of the environment) replaced by ``***``: for texts that come from pyarrow or a server."""
    secrets = set(_SECRETS) | {os.environ[name] for name in _SECRET_ENV if os.environ.get(name)}
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            message = message.replace(secret, "***")
    return message


def _remember_secrets(url: str) -> None:
    parts = urlsplit(url)
    if parts.password:
        _SECRETS.add(parts.password)
    if parts.username and parts.password is None:
        _SECRETS.add(parts.username)  # (a lone token in the user part)
    _SECRETS.update(value for _, value in parse_qsl(parts.query) if value)


# ----------------------------------------------------------------------------------------------- errors

_NO_BUCKET = ("NO_SUCH_BUCKET", "NoSuchBucket", "bucket does not exist", "The specified bucket")
_DENIED = (
    "ACCESS_DENIED",
    "AccessDenied",
    "Access Denied",
    "HTTP status 403",
    "INVALID_ACCESS_KEY_ID",
    "InvalidAccessKeyId",
    "SIGNATURE_DOES_NOT_MATCH",
    "SignatureDoesNotMatch",
    "PERMISSION_DENIED",
    "Forbidden",
    "EXPIRED_TOKEN",
    "ExpiredToken",
)
_NO_CREDENTIALS = ("NoCredentialProviders", "Unable to locate credentials", "No credentials", "MISSING_AUTHENTICATION")
_NETWORK = (
    "NETWORK_CONNECTION",
    "curlCode",
    "Could not resolve",
    "Couldn't resolve",
    "Failed to connect",
    "Connection refused",
    "Could not connect",
    "timed out",
    "Timeout",
    "UNAVAILABLE",
    "Name or service not known",
)
#: Markers of an error that reached or tried to reach the server (not a file's content).
_ACCESS = (*_NO_BUCKET, *_DENIED, *_NO_CREDENTIALS, *_NETWORK, "AWS Error", "google::cloud", "HTTP status")


def _aws_credentials_configured() -> bool:
    """Whether the environment or ``~/.aws`` names AWS credentials (an instance role cannot be seen from here)."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI")
    if any(os.environ.get(name) for name in (*names, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")):
        return True
    files = (
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"),
    )
    return any(os.path.isfile(os.path.expanduser(f)) for f in files)


def is_access_error(exc: BaseException) -> bool:
    """Whether `exc` says the storage could not be reached or used (network, credentials, permissions), as opposed
    to an object whose content is bad: a part of a store is set aside only for the latter."""
    if isinstance(exc, (ConnectionError, TimeoutError, PermissionError)):
        return True
    text = str(exc)
    return isinstance(exc, OSError) and any(marker in text for marker in _ACCESS)


def explain(exc: BaseException, shown: str) -> StorageError:
    """One line for a failed storage operation on `shown` (a redacted URL): bucket missing, no credentials, access
    denied, no network, not found, or pyarrow's own words (scrubbed of secrets)."""
    text = " ".join(str(exc).split())
    scheme = shown.split("://", 1)[0].lower() if is_url(shown) else ""
    aws = scheme == "s3"
    network = isinstance(exc, (ConnectionError, TimeoutError)) or any(marker in text for marker in _NETWORK)
    if any(marker in text for marker in _NO_BUCKET):
        bucket = urlsplit(shown).hostname or "?"
        return StorageError(f"{shown}: the bucket '{bucket}' does not exist (or these credentials cannot see it)")
    if any(marker in text for marker in _NO_CREDENTIALS) or (
        # (a server refuses an unsigned request in its own words: with no credentials anywhere, that is the cause)
        aws and not network and "AWS Error" in text and not _aws_credentials_configured()
    ):
        return StorageError(
            f"{shown}: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
            "or write ~/.aws/credentials"
            if aws
            else f"{shown}: no credentials found (for gs://: GOOGLE_APPLICATION_CREDENTIALS or gcloud's login)"
        )
    if any(marker in text for marker in _DENIED) or isinstance(exc, PermissionError):
        where = "AWS_ACCESS_KEY_ID/AWS_PROFILE" if aws else "the credentials"
        return StorageError(f"{shown}: access denied; check {where} and the bucket's permissions")
    if network:
        hint = " (or AWS_ENDPOINT_URL, for an S3-compatible server)" if aws else ""
        return StorageError(f"{shown}: cannot reach the storage server; check the network{hint}")
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"{shown}: no such object or folder")
    detail = scrub(text) or type(exc).__name__
    return StorageError(f"{shown}: {detail if len(detail) <= 200 else detail[:199] + '…'}")


# ----------------------------------------------------------------------------------------------- resolving


@dataclass
class _Resolved:
    fs: Any  # pyarrow.fs.FileSystem
    strip: Any  # canonical URL (no query) -> the path on `fs`


_RESOLVED: dict[tuple[str, str], _Resolved] = {}  # (scheme, bucket) -> the filesystem its objects are read with
_BY_OPTIONS: dict[tuple[str, str, str], _Resolved] = {}  # (scheme, netloc, query) of URLs with options
_LOCK = threading.Lock()


def _bucket_of(scheme: str, rest: str) -> tuple[str, str]:
    return scheme.lower(), next((c for c in rest.split("/") if c), "")


def _key(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return _bucket_of(parts.scheme, parts.netloc.rpartition("@")[2] + "/" + parts.path)


@dataclass
class Location:
    """An object or folder named by URL: a pyarrow filesystem and the path on it."""

    fs: Any
    path: str
    scheme: str
    shown: str  # the URL as given, redacted: for messages
    strip: Any = None  # canonical URL -> path on `fs` (kept so that an unpickled location registers itself)

    @property
    def url(self) -> str:
        """The canonical URL (no credentials, no query): what keys and rows hold."""
        return canonical(self.scheme, self.path)

    def __setstate__(self, state: dict[str, Any]) -> None:  # (unpickled in a worker: keep its filesystem there too)
        self.__dict__.update(state)
        with _LOCK:
            _RESOLVED.setdefault(_bucket_of(self.scheme, self.path), _Resolved(self.fs, self.strip or _arrow_strip))


def canonical(scheme: str, path: str) -> str:
    return f"{scheme}://{path.lstrip('/')}" if scheme in ARROW_SCHEMES else f"{scheme}://{path}"


def _arrow_strip(url: str) -> str:
    parts = urlsplit(url)
    return (parts.netloc.rpartition("@")[2] + parts.path).rstrip("/")


def arrow_fs() -> Any:
    """``pyarrow.fs`` (with a one-line message when pyarrow is missing)."""
    deps.pyarrow()
    import pyarrow.fs

    return pyarrow.fs


def _resolve(url: str) -> _Resolved:
    scheme = urlsplit(url).scheme.lower()
    pafs = arrow_fs()
    if scheme in ARROW_SCHEMES:
        try:
            fs, _ = pafs.FileSystem.from_uri(url)
        except (OSError, ValueError, deps.pyarrow().ArrowException) as exc:
            raise explain(exc, redact(url)) from None
        if isinstance(fs, pafs.S3FileSystem):
            # One PUT for each small object instead of a multipart upload (fewer requests; S3-compatible servers
            # differ most in multipart uploads). The options are those from_uri resolved, region included.
            rebuild, (options,) = fs.__reduce__()
            if "allow_delayed_open" in options:  # (pyarrow 15 and later)
                fs = rebuild({**options, "allow_delayed_open": True})
        return _Resolved(fs, _arrow_strip)
    try:
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem
    except ImportError:
        raise StorageError(
            f"{redact(url)}: {scheme}:// URLs need fsspec (pip install fsspec, and the package for {scheme}://)"
        ) from None
    try:
        inner, _ = fsspec.core.url_to_fs(url.split("?", 1)[0])
    except (ImportError, ValueError) as exc:
        raise StorageError(f"{redact(url)}: {scheme}:// is not usable here ({scrub(str(exc))})") from None
    except Exception as exc:
        raise explain(exc, redact(url)) from None
    return _Resolved(PyFileSystem(FSSpecHandler(inner)), inner._strip_protocol)


def locate(url: str) -> Location:
    """The filesystem and path of `url`; the filesystem is resolved once per scheme and bucket in a process (a URL
    with credentials or options in it resolves anew, and is then the one its bucket uses)."""
    if not is_url(url):
        raise StorageError(f"{url}: not a URL")
    _remember_secrets(url)
    parts = urlsplit(url)
    key = _key(url)
    options = (key[0], parts.netloc, parts.query)  # (the user info and query are connection options)
    with _LOCK:
        found = _BY_OPTIONS.get(options) if parts.query or "@" in parts.netloc else _RESOLVED.get(key)
    if found is None:
        found = _resolve(url)
        with _LOCK:
            _RESOLVED[key] = _BY_OPTIONS[options] = found
    plain = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    path = found.strip(plain)
    return Location(found.fs, path, key[0], redact(url), found.strip)


def forget() -> None:
    """Drop the resolved filesystems and cached readers (tests that change the environment between runs)."""
    with _LOCK:
        _RESOLVED.clear()
        _BY_OPTIONS.clear()
    for reader in _READERS.values():
        reader.close()
    _READERS.clear()


# ----------------------------------------------------------------------------------------------- reading


def info(url: str) -> tuple[int, int] | None:
    """(size, mtime in ns) of an object; None when there is none. Raises StorageError when it cannot be asked."""
    where = locate(url)
    fs = arrow_fs()
    try:
        found = where.fs.get_file_info(where.path)
    except Exception as exc:
        raise explain(exc, where.shown) from None
    if found.type != fs.FileType.File:
        return None
    mtime = found.mtime_ns if found.mtime_ns is not None else -1
    return int(found.size if found.size is not None else -1), int(mtime)


def check_bucket(where: Location) -> None:
    """Raise StorageError when the bucket of `where` does not exist (listings of a missing bucket's prefixes come
    back empty, as those of an empty folder do: this tells the two apart)."""
    if where.scheme not in ARROW_SCHEMES:
        return
    bucket = where.path.split("/", 1)[0]
    try:
        found = where.fs.get_file_info(bucket)
    except Exception as exc:
        raise explain(exc, where.shown) from None
    if found.type == arrow_fs().FileType.NotFound:
        raise StorageError(f"{where.shown}: the bucket '{bucket}' does not exist (or these credentials cannot see it)")


def expand(pattern: str) -> list[str]:
    """Canonical URLs of the objects a URL names: itself, or those its ``*`` and ``[...]`` wildcards match (each
    wildcard within one path component, as a local glob). ``?`` starts a URL's query, so it is no wildcard here."""
    where = locate(pattern)
    pafs = arrow_fs()
    components = where.path.split("/")
    fixed = next((i for i, c in enumerate(components) if any(ch in c for ch in "*[")), None)
    try:
        if fixed is None:
            found = where.fs.get_file_info(where.path)
            if found.type == pafs.FileType.File:
                return [where.url]
            check_bucket(where)
            return []
        base = "/".join(components[:fixed])
        selector = pafs.FileSelector(base, recursive=len(components) - fixed > 1, allow_not_found=True)
        listed = where.fs.get_file_info(selector)
    except Exception as exc:
        raise explain(exc, where.shown) from None
    wanted = components[fixed:]
    matches = []
    for entry in listed:
        if entry.type != pafs.FileType.File:
            continue
        rest = entry.path[len(base) :].strip("/").split("/")
        if len(rest) == len(wanted) and all(fnmatch.fnmatchcase(c, w) for c, w in zip(rest, wanted, strict=True)):
            matches.append(canonical(where.scheme, entry.path))
    if not matches:
        check_bucket(where)
    return sorted(matches)


def join(base_url: str, relative: str) -> str:
    """A path listed relative to a folder named by URL (``s3://b/lists`` + ``img/1.jpg``)."""
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, posixpath.normpath(posixpath.join(parts.path, relative)), "", ""))


def parent(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, posixpath.dirname(parts.path), "", ""))


def read_all(url: str) -> bytes:
    """An object's bytes (FileNotFoundError when there is none; StorageError when it cannot be read)."""
    where = locate(url)
    try:
        with where.fs.open_input_stream(where.path) as handle:
            return handle.read()
    except FileNotFoundError:
        raise
    except Exception as exc:
        if "does not exist" in str(exc) or "NoSuchKey" in str(exc) or "NOT_FOUND" in str(exc):
            raise FileNotFoundError(url) from None
        raise explain(exc, where.shown) from None


class _Raw(io.RawIOBase):
    """A pyarrow random-access file as a raw Python stream, for `io.BufferedReader`'s read-ahead."""

    def __init__(self, native: Any, shown: str) -> None:
        self._native, self._shown = native, shown

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._native.readinto(buffer)
        except Exception as exc:
            raise explain(exc, self._shown) from None

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._native.seek(offset, whence)

    def tell(self) -> int:
        return self._native.tell()

    def close(self) -> None:
        self._native.close()
        super().close()


_READERS: OrderedDict[str, io.BufferedReader] = OrderedDict()
_KEEP_READERS = 2


def shard_reader(url: str) -> io.BufferedReader:
    """A seekable reader of an object with `READ_AHEAD` bytes fetched per request, shared in this process by the
    listing of a shard and the reading of its members (the last two shards stay open): a shard that is listed and
    read member after member is fetched once, in large ranges. Callers seek before each read and never close it."""
    reader = _READERS.get(url)
    if reader is not None and not reader.closed:
        _READERS.move_to_end(url)
        return reader
    where = locate(url)
    try:
        native = where.fs.open_input_file(where.path)
    except FileNotFoundError:
        raise StorageError(f"{where.shown}: no such object") from None
    except Exception as exc:
        raise explain(exc, where.shown) from None
    reader = io.BufferedReader(_Raw(native, where.shown), buffer_size=READ_AHEAD)
    _READERS[url] = reader
    while len(_READERS) > _KEEP_READERS:
        _, old = _READERS.popitem(last=False)
        old.close()
    return reader


def read_range(url: str, offset: int, size: int) -> bytes:
    reader = shard_reader(url)
    reader.seek(offset)
    return reader.read(size)
