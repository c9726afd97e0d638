"""The results store: a folder of Parquet files that together are one table, one row per image.

    STORE/
      .imagereward-store        marks the folder as a store (a store is never created in a folder holding other files)
      .lock                     held (flock) by the run writing to the store; a second writer is refused
      part-00000007-1a2b3c4d.parquet
      ...

Any Parquet reader reads the folder as one dataset (``pyarrow.parquet.read_table(STORE)``, ``pandas.read_parquet``,
DuckDB, Ray). Rows are only ever added: a re-scored or moved image gets a new row, and for each ``key`` the row in the
highest-numbered part (the last one within a part) is the one that counts; `read` applies that rule. So no row ever
has to be deleted to stay correct.

Atomicity: a part is written to a hidden temporary name, flushed to disk and renamed into place, so a part is either
complete or absent. A run killed at any moment (SIGKILL included) loses at most the rows not yet flushed, and the next
run scores exactly those again. `compact` merges the parts into one (written the same way) and only then removes the
parts it merged; killed in between, the merged part (numbered last) holds the same rows, so the table is unchanged.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageRewardError
from . import deps
from .items import COLUMNS, MOVED, SCORED, key_hash

MARKER = ".imagereward-store"
LOCK = ".lock"
PART = re.compile(r"^part-(\d{8})-[0-9a-f]{8}\.parquet$")
#: Rows per Parquet row group when parts are written or compacted.
ROW_GROUP = 8192


class StoreError(ImageRewardError):
    """The store folder cannot be used (not a store, not writable, in use by another run)."""


def arrow_schema() -> Any:
    pa = deps.pyarrow()
    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "binary": pa.binary(),
        "timestamp_us_utc": pa.timestamp("us", tz="UTC"),
    }
    return pa.schema([pa.field(name, types[kind]) for name, kind in COLUMNS])


def rows_to_table(rows: Sequence[dict[str, Any]]) -> Any:
    """Rows (dicts with the store's columns; missing ones are null) as an Arrow table with the store's schema."""
    pa = deps.pyarrow()
    schema = arrow_schema()
    return pa.table({field.name: pa.array([row.get(field.name) for row in rows], field.type) for field in schema})


@dataclass
class DoneIndex:
    """What the store holds, compactly: sorted 64-bit key hashes with each key's current fingerprint (16 bytes a row,
    so 100 M images take 1.6 GB; 100 k take 1.6 MB)."""

    keys: np.ndarray  # uint64, sorted
    fingerprints: np.ndarray  # int64, aligned with keys

    @classmethod
    def empty(cls) -> DoneIndex:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.keys)

    def is_done(self, key: str, fingerprint: int) -> bool:
        if not len(self.keys):
            return False
        h = np.uint64(key_hash(key))
        i = int(np.searchsorted(self.keys, h))
        return i < len(self.keys) and self.keys[i] == h and int(self.fingerprints[i]) == fingerprint


class ResultStore:
    """One store folder. Reading needs no lock; writing (`writer`) holds the folder's lock."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    # ------------------------------------------------------------------------------------------------ creating

    @classmethod
    def create(cls, folder: str | os.PathLike[str]) -> ResultStore:
        """Open a store, creating it when the folder does not exist or is empty."""
        path = Path(folder)
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
        return cls(path)

    @classmethod
    def open_existing(cls, folder: str | os.PathLike[str]) -> ResultStore:
        path = Path(folder)
        if not (path / MARKER).is_file():
            what = "does not exist" if not path.exists() else "is not a results store"
            raise StoreError(f"store {path}: {what}; score a collection into it first")
        return cls(path)

    # ------------------------------------------------------------------------------------------------ reading

    def parts(self) -> list[Path]:
        """The complete parts, oldest first."""
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := PART.match(p.name))]
        return [p for _, p in sorted(found)]

    def _next_number(self) -> int:
        parts = self.parts()
        return int(PART.match(parts[-1].name).group(1)) + 1 if parts else 0  # type: ignore[union-attr]

    def read(self, columns: Sequence[str] | None = None, *, raw: bool = False) -> Any:
        """The table: one row per key, the newest (`raw`: every row of every part, oldest first)."""
        pa = deps.pyarrow()
        pq = pa.parquet
        schema = arrow_schema()
        wanted = list(columns) if columns is not None else schema.names
        read_cols = list(dict.fromkeys([*wanted, "key"])) if not raw else wanted
        tables = [pq.read_table(p, columns=read_cols, schema=schema) for p in self.parts()]
        if not tables:
            return schema.empty_table().select(wanted)
        table = pa.concat_tables(tables)
        if not raw:
            table = latest_per_key(table)
        return table.select(wanted)

    def _batches(self, columns: Sequence[str]) -> Iterator[Any]:
        """Every row of every part, oldest first, in record batches (bounded memory)."""
        pq = deps.pyarrow().parquet
        for part in self.parts():
            yield from pq.ParquetFile(part).iter_batches(batch_size=ROW_GROUP, columns=list(columns))

    def _current_rows(self, extra: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A mask of the rows that count, over every row of every part in order, and the key hashes (``"hash"``) and
        `extra` columns (name -> a function from the Arrow column of a batch to a numpy array) of every row. Costs 9
        bytes a row plus the extra arrays: no key or other string is held beyond one batch."""
        extra = extra or {}
        hashes: list[np.ndarray] = []
        values: dict[str, list[np.ndarray]] = {name: [] for name in extra}
        for batch in self._batches(["key", *extra]):
            keys = batch.column(0).to_pylist()
            hashes.append(np.fromiter((key_hash(k) for k in keys), np.uint64, len(keys)))
            for i, (name, convert) in enumerate(extra.items(), start=1):
                values[name].append(convert(batch.column(i)))
        columns = {name: np.concatenate(v) for name, v in values.items() if v}
        columns["hash"] = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        return last_occurrence(columns["hash"]), columns

    def index(self) -> DoneIndex:
        """Key hashes and fingerprints of the current rows that need no new scoring (scored or failed to decode)."""
        pc = deps.pyarrow().compute
        current, columns = self._current_rows(
            {
                "fingerprint": lambda c: c.to_numpy(zero_copy_only=False).astype(np.int64),
                "status": lambda c: pc.fill_null(pc.equal(c, MOVED), False).to_numpy(zero_copy_only=False),  # moved?
            }
        )
        if not len(current):
            return DoneIndex.empty()
        keep = current & ~columns["status"]
        keys = columns["hash"][keep]
        fps = columns["fingerprint"][keep]
        order = np.argsort(keys, kind="stable")
        return DoneIndex(keys[order], fps[order])

    # ------------------------------------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def writer(self) -> Iterator[StoreWriter]:
        """Hold the store's lock and append parts; temporary files of runs killed earlier are cleared first."""
        with _locked(self.folder / LOCK):
            for stale in self.folder.glob(".tmp-*.parquet"):
                with contextlib.suppress(OSError):
                    stale.unlink()  # our own unfinished temporary parts, never a user's file
            writer = StoreWriter(self)
            writer.adopt_staging()  # what a killed Ray run finished
            yield writer

    def compact(self) -> None:
        """Merge every part into one holding only the current rows; call with the lock held (inside `writer`).
        Streams row groups through: memory stays at a few bytes a row, whatever the store's size."""
        parts = self.parts()
        if len(parts) <= 1:
            return
        current, _ = self._current_rows()
        schema = arrow_schema()
        pq = deps.pyarrow().parquet

        def write(handle: Any) -> None:
            with pq.ParquetWriter(handle, schema, compression="zstd") as out:
                start = 0
                for batch in self._batches(schema.names):
                    keep = current[start : start + batch.num_rows]
                    start += batch.num_rows
                    if keep.any():
                        out.write_batch(batch.filter(deps.pyarrow().array(keep)), row_group_size=ROW_GROUP)

        _write_atomically(self, write)
        for part in parts:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()


def last_occurrence(hashes: np.ndarray) -> np.ndarray:
    """A mask of the last row of each key hash (rows are oldest first)."""
    mask = np.zeros(len(hashes), dtype=bool)
    if len(hashes):
        _, first_from_end = np.unique(hashes[::-1], return_index=True)
        mask[len(hashes) - 1 - first_from_end] = True
    return mask


class StoreWriter:
    def __init__(self, store: ResultStore) -> None:
        self.store = store

    def append(self, rows: Sequence[dict[str, Any]] | Any) -> Path | None:
        """Write rows as one new part, atomically. Returns the part, or None when there were no rows."""
        table = rows if hasattr(rows, "num_rows") else rows_to_table(rows)
        if table.num_rows == 0:
            return None
        return _write_part(self.store, table)

    def compact(self) -> None:
        self.store.compact()

    def adopt_staging(self) -> tuple[int, int]:
        """Add the complete Parquet files of Ray runs' staging folders (``.ray-*``) as parts, then remove those
        folders (the store's own files). Returns (rows scored, rows failed) added."""
        pa = deps.pyarrow()
        pc = pa.compute
        scored = failed = 0
        schema = arrow_schema()
        for staging in sorted(self.store.folder.glob(".ray-*")):
            tables = []
            for file in sorted(staging.rglob("*.parquet")):
                try:
                    tables.append(pa.parquet.read_table(file).select(schema.names).cast(schema))
                except Exception:  # a file whose writer was killed (no footer): its rows are scored again
                    continue
            table = pa.concat_tables(tables) if tables else None
            if table is not None and table.num_rows:
                _write_part(self.store, table)
                scored += int(pc.sum(pc.equal(table["status"], SCORED)).as_py() or 0)
                failed += int(pc.sum(pc.equal(table["status"], "error")).as_py() or 0)
            shutil.rmtree(staging, ignore_errors=True)
        return scored, failed


def latest_per_key(table: Any) -> Any:
    """Keep the last row of each key (rows are in part order, oldest first)."""
    pa = deps.pyarrow()
    pc = pa.compute
    order = pa.array(np.arange(table.num_rows, dtype=np.int64))
    with_order = table.append_column("__order", order)
    last = with_order.group_by("key", use_threads=False).aggregate([("__order", "max")])["__order_max"]
    kept = table.filter(pc.is_in(order, value_set=last))
    return kept.take(pc.sort_indices(kept["key"]))


def _write_part(store: ResultStore, table: Any) -> Path:
    pq = deps.pyarrow().parquet
    table = table.cast(arrow_schema())
    return _write_atomically(
        store, lambda handle: pq.write_table(table, handle, row_group_size=ROW_GROUP, compression="zstd")
    )


def _write_atomically(store: ResultStore, write: Any) -> Path:
    """A new part: `write(handle)` into a hidden temporary file, flushed to disk, then renamed into place."""
    folder = store.folder
    token = uuid.uuid4().hex[:8]
    temporary = folder / f".tmp-{token}.parquet"
    target = folder / f"part-{store._next_number():08d}-{token}.parquet"
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise StoreError(f"store {folder}: cannot write ({exc.strerror or exc})") from None
    _fsync_folder(folder)
    return target


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
            raise StoreError(
                f"store {path.parent}: another run is writing to it; wait for it to finish (or stop it)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def scored_only(table: Any) -> Any:
    pc = deps.pyarrow().compute
    return table.filter(pc.equal(table["status"], SCORED))
