"""X/Y/Z plot cells (issue 22.5): every cell is a job of its own, and the plot returns one result for all of them.

The WebUI's X/Y/Z script runs `process_images` once per cell on a copy of `p` (the copies share one
`extra_generation_params` dict), takes each cell's first gallery image and infotext, and returns a shallow copy of the
first cell's `Processed`, so the plot's `extra_generation_params` is the first cell's dict. Its gallery is laid out as:
the plot's grid, the sub-grids of the Z values (only when "include sub grids" is on: one per Z value, or one when there
is no Z axis), then one image per cell in X/Y/Z's cell order (only when "include sub images" is on).

So each cell's details are added to the first cell's, with every index pointing at the cell's image in that final
gallery. What a cell is comes from the WebUI's state (X/Y/Z sets `state.job` to "k out of N" before each cell) and
from the arguments of the selected script; all of it is plain data here, read by `script.py`.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from typing import Any

XYZ_TITLE = "X/Y/Z plot"
_JOB_TEXT = re.compile(r"^\s*(\d+) out of (\d+)\s*$")
_SUMMED = ("scored", "kept", "discarded", "unfinished", "finished")


@dataclass(frozen=True)
class Cell:
    """One cell of a plot: its index in X/Y/Z's layout (x + y·X + z·X·Y) and where the cells' images start in the
    plot's gallery (None: they are not in it, or the layout is not known)."""

    index: int
    count: int
    first_image: int | None


def xyz_arguments(p: Any) -> dict[str, Any] | None:
    """The X/Y/Z script's arguments by name when it is the script this job's `p` runs under; else None."""
    runner = getattr(p, "scripts", None)
    args = getattr(p, "script_args", None)
    selectable = getattr(runner, "selectable_scripts", None)
    if not args or not selectable:
        return None
    try:
        chosen = int(args[0])
        script = selectable[chosen - 1] if chosen > 0 else None
        if script is None or script.title() != XYZ_TITLE:
            return None
        values = list(args[script.args_from : script.args_to])
        return dict(inspect.signature(script.run).bind_partial(p, *values).arguments)
    except Exception:  # another script or another shape of it: not a plot we can read
        return None


def cell_of(job_text: Any, arguments: dict[str, Any] | None) -> Cell | None:
    """The cell a job is, from `state.job` as X/Y/Z set it and the plot's arguments; None outside a plot."""
    if arguments is None:
        return None
    match = _JOB_TEXT.match(str(job_text or ""))
    if match is None:
        return None
    index, count = int(match.group(1)) - 1, int(match.group(2))
    if not 0 <= index < count:
        return None
    first: int | None = 1  # after the plot's grid
    if not arguments.get("include_lone_images", True):
        first = None
    elif arguments.get("include_sub_grids", False):
        # One sub-grid per Z value: known without X/Y/Z's value parser only when there is no Z axis ("Nothing").
        first = 2 if int(arguments.get("z_type") or 0) == 0 else None
    return Cell(index, count, first)


class Plots:
    """The plot being made: its details (the first cell's, which the plot returns) and which cells it holds."""

    def __init__(self) -> None:
        self._shared: dict[str, Any] | None = None  # the cells' shared extra_generation_params: one plot, one dict
        self._params: dict[str, Any] | None = None
        self._cells: list[tuple[int, dict[str, Any], list[Any]]] = []

    def add(
        self, shared: dict[str, Any], cell: Cell, params: dict[str, Any], first_image: int, details_key: str,
        scores_key: str,
    ) -> None:  # fmt: skip
        """A cell's job has finished: `params` is its Processed's extra_generation_params, `first_image` its
        index_of_first_image (X/Y/Z shows a cell's first gallery image: its grid when it has one)."""
        details = params.get(details_key)
        if not isinstance(details, dict):
            return
        if self._shared is not shared or self._params is None:
            self._shared, self._params, self._cells = shared, params, []
        entries = []
        for entry in details.get("images", []):
            shown = first_image == 0 and entry.get("position") == 0 and cell.first_image is not None
            index = cell.first_image + cell.index if shown and cell.first_image is not None else None
            position = None if index is None else index - 1  # the plot's index_of_first_image is 1
            entries.append({**entry, "cell": cell.index, "index": index, "position": position})
        self._cells = [c for c in self._cells if c[0] != cell.index]
        self._cells.append((cell.index, {**details, "images": entries}, list(params.get(scores_key) or [])))
        self._cells.sort(key=lambda c: c[0])
        self._write(self._params, cell.count, details_key, scores_key)

    def _write(self, params: dict[str, Any], count: int, details_key: str, scores_key: str) -> None:
        """The plot's details into the dict the plot returns: every cell's images, the totals, each cell's summary."""
        first = self._cells[0][1]
        summaries = [details.get("summary", {}) for _, details, _ in self._cells]
        total = dict(summaries[0])
        for key in _SUMMED:
            values = [s[key] for s in summaries if isinstance(s.get(key), int)]
            if values:
                total[key] = sum(values)
        for key, pick in (("min", min), ("max", max)):
            values = [s[key] for s in summaries if isinstance(s.get(key), float) and math.isfinite(s[key])]
            total[key] = pick(values) if values else None
        total["fallback"] = any(s.get("fallback") for s in summaries)
        total["failed"] = any(s.get("failed") for s in summaries)
        total["messages"] = [m for s in summaries for m in s.get("messages", [])]
        params[details_key] = {
            **first,
            "images": [entry for _, details, _ in self._cells for entry in details["images"]],
            "summary": total,
            "cells": [
                {"cell": index, "of": count, "summary": details.get("summary", {})} for index, details, _ in self._cells
            ],
        }
        params[scores_key] = [score for _, _, scores in self._cells for score in scores]
