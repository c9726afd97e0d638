"""The "ImageReward" tab: score a folder incrementally into a results store, browse it best first, copy or move.

Plain functions over `imagereward.collection`; `tab.py` puts gradio controls on them. The store of a folder lives in
the folder itself (`.imagereward-scores`), so it follows the folder when it is moved. The gallery's badges come from
the same front-end code as txt2img's: `gallery_info` writes each image's score as an infotext that it reads.
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
from ..infotext import SCORE_KEY, Infotext, format_infotext, format_score

STORE_NAME = ".imagereward-scores"
PAGE_SIZE = 48
TAB_KEY = "imagereward_collection"  # elem ids: #imagereward_collection_gallery, #generation_info_imagereward_collection


def store_of(folder: str | Path) -> Path:
    return Path(folder).expanduser() / STORE_NAME


def check_folder(folder: str | Path | None) -> Path:
    text = str(folder or "").strip()
    if not text:
        raise ImageRewardError("give a folder to score")
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ImageRewardError(f"{path} is not a folder")
    return path


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


class LockedScorer:
    """The WebUI's scorer for a folder run: each batch waits for the WebUI's queue (no scoring in the middle of a
    generation), and a generation can start between batches."""

    def __init__(self, scorer: Any, lock: Any) -> None:
        self._scorer = scorer
        self._lock = lock

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
    progress: Callable[[int, int, float], None] | None = None,
    scan: Scan | None = None,
    rescore: bool = False,
) -> str:
    """Score the images of `folder` (and its sub-folders) that its store does not hold yet; a summary sentence."""
    from ..collection.pipeline import score_collection
    from ..collection.sources import folder_source

    path = check_folder(folder)

    def report(state: Any) -> None:
        if progress is not None:
            progress(state.done, state.total, state.images_per_s)

    summary = score_collection(
        folder_source([str(path)], exclude=[str(store_of(path))]),
        store_of(path),
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
    return text


@dataclass(frozen=True)
class View:
    min_score: float | None = None
    max_score: float | None = None
    prompt: str = ""
    page: int = 1  # 1-based

    @classmethod
    def of(cls, min_score: Any, max_score: Any, prompt: Any, page: Any) -> View:
        def number(value: Any) -> float | None:
            try:
                number = float(value)
            except (TypeError, ValueError):
                return None
            return number if math.isfinite(number) else None

        page_number = number(page)
        return cls(number(min_score), number(max_score), str(prompt or "").strip(), max(1, int(page_number or 1)))

    def filters(self) -> Any:
        from ..collection.query import Filters

        return Filters(self.min_score, self.max_score, self.prompt or None)


def browse(folder: str | Path, view: View, page_size: int = PAGE_SIZE) -> tuple[list[tuple[Any, str]], str, str]:
    """One page of a folder's store, best first: (gallery items, generation-info JSON for the badges, status)."""
    from ..collection.actions import row_bytes
    from ..collection.query import query

    path = check_folder(folder)
    if not store_of(path).exists():
        return [], _info([]), f"{path} has not been scored yet: press “Score new images”."
    page = query(
        store_of(path),
        min_score=view.min_score,
        max_score=view.max_score,
        prompt_contains=view.prompt or None,
        offset=(view.page - 1) * page_size,
        limit=page_size,
    )
    pages = max(1, math.ceil(page.total / page_size))
    items: list[tuple[Any, str]] = []
    rows = []
    for row in page.rows:
        image = _image(row, row_bytes)
        if image is None:
            continue
        rows.append(row)
        items.append((image, f"{format_score(row['score'])} · {row.get('prompt') or ''}"[:200]))
    status = f"{page.total} image(s) match; page {min(view.page, pages)} of {pages}, best first."
    return items, _info(rows), status


def _image(row: dict[str, Any], row_bytes: Callable[[dict[str, Any]], bytes]) -> Any:
    """What the gallery shows: the file's path where there is one (gradio serves it), else its decoded bytes."""
    path = row.get("path")
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


def _info(rows: list[dict[str, Any]]) -> str:
    """A `Processed.js()`-shaped JSON for the gallery's badges: one infotext per image, with its score."""
    infotexts = []
    for row in rows:
        name = Path(str(row.get("path") or row.get("key") or "")).name
        settings = {
            SCORE_KEY: format_score(row["score"]),
            "File": name,
            "Scorer": str(row.get("scorer") or "ImageReward"),
        }
        infotexts.append(format_infotext(Infotext(prompt=str(row.get("prompt") or ""), settings=settings)))
    return json.dumps({"index_of_first_image": 0, "infotexts": infotexts})


def copy_or_move(folder: str | Path, view: View, target: str | Path, *, move: bool) -> str:
    """Copy (or move) every image of the current filter into `target`; never overwrites, never deletes."""
    from ..collection.actions import copy_selection, move_selection

    path = check_folder(folder)
    text = str(target or "").strip()
    if not text:
        raise ImageRewardError("give a folder to copy or move the images into")
    if not store_of(path).exists():
        raise ImageRewardError(f"{path} has not been scored yet")
    action = move_selection if move else copy_selection
    report = action(store_of(path), Path(text).expanduser(), view.filters())
    verb = "moved" if move else "copied"
    parts = [f"{report.done} {verb}"]
    if report.already_there:
        parts.append(f"{report.already_there} already there")
    if report.renamed:
        parts.append(f"{report.renamed} under a new name (the name was taken)")
    if report.problems:
        parts.append(f"{len(report.problems)} left where they are ({'; '.join(report.problems[:3])})")
    return ", ".join(parts) + "."
