"""Best-of-N in two phases: choose the winners before the expensive work, then finish only them.

Phase 1 samples every candidate with the first pass only (no hires fix; with preview steps, a share of the steps),
decodes and scores its 8-bit pixels, and sends nothing further down the WebUI's per-image pipeline: no face
restoration, no ADetailer, no saving. When every candidate is scored, the selection (sort, threshold, top-k) picks
the kept ones. Phase 2 runs them through the WebUI's whole pipeline: the hires pass starts from the first-pass
latents recorded in phase 1, so the finished image is the one hires fix makes in one go for that seed (with preview
steps the kept seeds are sampled again at full steps); then every per-image step and the saves, as the WebUI makes
them.

Both phases run inside the WebUI's one loop over batches. The loop's length is fixed when it starts, so the plan
reserves batches for the most images phase 2 can need; phase 2's per-image lists are written once phase 1 is scored,
and the loop ends at the first batch that has no prompts. This module is the bookkeeping, free of the WebUI:
which batch belongs to which phase, the layout of phase 2, what it cost, how well previews predicted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..selection import Mode
from .plan import PER_IMAGE_LISTS, CandidatePlan


@dataclass(frozen=True)
class Sampling:
    """The job's sampling as the user set it, read from `p` before phase 1 changes anything."""

    steps: int
    hires_steps: int  # 0 without hires fix
    preview_steps: int | None  # phase 1's steps when previews are on (phase 2 then samples again)

    @classmethod
    def of(cls, p: Any, preview_percent: int) -> Sampling:
        steps = max(1, int(getattr(p, "steps", 0) or 1))
        hires = 0
        if getattr(p, "enable_hr", False) and not getattr(p, "is_img2img", False):
            hires = int(getattr(p, "hr_second_pass_steps", 0) or 0) or steps
        preview = None
        if preview_percent < 100:
            preview = max(1, min(steps, round(steps * preview_percent / 100)))
        return cls(steps, hires, preview)

    @property
    def replays_latents(self) -> bool:
        """Phase 2 starts from phase 1's sampler output (no previews: the first pass is already the real one)."""
        return self.preview_steps is None

    @property
    def phase_one_steps(self) -> int:
        return self.preview_steps if self.preview_steps is not None else self.steps


def capacity(mode: Mode, k: int, candidates: int, requested: int, finish_all: bool) -> int:
    """The most images phase 2 can have to finish."""
    if finish_all or mode in (Mode.SORT, Mode.THRESHOLD):
        return candidates * requested
    return min(k, candidates) * requested


@dataclass(frozen=True)
class Slot:
    """One place of phase 2: the phase-1 candidate it finishes; a filler only keeps an img2img batch whole."""

    source: int
    filler: bool = False


def phase_two_layout(plan: CandidatePlan, finish: Sequence[int], whole_batches: bool) -> list[Slot]:
    """The order phase 2 makes `finish` (phase-1 indices) in.

    txt2img: one after the other, by requested image. img2img (`whole_batches`): each batch of requested images
    again as rounds of full batches, every image at its requested image's batch index (which picks its init image
    and mask); a requested image with fewer images to finish than the others fills its places with a filler (made,
    then dropped: never shown, never saved).
    """
    wanted = set(finish)
    by_slot: dict[int, list[int]] = {}
    for g in range(plan.total):
        if g in wanted:
            by_slot.setdefault(plan.slots[g], []).append(g)
    if not whole_batches:
        return [Slot(g) for slot in sorted(by_slot) for g in by_slot[slot]]
    layout: list[Slot] = []
    first_of = {}
    for g in range(plan.total):
        first_of.setdefault(plan.slots[g], g)
    for start in range(0, plan.requested, plan.batch_size):
        block = range(start, min(start + plan.batch_size, plan.requested))
        rounds = max((len(by_slot.get(slot, [])) for slot in block), default=0)
        for c in range(rounds):
            for slot in block:
                mine = by_slot.get(slot, [])
                layout.append(Slot(mine[c]) if c < len(mine) else Slot(mine[0] if mine else first_of[slot], True))
    return layout


