"""The WebUI script: thin glue from the WebUI's hooks to `BestOfNJob` and `ScorerRuntime`.

Imported only inside AUTOMATIC1111 / Forge / reForge (it imports their `modules`).
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import replace
from typing import Any

import gradio as gr
from modules import images, script_callbacks, scripts, shared

from ..errors import ImageRewardError
from ..selection import Mode
from . import settings
from .api import ROUTE, ApiError, score_request
from .args import ArgumentError, JobArgs, from_script_args
from .job import BestOfNJob
from .runtime import ScorerRuntime

log = logging.getLogger("imagereward")

try:  # Forge has its own memory manager
    from backend import memory_management as _forge_memory  # type: ignore[import-not-found]
except ImportError:
    _forge_memory = None

JOB_ATTR = "_imagereward_job"
ERROR_ATTR = "_imagereward_error"


def _free_memory() -> None:
    if _forge_memory is not None:
        _forge_memory.soft_empty_cache()
    else:
        from modules import devices

        devices.torch_gc()


RUNTIME = ScorerRuntime(free_memory=_free_memory)


def _low_vram() -> bool:
    cmd = shared.cmd_opts
    return bool(
        getattr(cmd, "lowvram", False)
        or getattr(cmd, "medvram", False)
        or getattr(cmd, "always_low_vram", False)
        or getattr(cmd, "always_no_vram", False)
    )


def current_settings() -> Any:
    from modules import paths

    return settings.runtime_settings(shared.opts, paths.models_path, _low_vram())


class WebUISaveHooks:
    """`SaveHooks` over `modules.images`, honouring the WebUI's folders, filename patterns and save options."""

    def should_save_samples(self, p: Any) -> bool:
        return bool(p.save_samples())

    def save_sample(self, p: Any, image: Any, seed: int, prompt: str, infotext: str) -> None:
        images.save_image(image, p.outpath_samples, "", seed, prompt, shared.opts.samples_format, info=infotext, p=p)

    def save_discarded(self, p: Any, image: Any, seed: int, prompt: str, infotext: str) -> None:
        folder = settings.discarded_dir(shared.opts, p.outpath_samples)
        images.save_image(image, folder, "", seed, prompt, shared.opts.samples_format, info=infotext, p=p)

    def grid_wanted(self, p: Any, count: int) -> tuple[bool, bool]:
        opts = shared.opts
        if p.do_not_save_grid or (count < 2 and opts.grid_only_if_multiple):
            return False, False
        return bool(opts.return_grid), bool(opts.grid_save)

    def make_grid(self, p: Any, pictures: list[Any], infotext: str) -> Any:
        grid = images.image_grid(pictures, p.batch_size)
        if shared.opts.enable_pnginfo:
            grid.info["parameters"] = infotext
        return grid

    def save_grid(self, p: Any, grid: Any, infotext: str) -> None:
        opts = shared.opts
        images.save_image(
            grid,
            p.outpath_grids,
            "grid",
            p.all_seeds[0],
            p.all_prompts[0],
            opts.grid_format,
            info=infotext,
            short_filename=not opts.grid_extended_filename,
            p=p,
            grid=True,
        )


