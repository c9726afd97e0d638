"""Scoring collections of any size: an incremental Parquet results store, a streaming pipeline, Ray Data.

The entry points a front end (the command line, a WebUI tab) calls:

    from imagereward.collection import score_collection, query, folder_source

    summary = score_collection(folder_source(["outputs"], recursive=True), "outputs-scores", progress=print)
    page = query("outputs-scores", min_score=0.5, prompt_contains="cat", offset=0, limit=50)

Needs pyarrow (the ``collections`` extra); Ray only for `ray_job` (the ``ray`` extra). Nothing here is imported by
``imagereward`` itself, so the WebUI extension loads without either.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Page",
    "Progress",
    "RunSummary",
    "copy_selection",
    "folder_source",
    "move_selection",
    "query",
    "score_collection",
]

_EXPORTS = {
    "Page": "query",
    "query": "query",
    "Progress": "pipeline",
    "RunSummary": "pipeline",
    "score_collection": "pipeline",
    "folder_source": "sources",
    "copy_selection": "actions",
    "move_selection": "actions",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'imagereward.collection' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