@dataclass
class TwoPhases:
    """The state of a two-phase job between the WebUI's hooks."""

    plan: CandidatePlan  # phase 1: N candidates per requested image, laid out as `plan.py` does
    sampling: Sampling
    whole_batches: bool
    first_scores: dict[int, float] = field(default_factory=dict)
    first_members: dict[int, dict[str, float]] = field(default_factory=dict)
    first_images: dict[int, Any] = field(default_factory=dict)
    first_infotexts: dict[int, str] = field(default_factory=dict)
    latents: dict[int, Any] = field(default_factory=dict)  # phase-1 sampler output per candidate (CPU tensors)
    unfinished: set[int] = field(default_factory=set)  # phase-1 candidates cut short by an interrupt or skip
    layout: list[Slot] | None = None  # set when phase 1 is over
    kept: list[int] = field(default_factory=list)  # phase-1 indices kept, in display order
    selection: Any = None  # phase 1's Selection, over `competing`
    competing: list[int] = field(default_factory=list)  # the phase-1 indices that took part in the selection
    broken: str | None = None  # another script changed phase 1's batches: the split stopped there

    @property
    def phase_one_batches(self) -> int:
        return self.plan.n_iter

    @property
    def first_phase_two_index(self) -> int:
        return self.phase_one_batches * self.plan.batch_size

    def phase_of(self, iteration: int) -> int:
        return 1 if iteration < self.phase_one_batches else 2

    def source(self, index: int) -> Slot | None:
        """The phase-2 place of a generated index (None for a phase-1 index or a place never written)."""
        position = index - self.first_phase_two_index
        if self.layout is None or not 0 <= position < len(self.layout):
            return None
        return self.layout[position]

    def batch_sources(self, iteration: int, count: int) -> list[Slot]:
        start = (iteration - self.phase_one_batches) * self.plan.batch_size
        return list((self.layout or [])[start : start + count])

    def write_phase_two(self, p: Any) -> None:
        """Phase 2's per-image lists after phase 1's: padded to whole phase-1 batches (those entries are never
        read again), then one entry per place of the layout; the loop stops after the last one."""
        assert self.layout is not None
        pad = self.first_phase_two_index
        for name in PER_IMAGE_LISTS:
            values = getattr(p, name, None)
            if not isinstance(values, list) or len(values) < self.plan.total:
                continue
            head = list(values[: self.plan.total])
            head += [head[-1]] * (pad - len(head))
            setattr(p, name, head + [values[slot.source] for slot in self.layout])

    def record_latents(self, iteration: int, samples: Any) -> None:
        base = iteration * self.plan.batch_size
        for i in range(len(samples)):
            self.latents[base + i] = samples[i].detach().to("cpu").clone()

    def latents_for(self, iteration: int, count: int) -> list[Any] | None:
        sources = self.batch_sources(iteration, count)
        if len(sources) != count or any(s.source not in self.latents for s in sources):
            return None
        return [self.latents[s.source] for s in sources]


@dataclass(frozen=True)
class Cost:
    """Sampling steps spent, against plain best-of-N (every candidate sampled and finished)."""

    candidates: int
    finished: int
    sampling: Sampling

    @property
    def plain_steps(self) -> int:
        return self.candidates * (self.sampling.steps + self.sampling.hires_steps)

    @property
    def phase_one_steps(self) -> int:
        return self.candidates * self.sampling.phase_one_steps

    @property
    def phase_two_steps(self) -> int:
        first = 0 if self.sampling.replays_latents else self.sampling.steps
        return self.finished * (first + self.sampling.hires_steps)

    def sentence(self) -> str:
        s = self.sampling
        phase_two = []
        if not s.replays_latents:
            phase_two.append(f"{s.steps} steps")
        if s.hires_steps:
            phase_two.append(f"hires {s.hires_steps} steps")
        two = f"{self.finished} × " + (" + ".join(phase_two) if phase_two else "no sampling (first passes reused)")
        plain = f"{self.candidates} × {s.steps} steps" + (f" + hires {s.hires_steps} steps" if s.hires_steps else "")
        share = 100.0 * (self.phase_one_steps + self.phase_two_steps) / max(self.plain_steps, 1)
        return (
            f"phase 1: {self.candidates} × {s.phase_one_steps} steps, phase 2: {two}; {share:.0f} % of the sampling "
            f"steps of plain best-of-N ({plain}); the per-image work (face restoration, ADetailer, saving) ran for "
            f"{self.finished} image(s) instead of {self.candidates}"
        )


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for position in range(i, j + 1):
            ranks[order[position]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side has no spread."""
    if len(a) != len(b) or len(a) < 2:
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    mean = (len(a) + 1) / 2.0
    cov = sum((x - mean) * (y - mean) for x, y in zip(ra, rb, strict=True))
    var_a = sum((x - mean) ** 2 for x in ra)
    var_b = sum((y - mean) ** 2 for y in rb)
    return cov / math.sqrt(var_a * var_b) if var_a > 0 and var_b > 0 else math.nan


@dataclass(frozen=True)
class Agreement:
    groups: int
    top1: float  # share of groups whose best preview is also the best finished image
    rank_correlation: float  # mean Spearman correlation within groups (groups with spread only)

    def sentence(self, what: str) -> str:
        """`what`: "preview" or "first pass"."""
        rho = "n/a" if math.isnan(self.rank_correlation) else f"{self.rank_correlation:.2f}"
        plural = "first passes" if what == "first pass" else f"{what}s"
        top1 = "n/a" if math.isnan(self.top1) else f"{self.top1 * 100:.0f} %"
        return (
            f"how well the {plural} predicted the finished images, over {self.groups} requested image(s): the best "
            f"{what} was also the best finished image in {top1} of them, rank correlation {rho}"
        )


def agreement(groups: Sequence[Sequence[int]], previews: dict[int, float], finals: dict[int, float]) -> Agreement:
    """Top-1 agreement and mean rank correlation between preview and final scores, per group of candidates."""
    hits, counted, rhos = 0, 0, []
    for group in groups:
        both = [g for g in group if _finite(previews.get(g)) and _finite(finals.get(g))]
        if len(both) < 2:
            continue
        counted += 1
        best_preview = max(both, key=lambda g: previews[g])
        best_final = max(both, key=lambda g: finals[g])
        hits += best_preview == best_final
        rho = spearman([previews[g] for g in both], [finals[g] for g in both])
        if not math.isnan(rho):
            rhos.append(rho)
    return Agreement(counted, hits / counted if counted else math.nan, sum(rhos) / len(rhos) if rhos else math.nan)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
