"""The files of a results store: a local folder, or a prefix on object storage. `ResultStore` does its I/O here.

Both kinds give the same guarantees to the store: a part appears whole or not at all; a damaged part is moved (never
deleted) into ``_damaged/``; one writer at a time. How differs:

- `LocalFiles`: a part is written to a hidden temporary file, fsync'ed and renamed into place; the lock is an
  ``flock`` on ``STORE/.lock``, released by the kernel when its process dies.
- `ObjectFiles` (``s3://``, ``gs://``, fsspec URLs): a part is written to a hidden temporary object and then moved
  into place (a server-side copy, so the part is visible whole or not at all, then a delete); a damaged part is
  copied into ``_damaged/`` and then deleted; the lock is a lease object (`Lease`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from ..errors import ImageRewardError
from . import deps, storage

MARKER = ".imagereward-store"
LOCK = ".lock"


class StoreError(ImageRewardError):
    """The store folder cannot be used (not a store, not writable, in use by another run)."""


class StoreBusyError(StoreError):
    """Another run holds the store's lock."""


def files_of(folder: str | os.PathLike[str]) -> LocalFiles | ObjectFiles:
    """The files of the store at `folder` (a local path, or a URL)."""
    text = os.fspath(folder)
    if isinstance(text, str) and storage.is_url(text):
        try:
            return ObjectFiles(storage.locate(text))
        except storage.StorageError as exc:
            raise StoreError(f"store {exc}") from None
    return LocalFiles(Path(folder))


# --------------------------------------------------------------------------------------------------- local


