"""Scoring collections of any size: an incremental Parquet results store, a streaming pipeline, Ray Data.

What a front end (the command line, a WebUI tab) calls:

    from imagereward.collection import Filters, copy_selection, folder_source, query, row_bytes, score_collection

    summary = score_collection(                      # only new or changed images are scored
        folder_source(["outputs"]), "outputs/.imagereward-scores",
        scorer=shared_scorer,                        # optional: the WebUI's loaded scorer(s) (else loaded here,
        scorers=("imagereward", "hpsv2.1"),          #  these: one column each, named by label; see columns.py)
        workers=0,                                   # decode in-process (in the WebUI: no forked copy of it)
        progress=lambda p: bar(p.done, p.total, p.images_per_s, p.eta_s),
        should_stop=lambda: interrupted,             # polled after each batch; what was scored is kept
    )
    page = query("outputs/.imagereward-scores", min_score=0.5, prompt_contains="cat", sort_by="score",
                 descending=True, offset=0, limit=50)   # page.rows (dicts), page.total
    thumbnail_bytes = row_bytes(page.rows[0])        # a file's or a tar member's bytes
    report = copy_selection(store, "best", Filters(min_score=0.5))   # or move_selection: never overwrites

Needs pyarrow (the ``collections`` extra); Ray only for `ray_job` (the ``ray`` extra). Nothing here is imported by
``imagereward`` itself, so the WebUI extension loads without either.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Filters",
    "Page",
    "Progress",
    "RunSummary",
    "copy_selection",
    "folder_source",
    "move_selection",
    "query",
    "row_bytes",
    "score_collection",
]

_EXPORTS = {
    "Filters": "query",
    "Page": "query",
    "query": "query",
    "Progress": "pipeline",
    "RunSummary": "pipeline",
    "score_collection": "pipeline",
    "folder_source": "sources",
    "copy_selection": "actions",
    "move_selection": "actions",
    "row_bytes": "actions",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'imagereward.collection' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
