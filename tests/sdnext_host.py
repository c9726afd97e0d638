"""SD.Next's processing loop, as a variant of the stand-in host in `webui_host.py`.

Written from reading SD.Next's `modules/processing.py` (`process_images`, `process_images_inner`, `process_samples`),
`modules/scripts_manager.py` and `modules/image/save.py` (vladmandic/sdnext 058a7f0, 2026-07-23). What differs from
A1111 and matters to the script:

- the marker module `modules.processing_diffusers` (the diffusers pipeline); no `p.sample`: one pipeline call
  returns the batch's decoded images (here HWC float arrays in 0..1, as its VAE decode gives them);
- after an interrupt during a batch: `p.do_not_save_samples = not keep_incomplete`, the batch becomes the live
  preview (`state.current_image`, one image) or nothing, and without `keep_incomplete` the loop stops there;
- per image (`process_samples`), skipped when interrupted or skipped: detailer, colour correction,
  `postprocess_image`; then the save and the infotext; there is no `postprocess_image_after_composite`;
- the grid only when `not p.do_not_save_grid` and two images or more; `get_processed(p, ...)` makes the
  `Processed`; the scripts' `postprocess` is skipped after an interrupt or skip; `after_process` callbacks always run;
- the infotext records `Batch: <n_iter>x<batch_size>` (a paste-back field);
- its Control tab's generate action leaves `generation_info_control` empty;
- options `keep_incomplete`, `image_metadata`; no `grid_only_if_multiple`, `grid_extended_filename`,
  `save_incomplete_images`, `enable_pnginfo`; `save_image` has no `short_filename` and returns three values;
- the Control tab runs an installed extension's script only when its title is in `installer.control_extensions`;
- its paste-back (`generation_parameters_copypaste.connect_paste`) checks the key of every plain pasted value against
  its skip list with `key.lower()`; a value that is a gradio update is applied as it is.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.webui_host import Disk, Host, P, Processed, sample
from tests.webui_host import create_infotext as a1111_infotext

A1111_ONLY_OPTIONS = ("grid_only_if_multiple", "grid_extended_filename", "save_incomplete_images", "enable_pnginfo")


class SDNextOpts:
    """SD.Next's option names: reading an option it does not have raises AttributeError, as its `Options` does."""

    def __init__(self) -> None:
        self.samples_save = True
        self.keep_incomplete = True  # SD.Next's default: "Save interrupted images"
        self.samples_format = "png"
        self.grid_format = "png"
        self.grid_save = True
        self.return_grid = True
        self.image_metadata = True
        self.data: dict[str, Any] = {}

    def add_option(self, key: str, info: Any) -> None:
        if not hasattr(self, key):
            setattr(self, key, info.default)


class SDNextDisk(Disk):
    def save_image(  # type: ignore[override]
        self,
        image: Any,
        path: Any = None,
        basename: str = "",
        seed: Any = None,
        prompt: Any = None,
        extension: str = "png",
        info: Any = None,
        grid: bool = False,
        pnginfo_section_name: str = "parameters",
        p: Any = None,
        existing_info: Any = None,
        forced_filename: Any = None,
        suffix: str = "",
        save_to_dirs: Any = None,
    ) -> tuple[str, None, str]:
        name, _ = super().save_image(
            image, path, basename, seed, prompt, extension, info, grid=grid, p=p, suffix=suffix
        )
        return name, None, info or ""


class SDNextHost(Host):
    """The stand-in `modules` with SD.Next's differences; `process_images` below runs its loop."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.opts = SDNextOpts()  # type: ignore[assignment]
        self.disk = SDNextDisk(root / "outputs")
        self.after_process: list[Any] = []
        self.after_component: list[Any] = []
        self.control_extensions = ["NudeNet", "IP Adapters", "Remove background"]
        self.current_image: Any = None  # the live preview an interrupt leaves

    def install(self) -> None:
        super().install()
        modules = self.modules
        marker = types.ModuleType("modules.processing_diffusers")
        callbacks = sys.modules["modules.script_callbacks"]
        callbacks.on_after_process = self.after_process.append
        callbacks.on_after_component = self.after_component.append
        processing = sys.modules["modules.processing"]
        processing.processed = None

        def get_processed(p: Any, *args: Any, **kwargs: Any) -> Processed:
            processing.processed = Processed(*args, **kwargs)
            processing.processed.js = lambda: json.dumps({"infotexts": processing.processed.infotexts})
            return processing.processed

        processing.get_processed = get_processed
        installer = types.ModuleType("installer")
        installer.control_extensions = self.control_extensions
        for name, module in {"modules.processing_diffusers": marker, "installer": installer}.items():
            self.saved_modules[name] = sys.modules.get(name)
            sys.modules[name] = module
            if name.startswith("modules."):
                setattr(modules, name.split(".", 1)[1], module)


def create_infotext(p: P, *args: Any, **kwargs: Any) -> str:
    """SD.Next's infotext records `Batch: <n_iter>x<batch_size>` as they are when it is made."""
    text = a1111_infotext(p, *args, **kwargs)
    return text.replace("\nSteps: 2, ", f"\nSteps: 2, Batch: {p.n_iter}x{p.batch_size}, ", 1)


