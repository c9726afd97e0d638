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


class FolderTabActions:
    """What the tab's buttons do (plain methods over `collection_tab`); `policy()` is asked at each click, so a
    change of the settings' folders applies at once."""

    def __init__(
        self,
        get_scorer: Callable[[], Any],
        done: Callable[[], None],
        queue_lock: Any,
        policy: Callable[[], FolderPolicy],
    ) -> None:
        self.get_scorer, self.done, self.queue_lock, self.policy = get_scorer, done, queue_lock, policy
        self.scan: logic.Scan | None = None

    def score(self, folder_text: str, again: bool, chosen: Any = None, progress: Any = None) -> str:
        scan = self.scan = logic.Scan.new()

        def report(done_count: int, total: int, rate: float) -> None:
            if progress is not None:
                progress((done_count, max(total, 1)), desc=f"{done_count}/{total} scored, {rate:.1f} images/s")

        try:
            rules = self.policy()
            rules.folder(folder_text, what="score")  # refused before the model is loaded
            scorer = logic.LockedScorer(self.get_scorer(logic.scorer_names(chosen)), self.queue_lock)
            return logic.score_folder(folder_text, scorer, policy=rules, progress=report, scan=scan, rescore=again)
        finally:
            self.scan = None
            self.done()

    def stop(self) -> str:
        if self.scan is None:
            return "Nothing is being scored."
        self.scan.stop.set()
        return "Stopping after the current batch…"

    def show(
        self, folder_text: str, low: str, high: str, text: str, number: Any, chosen: Any = None
    ) -> tuple[Any, str, str, Any]:
        return logic.browse(folder_text, logic.View.of(low, high, text, number, chosen), self.policy())

    def step(self, delta: int) -> Callable[..., Any]:
        def handler(
            folder_text: str, low: str, high: str, text: str, number: Any, chosen: Any = None
        ) -> tuple[Any, str, str, Any]:
            return self.show(folder_text, low, high, text, max(1, int(number or 1) + delta), chosen)

        return handler

    def place(self, move: bool) -> Callable[..., str]:
        def handler(folder_text: str, low: str, high: str, text: str, where: str, chosen: Any = None) -> str:
            view = logic.View.of(low, high, text, 1, chosen)
            return logic.copy_or_move(folder_text, view, where, move=move, policy=self.policy())

        return handler


def _as_status(message: str) -> str:
    return message


def _as_view(message: str) -> tuple[Any, str, str, Any]:
    return [], logic.gallery_info_empty(), message, 1


def _gallery() -> tuple[Any, Any]:
    """The gallery and the hidden box its badges read (as txt2img's generation info)."""
    gallery_args: dict[str, Any] = {"label": "Best first", "show_label": False, "elem_id": f"{logic.TAB_KEY}_gallery"}
    try:
        gallery = gr.Gallery(columns=6, **gallery_args)
    except TypeError:  # an older gradio without `columns`
        gallery = gr.Gallery(**gallery_args)
    info = gr.Textbox(
        elem_id=f"generation_info_{logic.TAB_KEY}", elem_classes=["imagereward-hidden"], show_label=False,
        interactive=False,
    )  # fmt: skip
    return gallery, info


def build(
    default_folder: str,
    get_scorer: Callable[[], Any],
    done: Callable[[], None],
    queue_lock: Any,
    policy: Callable[[], FolderPolicy],
) -> gr.Blocks:
    actions = FolderTabActions(get_scorer, done, queue_lock, policy)

    def score(folder_text: str, again: bool, chosen: Any = None, progress: Any = gr.Progress()) -> str:  # noqa: B008
        return actions.score(folder_text, again, chosen, progress)  # (gr.Progress() as a default: gradio's way)

    with gr.Blocks(analytics_enabled=False) as blocks:
        for note in (logic.needs_pyarrow(), logic.folder_limit_note(policy())):
            if note:
                gr.Markdown(note)
        with gr.Row():
            folder = gr.Textbox(label="Folder (sub-folders included)", value=default_folder, scale=4)
            rescore = gr.Checkbox(label="Score everything again", value=False)
        scorers = gr.Dropdown(
            choices=logic.scorer_choices(), value=["ImageReward"], multiselect=True,
            label="Scorers (one column each; a scorer added later scores only its column; the first one shown, "
            "filtered and sorted by)",
        )  # fmt: skip
        with gr.Row():
            score_button, stop_button = gr.Button("Score new images", variant="primary"), gr.Button("Stop")
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
            previous_button, next_button = gr.Button("◀ Previous page"), gr.Button("Next page ▶")
        gallery, info = _gallery()
        with gr.Row():
            target = gr.Textbox(label="Copy or move the images shown by these filters (all pages) into", scale=4)
            copy_button, move_button = gr.Button("Copy"), gr.Button("Move")

        filters, views = [folder, min_score, max_score, prompt, page, scorers], [gallery, info, status, page]
        place_inputs = [folder, min_score, max_score, prompt, target, scorers]
        score_button.click(_safely(score, _as_status), inputs=[folder, rescore, scorers], outputs=[status])
        stop_button.click(_safely(actions.stop, _as_status), inputs=[], outputs=[status])
        show_button.click(_safely(actions.show, _as_view), inputs=filters, outputs=views)
        previous_button.click(_safely(actions.step(-1), _as_view), inputs=filters, outputs=views)
        next_button.click(_safely(actions.step(1), _as_view), inputs=filters, outputs=views)
        copy_button.click(_safely(actions.place(False), _as_status), inputs=place_inputs, outputs=[status])
        move_button.click(_safely(actions.place(True), _as_status), inputs=place_inputs, outputs=[status])
    return blocks
