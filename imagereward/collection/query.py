"""Reading a store back: rows filtered by score range and prompt, sorted, paged; and exports (CSV, JSON).

Selection goes by one score column (`Filters.by`: a scorer's label or name; default the first column holding scores,
in `columns.SCORE_COLUMNS` order); a page's rows carry that column's value as ``score`` too, for a table or gallery
that shows one number."""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ImageRewardError
from . import deps
from .columns import SCORE_COLUMNS, column_of, pick_column, weights_column
from .items import FAILED, SCORED
from .store import ResultStore

#: "score" sorts by the selection's column; a scorer's label by that one.
SORT_KEYS = ("score", *SCORE_COLUMNS, "key", "prompt", "scored_at", "mtime_ns", "size")
#: Columns of a page's rows and of exports, in order (the score columns holding scores go after the prompt).
SHOWN = ("key", "path", "member", "prompt", "status", "error", "size", "mtime_ns", "sha256", "scored_at")


@dataclass
class Filters:
    min_score: float | None = None  # inclusive
    max_score: float | None = None  # inclusive
    prompt_contains: str | None = None  # case-insensitive substring
    include_errors: bool = False  # also rows whose image could not be scored (their score is empty)
    by: str | None = None  # the score column (label or scorer name); None: the first one holding scores


@dataclass
class Page:
    rows: list[dict[str, Any]]
    total: int  # rows matching the filters, over all pages
    offset: int
    limit: int | None
    by: str = SCORE_COLUMNS[0]  # the score column the rows were selected and sorted by (their "score")
    problems: list[str] = field(default_factory=list)  # damaged parts set aside (or left out) while reading


def _open(store: str | os.PathLike[str] | ResultStore) -> ResultStore:
    return store if isinstance(store, ResultStore) else ResultStore.open_existing(store)


def score_columns(table: Any) -> list[str]:
    """The score columns of a read table that hold at least one score, in column order."""
    return [c for c in SCORE_COLUMNS if table[c].null_count < table.num_rows]


def selected(store: str | os.PathLike[str] | ResultStore, filters: Filters) -> Any:
    """The store's current rows that match `filters` (an Arrow table, unsorted), with the selection's column
    repeated as ``score``. `columns.UnknownColumnError` when the store holds no scores of `filters.by`."""
    pa = deps.pyarrow()
    pc = pa.compute
    for name in ("min_score", "max_score"):
        value = getattr(filters, name)
        if value is not None and not math.isfinite(value):
            raise ImageRewardError(f"{name.replace('_', '-')} must be a finite number")
    if filters.by:
        column_of(filters.by)  # (a name that is no scorer: said before the store is read)
    table = _open(store).read()
    by = pick_column(filters.by, score_columns(table))
    table = table.append_column(pa.field("score", pa.float64()), table[by])
    table = table.replace_schema_metadata({"by": by})
    wanted = pc.equal(table["status"], SCORED)
    if filters.include_errors:
        wanted = pc.or_(wanted, pc.equal(table["status"], FAILED))
    table = table.filter(wanted)
    if filters.min_score is not None:
        table = table.filter(pc.fill_null(pc.greater_equal(table["score"], filters.min_score), filters.include_errors))
    if filters.max_score is not None:
        table = table.filter(pc.fill_null(pc.less_equal(table["score"], filters.max_score), filters.include_errors))
    if filters.prompt_contains:
        match = pc.match_substring(table["prompt"], filters.prompt_contains, ignore_case=True)
        table = table.filter(pc.fill_null(match, False))
    return table


def selected_by(table: Any) -> str:
    """The score column `selected` chose."""
    return (table.schema.metadata or {}).get(b"by", SCORE_COLUMNS[0].encode()).decode()


def shown(table: Any) -> list[str]:
    """The columns of a page or an export: `SHOWN` with each score column that holds scores, and its record."""
    columns = score_columns(table)
    if selected_by(table) not in columns:
        columns.insert(0, selected_by(table))
    scores = [name for column in columns for name in (column, weights_column(column))]
    return [*SHOWN[:4], *scores, *SHOWN[4:]]


def sort_table(table: Any, sort_by: str = "score", descending: bool = True) -> Any:
    if sort_by not in SORT_KEYS:
        raise ImageRewardError(f"cannot sort by {sort_by!r}; use one of {', '.join(SORT_KEYS)}")
    order = "descending" if descending else "ascending"
    keys = [(sort_by, order)] + ([("key", "ascending")] if sort_by != "key" else [])
    return table.sort_by(keys)  # rows without a score (errors) come last either way (nulls last)


def query(
    store: str | os.PathLike[str] | ResultStore,
    *,
    min_score: float | None = None,
    max_score: float | None = None,
    prompt_contains: str | None = None,
    include_errors: bool = False,
    by: str | None = None,
    sort_by: str = "score",
    descending: bool = True,
    offset: int = 0,
    limit: int | None = 100,
) -> Page:
    """One page of the store's rows (best first by default), for a table or a gallery that pages."""
    if offset < 0 or (limit is not None and limit < 0):
        raise ImageRewardError("offset and limit must not be negative")
    results = _open(store)
    before = len(results.problems)
    table = selected(results, Filters(min_score, max_score, prompt_contains, include_errors, by))
    table = sort_table(table, sort_by, descending)
    stop = table.num_rows if limit is None else min(table.num_rows, offset + limit)
    columns = [*shown(table), "score", "path_bytes"]  # (path_bytes: row_bytes)
    page = table.slice(offset, max(0, stop - offset)).select(columns)
    return Page(page.to_pylist(), table.num_rows, offset, limit, selected_by(table), results.problems[before:])


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def export(table: Any, path: str | os.PathLike[str], fmt: str) -> None:
    """Write rows as CSV or JSON (a list of objects), via a temporary file renamed into place."""
    pa = deps.pyarrow()
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    table = table.select(shown(table))
    try:
        if fmt == "csv":
            import pyarrow.csv

            pyarrow.csv.write_csv(table, temporary)
        elif fmt == "json":
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write("[\n")
                first = True
                for batch in table.to_batches(max_chunksize=4096):
                    for row in pa.Table.from_batches([batch]).to_pylist():
                        handle.write(("" if first else ",\n") + json.dumps({k: _plain(v) for k, v in row.items()}))
                        first = False
                handle.write("\n]\n")
        else:
            raise ImageRewardError(f"cannot export as {fmt!r}; use csv or json")
        os.replace(temporary, target)
    except OSError as exc:
        raise ImageRewardError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        if temporary.exists():
            temporary.unlink()