def _pipeline(p: P) -> list[np.ndarray]:
    """One diffusers call for the batch: decoded images, HWC floats in 0..1."""
    return [
        np.moveaxis(sample(seed, subseed, prompt, -1, p.width).numpy(), 0, 2)
        for seed, subseed, prompt in zip(p.seeds, p.subseeds, p.prompts, strict=True)
    ]


def process_images(p: P) -> Processed:
    """SD.Next's `process_images` + `process_images_inner` + `process_samples`, in its order (txt2img)."""
    host: SDNextHost = p.host
    opts, state = host.opts, host.state
    images = sys.modules["modules.images"]
    processing = sys.modules["modules.processing"]
    runner = p.scripts
    runner.before_process(p)
    try:
        # process_init
        p.all_prompts = list(p.prompt) if isinstance(p.prompt, list) else p.batch_size * p.n_iter * [p.prompt]
        p.all_negative_prompts = [p.negative_prompt] * len(p.all_prompts)
        p.all_seeds = [int(p.seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
        p.all_subseeds = [int(p.subseed) + x for x in range(len(p.all_prompts))]
        runner.process(p)

        infotexts: list[str] = []
        output_images: list[Any] = []
        for n in range(p.n_iter):
            p.iteration = n
            if state.interrupted:
                break
            if state.skipped:
                state.skipped = False
                continue
            b = p.batch_size
            p.prompts = p.all_prompts[n * b : (n + 1) * b]
            p.negative_prompts = p.all_negative_prompts[n * b : (n + 1) * b]
            p.seeds = p.all_seeds[n * b : (n + 1) * b]
            p.subseeds = p.all_subseeds[n * b : (n + 1) * b]
            runner.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            if not p.prompts:
                break
            if p.before_sampling is not None:
                p.before_sampling(p, n)
            samples: list[Any] = [] if state.interrupted or state.skipped else _pipeline(p)
            if state.interrupted:
                keep = opts.keep_incomplete
                p.do_not_save_samples = not keep
                samples = [host.current_image] if host.current_image is not None else []
                infotexts = [create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, index=0)]
                if not keep:
                    break
            p.prompts = p.all_prompts[n * b : (n + 1) * b]
            p.negative_prompts = p.all_negative_prompts[n * b : (n + 1) * b]
            batch_params = types.SimpleNamespace(images=list(samples))
            runner.postprocess_batch_list(p, batch_params, batch_number=n)
            samples = batch_params.images
            for i, sample_ in enumerate(samples):  # process_samples
                p.batch_index = i
                if isinstance(sample_, Image.Image):
                    image = sample_
                else:
                    image = Image.fromarray((255.0 * sample_).astype(np.uint8))
                if not state.interrupted and not state.skipped:
                    pp = types.SimpleNamespace(image=image)
                    runner.postprocess_image(p, pp)
                    image = pp.image
                info = create_infotext(p, p.prompts, p.seeds, p.subseeds, index=i)
                if opts.samples_save and not p.do_not_save_samples:
                    images.save_image(image, p.outpath_samples, "", p.seeds[i], p.prompts[i], "png", info=info, p=p)
                image.info["parameters"] = info
                if image not in output_images:
                    infotexts.append(info)
                    output_images.append(image)
            if state.interrupted:
                break

        index_of_first_image = 0
        if (opts.return_grid or opts.grid_save) and not p.do_not_save_grid and len(output_images) > 1:
            grid = images.image_grid(output_images, p.batch_size)
            grid_info = create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, index=0)
            if opts.return_grid:
                infotexts.insert(0, grid_info)
                output_images.insert(0, grid)
                index_of_first_image = 1
            if opts.grid_save:
                seed, prompt = p.all_seeds[0], p.all_prompts[0]
                images.save_image(grid, p.outpath_grids, "", seed, prompt, "png", info=grid_info, p=p, grid=True)
        processed = processing.get_processed(
            p, output_images, infotexts, p.all_prompts, p.all_negative_prompts, p.all_seeds, p.all_subseeds,
            index_of_first_image, p.all_seeds[0], p.all_subseeds[0], infotexts[0] if infotexts else "",
            p.extra_generation_params, "",
        )  # fmt: skip
        if not (state.interrupted or state.skipped):
            runner.postprocess(p, processed)
        return processed
    finally:
        for callback in host.after_process:
            callback(p)


def paste(fields: list[tuple[Any, Any]], params: dict[str, Any], skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """SD.Next's paste of `params` (the parsed infotext) into the tab's paste fields: one update per field, an empty
    one where nothing is pasted. Raises what SD.Next's paste raises (it then pastes nothing at all)."""
    import gradio as gr

    type_of_update = type(gr.update())
    updates: list[dict[str, Any]] = []
    for output, key in fields:
        value = key(params) if callable(key) else params.get(key)
        if value is None:
            updates.append(gr.update())
        elif isinstance(value, type_of_update):
            updates.append(value)
        elif key.lower() in skip:  # its `should_skip(key)`: AttributeError for a key that is a function
            updates.append(gr.update())
        else:
            kind = type(output.value)
            if kind is bool:
                updates.append(gr.update(value=str(value).lower() != "false"))
            else:
                updates.append(gr.update(value=kind(value) if output.value is not None else value))
    return updates
