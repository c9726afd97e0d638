"""A small stand-in for the WebUI's `process_images` loop (A1111 1.10 `modules/processing.py`), to drive the job
bookkeeping the way the real hooks do, without the WebUI.

It reproduces what matters to us: prompts/seeds set up after `before_process` from `n_iter * batch_size`; per batch
the `postprocess_batch_list` hook on float CHW tensors; per image the `postprocess_image_after_composite` hook, the
infotext built from `extra_generation_params` (callables get `p`, `index` within the batch, the batch lists, and
`use_main_prompt`), saving when `p.save_samples()`; the grid; `Processed`; then `postprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image


@dataclass
class FakeP:
    prompt: str = "a cat"
    negative_prompt: str = "blurry"
    seed: int = 100
    batch_size: int = 2
    n_iter: int = 2
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    samples_save: bool = True
    prompt_list: list[str] | None = None  # per-image prompts, as dynamic prompts would set them
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    outpath_samples: str = "out"
    outpath_grids: str = "grids"
    iteration: int = 0
    batch_index: int = 0
    interrupt_after_batches: int | None = None

    def save_samples(self) -> bool:
        return self.samples_save and not self.do_not_save_samples


@dataclass
class FakeProcessed:
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


def create_infotext(
    p: FakeP, all_prompts: list[str], all_seeds: list[int], index: int | None = None, use_main_prompt: bool = False
) -> str:
    params: dict[str, Any] = {
        "Steps": 20,
        "Seed": all_seeds[0 if use_main_prompt else index],
        **p.extra_generation_params,
    }
    out = {}
    for key, value in params.items():
        if callable(value):
            value = value(
                p=p, index=0 if use_main_prompt else index, all_prompts=all_prompts, use_main_prompt=use_main_prompt
            )
        if value is not None:
            out[key] = value
    prompt = all_prompts[0 if use_main_prompt else index]
    return f"{prompt}\nNegative prompt: {p.negative_prompt}\n" + ", ".join(f"{k}: {v}" for k, v in out.items())


@dataclass
class Recorder:
    """SaveHooks that records what would be written."""

    return_grid: bool = True
    grid_save: bool = True
    saved: list[tuple[str, int, str, str]] = field(default_factory=list)
    grids: list[str] = field(default_factory=list)

    def should_save_samples(self, p: FakeP) -> bool:
        return p.save_samples()

    def save_sample(self, p, image, seed, prompt, infotext) -> None:
        self.saved.append(("sample", seed, prompt, infotext))

    def save_discarded(self, p, image, seed, prompt, infotext) -> None:
        self.saved.append(("discarded", seed, prompt, infotext))

    def grid_wanted(self, p, count) -> tuple[bool, bool]:
        if p.do_not_save_grid or count < 2:
            return False, False
        return self.return_grid, self.grid_save

    def make_grid(self, p, images, infotext) -> Image.Image:
        grid = Image.new("RGB", (8, 8))
        grid.info["grid_of"] = len(images)
        return grid

    def save_grid(self, p, grid, infotext) -> None:
        self.grids.append(infotext)


def run_job(p: FakeP, job: Any, score_of_seed: Any, hooks: Recorder) -> tuple[FakeProcessed, list]:
    """Run a whole job; `score_of_seed(seed, prompt) -> float` stands in for the model. Returns the Processed and the
    list of images the WebUI itself saved in its loop (must stay empty while the job defers saving)."""
    webui_saved: list = []
    if job is not None:
        job.start(p)
    count = p.n_iter * p.batch_size
    p.all_prompts = list(p.prompt_list) if p.prompt_list else [p.prompt] * count
    p.all_negative_prompts = [p.negative_prompt] * count
    p.all_seeds = [p.seed + i for i in range(count)]
    p.all_subseeds = [p.seed + 1000 + i for i in range(count)]
    infotexts, output_images = [], []
    for n in range(p.n_iter):
        if p.interrupt_after_batches is not None and n >= p.interrupt_after_batches:
            break
        p.iteration = n
        p.prompts = p.all_prompts[n * p.batch_size : (n + 1) * p.batch_size]
        p.seeds = p.all_seeds[n * p.batch_size : (n + 1) * p.batch_size]
        # decoded samples: float CHW in [0, 1]; the seed is encoded in the pixels so the fake model can read it
        batch = [torch.full((3, 16, 16), (seed % 256) / 255.0) for seed in p.seeds]
        if job is not None:
            indices = job.batch_indices(p, len(batch))
            job.record_scores(indices, [score_of_seed(p.seeds[i], p.prompts[i]) for i in range(len(batch))])
        for i in range(len(batch)):
            p.batch_index = i
            image = Image.new("RGB", (16, 16), color=(p.seeds[i] % 256, 0, 0))
            if job is not None:
                job.remember_image(p, image)
            text = create_infotext(p, p.prompts, p.seeds, index=i)
            if p.save_samples():
                webui_saved.append(p.seeds[i])
            infotexts.append(text)
            image.info["parameters"] = text
            output_images.append(image)
    index_of_first_image = 0
    if not p.do_not_save_grid and len(output_images) > 1:
        grid_text = create_infotext(p, p.all_prompts, p.all_seeds, use_main_prompt=True)
        infotexts.insert(0, grid_text)
        output_images.insert(0, Image.new("RGB", (8, 8)))
        index_of_first_image = 1
    processed = FakeProcessed(
        images=output_images,
        infotexts=infotexts,
        all_prompts=p.all_prompts,
        all_negative_prompts=p.all_negative_prompts,
        all_seeds=p.all_seeds,
        all_subseeds=p.all_subseeds,
        index_of_first_image=index_of_first_image,
        seed=p.all_seeds[0],
        subseed=p.all_subseeds[0],
        info=infotexts[0] if infotexts else "",
        extra_generation_params=p.extra_generation_params,
    )
    if job is not None:
        job.finish(p, processed, hooks)
    return processed, webui_saved
