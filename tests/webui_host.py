"""A stand-in WebUI host that drives the real `imagereward/webui/script.py`.

It installs stand-in `modules` (and `gradio` when it is not installed) into `sys.modules`, then replays the order of
AUTOMATIC1111 1.10's `process_images` (written from reading `modules/processing.py` and `modules/scripts.py`):
`before_process`; the per-image lists from `n_iter * batch_size` (or the prompt matrix's list); `process`; img2img's
`init` (several init images make the batch, one per batch index); per batch the interrupt and skip checks, the
slices, `before_process_batch`, sampling, hires fix's "save before", decoding, `state.nextjob()`,
`postprocess_batch_list`, `p.save_samples()` read once per batch with the state flags, then per image face
restoration with its "save before", `postprocess_image`, colour correction with its "save before",
`postprocess_image_after_composite`, the save, the infotext (callables in `extra_generation_params` called with the
batch lists), masks; the grid; `Processed`; `postprocess`. `Host.loop = "forge-neo"` follows Forge Neo 2.x's
`process_images_inner` instead (see `Host.loop`); `P.before_sampling` and `P.after_decoding` let a test interrupt a
batch while it is sampled or post-processed.

Besides our script it runs stand-ins of the scripts that re-enter ours: ADetailer (per image: `postprocess` on
`copy(p)` with an empty `Processed` for the first image of a batch, `before_process` + `process` on `copy(p)` for
the last; it changes the pixels and can save a "before" copy), dynamic prompts (resolves wildcards in `process`,
after `before_process`, and recomputes `n_iter`), the prompt matrix (a list as `p.prompt`), X/Y/Z (cells are copies
sharing `extra_generation_params`) and the gallery's Upscale (`firstpass_image`).
"""

from __future__ import annotations

import itertools
import math
import random
import re
import sys
import threading
import types
import zlib
from copy import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

# --------------------------------------------------------------------------------------------- stand-in modules


class Opts:
    def __init__(self) -> None:
        self.samples_save = True
        self.save_incomplete_images = False
        self.samples_format = "png"
        self.grid_format = "png"
        self.grid_save = True
        self.return_grid = True
        self.grid_only_if_multiple = True
        self.grid_extended_filename = False
        self.enable_pnginfo = True
        self.save_images_before_face_restoration = False
        self.save_images_before_color_correction = False
        self.save_images_before_highres_fix = False
        self.save_mask = False
        self.return_mask = False
        self.overlay_inpaint = True
        self.ad_save_images_before = False
        self.data: dict[str, Any] = {}

    def add_option(self, key: str, info: Any) -> None:
        if not hasattr(self, key):
            setattr(self, key, info.default)


class State:
    def __init__(self) -> None:
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.job = ""  # the job's name; X/Y/Z sets "k out of N" before each cell
        self.job_no = 0  # what /sdapi/v1/progress reports: batches decoded so far
        self.sampling_step = 0

    def nextjob(self) -> None:
        self.job_no += 1
        self.sampling_step = 0


@dataclass
class SavedFile:
    path: Path
    image: Image.Image
    info: str | None
    suffix: str
    seed: int | None
    iteration: int
    batch_index: int


