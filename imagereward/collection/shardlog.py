"""The store's log of finished tar shards, so that a rerun skips them without listing them.

    STORE/_shards/log-00000003-1a2b3c4d.parquet     one row per shard finished (the underscore folder is skipped by
                                                   Parquet dataset readers of the store)

A shard is *finished* when every one of its images has a row in the store: its row here is written only after the part
holding its last rows is on disk (`pipeline`), so a run killed at any moment never leaves a mark without the rows. A
rerun reads each input shard's `content_fingerprint` (its size and a hash of its first and last 64 KiB) and skips the
shard when its name, fingerprint and the run's scoring identity (the scorers and their weights, prompt cleaning, fixed
prompt) match its newest row here; every other shard is listed and its members are compared one by one with the
store's rows (so a scorer added lists a finished shard again, and only its column is scored there). The log only
ever saves work: a log part that cannot be read is ignored (its shards are listed again, and their unchanged members
are still not scored again).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Any

from ..errors import ImageRewardError
from . import deps, storage

FOLDER = "_shards"
PART = re.compile(r"^log-(\d{8})-[0-9a-f]{8}\.parquet$")
#: Bytes hashed at each end of a shard for its fingerprint.
EDGE = 64 * 1024
#: Log parts merged into one when there are more (one part is written per flush that finishes shards).
MERGE_PARTS = 32

log = logging.getLogger("imagereward")


@dataclass(frozen=True)
class Identity:
    """What decides every score of a run besides the images: a finished shard counts only for the same identity."""

    weights: str  # the run's score columns with their weights records, sorted (`of`); stored as ``model``
    clean_prompt: bool
    prompt: str | None  # the fixed prompt (--prompt), None when prompts come from captions

    @classmethod
    def of(cls, weights: Mapping[str, str], clean_prompt: bool, prompt: str | None) -> Identity:
        """A run's identity: a scorer added (or its weights changed) lists a finished shard again, and only the new
        column is scored there (the store's rows say which columns each image holds)."""
        return cls("\n".join(f"{column}={record}" for column, record in sorted(weights.items())), clean_prompt, prompt)


@dataclass(frozen=True)
class ShardMark:
    shard: str  # the shard's name (`sources.shard_names`)
    fingerprint: str  # `content_fingerprint`
    identity: Identity
    members: int  # images listed in it (rows it has in the store)
    path: str = ""  # where it was read (for people; not compared)


def content_fingerprint(path: str) -> str:
    """``<size>:<hash>``: the shard's size and a BLAKE2b hash of its first and last 64 KiB. Reads at most 128 KiB,
    whatever the shard's size (two ranged reads on object storage). What it misses: an edit in the middle of a shard
    that keeps its size (a caption's text rewritten with as many bytes, say); `--rescore` scores such a shard again.
    Raises OSError when the shard cannot be read."""
    digest = hashlib.blake2b(digest_size=16)
    if storage.is_url(path):
        where = storage.locate(path)
        try:
            with where.fs.open_input_file(where.path) as handle:
                size = handle.size()
                digest.update(handle.read_at(min(EDGE, size), 0))
                if size > EDGE:
                    start = max(EDGE, size - EDGE)
                    digest.update(handle.read_at(size - start, start))
        except Exception as exc:  # (missing, no access: listing the shard says what is wrong)
            raise OSError(storage.scrub(str(exc))) from None
        return f"{size}:{digest.hexdigest()}"
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest.update(handle.read(EDGE))
        if size > EDGE:
            handle.seek(max(EDGE, size - EDGE))
            digest.update(handle.read(EDGE))
    return f"{size}:{digest.hexdigest()}"


def _schema() -> Any:
    pa = deps.pyarrow()
    return pa.schema(
        [
            ("shard", pa.string()),
            ("fingerprint", pa.string()),
            ("model", pa.string()),  # `Identity.weights` (named as when it held the model id)
            ("clean_prompt", pa.bool_()),
            ("prompt", pa.string()),
            ("members", pa.int64()),
            ("path", pa.string()),
            ("finished_at", pa.timestamp("us", tz="UTC")),
        ]
    )


class ShardLog:
    """The finished shards of one store, through the store's files (`store_files`: a local folder or object storage).
    Written only by the run holding the store's lock."""

    def __init__(self, files: Any) -> None:
        self.files = files

    def _path(self, name: str) -> PurePath:
        return self.files.path(f"{FOLDER}/{name}")

    def parts(self) -> list[PurePath]:
        try:
            names = self.files.listing(FOLDER)
        except (OSError, ImageRewardError):
            return []
        found = [(int(m.group(1)), name) for name in names if (m := PART.match(name))]
        return [self._path(name) for _, name in sorted(found)]

    def read(self) -> dict[str, ShardMark]:
        """The newest mark of each shard."""
        marks: dict[str, ShardMark] = {}
        columns = [name for name in _schema().names if name != "finished_at"]  # (its time zone would load pandas)
        for part in self.parts():
            try:
                rows = self.files.parquet(part).read(columns=columns).to_pylist()
            except Exception as exc:  # damaged or foreign: its shards are listed again, nothing is lost
                log.warning("store log %s cannot be read (%s); its shards are listed again", part.name, exc)
                continue
            for row in rows:
                identity = Identity(row["model"], bool(row["clean_prompt"]), row["prompt"])
                marks[row["shard"]] = ShardMark(
                    row["shard"], row["fingerprint"], identity, int(row["members"]), row["path"] or ""
                )
        return marks

    def clear(self) -> None:
        """Forget every mark (the log's own files): called when rows leave the store (a damaged part set aside), so
        that every shard is listed again and its missing rows are scored."""
        for part in self.parts():
            with contextlib.suppress(OSError, ImageRewardError):
                self.files.remove(part)

    def clear_stale(self) -> None:
        """Remove the temporary files of log parts that killed runs were writing (with the store's lock held)."""
        with contextlib.suppress(OSError, ImageRewardError):
            for name in self.files.listing(FOLDER):
                if name.startswith(".tmp-"):
                    self.files.remove(self._path(name))

    def append(self, marks: Sequence[ShardMark]) -> None:
        """Add marks as one new log part (whole or absent, as a store part), merging the log's parts into one when
        they pile up."""
        if not marks:
            return
        self._write(marks)
        if len(self.parts()) > MERGE_PARTS:
            self.merge()

    def merge(self) -> None:
        """One part holding the newest mark of each shard (their times kept), then the parts it replaces are
        removed; an unreadable part is left out (its shards are listed again)."""
        parts = self.parts()
        if len(parts) < 2:
            return
        pa = deps.pyarrow()
        pc = pa.compute
        tables = []
        for part in parts:
            try:
                tables.append(self.files.parquet(part).read(columns=_schema().names).cast(_schema()))
            except Exception:
                continue
        if tables:
            table = pa.concat_tables(tables)
            order = pa.array(range(table.num_rows), pa.int64())
            rows = table.append_column("__order", order).group_by("shard").aggregate([("__order", "max")])
            rows = rows["__order_max"]
            self._write_table(table.take(pc.take(rows, pc.sort_indices(rows))))
        for part in parts:
            with contextlib.suppress(OSError, ImageRewardError):
                self.files.remove(part)

    def _write(self, marks: Sequence[ShardMark]) -> None:
        now = datetime.now(timezone.utc)
        rows = [
            {
                "shard": m.shard,
                "fingerprint": m.fingerprint,
                "model": m.identity.weights,
                "clean_prompt": m.identity.clean_prompt,
                "prompt": m.identity.prompt,
                "members": m.members,
                "path": m.path,
                "finished_at": now,
            }
            for m in marks
        ]
        self._write_table(deps.pyarrow().Table.from_pylist(rows, schema=_schema()))

    def _write_table(self, table: Any) -> None:
        """A new log part, numbered after the others, written as the store writes its parts (`write_new`)."""
        pq = deps.pyarrow().parquet
        parts = self.parts()
        number = int(PART.match(parts[-1].name).group(1)) + 1 if parts else 0  # type: ignore[union-attr]
        token = uuid.uuid4().hex[:8]
        folder = self.files.path(FOLDER)
        if isinstance(folder, Path):
            folder.mkdir(exist_ok=True)
        self.files.write_new(
            self._path(f".tmp-{token}.parquet"),
            self._path(f"log-{number:08d}-{token}.parquet"),
            lambda handle: pq.write_table(table, handle, compression="zstd"),
        )
