"""One results Parquet per input tar shard, besides the store, as img2dataset and NeMo Curator lay data out.

    --per-shard-dir DIR      DIR/00000.parquet for 00000.tar (DIR/a/00000.parquet for a shard named a/00000.tar)

Each file holds the store's columns for that shard's images, one row per image sorted by ``__key__``, and is written
when the shard finishes (after its rows are in the store), to a temporary name renamed into place. A file of that name
that this package did not write (its Parquet metadata says who wrote it) is never replaced: the run refuses to start
when it finds one among the shards it will score, and a file appearing during the run is left as it is and reported.
Finished shards a rerun skips are not written again.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

from ..errors import ImageRewardError
from . import deps
from .columns import SCORE_COLUMNS
from .store import DoneIndex, ResultStore, latest_per_key, rows_to_table

#: The Parquet metadata key marking a file as this package's per-shard results.
MARK = b"imagereward"
MARK_VALUE = b"per-shard results"


def target(folder: Path, shard: str) -> Path:
    """Where a shard's results go: its name with ``.parquet`` for its ``.tar`` (sub-folders kept)."""
    name = shard[: -len(".tar")] if shard.lower().endswith(".tar") else shard
    return folder / f"{name}.parquet"


def _ours(path: Path) -> bool:
    try:
        metadata = deps.pyarrow().parquet.read_schema(path).metadata or {}
    except Exception:
        return False
    return metadata.get(MARK) == MARK_VALUE


class PerShardWriter:
    """Collects the rows of the shards being scored and writes each shard's file when it finishes."""

    def __init__(self, folder: str | os.PathLike[str], store: ResultStore) -> None:
        self.folder, self.store = Path(folder), store
        self.rows: dict[str, list[dict[str, Any]]] = {}
        #: The store's index before the run (None: empty); a row of content the store already held (a scorer added)
        #: holds only the new columns, and its shard's file is then read back from the store, where they are merged.
        self.index: DoneIndex | None = None
        self.partial: set[str] = set()  # shards with such rows

    def check(self, shards: list[str]) -> None:
        """Refuse (one line) when a file the run would write is someone else's."""
        if self.folder.exists() and not self.folder.is_dir():
            raise ImageRewardError(f"--per-shard-dir {self.folder}: is a file, not a folder")
        for shard in shards:
            path = target(self.folder, shard)
            if path.exists() and not _ours(path):
                raise ImageRewardError(
                    f"--per-shard-dir {self.folder}: {path.name} exists and was not written by imagereward "
                    "(it is never replaced); name another folder"
                )

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            shard = row.get("shard")
            if shard is None:
                continue
            self.rows.setdefault(shard, []).append(row)
            entry = self.index.get(row["key"]) if self.index is not None else None
            if entry is not None and entry.fingerprint == row["fingerprint"]:
                self.partial.add(shard)

    def finish(self, shard: str, members: int) -> str | None:
        """Write the shard's file (its rows are in the store by now); a line saying why not, or None."""
        rows = self.rows.pop(shard, [])
        whole = len(rows) >= members and shard not in self.partial  # (else resumed, or a scorer added: from the store)
        table = rows_to_table(rows) if whole else self.store.shard_rows(shard)
        path = target(self.folder, shard)
        if path.exists() and not _ours(path):
            return f"--per-shard-dir: {path} exists and was not written by imagereward; left as it is"
        table = latest_per_key(table, SCORE_COLUMNS).sort_by([("__key__", "ascending"), ("key", "ascending")])
        table = table.replace_schema_metadata({MARK: MARK_VALUE})
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as handle:
                deps.pyarrow().parquet.write_table(table, handle, compression="zstd")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            return f"--per-shard-dir: cannot write {path} ({exc.strerror or exc})"
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink()
        return None
