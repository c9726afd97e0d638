"""The results store: a folder of Parquet files that together are one table, one row per image.

    STORE/                      a local folder, or a prefix on object storage (s3://bucket/store, gs://…: see
                                store_files.py for how each kind keeps the guarantees below)
      .imagereward-store        marks the folder as a store (a store is never created in a folder holding other files)
      .lock                     held (flock, or a lease object) by the run writing to the store; a second writer is
                                refused
      part-00000007-1a2b3c4d.parquet
      ...

Any Parquet reader reads the folder as one dataset (``pyarrow.parquet.read_table(STORE)``, ``pandas.read_parquet``,
DuckDB, Ray). Rows are only ever added: a re-scored or moved image gets a new row, and for each ``key`` the row in the
highest-numbered part (the last one within a part) is the one that counts; `read` applies that rule. So no row ever
has to be deleted to stay correct. Scores are the exception to "the newest row": a run adding a scorer writes rows
holding only that scorer's column, so each score column takes the newest value among the key's rows of the same
content (same fingerprint; `merge`). `read`, `compact` and `index` all apply it, so after a compaction a plain reader
sees one row per image with every scorer's column.

Score columns: one per scorer, named by the scorer's label exactly as the infotext and the gallery's badges name it
(``ImageReward``, ``HPSv2.1``, ``Ensemble``; one name for one score everywhere), each beside its record
``<label> weights`` (a hash of the weights files, or ImageReward's model id; for the ensemble its members, weights and
their records). In pandas they read as ``df["HPSv2.1"]``, ``df["HPSv2.1 weights"]``; in SQL both are quoted
(``"HPSv2.1"``: a dot needs quoting in any case, so one rule serves every column), and a score and its record sort
side by side. Every part holds every column, unused ones null, so readers that take one part's schema for the whole
folder (pandas, DuckDB without union_by_name) see the same columns whichever scorers a run used. Details: `columns`.

Atomicity: a part is written to a hidden temporary name, flushed to disk and renamed into place (on object storage:
moved into place by a server-side copy), so a part is either complete or absent. A run killed at any moment (SIGKILL
included) loses at most the rows not yet flushed, and the next run scores exactly those again. `compact` merges the
parts into one (written the same way) and only then removes the parts it merged; killed in between, the merged part
(numbered last) holds the same rows, so the table is unchanged.

Damage: a part that cannot be read (cut short or overwritten by a disk or copy fault, or a foreign file under a part's
name) is set aside by whichever reader finds it: moved, never deleted, into ``STORE/_damaged/`` (a folder Parquet
readers skip, as its name starts with an underscore), with a one-line message; the read goes on with the other parts.
Its rows are then absent from the index, so the next scoring run scores those images again. Setting aside takes the
store's lock; a reader that cannot (another run is writing) leaves the part out of that read only and says so.
`check` reports a store's health; `repair` sets damaged parts aside and adopts what killed runs left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, NamedTuple, TypeVar

import numpy as np

from . import deps
from .columns import LEGACY_MODEL, LEGACY_SCORE, SCORE_COLUMNS, weights_column
from .items import COLUMNS, FAILED, MOVED, SCORED, key_hash
from .merge import group_numbers, merge
from .store_files import LOCK, MARKER, StoreBusyError, StoreError, files_of

__all__ = ["LOCK", "MARKER", "StoreBusyError", "StoreError"]
PART = re.compile(r"^part-(\d{8})-[0-9a-f]{8}\.parquet$")
#: Where damaged parts are set aside (inside the store; the underscore makes Parquet dataset readers skip it).
DAMAGED = "_damaged"
#: Rows per Parquet row group when parts are written or compacted.
ROW_GROUP = 8192
#: Reads started again when parts vanish under a reader (another run compacted them meanwhile).
_RETRIES = 8

log = logging.getLogger("imagereward")
_T = TypeVar("_T")


class _PartDamaged(Exception):
    """Internal: a part that cannot be read; it is set aside and the read started again without it."""

    def __init__(self, part: PurePath, reason: str) -> None:
        super().__init__(reason)
        self.part, self.reason = part, reason


class _PartGone(Exception):
    """Internal: a part vanished while it was read (compacted by another run); the read is started again."""


@dataclass
class StoreHealth:
    """What `ResultStore.check` finds."""

    folder: str
    parts: int = 0  # parts in place, damaged ones included
    rows: int = 0  # rows in the readable parts, every version of every image
    images: int = 0  # current rows: one per image
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (part, reason): still in place
    set_aside: list[str] = field(default_factory=list)  # files under _damaged/, set aside earlier
    staging: list[str] = field(default_factory=list)  # what killed runs left: .ray-* folders, .tmp-*.parquet files
    in_use: bool = False  # another run holds the lock (then staging files may be its own, not leftovers)

    @property
    def ok(self) -> bool:
        return not self.damaged

    def lines(self) -> list[str]:
        out = [f"store {self.folder}: {self.parts} part(s), {self.rows} row(s), {self.images} image(s)"]
        for name, reason in self.damaged:
            out.append(f"damaged: {name} ({reason}); --repair sets it aside, its images are then scored again")
        if self.set_aside:
            shown = ", ".join(self.set_aside[:3]) + (" …" if len(self.set_aside) > 3 else "")
            out.append(f"set aside earlier in {DAMAGED}/: {len(self.set_aside)} file(s) ({shown}); kept for you")
        if self.staging:
            shown = ", ".join(self.staging[:3]) + (" …" if len(self.staging) > 3 else "")
            whose = "of the run writing now" if self.in_use else "left by killed runs; --repair adopts or clears them"
            out.append(f"staging: {len(self.staging)} ({shown}), {whose}")
        if self.in_use:
            out.append("in use: another run is writing to the store")
        out.append("healthy" if self.ok else f"{len(self.damaged)} damaged part(s)")
        return out


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
    rows = [_legacy_row(row) for row in rows]
    return pa.table({field.name: pa.array([row.get(field.name) for row in rows], field.type) for field in schema})


def _legacy_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row in the earlier layout (``score``, ``model``) in this one: ImageReward's score and record."""
    first = SCORE_COLUMNS[0]
    if LEGACY_SCORE not in row or first in row:
        return row
    score = row[LEGACY_SCORE]
    return {**row, first: score, weights_column(first): row.get(LEGACY_MODEL) if score is not None else None}


