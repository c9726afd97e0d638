"""The candidate plan of a best-of-N job: which requested image (slot) every generated image is a candidate for.

The plan is made once the WebUI and the other scripts have resolved the requested images (the end of the `process`
hooks): by then `p.all_prompts` and friends hold one entry per requested image, whatever produced them (a plain
prompt, the prompt matrix's list, dynamic prompts' wildcards). Each requested image becomes N candidates that share
its prompt, negative prompt and every other per-image value; only the seed (the variation seed when variations are
on) differs, so best-of-N means "N tries of the same image".

Layout: the WebUI slices its per-image lists into batches of `batch_size`. Each batch of requested images becomes N
consecutive batches, the c-th holding candidate c of each of those images at the same batch index. So a slot's
candidates sit at one batch index: in img2img with several init images, where the batch index picks the init image,
every candidate of a slot starts from that slot's init image. Candidate 0 is the image the WebUI would have made
without the extension (same prompt, same seed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Per-image lists of `StableDiffusionProcessing` that the plan expands (those present with one entry per image).
PER_IMAGE_LISTS = (
    "all_prompts",
    "all_negative_prompts",
    "all_seeds",
    "all_subseeds",
    "all_hr_prompts",
    "all_hr_negative_prompts",
)


class PlanError(Exception):
    """The WebUI's per-image lists do not have the shape the plan needs (the job then keeps every image)."""


@dataclass(frozen=True)
class CandidatePlan:
    """`slots[g]` and `candidate[g]`: the requested image and the try number of generated image g."""

    requested: int  # R: images the user asked for
    candidates: int  # N: tries per requested image
    batch_size: int  # images per batch while the job runs
    slots: tuple[int, ...]
    candidate: tuple[int, ...]
    prompts: tuple[str, ...]  # the prompt of each generated image, as the WebUI will slice it

    @property
    def total(self) -> int:
        return len(self.slots)

    @property
    def n_iter(self) -> int:
        return math.ceil(self.total / self.batch_size) if self.total else 0

    def batch(self, iteration: int) -> range:
        """The generated indices of one batch."""
        start = iteration * self.batch_size
        return range(min(start, self.total), min(start + self.batch_size, self.total))

    def expand(self, values: Sequence[Any]) -> list[Any]:
        """A per-requested-image list, repeated for each candidate in the plan's order."""
        return [values[slot] for slot in self.slots]

    def mismatch(self, iteration: int, batch_size: int, prompts: Sequence[str], count: int) -> str | None:
        """Why a batch the WebUI made does not follow the plan, or None when it does."""
        expected = self.batch(iteration)
        if batch_size != self.batch_size:
            return f"the batch size changed from {self.batch_size} to {batch_size}"
        if count != len(expected):
            return f"batch {iteration + 1} holds {count} images where {len(expected)} were planned"
        planned = [self.prompts[g] for g in expected]
        if list(prompts[:count]) != planned:
            return f"the prompts of batch {iteration + 1} are not the ones planned"
        return None


def make_plan(requested_prompts: Sequence[str], batch_size: int, candidates: int) -> CandidatePlan:
    """Lay out `candidates` tries of each requested image (see the module docstring)."""
    if batch_size < 1 or candidates < 1:
        raise PlanError(f"batch size {batch_size} and candidates {candidates} must be at least 1")
    requested = len(requested_prompts)
    slots: list[int] = []
    tries: list[int] = []
    for start in range(0, requested, batch_size):
        block = range(start, min(start + batch_size, requested))
        for c in range(candidates):
            slots.extend(block)
            tries.extend([c] * len(block))
    return CandidatePlan(
        requested=requested,
        candidates=candidates,
        batch_size=batch_size,
        slots=tuple(slots),
        candidate=tuple(tries),
        prompts=tuple(requested_prompts[s] for s in slots),
    )


def candidate_seeds(
    plan: CandidatePlan, seeds: Sequence[int], subseeds: Sequence[int], variations: bool
) -> tuple[list[int], list[int]]:
    """Seeds for every generated image: candidate c of slot r gets the slot's seed + c·R (its variation seed when
    variations are on, where the WebUI keeps the seed and varies the variation seed). Candidate 0 keeps the seed the
    WebUI chose; the others do not collide with any requested image's seed in the default, consecutive case."""
    step = max(plan.requested, 1)
    out_seeds, out_subseeds = [], []
    for slot, c in zip(plan.slots, plan.candidate, strict=True):
        seed, subseed = int(seeds[slot]), int(subseeds[slot])
        if variations:
            subseed += c * step
        else:
            seed += c * step
        out_seeds.append(seed)
        out_subseeds.append(subseed)
    return out_seeds, out_subseeds


def effective_batch_size(p: Any) -> int:
    """The batch size the WebUI's loop will use: img2img with several init images makes one batch of them."""
    init_images = getattr(p, "init_images", None)
    if isinstance(init_images, (list, tuple)) and len(init_images) > 1:
        return len(init_images)
    return int(p.batch_size)


def apply_plan(p: Any, candidates: int) -> CandidatePlan:
    """Make the plan from `p`'s resolved per-image lists and expand them on `p` (n_iter included)."""
    prompts = list(getattr(p, "all_prompts", None) or [])
    requested = len(prompts)
    if requested == 0:
        raise PlanError("the job has no prompts")
    lists: dict[str, list[Any]] = {}
    for name in PER_IMAGE_LISTS:
        values = getattr(p, name, None)
        if isinstance(values, list) and values:
            if len(values) < requested:
                raise PlanError(f"p.{name} has {len(values)} entries for {requested} images")
            lists[name] = values[:requested]
    if "all_seeds" not in lists or "all_subseeds" not in lists:
        raise PlanError("the job's seeds are not set up")
    plan = make_plan(prompts, effective_batch_size(p), candidates)
    variations = float(getattr(p, "subseed_strength", 0) or 0) != 0
    seeds, subseeds = candidate_seeds(plan, lists["all_seeds"], lists["all_subseeds"], variations)
    for name, values in lists.items():
        setattr(p, name, plan.expand(values))
    p.all_seeds, p.all_subseeds = seeds, subseeds
    p.n_iter = plan.n_iter
    return plan