class ImageRewardScript(scripts.Script):
    sorting_priority = 15

    def title(self) -> str:
        return "ImageReward"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        from modules.ui_components import InputAccordion

        defaults = JobArgs()  # one source for the defaults of the UI, the API and the tests

        with InputAccordion(defaults.enabled, label="ImageReward", elem_id=self.elem_id("imagereward")) as enabled:
            with gr.Row():
                mode = gr.Dropdown(
                    label="Mode",
                    choices=[m.value for m in Mode],
                    value=defaults.mode.value,
                    elem_id=self.elem_id("imagereward_mode"),
                )
                candidates = gr.Slider(
                    label="Candidates per image (best of N)",
                    minimum=1,
                    maximum=64,
                    step=1,
                    value=defaults.candidates,
                    elem_id=self.elem_id("imagereward_candidates"),
                )
            with gr.Row():
                k = gr.Slider(
                    label="Keep the k best of each group (top-k modes)",
                    minimum=1,
                    maximum=16,
                    step=1,
                    value=defaults.k,
                    elem_id=self.elem_id("imagereward_k"),
                )
                threshold = gr.Slider(
                    label="Threshold (threshold modes)",
                    minimum=-3.0,
                    maximum=3.0,
                    step=0.05,
                    value=defaults.threshold,
                    elem_id=self.elem_id("imagereward_threshold"),
                )
            with gr.Row():
                by_prompt = gr.Checkbox(
                    label="Rank within groups of the same prompt",
                    value=defaults.by_prompt,
                    elem_id=self.elem_id("imagereward_by_prompt"),
                )
                clean_prompt = gr.Checkbox(
                    label="Clean WebUI prompt syntax before scoring",
                    value=defaults.clean_prompt,
                    elem_id=self.elem_id("imagereward_clean_prompt"),
                )
                keep_discarded = gr.Checkbox(
                    label="Keep discarded images in a separate folder",
                    value=defaults.keep_discarded,
                    elem_id=self.elem_id("imagereward_keep_discarded"),
                )
        self.infotext_fields = [
            (enabled, lambda params: "ImageReward mode" in params),
            (mode, "ImageReward mode"),
            (candidates, "ImageReward candidates"),
            (k, "ImageReward k"),
            (threshold, "ImageReward threshold"),
        ]
        self.paste_field_names = [key for _, key in self.infotext_fields if isinstance(key, str)]
        return [enabled, mode, candidates, k, threshold, by_prompt, clean_prompt, keep_discarded]

    # Hooks run for every job, also with the toggle off: each returns at once when there is no job.

    def before_process(self, p: Any, *args: Any) -> None:
        setattr(p, JOB_ATTR, None)
        setattr(p, ERROR_ATTR, None)
        try:
            job_args = from_script_args(args)
        except ArgumentError as exc:
            setattr(p, ERROR_ATTR, str(exc))
            log.error("%s (the job runs without ImageReward)", exc)
            return
        if not job_args.enabled:
            return
        if getattr(p, "firstpass_image", None) is not None:  # the gallery's "upscale" of one chosen image
            job_args = replace(job_args, candidates=1, mode=Mode.SORT)
        job = BestOfNJob(job_args, keep_best_if_none=bool(settings.get(shared.opts, "imagereward_keep_best_if_none")))
        job.start(p)
        setattr(p, JOB_ATTR, job)

    def postprocess_batch_list(self, p: Any, pp: Any, *args: Any, **kwargs: Any) -> None:
        job: BestOfNJob | None = getattr(p, JOB_ATTR, None)
        if job is None or not pp.images:
            return
        prompts = list(p.prompts[: len(pp.images)])
        try:
            scores = RUNTIME.score(current_settings(), prompts, pp.images, clean_prompts=job.args.clean_prompt)
        except ImageRewardError as exc:
            job.record_failure(str(exc))
            log.error("ImageReward: %s", exc)
            return
        except Exception as exc:  # never lose the user's images over a scoring bug
            job.record_failure(f"scoring failed ({type(exc).__name__}: {exc})")
            log.error("ImageReward: scoring failed\n%s", traceback.format_exc())
            return
        job.record_scores(job.batch_indices(p, len(pp.images)), scores)
        scorer = RUNTIME.loaded
        if scorer is not None and any(scorer.truncated(prompts, clean=job.args.clean_prompt)):
            job.note("the prompt is longer than the 35 tokens ImageReward reads; it scored the beginning only")

    def postprocess_image_after_composite(self, p: Any, pp: Any, *args: Any) -> None:
        job: BestOfNJob | None = getattr(p, JOB_ATTR, None)
        if job is not None:
            job.remember_image(p, pp.image)

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        error = getattr(p, ERROR_ATTR, None)
        if error:
            processed.comments = f"{processed.comments or ''}{error}\n"
            processed.extra_generation_params = {**processed.extra_generation_params, "ImageReward error": error}
        job: BestOfNJob | None = getattr(p, JOB_ATTR, None)
        if job is None:
            return
        setattr(p, JOB_ATTR, None)
        try:
            job.finish(p, processed, WebUISaveHooks())
        finally:
            RUNTIME.job_done(current_settings())


# ------------------------------------------------------------------------------------------------- callbacks


def _on_ui_settings() -> None:
    settings.register(shared, shared.OptionInfo, gr)


def _on_app_started(_demo: Any, app: Any) -> None:
    from fastapi import Body, HTTPException

    def score_endpoint(payload: dict = Body(...)) -> dict:  # noqa: B008
        def score(prompts: Any, pictures: Any, clean: bool) -> list[float]:
            settings_now = current_settings()
            try:
                return RUNTIME.score(settings_now, prompts, pictures, clean_prompts=clean)
            finally:
                RUNTIME.job_done(settings_now)

        try:
            return score_request(payload, score)
        except ApiError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        except ImageRewardError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None

    app.add_api_route(ROUTE, score_endpoint, methods=["POST"], tags=["ImageReward"])


def register_callbacks() -> None:
    """Called by scripts/imagereward.py each time the WebUI (re)loads its scripts."""
    script_callbacks.on_ui_settings(_on_ui_settings)
    script_callbacks.on_app_started(_on_app_started)