class Entry(NamedTuple):
    """What the index knows of one key: its current fingerprint, the model folded into it by an earlier version
    (None: none), whether its image failed (nothing to score until it changes), and the score columns holding a
    score made by the wanted weights."""

    fingerprint: int
    model: str | None
    failed: bool
    valid: frozenset[str]


@dataclass
class DoneIndex:
    """What the store holds, compactly: sorted 64-bit key hashes with each key's current fingerprint (16 bytes a row,
    so 100 M images take 1.6 GB; 100 k take 1.6 MB), plus a byte a key for each scorer of the run (whether its score
    is there, made by the run's weights), one for a failed image and two for the rare earlier-version model."""

    keys: np.ndarray  # uint64, sorted
    fingerprints: np.ndarray  # int64, aligned with keys
    failed: np.ndarray | None = None  # bool, aligned with keys (None: no failures)
    models: np.ndarray | None = None  # int16 into `model_names`, -1: none (None: no key has one)
    model_names: tuple[str, ...] = ()
    valid: dict[str, np.ndarray] = field(default_factory=dict)  # score column -> bool, aligned with keys

    @classmethod
    def empty(cls) -> DoneIndex:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.keys)

    def _find(self, key: str) -> int | None:
        if not len(self.keys):
            return None
        h = np.uint64(key_hash(key))
        i = int(np.searchsorted(self.keys, h))
        return i if i < len(self.keys) and self.keys[i] == h else None

    def get(self, key: str) -> Entry | None:
        i = self._find(key)
        if i is None:
            return None
        code = int(self.models[i]) if self.models is not None else -1
        return Entry(
            int(self.fingerprints[i]),
            self.model_names[code] if code >= 0 else None,
            bool(self.failed[i]) if self.failed is not None else False,
            frozenset([column for column, flags in self.valid.items() if flags[i]]),
        )

    def is_done(self, key: str, fingerprint: int) -> bool:
        """Whether the key's current row has this fingerprint (whatever its scores)."""
        i = self._find(key)
        return i is not None and int(self.fingerprints[i]) == fingerprint


