"""Copying or moving the images of a score range out of a collection. Nothing is ever deleted or overwritten.

- A file whose name is taken in the target folder by an identical file is skipped (it is already there); by a
  different file, the new one gets a free name (``name-1.png``, ``name-2.png``, …).
- Files are created exclusively: first under a temporary name in the target folder, then linked to their final name,
  which fails instead of replacing a file that appeared meanwhile.
- A move removes the original only after its copy (or hard link) is complete and has the original's size, and only
  when the file is still the one that was scored (same size and modification time); the store then records the new
  place (the old row is marked ``moved``, a new row carries the score), so a re-run scores nothing again.
- Images inside tar shards can be copied (the member's bytes become a file) but not moved.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ImageRewardError
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
    """The image file's bytes of a store row (a file, or a member of a tar shard), e.g. for a gallery's thumbnail."""
    if row.get("member") is None:
        try:
            return Path(real_path(row)).read_bytes()
        except OSError as exc:
            raise ImageRewardError(f"{row['path']}: cannot read it ({exc.strerror or exc})") from None
    from .sources import SourceError, shard_items

    try:
        for item in shard_items(real_path(row)):
            if as_text(item.member or "") == row["member"]:
                with open(real_path(row), "rb") as handle:
                    handle.seek(item.offset or 0)
                    return handle.read(item.size)
    except (OSError, SourceError) as exc:
        raise ImageRewardError(f"{row['key']}: cannot read it ({exc})") from None
    raise ImageRewardError(f"{row['key']}: no longer in its shard")


def _unchanged(row: dict[str, Any]) -> str | None:
    try:
        st = os.stat(real_path(row))
    except OSError:
        return "no longer exists"
    if st.st_size != row["size"] or st.st_mtime_ns != row["mtime_ns"]:
        return "changed since it was scored (score it again first)"
    return None


def _run(store: ResultStore, folder: Path, filters: Filters, move: bool, report: ActionReport) -> ActionReport:
    _check_target(folder)
    table = sort_table(selected(store, filters))
    for row in table.to_pylist():
        label = row["key"]
        try:
            if row["member"] is not None:
                if move:
                    report.problems.append(f"{label}: inside a tar shard; it can be copied, not moved")
                    continue
                source: Path | bytes = row_bytes(row)
                name = os.path.basename(row["member"])  # (shown text: escaped if it was not UTF-8)
            else:
                problem = _unchanged(row)
                if problem:
                    report.problems.append(f"{label}: {problem}")
                    continue
                source = Path(real_path(row))
                name = source.name
            if _already_copied(folder, name, source):
                report.already_there += 1
                continue
            temporary = _write_temporary(folder, source)
            target, renamed = _place(temporary, folder, name)
            if move:
                assert isinstance(source, Path)
                if target.stat().st_size != row["size"]:
                    report.problems.append(f"{label}: the copy at {target} is incomplete; the original is kept")
                    continue
                source.unlink()
            report.done += 1
            report.renamed += renamed
            report.placed.append((row["key"], str(target)))
        except (OSError, ImageRewardError) as exc:
            report.problems.append(f"{label}: {getattr(exc, 'strerror', None) or exc}")
    return report


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
