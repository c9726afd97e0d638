"""Copying or moving the images of a score range out of a collection. Nothing is ever deleted or overwritten.

- A file whose name is taken in the target folder by an identical file is skipped (it is already there); by a
  different file, the new one gets a free name (``name-1.png``, ``name-2.png``, …).
- Files are created exclusively: first under a temporary name in the target folder, then linked to their final name,
  which fails instead of replacing a file that appeared meanwhile.
- A move removes the original only after its copy (or hard link) is complete and has the original's size, and only
  when the file is still the one that was scored (same size and modification time); the store then records the new
  place (the old row is marked ``moved``, a new row carries the score), so a re-run scores nothing again.
- Images inside tar shards can be copied (the member's bytes become a file) but not moved. A copy lists each shard
  once (its headers: one pass), then reads the selected members by seeking, best first.
- Images on object storage (shards or files named by URL) are copied the same way, never moved.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ImageRewardError
from . import storage
from .items import MOVED, as_text, path_bytes, real_path
from .query import Filters, selected, sort_table
from .store import ResultStore


@dataclass
class ActionReport:
    done: int = 0  # copied or moved
    already_there: int = 0  # an identical file was in the target folder
    renamed: int = 0  # done under a free name, as the name was taken by a different file
    problems: list[str] = field(default_factory=list)  # skipped: missing, changed since scoring, in a shard (move)
    placed: list[tuple[str, str]] = field(default_factory=list)  # (from key, to path)


def _check_target(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ImageRewardError(f"{folder}: is a file, not a folder")
    if not folder.exists() and not folder.parent.is_dir():
        raise ImageRewardError(f"{folder}: its parent folder does not exist")
    folder.mkdir(exist_ok=True)


def _free_name(folder: Path, name: str) -> tuple[Path, bool]:
    target = folder / name
    stem, suffix = os.path.splitext(name)
    n = 0
    while target.exists() or target.is_symlink():
        n += 1
        target = folder / f"{stem}-{n}{suffix}"
    return target, n > 0


def _same_bytes(data_or_path: bytes | Path, existing: Path) -> bool:
    try:
        if isinstance(data_or_path, bytes):
            return existing.stat().st_size == len(data_or_path) and existing.read_bytes() == data_or_path
        return filecmp.cmp(data_or_path, existing, shallow=False)
    except OSError:
        return False


def _already_copied(folder: Path, name: str, source: Path | bytes) -> bool:
    """Whether the name, or one of the free names an earlier run gave it (name-1, name-2, …), holds these bytes."""
    stem, suffix = os.path.splitext(name)
    candidate, n = folder / name, 0
    while candidate.exists():
        if _same_bytes(source, candidate):
            return True
        n += 1
        candidate = folder / f"{stem}-{n}{suffix}"
    return False


def _place(temporary: Path, folder: Path, name: str) -> tuple[Path, bool]:
    """Give a finished temporary file a free final name without ever replacing a file."""
    while True:
        target, renamed = _free_name(folder, name)
        try:
            os.link(temporary, target)
        except FileExistsError:
            continue  # taken meanwhile: look again
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            # No hard links here (FAT, some network file systems): exclusive create, then copy the bytes.
            try:
                with open(target, "xb") as out, open(temporary, "rb") as src:
                    shutil.copyfileobj(src, out)
                shutil.copystat(temporary, target)
            except FileExistsError:
                continue
        temporary.unlink()
        return target, renamed


def _write_temporary(folder: Path, source: Path | bytes) -> Path:
    temporary = folder / f".imagereward-{uuid.uuid4().hex[:12]}.part"
    try:
        if isinstance(source, bytes):
            with open(temporary, "xb") as out:
                out.write(source)
        else:
            with open(temporary, "xb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out)
            shutil.copystat(source, temporary)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return temporary


def row_bytes(row: dict[str, Any]) -> bytes:
    """The image file's bytes of a store row (a file, or a member of a tar shard), e.g. for a gallery's thumbnail.

    A shard is listed once and its listing kept (the last few shards, while unchanged), so a page of rows from one
    shard lists it once, not once per row."""
    if row.get("member") is None:
        try:
            if storage.is_url(row["path"]):
                return storage.read_all(row["path"])
            return Path(real_path(row)).read_bytes()
        except OSError as exc:
            raise ImageRewardError(f"{row['path']}: cannot read it ({exc.strerror or exc})") from None
    path = real_path(row)
    try:
        found = _stat(path)
        cache_key = (path, found[1], found[0])
        with _LISTINGS_LOCK:
            listing = _LISTINGS.get(cache_key)
            if listing is not None:
                _LISTINGS.move_to_end(cache_key)
        if listing is None:
            listing = _list_shard(path)
            with _LISTINGS_LOCK:
                _LISTINGS[cache_key] = listing
                while len(_LISTINGS) > _LISTINGS_KEPT:
                    _LISTINGS.popitem(last=False)
        offset, size = listing.place(row)
        if storage.is_url(path):
            return _exactly(storage.read_range(path, offset, size), size)
        with open(path, "rb") as handle:
            return _read_exactly(handle, offset, size)
    except OSError as exc:
        raise ImageRewardError(f"{row['key']}: cannot read it ({exc.strerror or exc})") from None
    except ImageRewardError as exc:
        raise ImageRewardError(f"{row['key']}: {exc}") from None


@dataclass
class _Listing:
    """Where a shard's image members are: stored member name -> (offset, size); why the listing stopped early."""

    places: dict[str, tuple[int, int]]
    problem: str | None = None

    def place(self, row: dict[str, Any]) -> tuple[int, int]:
        found = self.places.get(row["member"])
        if found is None:
            why = f"not found in its shard ({self.problem})" if self.problem else "no longer in its shard"
            raise ImageRewardError(why)
        return found


