"""Which row counts for an image, and where each of its scores comes from: pure numpy over a store's rows in order.

The rule, the same in `ResultStore.read`, `compact` and `index`: a key's *newest* row (the last in part order) gives
everything but the scores; each score column's value is the newest non-null one among the key's rows that describe
the same content, that is, share the newest row's fingerprint. So scorers added in later runs each add a row holding
their own column, and the key still reads as one row with every column; a changed image (a new fingerprint) drops the
scores of its old content, whichever scorer made them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass
class Merge:
    """`groups`: each row's key number (0..keys-1); `newest`: each key's newest row; `sources[column]`: each key's
    row holding that column's value (-1: none)."""

    groups: np.ndarray
    newest: np.ndarray
    sources: dict[str, np.ndarray]

    @property
    def newest_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.groups), dtype=bool)
        mask[self.newest] = True
        return mask


def last_per_group(groups: np.ndarray, count: int, rows: np.ndarray | None = None) -> np.ndarray:
    """For each group 0..count-1, the last of `rows` (row numbers, ascending; default: every row) in it, else -1."""
    rows = np.arange(len(groups), dtype=np.int64) if rows is None else rows
    result = np.full(count, -1, dtype=np.int64)
    if len(rows):
        of_rows = groups[rows]
        _, first_from_end = np.unique(of_rows[::-1], return_index=True)
        chosen = rows[len(rows) - 1 - first_from_end]
        result[groups[chosen]] = chosen
    return result


def merge(groups: np.ndarray, fingerprints: np.ndarray, present: Mapping[str, np.ndarray]) -> Merge:
    """`groups`: key numbers 0..K-1 of the rows in order (oldest first); `present[column]`: where the column is not
    null (or, for the index, holds a score made by the wanted weights)."""
    count = int(groups.max()) + 1 if len(groups) else 0
    newest = last_per_group(groups, count)
    same = fingerprints == fingerprints[newest][groups] if len(groups) else np.zeros(0, dtype=bool)
    sources = {
        column: last_per_group(groups, count, np.flatnonzero(same & mask).astype(np.int64))
        for column, mask in present.items()
    }
    return Merge(groups, newest, sources)


def group_numbers(hashes: np.ndarray) -> np.ndarray:
    """Key numbers 0..K-1 from 64-bit key hashes."""
    if not len(hashes):
        return np.zeros(0, dtype=np.int64)
    _, inverse = np.unique(hashes, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1)
