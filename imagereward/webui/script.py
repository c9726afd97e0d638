"""The WebUI script: thin glue from the WebUI's hooks to `BestOfNJob` and `ScorerRuntime`.

Imported only inside AUTOMATIC1111 / Forge / reForge (it imports their `modules`). Every hook first asks whether the
`p` it got is the one the job started on: other scripts (ADetailer) replay our hooks on copies of `p`, and those
replays do nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import gradio as gr
from modules import images, script_callbacks, scripts, shared

from ..selection import Mode
from . import settings
from .access import endpoint_enabled, parse_api_auth
from .args import (
    ENSEMBLE_LABEL,
    FIELD_NAMES,
    PASTE_FIELDS,
    ArgumentError,
    JobArgs,
    from_script_args,
    threshold_update,
)
from .controls import ROWS as CONTROL_ROWS
from .controls import Control
from .host import accepted, allow_in_control, detect
from .job import DETAILS_KEY, JOB_ATTR, SCORES_KEY, BestOfNJob, job_of
from .runtime import JobScoring, ScorerRuntime
from .saves import DeferredSave, bind_arguments, call_with
from .xyz import Plots, cell_of, xyz_arguments

log = logging.getLogger("imagereward")

try:  # Forge has its own memory manager
    from backend import memory_management as _forge_memory  # type: ignore[import-not-found]
except ImportError:
    _forge_memory = None

ERROR_ATTR = "_imagereward_error"
CELL_ATTR = "_imagereward_xyz_cell"  # (shared dict, Cell) of a job that is an X/Y/Z plot's cell
WRAPPED_ATTR = "_imagereward_original"


def _free_memory() -> None:
    if _forge_memory is not None:
        _forge_memory.soft_empty_cache()
    else:
        from modules import devices

        devices.torch_gc()


RUNTIME = ScorerRuntime(free_memory=_free_memory)
HOST = detect()  # AUTOMATIC1111 and its forks, or SD.Next (`host.py`: what differs)
# Jobs between `process` and `postprocess`, held strongly: a job whose WebUI loop failed still holds the saves it
# captured, and the next job writes them (nothing lost).
_RUNNING: set[BestOfNJob] = set()
PLOTS = Plots()  # the X/Y/Z plot being made: each cell's details go into the one the plot returns


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


def _original_save_image() -> Any:
    return getattr(images.save_image, WRAPPED_ATTR, images.save_image)


def install_save_hook() -> None:
    """Route the WebUI's `images.save_image` through the running job (see `saves.py`); idempotent."""
    if hasattr(images.save_image, WRAPPED_ATTR):
        return
    original = images.save_image

    def save_image(*args: Any, **kwargs: Any) -> Any:
        try:
            arguments = bind_arguments(original, args, kwargs)
            p = arguments.get("p")
            job = job_of(p) if p is not None else None
            if job is not None and job.capture_save(p, arguments):
                return None, None
        except Exception:  # a problem of ours must never cost the user a file: save as the WebUI would
            log.exception("ImageReward: could not hold back a save; the image is saved at once")
        return original(*args, **kwargs)

    setattr(save_image, WRAPPED_ATTR, original)
    images.save_image = save_image