class ResultStore:
    """One store folder (a local path, or a URL such as ``s3://bucket/store``). Reading needs no lock; writing
    (`writer`) holds the folder's lock."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self._files = files_of(folder)
        #: The folder: a `Path`, or for a store on object storage the path on its filesystem (``bucket/store``).
        self.folder = self._files.folder
        #: How messages name the store (a URL with its credentials and query hidden).
        self.name = self._files.name
        #: One line for each damaged part this object found (set aside, or left out of a read), in order.
        self.problems: list[str] = []
        self._skipped: set[PurePath] = set()  # damaged parts that could not be set aside: left out of reads
        self._writing = False  # this object holds the lock (inside `writer`)

    # ------------------------------------------------------------------------------------------------ creating

    @classmethod
    def create(cls, folder: str | os.PathLike[str]) -> ResultStore:
        """Open a store, creating it when the folder does not exist or is empty."""
        store = cls(folder)
        store._files.create()
        return store

    @classmethod
    def open_existing(cls, folder: str | os.PathLike[str]) -> ResultStore:
        store = cls(folder)
        store._files.check_store()
        return store

    # ------------------------------------------------------------------------------------------------ reading

    def parts(self) -> list[PurePath]:
        """The complete parts, oldest first."""
        found = [(int(m.group(1)), name) for name in self._files.names() if (m := PART.match(name))]
        return [self._files.path(name) for _, name in sorted(found)]

    def _readable(self) -> list[PurePath]:
        return [p for p in self.parts() if p not in self._skipped]

    def _next_number(self) -> int:
        parts = self.parts()
        return int(PART.match(parts[-1].name).group(1)) + 1 if parts else 0  # type: ignore[union-attr]

    def read(self, columns: Sequence[str] | None = None, *, raw: bool = False) -> Any:
        """The table: one row per key, the newest (`raw`: every row of every part, oldest first)."""
        pa = deps.pyarrow()
        schema = arrow_schema()
        wanted = list(columns) if columns is not None else schema.names
        unknown = [name for name in wanted if name not in schema.names]
        if unknown:  # (before any part is read: a part is never blamed for a name it cannot hold)
            raise StoreError(f"store {self.name}: no column {', '.join(map(repr, unknown))}")
        scores = [c for c in SCORE_COLUMNS if c in wanted or weights_column(c) in wanted]
        merged = [*wanted, "key", "fingerprint", *scores, *(weights_column(c) for c in scores)]
        read_cols = list(dict.fromkeys(merged)) if not raw else wanted

        def read_parts(parts: list[PurePath]) -> list[Any]:
            tables = []
            for part in parts:
                with self._reading(part):
                    handle = self._files.parquet(part)
                    present = self._present(part, handle.schema_arrow, read_cols)
                    tables.append(_conform(handle.read(columns=present), read_cols))
            return tables

        tables = self._retrying(read_parts)
        if not tables:
            return schema.empty_table().select(wanted)
        table = pa.concat_tables(tables)
        if not raw:
            table = latest_per_key(table, scores)
        return table.select(wanted)

    def _batches(self, columns: Sequence[str], parts: Sequence[PurePath]) -> Iterator[Any]:
        """Every row of `parts`, in order, in record batches (bounded memory). A part that cannot be read raises
        `_PartDamaged` (or `_PartGone`): the caller sets it aside and starts again."""
        for part in parts:
            with self._reading(part):
                handle = self._files.parquet(part)
                present = self._present(part, handle.schema_arrow, columns)
                batches = handle.iter_batches(batch_size=ROW_GROUP, columns=present)
            while True:
                with self._reading(part):
                    batch = next(batches, None)
                    if batch is None:
                        break
                    batch = _conform(batch, columns)
                yield batch

    def _current_rows(self, extra: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A mask of the rows that count, over every row of every part in order, and the key hashes (``"hash"``) and
        `extra` columns (name -> a function from the Arrow column of a batch to a numpy array, or (column read,
        function) when the name is not the column's) of every row. Costs 9
        bytes a row plus the extra arrays: no key or other string is held beyond one batch."""
        return self._retrying(lambda parts: self._current_rows_of(parts, extra))

    def _current_rows_of(
        self, parts: Sequence[PurePath], extra: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        specs = {name: spec if isinstance(spec, tuple) else (name, spec) for name, spec in (extra or {}).items()}
        read = list(dict.fromkeys(["key", *(column for column, _ in specs.values())]))
        hashes: list[np.ndarray] = []
        values: dict[str, list[np.ndarray]] = {name: [] for name in specs}
        for batch in self._batches(read, parts):
            keys = batch.column(0).to_pylist()
            hashes.append(np.fromiter((key_hash(k) for k in keys), np.uint64, len(keys)))
            for name, (column, convert) in specs.items():
                values[name].append(convert(batch.column(read.index(column))))
        columns = {name: np.concatenate(v) for name, v in values.items() if v}
        columns["hash"] = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        return last_occurrence(columns["hash"]), columns

    def index(self, weights: dict[str, str] | None = None) -> DoneIndex:
        """Key hashes and fingerprints of the current rows (moved images left out), with for each score column of
        `weights` (column -> the run's record, `columns.weights_column`) whether the key holds a score made by those
        weights (`merge`'s rule), whether its image failed, and the model an earlier version folded into its
        fingerprint."""
        pc = deps.pyarrow().compute
        weights = weights or {}
        models: dict[str, int] = {}

        def model_codes(column: Any) -> np.ndarray:
            if column.null_count == len(column):
                return np.full(len(column), -1, np.int16)
            encoded = pc.dictionary_encode(column)
            codes = np.array([models.setdefault(v, len(models)) for v in encoded.dictionary.to_pylist()], np.int16)
            indices = encoded.indices.to_numpy(zero_copy_only=False)
            return np.where(np.isnan(indices), -1, codes[np.nan_to_num(indices).astype(np.int64)]).astype(np.int16)

        def status(value: str) -> Any:
            return lambda c: pc.fill_null(pc.equal(c, value), False).to_numpy(zero_copy_only=False)

        extra: dict[str, Any] = {
            "fingerprint": lambda c: c.to_numpy(zero_copy_only=False).astype(np.int64),
            "status": status(MOVED),
            "failed": status(FAILED),
            "model": model_codes,
        }
        for column, wanted in weights.items():
            extra[column] = lambda c: pc.is_valid(c).to_numpy(zero_copy_only=False)
            extra[weights_column(column)] = lambda c, w=wanted: pc.fill_null(pc.equal(c, w), False).to_numpy(
                zero_copy_only=False
            )
        extra["failed"] = ("status", extra["failed"])
        current, columns = self._current_rows(extra)
        if not len(current):
            return DoneIndex.empty()
        present = {column: columns[column] & columns[weights_column(column)] for column in weights}
        merged = merge(group_numbers(columns["hash"]), columns["fingerprint"], present)
        newest = merged.newest
        keep = newest[~columns["status"][newest]]  # (moved: the image is elsewhere now)
        keys = columns["hash"][keep]
        order = np.argsort(keys, kind="stable")
        chosen = keep[order]
        kept_groups = merged.groups[chosen]
        return DoneIndex(
            keys[order],
            columns["fingerprint"][chosen],
            columns["failed"][chosen] if columns["failed"][chosen].any() else None,
            columns["model"][chosen] if models else None,
            tuple(models),
            {column: merged.sources[column][kept_groups] >= 0 for column in weights},
        )

    # ------------------------------------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def writer(self) -> Iterator[StoreWriter]:
        """Hold the store's lock and append parts; temporary files of runs killed earlier are cleared first."""
        with self._holding() as (writer, _):
            yield writer

    @contextlib.contextmanager
    def _holding(self) -> Iterator[tuple[StoreWriter, tuple[int, int, int]]]:
        """Hold the lock; remove our own unfinished temporary parts (never a user's file) and adopt what killed Ray
        runs finished. Yields a writer and (temporary files removed, rows scored, rows failed adopted)."""
        with self._files.lock():
            self._writing = True
            self._skipped.clear()  # found again by the next read, and set aside then (the lock is held)
            try:
                removed = 0
                for stale in self._staging_names(".tmp-"):
                    with contextlib.suppress(OSError, StoreError):
                        self._files.remove(self._files.path(stale))
                        removed += 1
                writer = StoreWriter(self)
                scored, failed = writer.adopt_staging()  # what a killed Ray run finished
                yield writer, (removed, scored, failed)
            finally:
                self._writing = False

    def compact(self) -> None:
        """Merge every part into one holding only the current rows, each with every score of its content (`merge`);
        call with the lock held (inside `writer`). Streams row groups through: memory stays at a few bytes a row
        (plus the scores that older rows hand to newer ones), whatever the store's size. A damaged part is set aside
        first, and the others are merged."""
        schema = arrow_schema()
        pa = deps.pyarrow()
        pq, pc = pa.parquet, pa.compute

        def merge_parts(parts: list[PurePath]) -> list[PurePath]:
            if len(parts) <= 1:
                return []
            extra: dict[str, Any] = {"fingerprint": lambda c: c.to_numpy(zero_copy_only=False).astype(np.int64)}
            for column in SCORE_COLUMNS:
                extra[column] = lambda c: pc.is_valid(c).to_numpy(zero_copy_only=False)
            _, columns = self._current_rows_of(parts, extra)
            present = {c: columns[c] for c in SCORE_COLUMNS if columns[c].any()}
            merged = merge(group_numbers(columns["hash"]), columns["fingerprint"], present)
            keep, groups = merged.newest_mask, merged.groups
            handed: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # column -> (rows handing a score, keys taking one)
            for column, sources in merged.sources.items():
                takes = (sources >= 0) & (sources != merged.newest)
                if takes.any():
                    gives = np.zeros(len(groups), dtype=bool)
                    gives[sources[takes]] = True
                    handed[column] = (gives, takes)
            del columns

            def write(handle: Any) -> None:
                held: dict[str, dict[int, tuple[Any, Any]]] = {column: {} for column in handed}
                with pq.ParquetWriter(handle, schema, compression="zstd") as out:
                    start = 0
                    for batch in self._batches(schema.names, parts):
                        stop = start + batch.num_rows
                        for column, (gives, _) in handed.items():  # (a score is handed on after it is read)
                            rows = np.flatnonzero(gives[start:stop])
                            if len(rows):
                                values = batch.column(column).take(rows).to_pylist()
                                records = batch.column(weights_column(column)).take(rows).to_pylist()
                                for key, value, record in zip(groups[rows + start], values, records, strict=True):
                                    held[column][int(key)] = (value, record)
                        kept = keep[start:stop]
                        if kept.any():
                            rows = np.flatnonzero(kept)
                            batch = _hand_on(batch.filter(pa.array(kept)), groups[rows + start], handed, held)
                            out.write_batch(batch, row_group_size=ROW_GROUP)
                        start = stop

            _write_atomically(self, write)
            return parts

        for part in self._retrying(merge_parts):
            self._files.remove(part)

    def rows(self) -> int:
        """Rows in the parts (every version of every image), from the parts' footers."""

        def count(parts: list[PurePath]) -> int:
            total = 0
            for part in parts:
                with self._reading(part):
                    total += self._files.parquet(part).metadata.num_rows
            return total

        return self._retrying(count)

    # ------------------------------------------------------------------------------------------------ damage

    @contextlib.contextmanager
    def _reading(self, part: PurePath) -> Iterator[None]:
        """Turns what reading `part` raises into `_PartDamaged` or `_PartGone` (a file system error on a part that is
        there, such as no permission or no network, stays a `StoreError`: moving the part would not help)."""
        try:
            yield
        except (_PartDamaged, _PartGone, MemoryError, StoreError):
            raise
        except Exception as exc:
            if not self._files.exists(part):
                raise _PartGone(part) from None
            problem = self._files.access_problem(exc)
            if problem is not None:
                raise StoreError(f"store {self.name}: cannot read {part.name} ({problem})") from None
            raise _PartDamaged(part, _one_line(exc)) from None

    def _staging_names(self, prefix: str) -> list[str]:
        """What runs leave while they write: ``.tmp-*.parquet`` temporary parts, ``.ray-*`` staging folders."""
        suffix = ".parquet" if prefix == ".tmp-" else ""
        return sorted(n for n in self._files.names() if n.startswith(prefix) and n.endswith(suffix))

    def _present(self, part: PurePath, schema: Any, columns: Sequence[str]) -> list[str]:
        """Those of `columns` that the part holds (the others are read as nulls, as in a store written before they
        were added); raises `_PartDamaged` when the part has no key or a column of another kind."""
        expected = arrow_schema()
        names = set(schema.names)
        if "key" not in names:
            raise _PartDamaged(part, "not a part of a results store: it has no 'key' column")
        for name in columns:
            if name in names and not _compatible(schema.field(name).type, expected.field(name).type):
                raise _PartDamaged(
                    part, f"column '{name}' holds {schema.field(name).type}, expected {expected.field(name).type}"
                )
        return [name for name in columns if name in names] + [
            name for name in _legacy_sources(names, columns) if name not in columns
        ]

    def _retrying(self, attempt: Callable[[list[PurePath]], _T]) -> _T:
        """`attempt(parts)` over the readable parts; each damaged part it meets is set aside (or left out) and it is
        called again without it."""
        gone = 0
        while True:
            try:
                return attempt(self._readable())
            except _PartDamaged as damaged:
                self._set_aside(damaged.part, damaged.reason)
            except _PartGone:
                gone += 1
                if gone > _RETRIES:
                    raise StoreError(
                        f"store {self.name}: its parts keep changing while they are read (another run compacting "
                        "it?); try again when it is done"
                    ) from None

    def _set_aside(self, part: PurePath, reason: str) -> None:
        """Move a damaged part into _damaged/ (with the lock: never under a writer), or leave it out of this object's
        reads when the lock is taken or the folder is read-only. One line in `problems` and the log either way."""
        where = f"store {self.name}: {part.name} is damaged ({reason})"
        try:
            if self._writing:
                moved = self._files.move_aside(part, DAMAGED)
            else:
                with self._files.lock():
                    moved = self._files.move_aside(part, DAMAGED)
        except StoreBusyError:
            self._skipped.add(part)
            message = f"{where}; left out of this read, as another run is writing (it is set aside by that run)"
        except (StoreError, OSError) as exc:
            self._skipped.add(part)
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            message = f"{where}; left out of this read, as it cannot be moved aside ({why})"
        else:
            if moved is None:
                return  # gone meanwhile (compacted by another run): nothing to say
            message = (
                f"{where}; set aside as {moved.relative_to(self.folder)} (nothing deleted); "
                "its images are scored again on the next run"
            )
        self.problems.append(message)
        log.warning(message)

    def _scan(self, part: PurePath) -> str | None:
        """Why `part` is damaged, reading all of it; None when it reads. Changes nothing."""
        try:
            for _ in self._batches(arrow_schema().names, [part]):
                pass
        except _PartDamaged as damaged:
            return damaged.reason
        except _PartGone:
            return None
        return None

    def check(self) -> StoreHealth:
        """The store's health: parts, rows, images, damaged parts (read whole), what killed runs left. Changes
        nothing (it takes the lock for an instant to see whether another run holds it)."""
        health = StoreHealth(self.name)
        health.in_use = self._files.busy()
        for _ in range(_RETRIES):
            damaged = [(part, reason) for part in self.parts() if (reason := self._scan(part)) is not None]
            good = [part for part in self.parts() if part not in {p for p, _ in damaged}]
            try:
                current, _ = self._current_rows_of(good)
                health.rows, health.images, health.parts = len(current), int(current.sum()), len(good) + len(damaged)
            except (_PartDamaged, _PartGone):
                continue  # changed under us: look again
            health.damaged = [(part.name, reason) for part, reason in damaged]
            break
        health.set_aside = self._files.listing(DAMAGED)
        health.staging = sorted([*self._staging_names(".ray-"), *self._staging_names(".tmp-")])
        return health

    def repair(self) -> tuple[list[str], StoreHealth]:
        """Set damaged parts aside (read whole, not only their footers), remove unfinished temporary parts, adopt
        what killed Ray runs finished. Holds the lock (`StoreBusyError` while another run writes). Returns a line
        for each thing done and the health afterwards."""
        done: list[str] = []
        with self._holding() as (_, (removed, scored, failed)):
            before = len(self.problems)
            if removed:
                done.append(f"removed {removed} unfinished temporary part(s) (.tmp-*.parquet)")
            if scored or failed:
                done.append(f"adopted {scored + failed} row(s) that a killed Ray run finished")
            for part in self.parts():
                reason = self._scan(part)
                if reason is not None:
                    self._set_aside(part, reason)
            done.extend(self.problems[before:])
        return done, self.check()


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

    def append(self, rows: Sequence[dict[str, Any]] | Any) -> PurePath | None:
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
        files = self.store._files
        for name in self.store._staging_names(".ray-"):
            staging = files.path(name)
            tables = []
            for file in files.files_under(staging):
                try:
                    tables.append(files.parquet(file).read().select(schema.names).cast(schema))
                except Exception:  # a file whose writer was killed (no footer): its rows are scored again
                    continue
            table = pa.concat_tables(tables) if tables else None
            if table is not None and table.num_rows:
                _write_part(self.store, table)
                scored += int(pc.sum(pc.equal(table["status"], SCORED)).as_py() or 0)
                failed += int(pc.sum(pc.equal(table["status"], "error")).as_py() or 0)
            files.remove_tree(staging)
        return scored, failed


def _hand_on(
    batch: Any, keys: np.ndarray, handed: dict[str, tuple[np.ndarray, np.ndarray]], held: dict[str, dict]
) -> Any:
    """The newest rows of `batch` (of key numbers `keys`) with the scores older rows of their content hand on."""
    pa = deps.pyarrow()
    arrays = list(batch.columns)
    names = batch.schema.names
    for column, (_, takes) in handed.items():
        rows = np.flatnonzero(takes[keys])
        if not len(rows):
            continue
        values = batch.column(column).to_pylist()
        records = batch.column(weights_column(column)).to_pylist()
        for row in rows:
            values[row], records[row] = held[column].pop(int(keys[row]))
        for name, data in ((column, values), (weights_column(column), records)):
            arrays[names.index(name)] = pa.array(data, batch.schema.field(name).type)
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


def latest_per_key(table: Any, scores: Sequence[str] = ()) -> Any:
    """The newest row of each key (rows are in part order, oldest first), sorted by key, with each of the `scores`
    columns (and its record) taken by `merge`'s rule; the table must hold ``key`` and, with `scores`,
    ``fingerprint``."""
    pa = deps.pyarrow()
    pc = pa.compute
    if table.num_rows == 0:
        return table
    groups = np.asarray(pc.dictionary_encode(table["key"]).combine_chunks().indices, dtype=np.int64)
    fingerprints = np.asarray(pc.fill_null(table["fingerprint"], 0), dtype=np.int64) if scores else groups * 0
    present = {c: np.asarray(pc.is_valid(table[c]), dtype=bool) for c in scores}
    merged = merge(groups, fingerprints, present)
    kept = table.take(pa.array(merged.newest))
    for column, sources in merged.sources.items():
        at = pa.array(sources, pa.int64(), mask=sources < 0)
        for name in (column, weights_column(column)):
            if name in kept.column_names:
                kept = kept.set_column(kept.column_names.index(name), name, table[name].take(at))
    return kept.take(pc.sort_indices(kept["key"]))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:159] + "…"