#: Listings kept for `row_bytes`: (path, mtime_ns, size) -> listing, the most recently used last.
_LISTINGS: OrderedDict[tuple[str, int, int], _Listing] = OrderedDict()
_LISTINGS_KEPT = 4
_LISTINGS_LOCK = threading.Lock()


def _list_shard(path: str, keep: set[str] | None = None) -> _Listing:
    """One pass over a shard's members (headers only); `keep`: only these member names (as stored)."""
    from .sources import SourceError, shard_items

    places: dict[str, tuple[int, int]] = {}
    try:
        for item in shard_items(path):
            name = as_text(item.member or "")
            if item.error is None and (keep is None or name in keep):
                places.setdefault(name, (item.offset or 0, item.size))
    except SourceError as exc:  # unreadable, or cut short: the members found before are still there
        return _Listing(places, str(exc))
    return _Listing(places)


def _read_exactly(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    return _exactly(handle.read(size), size)


def _exactly(data: bytes, size: int) -> bytes:
    if len(data) != size:
        raise ImageRewardError("its shard is truncated")
    return data


def _stat(path: str) -> tuple[int, int]:
    """(size, mtime_ns) of a file or an object by URL; OSError when it is missing."""
    from .sources import stat

    found = stat(path)
    if found is None:
        raise FileNotFoundError(0, "no such file or object")
    return found


class _ShardReader:
    """Members of the rows to copy: each shard listed once (only the wanted members kept), read by seeking."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.wanted: dict[str, set[str]] = {}
        for row in rows:
            if row["member"] is not None:
                self.wanted.setdefault(real_path(row), set()).add(row["member"])
        self.listings: dict[str, tuple[_Listing, int]] = {}  # path -> (listing, the shard's mtime_ns)
        self.handles: OrderedDict[str, BinaryIO] = OrderedDict()

    def read(self, row: dict[str, Any]) -> bytes:
        path = real_path(row)
        if path not in self.listings:
            try:
                mtime_ns = _stat(path)[1]
            except OSError as exc:
                raise ImageRewardError(f"cannot read its shard ({exc.strerror or exc})") from None
            self.listings[path] = (_list_shard(path, self.wanted.get(path)), mtime_ns)
        listing, mtime_ns = self.listings[path]
        offset, size = listing.place(row)
        if mtime_ns != row["mtime_ns"] or size != row["size"]:
            raise ImageRewardError("its shard changed since it was scored (score it again first)")
        if storage.is_url(path):  # (the shared reader fetches the shard in large ranges, best first or not)
            return _exactly(storage.read_range(path, offset, size), size)
        handle = self.handles.get(path)
        if handle is None:
            if len(self.handles) >= 16:
                self.handles.popitem(last=False)[1].close()
            handle = self.handles[path] = open(path, "rb")  # noqa: SIM115  (closed by close())
        return _read_exactly(handle, offset, size)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()


def _unchanged(row: dict[str, Any]) -> str | None:
    try:
        size, mtime_ns = _stat(real_path(row))
    except OSError:
        return "no longer exists"
    if size != row["size"] or mtime_ns != row["mtime_ns"]:
        return "changed since it was scored (score it again first)"
    return None


def _run(store: ResultStore, folder: Path, filters: Filters, move: bool, report: ActionReport) -> ActionReport:
    _check_target(folder)
    rows = sort_table(selected(store, filters)).to_pylist()
    shards = _ShardReader([] if move else rows)  # (members cannot be moved out of a shard: nothing to read then)
    try:
        for row in rows:
            _act(row, folder, move, report, shards)
    finally:
        shards.close()
    return report


def _act(row: dict[str, Any], folder: Path, move: bool, report: ActionReport, shards: _ShardReader) -> None:
    label = row["key"]
    try:
        if row["member"] is not None:
            if move:
                report.problems.append(f"{label}: inside a tar shard; it can be copied, not moved")
                return
            source: Path | bytes = shards.read(row)
            name = os.path.basename(row["member"])  # (shown text: escaped if it was not UTF-8)
        elif storage.is_url(row["path"]):
            if move:
                report.problems.append(f"{label}: on object storage; it can be copied, not moved")
                return
            problem = _unchanged(row)
            if problem:
                report.problems.append(f"{label}: {problem}")
                return
            source = storage.read_all(row["path"])
            name = row["path"].rsplit("/", 1)[-1]
        else:
            problem = _unchanged(row)
            if problem:
                report.problems.append(f"{label}: {problem}")
                return
            source = Path(real_path(row))
            name = source.name
        if _already_copied(folder, name, source):
            report.already_there += 1
            return
        temporary = _write_temporary(folder, source)
        target, renamed = _place(temporary, folder, name)
        if move:
            assert isinstance(source, Path)
            if target.stat().st_size != row["size"]:
                report.problems.append(f"{label}: the copy at {target} is incomplete; the original is kept")
                return
            source.unlink()
        report.done += 1
        report.renamed += renamed
        report.placed.append((row["key"], str(target)))
    except (OSError, ImageRewardError) as exc:
        report.problems.append(f"{label}: {getattr(exc, 'strerror', None) or exc}")


def _moved_rows(store: ResultStore, report: ActionReport) -> list[dict[str, Any]]:
    if not report.placed:
        return []
    moved = dict(report.placed)
    table = store.read()
    rows = [row for row in table.to_pylist() if row["key"] in moved]
    now = datetime.now(timezone.utc)
    new_rows: list[dict[str, Any]] = []
    for row in rows:
        target = moved[row["key"]]
        st = os.stat(target)
        new_rows.append({**row, "status": MOVED, "moved_to": as_text(target), "scored_at": now})
        same = st.st_size == row["size"] and st.st_mtime_ns == row["mtime_ns"]
        new_rows.append(
            {
                **row,
                "key": as_text(target),
                "path": as_text(target),
                "path_bytes": path_bytes(target),
                "mtime_ns": st.st_mtime_ns,
                "size": st.st_size,
                "moved_to": None,
                "fingerprint": row["fingerprint"] if same else 0,  # 0: never matches, so it is scored again
                "scored_at": now,
            }
        )
    return new_rows


def copy_selection(
    store: str | os.PathLike[str] | ResultStore, folder: str | os.PathLike[str], filters: Filters | None = None
) -> ActionReport:
    """Copy the images matching `filters` (all scored images without) into `folder`, best first."""
    results = store if isinstance(store, ResultStore) else ResultStore.open_existing(store)
    return _run(results, Path(folder), filters or Filters(), False, ActionReport())


def move_selection(
    store: str | os.PathLike[str] | ResultStore, folder: str | os.PathLike[str], filters: Filters | None = None
) -> ActionReport:
    """Move the images matching `filters` into `folder` and record their new place in the store."""
    results = store if isinstance(store, ResultStore) else ResultStore.open_existing(store)
    report = ActionReport()
    with results.writer() as writer:  # no scoring run may write meanwhile
        try:
            _run(results, Path(folder), filters or Filters(), True, report)
        finally:  # interrupted or not, the store learns where every moved file went
            writer.append(_moved_rows(results, report))
    return report