class WebUISaveHooks:
    """`SaveHooks` over `modules.images`, honouring the WebUI's folders, filename patterns and save options."""

    def replay(self, p: Any, save: DeferredSave, arguments: dict[str, Any]) -> None:
        # Filename patterns ([generation_number], [batch_number]) read these at save time.
        missing = object()
        iteration, batch_index = getattr(p, "iteration", missing), getattr(p, "batch_index", missing)
        p.iteration, p.batch_index = save.iteration, save.batch_index
        if isinstance(arguments.get("info"), str):
            arguments = {**arguments, "info": HOST.user_infotext(arguments["info"], p.n_iter, p.batch_size)}
        try:
            call_with(_original_save_image(), arguments)
        finally:
            for name, value in (("iteration", iteration), ("batch_index", batch_index)):
                if value is missing:
                    delattr(p, name)
                else:
                    setattr(p, name, value)

    def discarded_dir(self, p: Any) -> str:
        return settings.discarded_dir(shared.opts, p.outpath_samples)

    def grid_wanted(self, p: Any, count: int) -> tuple[bool, bool]:
        opts = shared.opts
        if p.do_not_save_grid or (count < 2 and HOST.opt(opts, "grid_only_if_multiple", True)):
            return False, False
        return bool(HOST.opt(opts, "return_grid", True)), bool(HOST.opt(opts, "grid_save", True))

    def make_grid(self, p: Any, pictures: list[Any], infotext: str) -> Any:
        grid = images.image_grid(pictures, p.batch_size)
        if HOST.writes_metadata(shared.opts):
            grid.info["parameters"] = infotext
        return grid

    def save_first_pass(self, p: Any, image: Any, seed: int, prompt: str, infotext: str, folder: str) -> None:
        if HOST.writes_metadata(shared.opts):
            image.info["parameters"] = infotext
        _original_save_image()(
            image, folder, "", seed, prompt, shared.opts.samples_format, info=infotext, p=p, suffix="-first-pass"
        )

    def save_grid(self, p: Any, grid: Any, infotext: str) -> None:
        opts = shared.opts
        save = _original_save_image()
        named = {"info": infotext, "p": p, "grid": True}
        named["short_filename"] = not HOST.opt(opts, "grid_extended_filename", False)
        grid_format = HOST.opt(opts, "grid_format", "png")
        save(grid, p.outpath_grids, "grid", p.all_seeds[0], p.all_prompts[0], grid_format, **accepted(save, named))


# ------------------------------------------------------------------------------------- two phases: the sampling

NO_SAMPLER_FACTORY = "this WebUI has no `modules.sd_samplers.create_sampler` to split its sampling at"
PHASE_ATTR = "_imagereward_phase_sample"


def _sampler_factory() -> Any:
    try:
        from modules import sd_samplers
    except ImportError:
        return None
    return sd_samplers if callable(getattr(sd_samplers, "create_sampler", None)) else None