class LocalFiles:
    """A store in a local folder (or a mounted shared file system)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = str(folder)

    def path(self, name: str) -> Path:
        return self.folder / name

    def create(self) -> None:
        path = self.folder
        if path.exists() and not path.is_dir():
            raise StoreError(f"store {path}: is a file; a store is a folder (it is created when missing)")
        if path.is_dir() and not (path / MARKER).exists():
            if any(path.iterdir()):
                raise StoreError(
                    f"store {path}: the folder holds other files and is not a results store; name a new folder"
                )
        elif not path.exists() and not path.parent.is_dir():
            raise StoreError(f"store {path}: its parent folder {path.parent} does not exist")
        try:
            path.mkdir(exist_ok=True)
            (path / MARKER).touch()
        except OSError as exc:
            raise StoreError(f"store {path}: cannot create it ({exc.strerror or exc})") from None

    def check_store(self) -> None:
        if not (self.folder / MARKER).is_file():
            what = "does not exist" if not self.folder.exists() else "is not a results store"
            raise StoreError(f"store {self.folder}: {what}; score a collection into it first")

    def names(self) -> list[str]:
        return [p.name for p in self.folder.iterdir()]

    def exists(self, path: PurePath) -> bool:
        return Path(path).exists()

    def parquet(self, path: PurePath) -> Any:
        return deps.pyarrow().parquet.ParquetFile(path)

    def access_problem(self, exc: BaseException) -> str | None:
        """Why reading failed, when it is the file system's doing (no permission...), not the part's content."""
        if isinstance(exc, OSError) and exc.errno is not None:  # pyarrow's decoding errors carry no errno
            return exc.strerror or str(exc)
        return None

    def remove(self, path: PurePath) -> None:
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()

    def remove_tree(self, path: PurePath) -> None:
        import shutil

        shutil.rmtree(path, ignore_errors=True)

    def files_under(self, path: PurePath) -> list[PurePath]:
        return sorted(Path(path).rglob("*.parquet"))

    def write_new(self, temporary: PurePath, target: PurePath, write: Callable[[Any], None]) -> None:
        """`write(handle)` into `temporary`, flushed to disk, then renamed to `target`."""
        try:
            with open(temporary, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException as exc:  # (a part found damaged while compacting, too: no temporary file is left)
            with contextlib.suppress(OSError):
                Path(temporary).unlink()
            if isinstance(exc, OSError):
                raise StoreError(f"store {self.folder}: cannot write ({exc.strerror or exc})") from None
            raise
        _fsync_folder(self.folder)

    def move_aside(self, path: PurePath, folder_name: str) -> PurePath | None:
        """Rename `path` into the folder `folder_name` under a free name; None when it is gone."""
        part = Path(path)
        if not part.exists():
            return None
        folder = self.folder / folder_name
        folder.mkdir(exist_ok=True)
        target, n = folder / part.name, 0
        while target.exists():
            n += 1
            target = folder / f"{part.name}.{n}"
        try:
            os.rename(part, target)
        except FileNotFoundError:
            return None
        _fsync_folder(self.folder)
        return target

    def listing(self, folder_name: str) -> list[str]:
        folder = self.folder / folder_name
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return _locked(self.folder / LOCK)

    def busy(self) -> bool:
        try:
            with _locked(self.folder / LOCK):
                return False
        except StoreBusyError:
            return True
        except StoreError:
            return False  # a read-only store: nobody writes to it


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open folders; its rename is durable enough for this purpose
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; one writer at a time is then the user's responsibility
        yield
        return
    try:
        handle = open(path, "a+b")  # noqa: SIM115  (closed by the with below)
    except OSError as exc:
        raise StoreError(f"store {path.parent}: not writable ({exc.strerror or exc})") from None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StoreBusyError(
                f"store {path.parent}: another run is writing to it; wait for it to finish (or stop it)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------- objects


class ObjectFiles:
    """A store under a prefix on object storage (``s3://bucket/store``)."""

    def __init__(self, where: storage.Location) -> None:
        self.where = where
        self.fs = where.fs
        self.folder = PurePosixPath(where.path)
        self.name = where.shown
        self.lease: Lease | None = None  # while this object holds the lock

    def path(self, name: str) -> PurePosixPath:
        return self.folder / name

    def _fail(self, exc: BaseException) -> StoreError:
        return StoreError(f"store {storage.explain(exc, self.name)}")

    def _info(self, path: PurePath) -> Any:
        try:
            return self.fs.get_file_info(str(path))
        except Exception as exc:
            raise self._fail(exc) from None

    def _entries(self, path: PurePath, recursive: bool = False) -> list[Any]:
        pafs = storage.arrow_fs()
        try:
            return self.fs.get_file_info(pafs.FileSelector(str(path), recursive=recursive, allow_not_found=True))
        except Exception as exc:
            raise self._fail(exc) from None

    def create(self) -> None:
        pafs = storage.arrow_fs()
        if self._info(self.folder).type == pafs.FileType.File:
            raise StoreError(f"store {self.name}: is an object; a store is a folder (a prefix) of objects")
        names = self.names()
        if MARKER in names:
            return
        if names:
            raise StoreError(
                f"store {self.name}: the folder holds other objects and is not a results store; name a new folder"
            )
        try:
            if self.where.scheme not in storage.ARROW_SCHEMES:
                self.fs.create_dir(str(self.folder), recursive=True)
            with self.fs.open_output_stream(str(self.path(MARKER))):
                pass
        except Exception as exc:
            raise self._fail(exc) from None

    def check_store(self) -> None:
        pafs = storage.arrow_fs()
        if self._info(self.path(MARKER)).type != pafs.FileType.File:
            try:
                storage.check_bucket(self.where)
            except storage.StorageError as exc:
                raise StoreError(f"store {exc}") from None
            what = "does not exist" if not self.names() else "is not a results store"
            raise StoreError(f"store {self.name}: {what}; score a collection into it first")

    def names(self) -> list[str]:
        return [PurePosixPath(entry.path).name for entry in self._entries(self.folder)]

    def exists(self, path: PurePath) -> bool:
        return self._info(path).type != storage.arrow_fs().FileType.NotFound

    def parquet(self, path: PurePath) -> Any:
        return deps.pyarrow().parquet.ParquetFile(str(path), filesystem=self.fs)

    def access_problem(self, exc: BaseException) -> str | None:
        return str(storage.explain(exc, self.name)) if storage.is_access_error(exc) else None

    def remove(self, path: PurePath) -> None:
        try:
            self.fs.delete_file(str(path))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._fail(exc) from None

    def remove_tree(self, path: PurePath) -> None:
        with contextlib.suppress(FileNotFoundError):
            try:
                self.fs.delete_dir(str(path))
            except FileNotFoundError:
                raise
            except Exception as exc:
                raise self._fail(exc) from None

    def files_under(self, path: PurePath) -> list[PurePath]:
        pafs = storage.arrow_fs()
        found = self._entries(path, recursive=True)
        return sorted(
            PurePosixPath(e.path) for e in found if e.type == pafs.FileType.File and e.path.endswith(".parquet")
        )

    def write_new(self, temporary: PurePath, target: PurePath, write: Callable[[Any], None]) -> None:
        """`write(handle)` into the object `temporary`, then moved to `target`: a server-side copy, so `target` is
        whole or absent whatever happens; a temporary object left by a killed run is removed by the next writer."""
        if self.lease is not None:
            self.lease.check()
        try:
            with self.fs.open_output_stream(str(temporary)) as handle:
                write(handle)
            self.fs.move(str(temporary), str(target))
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self.fs.delete_file(str(temporary))
            if isinstance(exc, OSError):
                raise self._fail(exc) from None
            raise

    def move_aside(self, path: PurePath, folder_name: str) -> PurePath | None:
        """Copy `path` into `folder_name` under a free name, then delete it; None when it is gone."""
        if not self.exists(path):
            return None
        taken = set(self.listing(folder_name))
        name, n = path.name, 0
        while name in taken:
            n += 1
            name = f"{path.name}.{n}"
        target = self.folder / folder_name / name
        try:
            self.fs.copy_file(str(path), str(target))
            self.fs.delete_file(str(path))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._fail(exc) from None
        return target

    def listing(self, folder_name: str) -> list[str]:
        return sorted(PurePosixPath(e.path).name for e in self._entries(self.folder / folder_name))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        lease = Lease(self)
        lease.acquire()
        self.lease = lease
        try:
            yield
        finally:
            self.lease = None
            lease.release()

    def busy(self) -> bool:
        holder = Lease(self).holder()
        return holder is not None and Lease.alive(holder)

    # (the lease's own I/O)

    def read_text(self, path: PurePath) -> str | None:
        try:
            with self.fs.open_input_stream(str(path)) as handle:
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return None
        except Exception as exc:
            if "does not exist" in str(exc) or "NoSuchKey" in str(exc):
                return None
            raise self._fail(exc) from None

    def write_text(self, path: PurePath, text: str) -> None:
        try:
            with self.fs.open_output_stream(str(path)) as handle:
                handle.write(text.encode("utf-8"))
        except Exception as exc:
            raise self._fail(exc) from None


class Lease:
    """The lock of a store on object storage: the object ``STORE/.lock`` holding its owner's token, host, process
    and the time its lease ends, refreshed every `REFRESH_S` seconds by a thread while the run writes.

    A second writer is refused while the lease is live; a lease that ended (its run died on another machine, or hung
    for longer than `LEASE_S`) is taken over; a lease whose process is gone from this very host is taken over at
    once. Limits, as object stores offer no atomic create-if-absent through pyarrow:

    - taking a lock is write, wait `SETTLE_S`, read back: two runs starting within the same instant are told apart
      by whose token survives, but a run whose write reaches the store more than `SETTLE_S` after the other's
      check could still believe it holds the lock; start runs one after the other.
    - lease ends are compared with the local clock: machines' clocks must agree to within a few seconds (NTP).
    - a process of this host that died is recognised by its pid; should the pid have been reused meanwhile, the
      lease is taken over only when it ends.
    - a writer that loses its lease (suspended past `LEASE_S`, then taken over) notices at its next refresh or part
      and stops with StoreBusyError; a part it was writing at that instant can still land (parts are only added,
      never changed, so no row is lost or damaged, but two runs may both score an image).
    """

    LEASE_S = 120.0
    REFRESH_S = 30.0
    SETTLE_S = 1.0

    def __init__(self, files: ObjectFiles) -> None:
        self.files = files
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def _object(self) -> PurePath:
        return self.files.path(LOCK)

    def holder(self) -> dict[str, Any] | None:
        text = self.files.read_text(self._object)
        if not text:
            return None
        try:
            found = json.loads(text)
        except ValueError:
            return None  # (a lock object cut short: nobody can hold it)
        return found if isinstance(found, dict) else None

    @staticmethod
    def alive(holder: dict[str, Any]) -> bool:
        """Whether a holder's lease is live: not ended, and not of a process that is gone from this host."""
        try:
            if float(holder.get("expires", 0)) < time.time():
                return False
            if holder.get("host") == socket.gethostname() and os.name == "posix":  # (Windows' kill would kill)
                os.kill(int(holder.get("pid", 0)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, TypeError, OverflowError):
            return True
        return True

    def _record(self) -> str:
        return json.dumps(
            {
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "expires": time.time() + self.LEASE_S,
            }
        )

    def _busy(self, holder: dict[str, Any] | None) -> StoreBusyError:
        where = f"store {self.files.name}: another run is writing to it"
        if not holder:
            return StoreBusyError(f"{where}; wait for it to finish (or stop it)")
        try:
            until = datetime.fromtimestamp(float(holder.get("expires", 0)), timezone.utc).strftime("%H:%M:%S UTC")
        except (ValueError, TypeError, OverflowError, OSError):
            until = "its lease ends"
        who = f"{holder.get('host', '?')}, process {holder.get('pid', '?')}"
        return StoreBusyError(
            f"{where} ({who}); wait for it to finish (or stop it); a lock left by a run that died is taken over "
            f"after {until}"
        )

    def acquire(self) -> None:
        holder = self.holder()
        if holder is not None and self.alive(holder):
            raise self._busy(holder)
        self.files.write_text(self._object, self._record())
        try:
            time.sleep(self.SETTLE_S)
            holder = self.holder()
        except BaseException:  # (Ctrl-C while settling: leave no lock behind)
            self.release()
            raise
        if holder is None or holder.get("token") != self.token:
            raise self._busy(holder)
        self._thread = threading.Thread(target=self._refresh, name="imagereward-store-lease", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(self.REFRESH_S):
            try:
                holder = self.holder()
                if holder is None or holder.get("token") != self.token:
                    self.lost = True
                    return
                self.files.write_text(self._object, self._record())
            except StoreError:
                continue  # (a network hiccup: try again; the lease outlives a few refreshes)

    def check(self) -> None:
        if self.lost:
            raise StoreBusyError(
                f"store {self.files.name}: this run lost its lock (paused for longer than its lease, and another "
                "run took the store over); stop and run again"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(StoreError):
            holder = self.holder()
            if holder is not None and holder.get("token") == self.token:
                self.files.remove(self._object)
