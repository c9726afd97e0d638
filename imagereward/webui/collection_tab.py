"""The "ImageReward" tab: score a folder incrementally into a results store, browse it best first, copy or move.

Plain functions over `imagereward.collection`; `tab.py` puts gradio controls on them. Every folder goes through a
`FolderPolicy` (`folders.py`): which folders may be used while the WebUI is reachable from other machines, and where
a folder's store lives (inside the WebUI's output folders: in the folder itself, `.imagereward-scores`, so it
follows the folder when it is moved; elsewhere: in the stores folder, so a folder that is only read stays as it
was). The gallery's badges come from the same front-end code as txt2img's: `gallery_info` writes each image's score
as an infotext that it reads.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ImageRewardError
from ..infotext import Infotext, format_infotext, format_score
from .folders import FolderPolicy

PAGE_SIZE = 48
TAB_KEY = "imagereward_collection"  # elem ids: #imagereward_collection_gallery, #generation_info_imagereward_collection


def needs_pyarrow() -> str | None:
    """A sentence for the user when the store's library is missing (the WebUI's install does not bring it)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:
        import numpy

        # pyarrow 19 and later need NumPy 2; A1111 1.10 pins NumPy 1.26 (pyarrow 18.1 checked with it).
        spec = "pyarrow" if int(numpy.__version__.split(".")[0]) >= 2 else '"pyarrow<19"'
        return (
            f"Scoring a folder needs pyarrow, which the WebUI does not bring ({exc}): run `pip install {spec}` in "
            "the WebUI's Python environment (for example `venv/bin/pip install ...`), then restart the WebUI."
        )
    return None


def folder_limit_note(policy: FolderPolicy) -> str | None:
    """A line for the tab while the WebUI is reachable from other machines: which folders it works in."""
    if not policy.restricted:
        return None
    from .folders import LIFT_FLAG

    allowed = ", ".join(f"`{root}`" for root in policy.shown_roots())
    return (
        f"This WebUI is reachable from other machines, so this tab works only inside {allowed} (the WebUI's output "
        f"folders and those listed in Settings → ImageReward). Start the WebUI with `{LIFT_FLAG}` to lift the limit."
    )


def scorer_choices() -> list[str]:
    """The tab's scorer choices: the store's column names (scorers' labels, the ensemble last)."""
    from ..collection.columns import SCORE_COLUMNS

    return list(SCORE_COLUMNS)


def scorer_names(labels: Any) -> tuple[str, ...]:
    """The scorer names of the labels chosen in the tab (default: ImageReward); one sentence for an unknown one."""
    from ..collection.columns import NAMES, SCORE_COLUMNS

    chosen = [labels] if isinstance(labels, str) else list(labels or [])
    names = []
    for text in chosen or [SCORE_COLUMNS[0]]:
        if text not in SCORE_COLUMNS:
            raise ImageRewardError(f"unknown scorer {text!r}; choose from {', '.join(SCORE_COLUMNS)}")
        names.append(NAMES[SCORE_COLUMNS.index(text)])
    return tuple(names)


class LockedScorer:
    """The WebUI's scorers for a folder run: each batch waits for the WebUI's queue (no scoring in the middle of a
    generation), and a generation can start between batches."""

    def __init__(self, scorer: Any, lock: Any) -> None:
        self._scorer = scorer
        self._lock = lock

    @property
    def batch_lock(self) -> Any:
        """Held by the collection pipeline around each batch (`pipeline.score_collection`)."""
        return self._lock

    def score(self, *args: Any, **kwargs: Any) -> list[float]:
        with self._lock:
            return self._scorer.score(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)


@dataclass
class Scan:
    """One folder run that the Stop button can end (what was scored is kept)."""

    stop: threading.Event

    @classmethod
    def new(cls) -> Scan:
        return cls(threading.Event())


def score_folder(
    folder: str | Path,
    scorer: Any,
    *,
    policy: FolderPolicy,
    progress: Callable[[int, int, float], None] | None = None,
    scan: Scan | None = None,
    rescore: bool = False,
) -> str:
    """Score the images of `folder` (and its sub-folders) that its store does not hold yet; a summary sentence."""
    from ..collection.pipeline import score_collection
    from ..collection.sources import folder_source

    path = policy.folder(folder, what="score")
    store = policy.store_of(path)
    if store.parent != path:
        store.parent.mkdir(parents=True, exist_ok=True)  # the stores folder

    def report(state: Any) -> None:
        if progress is not None:
            progress(state.done, state.total, state.images_per_s)

    summary = score_collection(
        folder_source([str(path)], exclude=[str(store)]),
        store,
        scorer=scorer,
        workers=0,  # decode here: a worker process would be a fork of the whole WebUI
        rescore=rescore,
        progress=report,
        should_stop=(scan.stop.is_set if scan is not None else None),
    )
    parts = [f"{summary.scored} scored", f"{summary.skipped} already in the store"]
    if summary.failed:
        parts.append(f"{summary.failed} could not be read or had no prompt")
    text = f"{path}: {summary.total} images, " + ", ".join(parts) + f" ({summary.elapsed_s:.1f} s)."
    if summary.interrupted:
        text += " Stopped: the next run goes on from there."
    if store.parent != path:
        text += f" The scores are kept in {store} (the folder itself is only read)."
    return text