@contextlib.contextmanager
def first_sampler_calls(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    """While `p.sample` runs: the first sampler it creates (the first pass's; hires fix creates its own after it)
    has its `sample`/`sample_img2img` wrapped by `wrap`. Everything else in `p.sample` is the WebUI's own code."""
    factory = _sampler_factory()
    original = factory.create_sampler
    state = {"done": False}

    def create_sampler(*args: Any, **kwargs: Any) -> Any:
        sampler = original(*args, **kwargs)
        if not state["done"]:
            state["done"] = True
            for name in ("sample", "sample_img2img"):
                method = getattr(sampler, name, None)
                if callable(method):
                    setattr(sampler, name, wrap(method))
        return sampler

    factory.create_sampler = create_sampler
    try:
        yield
    finally:
        factory.create_sampler = original


def install_phase_sampling(p: Any, job: BestOfNJob) -> None:
    """`p.sample` for a two-phase job (an instance attribute over the WebUI's method, removed in `postprocess`).

    Phase 1: the first pass only, at the preview steps when asked; the sampler's output is recorded. Phase 2: the
    first pass's sampler returns the recorded output of the image it finishes, so the WebUI's own code then decodes
    it or upscales its latents, and runs the hires pass exactly as in one go (with previews: a full sampling)."""
    original = p.sample

    def record(method: Callable[..., Any]) -> Callable[..., Any]:
        def sampled(*args: Any, **kwargs: Any) -> Any:
            samples = method(*args, **kwargs)
            if job.phases is not None:
                job.phases.record_latents(p.iteration, samples)
            return samples

        return sampled

    def sample(*args: Any, **kwargs: Any) -> Any:
        phases = job.phases
        if phases is None or phases.broken is not None:
            return original(*args, **kwargs)
        if phases.phase_of(p.iteration) == 1:
            with job.phase_one_sampling(p):
                if not phases.sampling.replays_latents:  # previews: phase 2 samples again, nothing to record
                    return original(*args, **kwargs)
                with first_sampler_calls(record):
                    return original(*args, **kwargs)
        if not phases.sampling.replays_latents:
            return original(*args, **kwargs)
        latents = phases.latents_for(p.iteration, len(p.prompts))
        if latents is None:  # (an interrupted phase 1 never reaches here) sample again: same seed, same image
            log.warning("ImageReward: no first pass recorded for batch %d; it is sampled again", p.iteration + 1)
            return original(*args, **kwargs)

        def replay(method: Callable[..., Any]) -> Callable[..., Any]:
            def recorded(sampling_p: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
                import torch

                return torch.stack(latents).to(device=getattr(x, "device", "cpu"))

            return recorded

        with first_sampler_calls(replay):
            return original(*args, **kwargs)

    setattr(sample, PHASE_ATTR, True)
    p.sample = sample


def remove_phase_sampling(p: Any) -> None:
    if getattr(getattr(p, "sample", None), PHASE_ATTR, False):
        with contextlib.suppress(AttributeError):
            delattr(p, "sample")


def infotext_maker(p: Any) -> Callable[[int], str]:
    """The infotext the WebUI would write for image i of the current batch (for first passes kept aside)."""
    from modules import processing

    prompts, seeds, subseeds, negatives = list(p.prompts), list(p.seeds), list(p.subseeds), list(p.negative_prompts)

    def make(i: int) -> str:
        return processing.create_infotext(p, prompts, seeds, subseeds, index=i, all_negative_prompts=negatives)

    return make


def scorer_changed(label: str, threshold: float) -> tuple[Any, Any]:
    """The threshold slider takes the chosen scorer's range (keeping a value that fits it, as a pasted one does);
    the weights box shows for the ensemble only."""
    return gr.update(**threshold_update(label, threshold)), gr.update(visible=label == ENSEMBLE_LABEL)


# The controls of "finish only the kept", greyed out where the WebUI cannot split its sampling (`host.py`).
PHASE_CONTROLS = ("finish_kept", "preview_percent", "check_previews")


def _component(control: Control, defaults: JobArgs, choices: list[Any] | None, elem_id: str) -> Any:
    """One row of the controls table as a gradio component."""
    common: dict[str, Any] = {"label": control.label, "value": control.value(defaults), "elem_id": elem_id}
    if control.info:
        common["info"] = control.info
    if HOST.split_refused and control.name in PHASE_CONTROLS:
        common["interactive"] = False
        if control.name == "finish_kept":
            common["info"] = f"Not available in {HOST.label}: {HOST.split_refused}. Every candidate is finished."
    if control.kind == "dropdown":
        return gr.Dropdown(choices=choices or [], **common)
    if control.kind == "slider":
        return gr.Slider(minimum=control.minimum, maximum=control.maximum, step=control.step, **common)
    if control.kind == "textbox":
        return gr.Textbox(placeholder=control.placeholder, visible=control.visible(defaults), **common)
    return gr.Checkbox(**common)


def _replayed(p: Any) -> bool:
    """A hook called on a copy of a job's `p` (ADetailer re-runs every script's hooks on `copy(p)`)."""
    job = job_of(p)
    return job is not None and not job.owns(p)


class ImageRewardScript(scripts.Script):
    sorting_priority = 15

    def title(self) -> str:
        return "ImageReward"

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        from modules.ui_components import InputAccordion

        defaults = JobArgs()  # one source for the defaults of the UI, the API and the tests
        choices = {"mode": [m.value for m in Mode], "scorer": settings.offered_scorers(shared.opts)}
        with InputAccordion(defaults.enabled, label="ImageReward", elem_id=self.elem_id("imagereward")) as enabled:
            controls: dict[str, Any] = {"enabled": enabled}
            for row in CONTROL_ROWS:
                with gr.Row():
                    for control in row:
                        elem_id = self.elem_id(f"imagereward_{control.name}")
                        controls[control.name] = _component(control, defaults, choices.get(control.name), elem_id)
        scorer, threshold, weights = controls["scorer"], controls["threshold"], controls["weights"]
        scorer.change(fn=scorer_changed, inputs=[scorer, threshold], outputs=[threshold, weights], show_progress=False)
        self.infotext_fields = [(controls[name], _paste_key(key)) for name, key in PASTE_FIELDS]
        self.paste_field_names = [key for _, key in PASTE_FIELDS if isinstance(key, str)]
        return [controls[name] for name in FIELD_NAMES]

    # Hooks run for every job, also with the toggle off: each returns at once when there is no job.

    def before_process(self, p: Any, *args: Any) -> None:
        if _replayed(p) or job_of(p) is not None:
            return
        for stale in list(_RUNNING):  # a job whose loop failed never reached `postprocess`: write what it held
            _RUNNING.discard(stale)
            problems = stale.abandon(WebUISaveHooks())
            if problems:
                log.error("ImageReward: an earlier job failed and some of its images could not be saved: %s", problems)
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
        keep_best, per_group = settings.below_threshold_rule(shared.opts)
        scoring = JobScoring(
            RUNTIME,
            current_settings,
            clean_prompts=job_args.clean_prompt,
            scorer=job_args.scorer,
            weights=job_args.weights,
        )
        job = BestOfNJob(job_args, scoring, keep_best_if_none=keep_best, per_group=per_group)
        job.start(p)
        setattr(p, JOB_ATTR, job)
        # X/Y/Z names the cell it runs in `state.job` ("3 out of 4") just before each cell's `process_images`.
        cell = cell_of(getattr(shared.state, "job", ""), xyz_arguments(p))
        setattr(p, CELL_ATTR, None if cell is None else (p.extra_generation_params, cell))

    def process(self, p: Any, *args: Any) -> None:
        job = job_of(p)
        if job is None or not job.owns(p) or job.capturing:
            return
        install_save_hook()  # (normally done at load; again in case another extension replaced the function)
        refused = HOST.split_refused or (None if _sampler_factory() is not None else NO_SAMPLER_FACTORY)
        job.make_plan(p, split_refused=refused)
        if job.phases is not None:
            install_phase_sampling(p, job)
        _RUNNING.add(job)

    def postprocess_batch_list(self, p: Any, pp: Any, *args: Any, **kwargs: Any) -> None:
        job = job_of(p)
        if job is not None and job.owns(p):
            state, opts = shared.state, shared.opts
            cut_short = bool(getattr(state, "interrupted", False) or getattr(state, "skipped", False))
            if cut_short and HOST.replaces_cut_short_batch:  # a preview or nothing, which no per-image hook sees
                job.hold_replaced_batch(p, list(pp.images))
                return
            finished = not cut_short or HOST.saves_incomplete(opts)
            job.check_batch(p, len(pp.images), finished=finished)
            if job.splits(p):  # phase 1: scored here, and nothing of the batch goes on to the per-image work
                job.phase_one_batch(p, list(pp.images), infotext_maker(p))
                pp.images = []
                p.prompts, p.negative_prompts, p.seeds, p.subseeds = [], [], [], []

    # The final pixels of each image: the last hook that sees them differs between the WebUIs (`host.py`).

    def postprocess_image(self, p: Any, pp: Any, *args: Any) -> None:
        if HOST.final_hook == "postprocess_image":
            _collect(p, pp)

    def postprocess_image_after_composite(self, p: Any, pp: Any, *args: Any) -> None:
        if HOST.final_hook == "postprocess_image_after_composite":
            _collect(p, pp)

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        finish_job(p, processed)


def _paste_key(key: Any) -> Any:
    """A paste-back key for the WebUI: a name as it is; a function of the pasted entries made to return a gradio
    update. SD.Next's paste checks every plain value's key against its "skip" list with `key.lower()`, which fails on
    a function and loses the whole paste; an update is applied as it is, there and in A1111 and its forks."""
    if isinstance(key, str):
        return key
    return lambda params: gr.update(value=key(params))


def _collect(p: Any, pp: Any) -> None:
    job = job_of(p)
    if job is not None and job.owns(p):
        job.collect(p, pp.image)


def finish_job(p: Any, processed: Any) -> None:
    """The end of a job: select, reorder the gallery, write what is kept (the script's `postprocess`)."""
    if _replayed(p):
        return
    error = getattr(p, ERROR_ATTR, None)
    if error:
        processed.comments = f"{processed.comments or ''}{error}\n"
        processed.extra_generation_params = {**processed.extra_generation_params, "ImageReward error": error}
    job = job_of(p)
    if job is None:
        return
    setattr(p, JOB_ATTR, None)
    _RUNNING.discard(job)
    remove_phase_sampling(p)
    try:
        job.finish(p, processed, WebUISaveHooks())
        _user_infotexts(p, processed)
        plot_cell = getattr(p, CELL_ATTR, None)
        if plot_cell is not None:
            shared_params, cell = plot_cell
            params, first = processed.extra_generation_params, processed.index_of_first_image
            PLOTS.add(shared_params, cell, params, first, DETAILS_KEY, SCORES_KEY)
    except Exception:
        log.exception("ImageReward: the job could not finish; the WebUI's images are left as they were")
        job.abandon(WebUISaveHooks())
    finally:
        RUNTIME.job_done(current_settings())


def _user_infotexts(p: Any, processed: Any) -> None:
    """The gallery's texts with the batch numbers the user asked for, where the WebUI records them (`host.py`)."""
    if not HOST.batch_setting:
        return

    def fix(text: Any) -> Any:
        return HOST.user_infotext(text, p.n_iter, p.batch_size) if isinstance(text, str) else text

    processed.infotexts = [fix(text) for text in processed.infotexts]
    processed.info = fix(processed.info)
    for image in processed.images:
        info = getattr(image, "info", None)
        if isinstance(info, dict) and "parameters" in info:
            info["parameters"] = fix(info["parameters"])


# SD.Next calls no script's `postprocess` after an interrupt or skip: its `after_process` callback finishes the job
# with the `Processed` the loop made (remembered from `processing.get_processed`, which takes `p`).
PROCESSED_ATTR = "_imagereward_processed"


def install_processed_hook() -> None:
    """Remember each job's `Processed` on its `p` as SD.Next's loop makes it; idempotent."""
    from modules import processing

    original = getattr(processing, "get_processed", None)
    if not callable(original) or hasattr(original, WRAPPED_ATTR):
        return

    def get_processed(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        p = args[0] if args else kwargs.get("p")
        job = job_of(p) if p is not None else None
        if job is not None and job.owns(p):
            setattr(p, PROCESSED_ATTR, result)
        return result

    setattr(get_processed, WRAPPED_ATTR, original)
    processing.get_processed = get_processed


def _on_after_process(p: Any) -> None:
    """A job whose `postprocess` never came (SD.Next, interrupted) finishes here; one that failed before its
    `Processed` was made is left to the next job, which writes what it held."""
    job = job_of(p)
    processed = getattr(p, PROCESSED_ATTR, None)
    if job is None or not job.owns(p) or processed is None:
        return
    images = list(getattr(processed, "images", None) or [])
    if len(processed.infotexts) != len(images):  # SD.Next's interrupt replaces the list by one text
        processed.infotexts = [str((getattr(image, "info", None) or {}).get("parameters", "")) for image in images]
    finish_job(p, processed)


# ------------------------------------------------------------------------------------------------- callbacks


def _on_ui_settings() -> None:
    settings.register(shared, shared.OptionInfo, gr)


def _on_app_started(_demo: Any, app: Any) -> None:
    if not endpoint_enabled(shared.cmd_opts):
        return  # like the WebUI's own API: only with --api
    from .endpoint import mount_score_route

    def score(
        prompts: Any, pictures: Any, clean: bool, scorer: str = "imagereward", weights: str = ""
    ) -> dict[str, list[float]]:
        from modules.call_queue import queue_lock

        settings_now = replace(current_settings(), scorers=(scorer,), weights=weights)
        with queue_lock:  # never on the GPU in the middle of a generation
            try:
                return RUNTIME.score_table(settings_now, prompts, pictures, clean_prompts=clean)
            finally:
                RUNTIME.job_done(settings_now)

    mount_score_route(app, score, parse_api_auth(getattr(shared.cmd_opts, "api_auth", None)))


def folder_policy() -> Any:
    """The folder tab's rules. The WebUI's relative folder settings are relative to its working folder; its
    default `outputs` folder is in its data folder (`--data-dir`)."""
    from modules import paths

    data_path = str(getattr(paths, "data_path", None) or os.getcwd())
    return settings.folder_policy(shared.opts, shared.cmd_opts, data_path, base=os.getcwd())


def _on_ui_tabs() -> list[tuple[Any, str, str]]:
    from modules.call_queue import queue_lock

    from .tab import build

    samples = str(getattr(shared.opts, "outdir_txt2img_samples", "") or "outputs/txt2img-images")
    folder = str(getattr(shared.opts, "outdir_samples", "") or "") or os.path.dirname(samples.rstrip("/\\")) or "."

    def get_scorer(names: tuple[str, ...] = ("imagereward",)) -> Any:
        return RUNTIME.scorer(current_settings(), names)

    def done() -> None:
        RUNTIME.job_done(current_settings())

    tab = build(os.path.abspath(folder), get_scorer, done, queue_lock, folder_policy)
    return [(tab, "ImageReward", "imagereward_tab")]


# Tabs whose generate action does not fill `generation_info_<tab>` (SD.Next's Control): when the action's result
# changes, the box gets the last job's `Processed` as JSON, which the badges read (`host.py`).
_INFO_WIRING: dict[str, dict[str, Any]] = {}


def _last_generation_info() -> str:
    from modules import processing

    processed = getattr(processing, "processed", None)
    return processed.js() if processed is not None and callable(getattr(processed, "js", None)) else ""


def _on_after_component(component: Any, **kwargs: Any) -> None:
    elem_id = kwargs.get("elem_id") or getattr(component, "elem_id", None)
    for tab, trigger in HOST.unfilled_info_tabs:
        role = {trigger: "trigger", f"generation_info_{tab}": "info"}.get(str(elem_id))
        if role is None:
            continue
        found = _INFO_WIRING.setdefault(tab, {})
        found[role] = component
        if "trigger" in found and "info" in found:
            found["trigger"].change(fn=_last_generation_info, inputs=[], outputs=[found["info"]], show_progress=False)
            _INFO_WIRING.pop(tab)


def register_callbacks() -> None:
    """Called by scripts/imagereward.py each time the WebUI (re)loads its scripts."""
    install_save_hook()
    if not HOST.finishes_interrupted:
        install_processed_hook()
        script_callbacks.on_after_process(_on_after_process)
    allow_in_control(ImageRewardScript().title())
    if HOST.unfilled_info_tabs:
        _INFO_WIRING.clear()
        script_callbacks.on_after_component(_on_after_component)
    script_callbacks.on_ui_settings(_on_ui_settings)
    script_callbacks.on_ui_tabs(_on_ui_tabs)
    script_callbacks.on_app_started(_on_app_started)