class Disk:
    """`modules.images.save_image` writes real PNGs here, named with a counter, the seed, the WebUI's
    [generation_number]-style numbers read from `p` at save time, and the suffix."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: list[SavedFile] = []
        self.fail_after: int | None = None  # raise OSError from the n-th save on (disk full)

    def save_image(
        self,
        image: Any,
        path: str,
        basename: str,
        seed: Any = None,
        prompt: Any = None,
        extension: str = "png",
        info: Any = None,
        short_filename: bool = False,
        no_prompt: bool = False,
        grid: bool = False,
        pnginfo_section_name: str = "parameters",
        p: Any = None,
        existing_info: Any = None,
        forced_filename: Any = None,
        suffix: str = "",
        save_to_dirs: Any = None,
    ) -> tuple[str, None]:
        if self.fail_after is not None and len(self.files) >= self.fail_after:
            raise OSError(28, "No space left on device")
        folder = self.root / path
        folder.mkdir(parents=True, exist_ok=True)
        iteration = getattr(p, "iteration", -1)
        batch_index = getattr(p, "batch_index", -1)
        name = f"{len(self.files):05d}-{basename or 'img'}-{seed}-it{iteration}-b{batch_index}{suffix}.{extension}"
        target = folder / name
        pnginfo = PngImagePlugin.PngInfo()
        if info is not None:
            pnginfo.add_text(pnginfo_section_name, info)
        image.save(target, pnginfo=pnginfo)
        self.files.append(SavedFile(target, image.copy(), info, suffix, seed, iteration, batch_index))
        return str(target), None

    def finals(self) -> list[SavedFile]:
        """The finished images (no suffix, not grids)."""
        return [f for f in self.files if not f.suffix and "grid" not in f.path.name]


def image_grid(pictures: list[Any], batch_size: int = 1, rows: int | None = None) -> Image.Image:
    grid = Image.new("RGB", (8 * max(len(pictures), 1), 8))
    grid.info["grid_of"] = len(pictures)
    return grid


class Host:
    """The stand-in `modules` package and its state; `install()` puts it into `sys.modules`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.opts = Opts()
        self.state = State()
        self.cmd_opts = types.SimpleNamespace(api=True, api_auth=None, lowvram=False, medvram=False, nowebui=False)
        self.disk = Disk(root / "outputs")
        self.models_path = root / "models"
        self.app_started: list[Any] = []
        self.ui_settings: list[Any] = []
        self.ui_tabs: list[Any] = []
        self.gc_calls = 0
        self.first_passes = 0  # images sampled by a first pass (the sampler's `sample`/`sample_img2img`)
        self.hires_passes = 0  # images through hires fix's second pass
        self.saved_modules: dict[str, Any] = {}
        # Whose `process_images_inner` the loop follows: "a1111" (1.10) or "forge-neo" (2.x). Both call
        # `state.nextjob()` right after decoding a batch, before `postprocess_batch_list`; Forge Neo also runs
        # `postprocess_maskoverlay` per image and records `p.latents_after_sampling` / `p.pixels_after_sampling`.
        self.loop = "a1111"

    def install(self) -> None:
        host = self
        modules = types.ModuleType("modules")
        modules.__path__ = []  # a package

        images = types.ModuleType("modules.images")
        images.save_image = self.disk.save_image
        images.image_grid = image_grid

        scripts = types.ModuleType("modules.scripts")

        class Script:
            filename = "imagereward.py"

            def elem_id(self, item_id: str) -> str:
                return item_id

        scripts.Script = Script
        scripts.AlwaysVisible = object()

        shared = types.ModuleType("modules.shared")
        shared.opts = self.opts
        shared.state = self.state
        shared.cmd_opts = self.cmd_opts

        @dataclass
        class OptionInfo:
            default: Any = None
            label: str = ""
            component: Any = None
            component_args: Any = None
            section: Any = None

        shared.OptionInfo = OptionInfo

        callbacks = types.ModuleType("modules.script_callbacks")
        callbacks.on_ui_settings = self.ui_settings.append
        callbacks.on_app_started = self.app_started.append
        callbacks.on_ui_tabs = self.ui_tabs.append

        paths = types.ModuleType("modules.paths")
        paths.models_path = str(self.models_path)

        devices = types.ModuleType("modules.devices")

        def torch_gc() -> None:
            host.gc_calls += 1

        devices.torch_gc = torch_gc

        call_queue = types.ModuleType("modules.call_queue")
        call_queue.queue_lock = threading.Lock()
        self.queue_lock = call_queue.queue_lock

        ui_components = types.ModuleType("modules.ui_components")
        ui_components.InputAccordion = _Component

        sd_samplers = types.ModuleType("modules.sd_samplers")
        sd_samplers.create_sampler = lambda name, model: StandInSampler(host)

        processing = types.ModuleType("modules.processing")
        processing.create_infotext = create_infotext

        for name, module in {
            "modules": modules,
            "modules.images": images,
            "modules.scripts": scripts,
            "modules.shared": shared,
            "modules.script_callbacks": callbacks,
            "modules.paths": paths,
            "modules.devices": devices,
            "modules.call_queue": call_queue,
            "modules.ui_components": ui_components,
            "modules.sd_samplers": sd_samplers,
            "modules.processing": processing,
        }.items():
            self.saved_modules[name] = sys.modules.get(name)
            sys.modules[name] = module
            if "." in name:
                setattr(modules, name.split(".", 1)[1], module)
        try:
            import gradio  # noqa: F401
        except ImportError:
            self.saved_modules["gradio"] = None
            sys.modules["gradio"] = _fake_gradio()
        self.modules = modules

    def uninstall(self) -> None:
        for name, module in self.saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name in list(sys.modules):
            if name.startswith("imagereward.webui.script"):
                del sys.modules[name]