@dataclass(frozen=True)
class View:
    min_score: float | None = None
    max_score: float | None = None
    prompt: str = ""
    page: int = 1  # 1-based
    by: str | None = None  # the score column shown, filtered and sorted by (None: the first holding scores)

    @classmethod
    def of(cls, min_score: Any, max_score: Any, prompt: Any, page: Any, by: Any = None) -> View:
        def number(value: Any) -> float | None:
            try:
                number = float(value)
            except (TypeError, ValueError):
                return None
            return number if math.isfinite(number) else None

        page_number = number(page)
        if isinstance(by, (list, tuple)):
            by = by[0] if by else None
        prompt_text, page_shown = str(prompt or "").strip(), max(1, int(page_number or 1))
        return cls(number(min_score), number(max_score), prompt_text, page_shown, str(by) if by else None)

    def filters(self) -> Any:
        from ..collection.query import Filters

        return Filters(self.min_score, self.max_score, self.prompt or None, by=self.by)


def browse(
    folder: str | Path, view: View, policy: FolderPolicy, page_size: int = PAGE_SIZE
) -> tuple[list[tuple[Any, str]], str, str, int]:
    """One page of a folder's store, best first: (gallery items, generation-info JSON for the badges, status, the
    page shown). A page past the end shows the last page, and says so through the page number it returns."""
    from ..collection.actions import row_bytes
    from ..collection.query import query

    path = policy.folder(folder, what="show")
    store = policy.store_of(path)
    if not store.exists():
        return [], _info([]), f"{path} has not been scored yet: press “Score new images”.", 1

    def fetch(number: int) -> Any:
        return query(
            store,
            min_score=view.min_score,
            max_score=view.max_score,
            prompt_contains=view.prompt or None,
            by=view.by,
            offset=(number - 1) * page_size,
            limit=page_size,
        )

    page = fetch(view.page)
    pages = max(1, math.ceil(page.total / page_size))
    number = min(view.page, pages)
    if number != view.page:
        page = fetch(number)
    items: list[tuple[Any, str]] = []
    rows = []
    for row in page.rows:
        image = _image(row, row_bytes, policy)
        if image is None:
            continue
        rows.append(row)
        decimals = _decimals(page.by)
        items.append((image, f"{_shown(row['score'], decimals)} · {row.get('prompt') or ''}"[:200]))
    status = f"{page.total} image(s) match; page {number} of {pages}, best first by {page.by}."
    return items, _info(rows, page.by), status, number


def _decimals(column: str) -> int:
    from ..scorers.specs import ENSEMBLE_KEY, ENSEMBLE_SCALE, SCORERS

    if column == ENSEMBLE_KEY:
        return ENSEMBLE_SCALE.decimals
    return next((s.scale.decimals for s in SCORERS.values() if s.label == column), 3)


def _shown(score: float | None, decimals: int) -> str:
    return "—" if score is None else format_score(score, decimals)


def _image(row: dict[str, Any], row_bytes: Callable[[dict[str, Any]], bytes], policy: FolderPolicy) -> Any:
    """What the gallery shows: the file's path where there is one (gradio serves it), else its decoded bytes;
    nothing for a file the policy does not permit (a link that leads out of an allowed folder)."""
    path = row.get("path")
    if path and not policy.permits(path):
        return None
    if path and Path(path).is_file():
        return str(path)
    try:
        import io

        from PIL import Image

        return Image.open(io.BytesIO(row_bytes(row)))
    except Exception:
        return None


def gallery_info_empty() -> str:
    return _info([])


def _info(rows: list[dict[str, Any]], column: str = "ImageReward") -> str:
    """A `Processed.js()`-shaped JSON for the gallery's badges: one infotext per image, with its score under the
    scorer's infotext key and, for another scorer than ImageReward, the "ImageReward scorer" entry naming it (as
    txt2img's infotexts do, so the same front-end code colours the badge)."""
    from ..scorers.specs import ENSEMBLE_KEY, SCORERS

    key = next((s.infotext_key for s in SCORERS.values() if s.label == column), ENSEMBLE_KEY)
    decimals = _decimals(column)
    infotexts = []
    for row in rows:
        name = Path(str(row.get("path") or row.get("key") or "")).name
        settings = {key: _shown(row["score"], decimals), "File": name}
        if column != "ImageReward":
            settings["ImageReward scorer"] = column
        settings["Scorer"] = str(row.get("scorer") or "ImageReward")
        infotexts.append(format_infotext(Infotext(prompt=str(row.get("prompt") or ""), settings=settings)))
    return json.dumps({"index_of_first_image": 0, "infotexts": infotexts})


def copy_or_move(folder: str | Path, view: View, target: str | Path, *, move: bool, policy: FolderPolicy) -> str:
    """Copy (or move) every image of the current filter into `target`; never overwrites, never deletes."""
    from ..collection.actions import copy_selection, move_selection

    path = policy.folder(folder, what="move images out of" if move else "copy images out of")
    destination = policy.target(target)
    store = policy.store_of(path)
    if not store.exists():
        raise ImageRewardError(f"{path} has not been scored yet")
    action = move_selection if move else copy_selection
    report = action(store, destination, view.filters())
    verb = "moved" if move else "copied"
    parts = [f"{report.done} {verb}"]
    if report.already_there:
        parts.append(f"{report.already_there} already there")
    if report.renamed:
        parts.append(f"{report.renamed} under a new name (the name was taken)")
    if report.problems:
        parts.append(f"{len(report.problems)} left where they are ({'; '.join(report.problems[:3])})")
    return ", ".join(parts) + "."