def _legacy_sources(names: set[str], columns: Sequence[str]) -> list[str]:
    """The columns of an earlier layout to read for `columns` that a part lacks (``score`` and ``model`` for
    ImageReward's score and record)."""
    first = SCORE_COLUMNS[0]
    needed: list[str] = []
    if LEGACY_SCORE in names and first not in names:
        if first in columns or weights_column(first) in columns:
            needed.append(LEGACY_SCORE)
        if weights_column(first) in columns and LEGACY_MODEL in names:
            needed.append(LEGACY_MODEL)
    return needed


def _compatible(found: Any, expected: Any) -> bool:
    """Whether a part's column type reads as the store's (the same, or a wider or narrower kind of the same)."""
    pa = deps.pyarrow()
    if found == expected or pa.types.is_null(found):
        return True
    kinds = (
        lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
        lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t),
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_timestamp,
    )
    return any(kind(found) and kind(expected) for kind in kinds)


def _conform(data: Any, columns: Sequence[str]) -> Any:
    """A table or record batch with exactly `columns`, of the store's types (missing ones: nulls)."""
    pa = deps.pyarrow()
    pc = pa.compute
    schema = arrow_schema()
    arrays = []
    first = SCORE_COLUMNS[0]
    held = data.schema.names
    for name in columns:
        kind = schema.field(name).type
        if name in held:
            column = data.column(name)
            arrays.append(column if column.type == kind else column.cast(kind))
        elif name == first and LEGACY_SCORE in held:  # an earlier layout: ``score`` is ImageReward's
            arrays.append(data.column(LEGACY_SCORE).cast(kind))
        elif name == weights_column(first) and LEGACY_SCORE in held and LEGACY_MODEL in held:
            model = data.column(LEGACY_MODEL).cast(kind)
            arrays.append(pc.if_else(pc.is_valid(data.column(LEGACY_SCORE)), model, pa.scalar(None, kind)))
        else:
            arrays.append(pa.nulls(data.num_rows, kind))
    make = pa.Table.from_arrays if isinstance(data, pa.Table) else pa.RecordBatch.from_arrays
    return make(arrays, schema=pa.schema([schema.field(name) for name in columns]))


def _write_part(store: ResultStore, table: Any) -> PurePath:
    pq = deps.pyarrow().parquet
    table = table.cast(arrow_schema())
    return _write_atomically(
        store, lambda handle: pq.write_table(table, handle, row_group_size=ROW_GROUP, compression="zstd")
    )


def _write_atomically(store: ResultStore, write: Any) -> PurePath:
    """A new part: `write(handle)` into a hidden temporary file (or object), then moved into place whole."""
    token = uuid.uuid4().hex[:8]
    temporary = store._files.path(f".tmp-{token}.parquet")
    target = store._files.path(f"part-{store._next_number():08d}-{token}.parquet")
    store._files.write_new(temporary, target, write)
    return target