class _Component:
    """Any gradio component / layout block: remembers its arguments, works as a context manager."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.value = kwargs.get("value", args[0] if args else None)

    def __enter__(self) -> _Component:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def click(self, fn: Any, inputs: Any = None, outputs: Any = None, **kwargs: Any) -> None:
        self.handlers = [*getattr(self, "handlers", []), (fn, inputs, outputs)]

    change = submit = click


def _update(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def _fake_gradio() -> types.ModuleType:
    gradio = types.ModuleType("gradio")
    names = ("Row", "Column", "Dropdown", "Slider", "Checkbox", "Textbox", "Number", "Accordion", "Blocks")
    for name in (*names, "Markdown", "Button", "Gallery"):
        setattr(gradio, name, _Component)
    gradio.Progress = lambda *args, **kwargs: lambda *a, **k: None
    gradio.update = _update
    return gradio


# ------------------------------------------------------------------------------------------------ the WebUI's p


class Runner:
    """`p.scripts`: calls each always-on script's hook with its own arguments, catching what they raise as the
    WebUI does (errors.report)."""

    def __init__(self, scripts: list[tuple[Any, tuple[Any, ...]]]) -> None:
        self.scripts = scripts
        self.errors: list[str] = []
        self.selectable_scripts: list[Any] = []  # the scripts of the Script dropdown; p.script_args[0] picks one

    def _call(self, hook: str, p: Any, *extra: Any, **kwargs: Any) -> None:
        for script, args in self.scripts:
            method = getattr(script, hook, None)
            if method is None:
                continue
            try:
                method(p, *extra, *args, **kwargs)
            except Exception as exc:  # the WebUI logs and goes on
                self.errors.append(f"{hook}: {type(exc).__name__}: {exc}")

    def before_process(self, p: Any) -> None:
        self._call("before_process", p)

    def process(self, p: Any) -> None:
        self._call("process", p)

    def before_process_batch(self, p: Any, **kwargs: Any) -> None:
        self._call("before_process_batch", p, **kwargs)

    def postprocess_batch_list(self, p: Any, pp: Any, **kwargs: Any) -> None:
        self._call("postprocess_batch_list", p, pp, **kwargs)

    def postprocess_image(self, p: Any, pp: Any) -> None:
        self._call("postprocess_image", p, pp)

    def postprocess_image_after_composite(self, p: Any, pp: Any) -> None:
        self._call("postprocess_image_after_composite", p, pp)

    def postprocess_maskoverlay(self, p: Any, ppmo: Any) -> None:
        self._call("postprocess_maskoverlay", p, ppmo)

    def postprocess(self, p: Any, processed: Any) -> None:
        self._call("postprocess", p, processed)


DEFAULT_STEPS = 4


@dataclass
class P:
    """The attributes of `StableDiffusionProcessing` (txt2img, or img2img with `init_images`) that matter here."""

    prompt: Any = "a red car"
    negative_prompt: Any = "blurry"
    seed: Any = 1000
    subseed: int = 5000
    subseed_strength: float = 0.0
    batch_size: int = 2
    n_iter: int = 2
    width: int = 16
    height: int = 16
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    restore_faces: bool = False
    enable_hr: bool = False
    init_images: list[Any] | None = None
    image_mask: Any = None
    color_correction: bool = False
    firstpass_image: Any = None
    outpath_samples: str = "samples"
    outpath_grids: str = "grids"
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    scripts: Any = None
    iteration: int = 0
    comments: list[str] = field(default_factory=list)
    all_prompts: list[str] = field(default_factory=list)
    all_negative_prompts: list[str] = field(default_factory=list)
    all_seeds: list[int] = field(default_factory=list)
    all_subseeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    overlay_images: Any = None
    color_corrections: Any = None
    mask_for_overlay: Any = None
    host: Any = None
    steps: int = DEFAULT_STEPS
    hr_second_pass_steps: int = 0
    script_args: tuple[Any, ...] = ()
    # Test controls: called as hook(p, n) before batch n is sampled (an interrupt or skip then lands during its
    # sampling: the WebUI goes on with what the sampler had), and after batch n is decoded and `state.nextjob()`
    # ran (an interrupt then lands during its post-processing, when /sdapi/v1/progress already shows the next job).
    before_sampling: Any = None
    after_decoding: Any = None
    latents_after_sampling: list[Any] = field(default_factory=list)  # Forge Neo's
    pixels_after_sampling: list[Any] = field(default_factory=list)

    def sample(
        self, conditioning: Any, unconditional_conditioning: Any, seeds: Any, subseeds: Any, subseed_strength: Any,
        prompts: Any,
    ) -> Any:  # fmt: skip
        """A1111's `sample` in outline: a sampler from `sd_samplers.create_sampler` makes the first pass; with hires
        fix, the first pass is saved when asked ("before highres fix"), upscaled, and a new sampler makes the
        second pass (skipped when interrupted, as A1111 returns the first pass then)."""
        factory = sys.modules["modules.sd_samplers"]
        sampler = factory.create_sampler("Euler a", None)
        if self.init_images:
            samples = sampler.sample_img2img(self, "init latent", "noise", conditioning, unconditional_conditioning)
        else:
            samples = sampler.sample(self, "noise", conditioning, unconditional_conditioning)
        if not self.enable_hr:
            return samples
        if self.host.state.interrupted:
            return samples
        opts = self.host.opts
        if self.save_samples() and opts.save_images_before_highres_fix:
            images = sys.modules["modules.images"]
            for index in range(len(samples)):  # saved for the whole batch before the per-image loop
                first_pass = Image.fromarray(_to_uint8(samples[index]))
                info = create_infotext(
                    self, self.all_prompts, self.all_seeds, self.all_subseeds, iteration=self.iteration,
                    position_in_batch=index,
                )  # fmt: skip
                images.save_image(
                    first_pass, self.outpath_samples, "", seeds[index], prompts[index], "png", info=info, p=self,
                    suffix="-before-highres-fix",
                )  # fmt: skip
        upscaled = torch.nn.functional.interpolate(samples, scale_factor=2, mode="nearest")
        second = factory.create_sampler("Euler a", None)
        return second.sample_img2img(self, upscaled, "noise", conditioning, unconditional_conditioning, hires=True)

    # No `batch_index` here: as in A1111, it exists only once the per-image loop has set it (hires fix's "save
    # before" comes earlier).

    def save_samples(self) -> bool:
        opts, state = self.host.opts, self.host.state
        return (
            opts.samples_save
            and not self.do_not_save_samples
            and (opts.save_incomplete_images or (not state.interrupted and not state.skipped))
        )


@dataclass
class Processed:
    images: list[Any]
    infotexts: list[str]
    all_prompts: list[str]
    all_negative_prompts: list[str]
    all_seeds: list[int]
    all_subseeds: list[int]
    index_of_first_image: int
    seed: int
    subseed: int
    info: str
    extra_generation_params: dict[str, Any]
    comments: str = ""


def empty_processed(p: P) -> Processed:
    """`Processed(p, [])`, as ADetailer builds it for its `postprocess` replay."""
    return Processed(
        [], [], p.all_prompts, p.all_negative_prompts, p.all_seeds, p.all_subseeds, 0, -1, -1, "",
        p.extra_generation_params,
    )  # fmt: skip


def create_infotext(
    p: P,
    all_prompts: list[str],
    all_seeds: list[int],
    all_subseeds: list[int],
    comments: Any = None,
    iteration: int = 0,
    position_in_batch: int = 0,
    use_main_prompt: bool = False,
    index: int | None = None,
    all_negative_prompts: list[str] | None = None,
) -> str:
    if index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts
    prompt = all_prompts[0] if use_main_prompt else all_prompts[index]
    negative = all_negative_prompts[0] if use_main_prompt else all_negative_prompts[index]
    params: dict[str, Any] = {
        "Steps": 2,
        "Sampler": "Euler a",
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        **p.extra_generation_params,
    }
    local = {
        "p": p,
        "all_prompts": all_prompts,
        "all_seeds": all_seeds,
        "all_subseeds": all_subseeds,
        "comments": comments,
        "iteration": iteration,
        "position_in_batch": position_in_batch,
        "use_main_prompt": use_main_prompt,
        "index": index,
        "all_negative_prompts": all_negative_prompts,
    }
    for key, value in list(params.items()):
        try:
            if isinstance(value, list):
                params[key] = value[index]
            elif callable(value):
                params[key] = value(**local)
        except Exception:
            params[key] = None
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in params.items() if v is not None)
    negative_text = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt}{negative_text}\n{line}".strip()


def _quote(value: Any) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    import json

    return json.dumps(text, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------- pixels, scoring


def sample(seed: int, subseed: int, prompt: str, init: int, size: int) -> torch.Tensor:
    """The 'decoder output' of one image: a float CHW tensor in 0..1 made from everything that defines it."""
    key = f"{seed}|{subseed}|{prompt}|{init}"
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    base = rng.random(3)
    noise = rng.random((3, size, size)) * 0.5
    return torch.from_numpy((base[:, None, None] * 0.5 + noise).astype(np.float32)).clamp(0, 1)


class StandInSampler:
    """A sampler made by `sd_samplers.create_sampler`: a first pass is a function of each image's seed, prompt,
    init image and steps; a hires pass changes the upscaled latents with each image's seed."""

    def __init__(self, host: Any) -> None:
        self.host = host

    def _first(self, p: Any) -> torch.Tensor:
        self.host.first_passes += len(p.seeds)
        steps = "" if p.steps == DEFAULT_STEPS else f"|{p.steps} steps"  # (the default keeps the fixtures' pixels)
        if self.host.state.interrupted or self.host.state.skipped:  # the sampler stops early: a half-sampled image
            steps += "|half"
        init = [i if p.init_images else -1 for i in range(len(p.seeds))]
        return torch.stack(
            [sample(p.seeds[i], p.subseeds[i], p.prompts[i] + steps, init[i], p.width) for i in range(len(p.seeds))]
        )

    def sample(self, p: Any, x: Any, conditioning: Any, unconditional_conditioning: Any, **kwargs: Any) -> Any:
        return self._first(p)

    def sample_img2img(
        self, p: Any, x: Any, noise: Any, conditioning: Any, unconditional_conditioning: Any, hires: bool = False,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        if not hires:
            return self._first(p)
        self.host.hires_passes += len(p.seeds)
        detail = torch.stack([sample(seed, 0, "hires", -1, x.shape[-1]) for seed in p.seeds])
        return (x * 0.7 + detail * 0.3).clamp(0, 1)


def pixel_score(prompt: str, image: Any) -> float:
    """A stand-in ImageReward: a function of the 8-bit pixels (as a file holds them) and the prompt."""
    array = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    weights = np.array([1.7, -0.9, 0.6])
    value = float((array.mean(axis=(0, 1)) * weights).sum()) + (len(prompt) % 7) * 0.01
    return value * 4.0 - 1.0


class FakeScorer:
    """What `ScorerRuntime` needs of `ImageRewardScorer`; records the calls."""

    def __init__(self, fail: bool = False, truncate: bool = False) -> None:
        self.device = torch.device("cpu")
        self.batch_size = 16
        self.calls: list[list[str]] = []
        self.fail = fail
        self.truncate = truncate
        self.moves: list[str] = []

    def to(self, device: Any, dtype: Any = None) -> FakeScorer:
        self.device = torch.device(device)
        self.moves.append(str(device))
        return self

    def score(self, prompts: list[str], images: list[Any], clean_prompts: bool = False) -> list[float]:
        self.calls.append(list(prompts))
        if self.fail:
            raise RuntimeError("the model file is broken")
        pictures = [Image.fromarray(_to_uint8(im)) if isinstance(im, torch.Tensor) else im for im in images]
        return [pixel_score(p, im) for p, im in zip(prompts, pictures, strict=True)]

    def truncated(self, prompts: list[str], clean: bool = False) -> list[bool]:
        return [self.truncate] * len(prompts)


# --------------------------------------------------------------------------------------------- the loop itself


def process_images(p: P) -> Processed:
    host: Host = p.host
    opts, state = host.opts, host.state
    images = sys.modules["modules.images"]
    runner: Runner = p.scripts
    runner.before_process(p)

    # setup_prompts, seeds
    if isinstance(p.prompt, list):
        p.all_prompts = list(p.prompt)
    else:
        p.all_prompts = p.batch_size * p.n_iter * [p.prompt]
    if isinstance(p.negative_prompt, list):
        p.all_negative_prompts = list(p.negative_prompt)
    else:
        p.all_negative_prompts = [p.negative_prompt] * len(p.all_prompts)
    if isinstance(p.seed, list):
        p.all_seeds = list(p.seed)
    else:
        p.all_seeds = [int(p.seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
    p.all_subseeds = [int(p.subseed) + x for x in range(len(p.all_prompts))]

    runner.process(p)

    # img2img's init: several init images make the batch; a mask gives overlays; colour corrections per image
    if p.init_images:
        if len(p.init_images) > 1:
            if len(p.init_images) > p.batch_size:
                raise RuntimeError(f"bad number of images passed: {len(p.init_images)}")
            p.batch_size = len(p.init_images)
        if p.image_mask is not None:
            p.mask_for_overlay = p.image_mask
            p.overlay_images = [Image.new("RGBA", (p.width, p.height)) for _ in p.init_images]
        if p.color_correction:
            p.color_corrections = [i for i, _ in enumerate(p.init_images)]
        if len(p.init_images) == 1:
            if p.overlay_images is not None:
                p.overlay_images = p.overlay_images * p.batch_size
            if p.color_corrections is not None:
                p.color_corrections = p.color_corrections * p.batch_size

    def save(image: Any, i: int, info: str, suffix: str = "") -> None:
        """The WebUI's in-loop save call: positional image, folder, basename, seed, prompt, extension."""
        images.save_image(image, p.outpath_samples, "", p.seeds[i], p.prompts[i], "png", info=info, p=p, suffix=suffix)

    infotexts: list[str] = []
    output_images: list[Any] = []
    for n in range(p.n_iter):
        p.iteration = n
        if state.skipped:
            state.skipped = False
        if state.interrupted or state.stopping_generation:
            break
        b = p.batch_size
        p.prompts = p.all_prompts[n * b : (n + 1) * b]
        p.negative_prompts = p.all_negative_prompts[n * b : (n + 1) * b]
        p.seeds = p.all_seeds[n * b : (n + 1) * b]
        p.subseeds = p.all_subseeds[n * b : (n + 1) * b]
        runner.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        if len(p.prompts) == 0:
            break
        if p.before_sampling is not None:
            p.before_sampling(p, n)
        samples = p.sample(None, None, p.seeds, p.subseeds, p.subseed_strength, p.prompts)
        neo = host.loop == "forge-neo"
        if neo:
            p.latents_after_sampling.extend(samples)
        x_samples = samples.float().clamp(0, 1)  # (the stand-in's latents are pixels: decoding is the identity)
        state.nextjob()
        if p.after_decoding is not None:
            p.after_decoding(p, n)
        p.prompts = p.all_prompts[n * b : (n + 1) * b]
        p.negative_prompts = p.all_negative_prompts[n * b : (n + 1) * b]
        batch_params = types.SimpleNamespace(images=list(x_samples))
        runner.postprocess_batch_list(p, batch_params, batch_number=n)
        x_samples = batch_params.images

        def infotext(index: int = 0, use_main_prompt: bool = False) -> str:
            return create_infotext(
                p, p.prompts, p.seeds, p.subseeds, use_main_prompt=use_main_prompt, index=index,
                all_negative_prompts=p.negative_prompts,
            )  # fmt: skip

        save_samples = p.save_samples()
        for i, x_sample in enumerate(x_samples):
            p.batch_index = i
            array = _to_uint8(x_sample)
            if p.restore_faces:
                if save_samples and opts.save_images_before_face_restoration:
                    save(Image.fromarray(array), i, infotext(i), "-before-face-restoration")
                array = array.copy()
                array[: array.shape[0] // 2] = 255 - array[: array.shape[0] // 2]  # "restored"
            image = Image.fromarray(array)
            pp = types.SimpleNamespace(image=image)
            runner.postprocess_image(p, pp)
            image = pp.image
            mask_for_overlay = p.mask_for_overlay
            if neo:
                runner.postprocess_maskoverlay(p, types.SimpleNamespace(index=i, mask_for_overlay=mask_for_overlay))
            if p.color_corrections is not None and i < len(p.color_corrections):
                if save_samples and opts.save_images_before_color_correction:
                    save(image, i, infotext(i), "-before-color-correction")
                image = Image.eval(image, lambda v: min(255, v + 9))
            if p.overlay_images is not None and opts.overlay_inpaint and i < len(p.overlay_images):
                image = image.convert("RGBA")
                image.alpha_composite(p.overlay_images[i])
                image = image.convert("RGB")
            if neo:
                p.pixels_after_sampling.append(image)
            pp = types.SimpleNamespace(image=image)
            runner.postprocess_image_after_composite(p, pp)
            image = pp.image
            if save_samples:
                save(image, i, infotext(i))
            text = infotext(i)
            infotexts.append(text)
            if opts.enable_pnginfo:
                image.info["parameters"] = text
            output_images.append(image)
            if mask_for_overlay is not None and (opts.return_mask or opts.save_mask):
                image_mask = mask_for_overlay.convert("RGB")
                if save_samples and opts.save_mask:
                    save(image_mask, i, infotext(i), "-mask")
                if opts.return_mask:
                    output_images.append(image_mask)

    if not infotexts:
        infotexts.append(create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, index=0))
    p.color_corrections = None
    index_of_first_image = 0
    unwanted = len(output_images) < 2 and opts.grid_only_if_multiple
    if (opts.return_grid or opts.grid_save) and not p.do_not_save_grid and not unwanted:
        grid = images.image_grid(output_images, p.batch_size)
        text = create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, use_main_prompt=True)
        if opts.return_grid:
            infotexts.insert(0, text)
            output_images.insert(0, grid)
            index_of_first_image = 1
        if opts.grid_save:
            seed, prompt = p.all_seeds[0], p.all_prompts[0]
            images.save_image(grid, p.outpath_grids, "grid", seed, prompt, "png", info=text, p=p, grid=True)
    processed = Processed(
        output_images, infotexts, p.all_prompts, p.all_negative_prompts, p.all_seeds, p.all_subseeds,
        index_of_first_image, p.all_seeds[0], p.all_subseeds[0], infotexts[0], p.extra_generation_params,
        "".join(f"{c}\n" for c in p.comments),
    )  # fmt: skip
    runner.postprocess(p, processed)
    return processed


def _to_uint8(x_sample: torch.Tensor) -> np.ndarray:
    """As the WebUI turns decoder output into pixels: scaled by 255 and truncated."""
    return (255.0 * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8)


# --------------------------------------------------------------------------------------- other scripts, stand-ins


class ADetailer:
    """Re-enters the other scripts' hooks on copies of `p`, as ADetailer's `postprocess_image` does, and details
    (changes) the pixels of each image. With `save_before` it saves the undetailed image through the WebUI."""

    def __init__(self, save_before: bool = False) -> None:
        self.save_before = save_before
        self.replays = 0
        self.detailed = 0  # images detailed (its expensive per-image work)

    def postprocess_image(self, p: P, pp: Any, *args: Any) -> None:
        self.detailed += 1
        runner: Runner = p.scripts
        if p.batch_index == 0:  # need_call_postprocess
            self.replays += 1
            runner.postprocess(copy(p), empty_processed(p))
        before = pp.image
        detailed = before.copy()
        width, height = detailed.size
        detailed.paste((250, 240, 10), (0, 0, width // 2, height // 3))
        pp.image = detailed
        if self.save_before:
            images = sys.modules["modules.images"]
            i = p.iteration * p.batch_size + p.batch_index
            images.save_image(
                image=before, path=p.outpath_samples, basename="", seed=p.all_seeds[i], prompt=p.all_prompts[i],
                extension="png", info="ADetailer before", p=p, suffix="-ad-before",
            )  # fmt: skip
        if p.batch_index == len(p.prompts) - 1:  # need_call_process
            copy_p = copy(p)
            runner.before_process(copy_p)
            runner.process(copy_p)


class DynamicPrompts:
    """Resolves `{a|b|c}` in `process` (after every `before_process`), per image at random or every combination,
    and recomputes `n_iter` from the count, as sd-dynamic-prompts does."""

    def __init__(self, combinatorial: bool = False, seed: int = 7) -> None:
        self.combinatorial = combinatorial
        self.rng = random.Random(seed)

    def _variants(self, template: str) -> list[str]:
        parts = re.split(r"\{([^{}]*)\}", template)
        choices = [part.split("|") if i % 2 else [part] for i, part in enumerate(parts)]
        return ["".join(c) for c in itertools.product(*choices)]

    def process(self, p: P, *args: Any) -> None:
        template = p.prompt if isinstance(p.prompt, str) else p.prompt[0]
        variants = self._variants(template)
        if self.combinatorial:
            prompts = variants
        else:
            prompts = [self.rng.choice(variants) for _ in range(p.n_iter * p.batch_size)]
        p.n_iter = math.ceil(len(prompts) / p.batch_size)
        p.all_prompts = prompts
        p.all_negative_prompts = [p.negative_prompt] * len(prompts)
        p.all_seeds = [int(p.seed) + i for i in range(len(prompts))]
        p.all_subseeds = [int(p.subseed) + i for i in range(len(prompts))]


def prompt_matrix(p: P) -> None:
    """What the prompt matrix script does before `process_images`: a list of prompts as `p.prompt`."""
    base, *parts = [s.strip() for s in p.prompt.split("|")]
    prompts = []
    for bits in range(1 << len(parts)):
        chosen = [part for k, part in enumerate(parts) if bits & (1 << k)]
        prompts.append(", ".join([base, *chosen]))
    p.n_iter = math.ceil(len(prompts) / p.batch_size)
    p.do_not_save_grid = True
    p.prompt = prompts
    p.seed = [p.seed] * len(prompts)


class XYZPlot:
    """A1111 1.10's X/Y/Z plot (scripts/xyz_grid.py) with seed axes: `run` makes one `process_images` per cell on
    `copy(p)` (the copies share `extra_generation_params`), with `state.job` set to "k out of N" before each; takes
    each cell's first image and infotext; lays out the plot's grid, the Z sub-grids and the cells as `draw_xyz_grid`
    does, and returns a shallow copy of the first cell's `Processed` (its `extra_generation_params` is that cell's)."""

    args_from = 1
    args_to = 19

    def title(self) -> str:
        return "X/Y/Z plot"

    def attach(self, p: P, **arguments: Any) -> None:
        """Select this script for `p` with these arguments (the rest at their defaults), as the API does."""
        names = list(self.run.__code__.co_varnames[2 : 2 + self.args_to - self.args_from])
        defaults = {"x_type": 0, "y_type": 0, "z_type": 0, "x_values": [0], "y_values": [0], "z_values": [0],
                    "include_lone_images": True, "include_sub_grids": False, "first_axis": "x"}  # fmt: skip
        values = {**{name: None for name in names}, **defaults, **arguments}
        p.scripts.selectable_scripts = [self]
        p.script_args = (1, *(values[name] for name in names))

    def run(
        self, p: P, x_type: int, x_values: list[int], x_values_dropdown: Any, y_type: int, y_values: list[int],
        y_values_dropdown: Any, z_type: int, z_values: list[int], z_values_dropdown: Any, draw_legend: Any,
        include_lone_images: bool, include_sub_grids: bool, no_fixed_seeds: Any, vary_seeds_x: Any,
        vary_seeds_y: Any, vary_seeds_z: Any, margin_size: Any, first_axis: str,
    ) -> Processed:  # fmt: skip
        xs, ys, zs = (list(v) if t else [0] for t, v in ((x_type, x_values), (y_type, y_values), (z_type, z_values)))
        size = len(xs) * len(ys) * len(zs)
        result: Processed | None = None
        images: list[Any] = [None] * size
        infotexts: list[Any] = [None] * size
        state = p.host.state

        def process_cell(ix: int, iy: int, iz: int) -> None:
            nonlocal result
            index = ix + iy * len(xs) + iz * len(xs) * len(ys)
            state.job = f"{index + 1} out of {size}"
            cell = copy(p)
            cell.seed = int(p.seed) + xs[ix] + ys[iy] + zs[iz]  # seed axes: offsets
            processed = process_images(cell)
            if result is None:
                result = copy(processed)
                result.index_of_first_image = 1
            images[index], infotexts[index] = processed.images[0], processed.infotexts[0]

        cells = [(ix, iy, iz) for ix in range(len(xs)) for iy in range(len(ys)) for iz in range(len(zs))]
        if first_axis == "y":  # the order cells are made in; the layout stays x + y·X + z·X·Y
            cells.sort(key=lambda c: (c[1], c[0], c[2]))
        for ix, iy, iz in cells:
            process_cell(ix, iy, iz)
        assert result is not None
        for i in range(len(zs)):
            start = i * len(xs) * len(ys) + i
            images.insert(i, image_grid(images[start : start + len(xs) * len(ys)]))
            infotexts.insert(i, infotexts[start])
        images.insert(0, image_grid(images[: len(zs)]))
        infotexts.insert(0, infotexts[0])
        if not include_lone_images:
            images = images[: len(zs) + 1]
        if not include_sub_grids:
            del images[1 : 1 + len(zs)]
            del infotexts[1 : 1 + len(zs)]
        result.images, result.infotexts = images, infotexts
        return result
