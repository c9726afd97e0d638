"""The gradio controls of the "ImageReward" tab (gradio 3.41 in A1111, 4.40 in Forge); the logic is in
`collection_tab.py`. Imported only inside the WebUI."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from ..errors import ImageRewardError
from . import collection_tab as logic
from .folders import FolderPolicy

log = logging.getLogger("imagereward")


def _safely(action: Callable[..., Any], fallback: Callable[[str], Any]) -> Callable[..., Any]:
    """A handler that turns any failure into a sentence in the status line, never a traceback in the page."""

    @functools.wraps(action)  # gradio reads the signature (a `progress` default) through __wrapped__
    def handler(*args: Any, **kwargs: Any) -> Any:
        try:
            return action(*args, **kwargs)
        except ImageRewardError as exc:
            return fallback(str(exc))
        except Exception as exc:
            log.exception("ImageReward tab")
            return fallback(f"failed: {type(exc).__name__}: {exc}")

    return handler


def build(
    default_folder: str,
    get_scorer: Callable[[], Any],
    done: Callable[[], None],
    queue_lock: Any,
    policy: Callable[[], FolderPolicy],
) -> gr.Blocks:
    """The tab; `policy()` is asked at each click, so a change of the settings' folders applies at once."""
    current: dict[str, logic.Scan | None] = {"scan": None}

    with gr.Blocks(analytics_enabled=False) as blocks:
        missing = logic.needs_pyarrow()
        if missing:
            gr.Markdown(missing)
        limit = logic.folder_limit_note(policy())
        if limit:
            gr.Markdown(limit)
        with gr.Row():
            folder = gr.Textbox(label="Folder (sub-folders included)", value=default_folder, scale=4)
            rescore = gr.Checkbox(label="Score everything again", value=False)
        with gr.Row():
            score_button = gr.Button("Score new images", variant="primary")
            stop_button = gr.Button("Stop")
        status = gr.Markdown(
            "A folder inside the WebUI's outputs keeps its scores in its own `.imagereward-scores` store; any other "
            "folder is only read, and its scores go to the stores folder (Settings → ImageReward). A second run "
            "scores only new images."
        )
        with gr.Row():
            min_score = gr.Textbox(label="Lowest score (empty: none)", value="")
            max_score = gr.Textbox(label="Highest score (empty: none)", value="")
            prompt = gr.Textbox(label="Prompt contains", value="")
            page = gr.Number(label="Page", value=1, precision=0)
        with gr.Row():
            show_button = gr.Button("Show", variant="primary")
            previous_button = gr.Button("◀ Previous page")
            next_button = gr.Button("Next page ▶")
        gallery_args: dict[str, Any] = {
            "label": "Best first",
            "show_label": False,
            "elem_id": f"{logic.TAB_KEY}_gallery",
        }
        try:
            gallery = gr.Gallery(columns=6, **gallery_args)
        except TypeError:  # an older gradio without `columns`
            gallery = gr.Gallery(**gallery_args)
        info = gr.Textbox(
            elem_id=f"generation_info_{logic.TAB_KEY}",
            elem_classes=["imagereward-hidden"],
            show_label=False,
            interactive=False,
        )
        with gr.Row():
            target = gr.Textbox(label="Copy or move the images shown by these filters (all pages) into", scale=4)
            copy_button = gr.Button("Copy")
            move_button = gr.Button("Move")

        def score(folder_text: str, again: bool, progress: Any = gr.Progress()) -> str:  # noqa: B008
            scan = logic.Scan.new()
            current["scan"] = scan

            def report(done_count: int, total: int, rate: float) -> None:
                progress((done_count, max(total, 1)), desc=f"{done_count}/{total} scored, {rate:.1f} images/s")

            try:
                rules = policy()
                rules.folder(folder_text, what="score")  # refused before the model is loaded
                scorer = logic.LockedScorer(get_scorer(), queue_lock)
                return logic.score_folder(folder_text, scorer, policy=rules, progress=report, scan=scan, rescore=again)
            finally:
                current["scan"] = None
                done()

        def stop() -> str:
            scan = current["scan"]
            if scan is None:
                return "Nothing is being scored."
            scan.stop.set()
            return "Stopping after the current batch…"

        def show(folder_text: str, low: str, high: str, text: str, number: Any) -> tuple[Any, str, str, Any]:
            view = logic.View.of(low, high, text, number)
            return logic.browse(folder_text, view, policy())

        def step(delta: int) -> Callable[..., Any]:
            def handler(folder_text: str, low: str, high: str, text: str, number: Any) -> tuple[Any, str, str, Any]:
                return show(folder_text, low, high, text, max(1, int(number or 1) + delta))

            return handler

        def place(move: bool) -> Callable[..., str]:
            def handler(folder_text: str, low: str, high: str, text: str, where: str) -> str:
                view = logic.View.of(low, high, text, 1)
                return logic.copy_or_move(folder_text, view, where, move=move, policy=policy())

            return handler

        def as_status(message: str) -> str:
            return message

        def as_view(message: str) -> tuple[Any, str, str, Any]:
            return [], logic.gallery_info_empty(), message, 1

        filters = [folder, min_score, max_score, prompt, page]
        view_outputs = [gallery, info, status, page]
        score_button.click(_safely(score, as_status), inputs=[folder, rescore], outputs=[status])
        stop_button.click(_safely(stop, as_status), inputs=[], outputs=[status])
        show_button.click(_safely(show, as_view), inputs=filters, outputs=view_outputs)
        previous_button.click(_safely(step(-1), as_view), inputs=filters, outputs=view_outputs)
        next_button.click(_safely(step(1), as_view), inputs=filters, outputs=view_outputs)
        place_inputs = [folder, min_score, max_score, prompt, target]
        copy_button.click(_safely(place(False), as_status), inputs=place_inputs, outputs=[status])
        move_button.click(_safely(place(True), as_status), inputs=place_inputs, outputs=[status])
    return blocks
