"""One generation job with ImageReward on: the candidate plan, per-image scores, held-back saves, the selection.

The WebUI objects are duck-typed: `p` needs the attributes of `StableDiffusionProcessing` used here and in `plan.py`
(n_iter, batch_size, iteration, batch_index, prompts, all_prompts, all_seeds, ..., do_not_save_grid,
extra_generation_params) and `processed` those of `Processed` (images, infotexts, all_prompts, all_negative_prompts,
all_seeds, all_subseeds, index_of_first_image, seed, subseed, info, comments, extra_generation_params).

A job belongs to the `p` it started on. Other scripts re-run the hooks on copies of `p` (ADetailer does, per image);
a copy carries the job's attribute, but `owns` tells it apart and the glue then does nothing.

Lifecycle, in the WebUI's order:
- `start` (before_process): the job's settings into the infotext, the WebUI's grid off.
- `plan` (process, after the prompts are resolved): N candidates per requested image (see `plan.py`).
- `check_batch` (postprocess_batch_list): the batch the WebUI made follows the plan, or the job keeps every image.
- `collect` (postprocess_image_after_composite): the final pixels of each image; a complete batch is scored then,
  so a score belongs to the pixels that are written (after face restoration, ADetailer, colour correction).
- `capture_save` (the WebUI's save function): held back, see `saves.py`.
- `finish` (postprocess): select, reorder the gallery and the per-image lists together, replay the saves of the
  kept images, make the grid. Never loses an image: a failure keeps everything and says why.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import MAX_TEXT_LENGTH
from ..infotext import format_score, with_setting
from ..selection import Mode, Selection, select, summary
from .args import JobArgs, score_decimals, score_key
from .phases import Cost, Sampling, TwoPhases, agreement, capacity, phase_two_layout
from .plan import CandidatePlan, PlanError, apply_plan
from .saves import DeferredSave, SaveBuffer

log = logging.getLogger("imagereward")

DETAILS_KEY = "ImageReward details"
SCORES_KEY = "ImageReward scores"
ERROR_KEY = "ImageReward error"
# An image of a batch cut short by an interrupt or skip: shown last, never ranked, never saved. Its infotext carries
# this entry instead of a score, and the gallery's badge shows the value as a plain label.
STATUS_KEY = "ImageReward status"
UNFINISHED = "unfinished · not saved"
UNFINISHED_SAVED = "unfinished · saved"  # the WebUI saved it, as its option to keep interrupted images asks (SD.Next)
DETAILS_VERSION = 2

TRUNCATION_NOTE = (
    f"a prompt is longer than ImageReward reads ({MAX_TEXT_LENGTH - 2} word pieces, {MAX_TEXT_LENGTH} tokens with "
    "its start and end markers); only its beginning was scored"
)
TRUNCATION_NOTE_OTHER = (
    "a prompt is longer than the scorer reads (ImageReward and BLIP: 33 word pieces; the CLIP-based scorers: 75 "
    "tokens); only its beginning was scored"
)


class Scoring(Protocol):
    """What the job needs to score: the glue passes the WebUI's scorer runtime."""

    def score(self, prompts: list[str], images: list[Any]) -> dict[str, list[float]] | list[float]: ...
    def truncated(self, prompts: list[str]) -> list[bool]: ...


class SaveHooks(Protocol):
    """What `finish` needs from the WebUI; the script implements it with `modules.images`."""

    def replay(self, p: Any, save: DeferredSave, arguments: dict[str, Any]) -> None: ...
    def discarded_dir(self, p: Any) -> str: ...
    def grid_wanted(self, p: Any, count: int) -> tuple[bool, bool]: ...  # (return it in the gallery, save it)
    def make_grid(self, p: Any, images: list[Any], infotext: str) -> Any: ...
    def save_grid(self, p: Any, grid: Any, infotext: str) -> None: ...
    def save_first_pass(self, p: Any, image: Any, seed: int, prompt: str, infotext: str, folder: str) -> None: ...


@dataclass
class Candidate:
    index: int  # the generated image's global index (generation order)
    image: Any
    infotext: str
    extras: list[Any] = field(default_factory=list)  # images the WebUI returned after it (masks)


@dataclass
class Outcome:
    """What a job ends with: its images in display order and which of them are kept (positions in `candidates`)."""

    candidates: list[Candidate]
    kept: list[int]
    discarded: list[int]
    selection: Selection | None  # for the details' ranks; None when nothing was ranked
    scores: list[float]  # the ranking score of each candidate (NaN: none)


class BestOfNJob:
    def __init__(
        self, args: JobArgs, scoring: Scoring, *, keep_best_if_none: bool = True, per_group: bool = True
    ) -> None:
        self.args = args
        self.scoring = scoring
        self.keep_best_if_none = keep_best_if_none
        self.per_group = per_group
        self.owner: Any = None
        self.plan: CandidatePlan | None = None
        self.unplanned: str | None = None  # why the job keeps every image in generation order
        self.failure: str | None = None
        self.scores: dict[int, float] = {}  # the ranking score (the chosen scorer's, or the ensemble's)
        self.member_scores: dict[int, dict[str, float]] = {}  # the ensemble's members, by scorer name
        self.finals: dict[int, Any] = {}  # generated index -> final image
        self.prompts: dict[int, str] = {}
        self.batch_counts: dict[int, int] = {}
        self.unfinished: set[int] = set()  # images of a batch cut short by an interrupt or skip
        self.unfinished_saved: set[int] = set()  # of those, the ones the WebUI saved (set when the job finishes)
        self.saves = SaveBuffer()
        self.capturing = False
        self.notes: list[str] = []
        self.messages: list[str] = []  # what the job's comments said, also returned in the details
        self._original: dict[str, Any] = {}
        self._added_params: list[str] = []
        self.phases: TwoPhases | None = None  # finishing only the kept candidates (`phases.py`)
        self.writes_nothing = False  # nothing of the job may be saved (stopped before anything was finished)

    @property
    def candidates_per_image(self) -> int:
        """N: how many candidates each requested image gets."""
        return self.args.candidates

    @property
    def score_key(self) -> str:
        return self.args.score_key

    def _score_keys(self) -> list[str]:
        """Every infotext key the job writes a score under (the ranking one first)."""
        keys = [self.score_key, *(score_key(name) for name in self._members())]
        return [*keys, self._first_key] if self.phases is not None else keys

    def _members(self) -> list[str]:
        return sorted({name for values in self.member_scores.values() for name in values})

    def owns(self, p: Any) -> bool:
        return p is self.owner

    # ------------------------------------------------------------------------------------------- job start

    def start(self, p: Any) -> None:
        self.owner = p
        self._original = {"n_iter": p.n_iter, "do_not_save_grid": p.do_not_save_grid}
        p.do_not_save_grid = True  # the grid is made of the kept images, in `finish`
        # The score itself is written by `finish` into each kept image's infotext and file: every image gets it at
        # the same place (the end of the settings line), and only images that are kept.
        params = self.args.infotext_params()
        self._added_params = [key for key in params if key not in p.extra_generation_params]
        p.extra_generation_params.update(params)

    def make_plan(self, p: Any, split_refused: str | None = None) -> None:
        """After every `process` hook has resolved the requested images: N candidates for each, and with "finish
        only the kept" the batches of both phases. `split_refused`: why this WebUI cannot split its sampling."""
        try:
            self.plan = apply_plan(p, self.candidates_per_image)
        except PlanError as exc:
            self.unplanned = f"the job's images could not be planned ({exc})"
        self.capturing = True
        if self.args.finish_kept and self.plan is not None and self.candidates_per_image > 1:
            refused = split_refused or self._split_refused(p)
            if refused:
                self.note(
                    f"finishing only the kept candidates is off for this job: {refused}; every candidate was "
                    "finished, as in plain best-of-N"
                )
            else:
                self._plan_phases(p, self.plan)

    def _split_refused(self, p: Any) -> str | None:
        if self.args.mode is Mode.SORT and not self.args.check_previews:
            return "the sort mode keeps every candidate, so there is nothing to leave unfinished"
        if not callable(getattr(p, "sample", None)):
            return "this WebUI's processing has no sampling step to split"
        return None

    def _plan_phases(self, p: Any, plan: CandidatePlan) -> None:
        whole = bool(getattr(p, "init_images", None))  # img2img: whole batches, each image at its batch index
        room = capacity(
            self.args.mode, self.args.k, self.candidates_per_image, plan.requested, self.args.check_previews
        )
        per_slot = math.ceil(room / max(plan.requested, 1))
        reserved = (
            math.ceil(plan.requested / plan.batch_size) * per_slot if whole else math.ceil(room / plan.batch_size)
        )
        self.phases = TwoPhases(plan, Sampling.of(p, self.args.preview_percent), whole)
        p.n_iter = plan.n_iter + reserved

    def splits(self, p: Any) -> bool:
        """The batch now running is a phase-1 batch: sampled and scored, then dropped before the per-image work."""
        return self.phases is not None and self.phases.broken is None and self.phases.phase_of(p.iteration) == 1

    @contextlib.contextmanager
    def phase_one_sampling(self, p: Any) -> Iterator[None]:
        """A phase-1 sampling: the first pass only (no hires fix), with the preview steps when asked."""
        assert self.phases is not None
        saved = {"enable_hr": getattr(p, "enable_hr", False), "steps": getattr(p, "steps", None)}
        p.enable_hr = False
        if self.phases.sampling.preview_steps is not None:
            p.steps = self.phases.sampling.preview_steps
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(p, name, value)

    def phase_one_batch(self, p: Any, images: Sequence[Any], infotext: Callable[[int], str]) -> None:
        """A phase-1 batch as decoded (CHW floats in 0..1): scored on its 8-bit pixels and kept aside; after the
        last one, phase 2's images are chosen and written into `p`'s per-image lists."""
        phases = self.phases
        assert phases is not None
        base = p.iteration * p.batch_size
        indices = [base + i for i in range(len(images))]
        for i, (index, image) in enumerate(zip(indices, images, strict=True)):
            phases.first_images[index] = _to_pil(image)
            phases.first_infotexts[index] = _safe(lambda i=i: infotext(i), "")
            self.prompts[index] = _at(p.all_prompts, index, "")
        if indices:
            images = [phases.first_images[i] for i in indices]
            self._score_into(indices, images, phases.first_scores, phases.first_members)
        if p.iteration == phases.phase_one_batches - 1:
            self._begin_phase_two(p)

    def _begin_phase_two(self, p: Any) -> None:
        phases = self.phases
        assert phases is not None
        plan = phases.plan
        competing = [g for g in range(plan.total) if g not in self.unfinished and g in phases.first_images]
        phases.competing = competing
        phases.kept, phases.selection = self._first_pass_choice(competing)
        finish = competing if self.args.check_previews and phases.selection is not None else phases.kept
        phases.layout = phase_two_layout(plan, finish, phases.whole_batches)
        phases.write_phase_two(p)

    def restore(self, p: Any) -> None:
        for name, value in self._original.items():
            setattr(p, name, value)
        for key in self._added_params:  # X/Y/Z cells share this dict: a later cell must not inherit our entries
            p.extra_generation_params.pop(key, None)

    # ------------------------------------------------------------------------------------------- per batch

    def check_batch(self, p: Any, count: int, *, finished: bool = True) -> None:
        """A batch as the WebUI made it; `finished` is false when an interrupt or skip cut its sampling short (the
        WebUI then shows its images but does not save them, unless asked to save incomplete images)."""
        self.batch_counts[p.iteration] = count
        if not finished:
            self.unfinished.update(p.iteration * p.batch_size + i for i in range(count))
        if self.phases is not None and self.phases.phase_of(p.iteration) == 2:
            planned = [_at(p.all_prompts, p.iteration * p.batch_size + i, None) for i in range(count)]
            if self.phases.layout is None or list(p.prompts[:count]) != planned:
                self.unplanned = f"another script changed the images of batch {p.iteration + 1}"
            return
        if self.plan is not None and self.unplanned is None:
            reason = self.plan.mismatch(p.iteration, p.batch_size, list(p.prompts), count)
            if reason:
                self.unplanned = f"another script changed the job's images ({reason})"
                if self.phases is not None and self.phases.broken is None:
                    self.phases.broken = self.unplanned

    def hold_replaced_batch(self, p: Any, images: list[Any]) -> None:
        """A batch cut short that the WebUI replaced (SD.Next: by the live preview, or by nothing) and will not
        post-process: its images are unfinished, shown last and never scored; their count is not the plan's."""
        self.batch_counts[p.iteration] = len(images)
        for i, image in enumerate(images):
            index = p.iteration * p.batch_size + i
            self.unfinished.add(index)
            self.finals[index] = image
            self.prompts[index] = _at(p.all_prompts, index, "")

    def collect(self, p: Any, image: Any) -> None:
        """The final image of one generated index; scores the batch once its last image is in."""
        index = p.iteration * p.batch_size + p.batch_index
        self.finals[index] = image
        self.prompts[index] = _at(p.all_prompts, index, "")
        expected = self.batch_counts.get(p.iteration)
        if expected is not None and p.batch_index >= expected - 1:
            self.score_pending()

    def score_pending(self) -> None:
        pending = sorted(i for i in self.finals if i not in self.scores and i not in self.unfinished)
        if pending:
            self._score_into(pending, [self.finals[i] for i in pending], self.scores, self.member_scores)

    def _score_into(
        self,
        indices: list[int],
        images: list[Any],
        scores: dict[int, float],
        members: dict[int, dict[str, float]],
    ) -> None:
        """Score `images` (generated indices `indices`) into `scores` (the ranking scorer's) and `members` (an
        ensemble's). A failure is tried once per job: it is remembered, logged, and the job keeps its images."""
        if self.failure is not None:
            return
        prompts = [self.prompts[i] for i in indices]
        try:
            result = self.scoring.score(prompts, images)
            table = result if isinstance(result, dict) else {self.args.scorer: list(result)}
            ranking = table[self.args.scorer]
            if any(self.scoring.truncated(prompts)):
                self.note(TRUNCATION_NOTE if self.args.scorer == "imagereward" else TRUNCATION_NOTE_OTHER)
        except Exception as exc:  # never lose the user's images over a scoring problem: keep them all
            self.failure = str(exc) or type(exc).__name__
            log.error("ImageReward: %s; the job keeps every image unscored", self.failure, exc_info=True)
            return
        for position, (index, score) in enumerate(zip(indices, ranking, strict=True)):
            scores[index] = float(score)
            others = {name: float(values[position]) for name, values in table.items() if name != self.args.scorer}
            if others:
                members[index] = others

    def capture_save(self, p: Any, arguments: dict[str, Any]) -> bool:
        """A call of the WebUI's save function for this job's images: held back while candidates are made."""
        if not self.capturing or arguments.get("grid"):
            return False
        # p.batch_index only exists once the WebUI's per-image loop has started: hires fix's "save before" comes
        # earlier, for the first batch (the buffer numbers those saves itself).
        self.saves.record(arguments, int(getattr(p, "iteration", 0)), int(getattr(p, "batch_index", 0)), p.batch_size)
        return True

    def note(self, message: str) -> None:
        """Something the user should read once in the job's comments."""
        if message not in self.notes:
            self.notes.append(message)

    def score_text(self, index: int) -> str | None:
        score = self.scores.get(index)
        return None if score is None or math.isnan(score) else format_score(score, score_decimals(self.args.scorer))

    def without_scores(self, text: str) -> str:
        for key in (*self._score_keys(), STATUS_KEY):
            text = with_setting(text, key, None)
        return text

    # ----------------------------------------------------------------------------------------------- finish

    def abandon(self, hooks: SaveHooks) -> list[str]:
        """The WebUI never called `finish` (its loop failed): write everything held back, as it would have."""
        self.capturing = False
        problems = []
        for save in self.saves.saves:
            try:
                hooks.replay(self.owner, save, save.arguments)
            except Exception as exc:
                problems.append(f"{save.arguments.get('suffix') or 'image'} {save.index + 1}: {exc}")
        self.saves.clear()
        return problems

    def _made(self, processed: Any) -> list[Candidate]:
        """The job's images in generation order with their infotexts and the extra images after each (masks)."""
        first = processed.index_of_first_image
        images = list(processed.images[first:])
        texts = list(processed.infotexts[first:])
        by_id = {id(image): index for index, image in self.finals.items()}
        candidates: list[Candidate] = []
        if by_id and images and id(images[0]) in by_id:
            for image in images:
                index = by_id.get(id(image))
                if index is not None:
                    text = texts[len(candidates)] if len(candidates) < len(texts) else ""
                    candidates.append(Candidate(index, image, text))
                else:
                    candidates[-1].extras.append(image)
            if len(candidates) == len(texts):
                return sorted(candidates, key=lambda c: c.index)
        # Another script replaced the image objects: the WebUI's layout, one infotext per generated image and the
        # same number of extra images after each.
        count = len(texts)
        if count == 0:
            return []
        step = len(images) // count if len(images) % count == 0 and len(images) >= count else 1
        return [
            Candidate(i, images[i * step], texts[i], list(images[i * step + 1 : (i + 1) * step])) for i in range(count)
        ]

    def finish(self, p: Any, processed: Any, hooks: SaveHooks) -> Selection | None:
        """Select, reorder the gallery and the per-image lists together, write what is kept. Always restores `p`."""
        self.capturing = False
        job_params = dict(processed.extra_generation_params)  # (the same dict as p's, which `restore` cleans)
        self.restore(p)
        self.score_pending()
        if self.phases is not None and self.phases.broken is None:
            return self._finish_phases(p, processed, hooks, job_params)
        candidates = self._made(processed)
        if self.phases is not None:  # the split stopped: the first passes dropped before it are shown, not saved
            dropped = sorted(self.phases.first_images)
            candidates += self._first_passes(dropped)
            self.unfinished.update(dropped)
        if not candidates:
            self.abandon(hooks)
            return None
        for candidate in candidates:  # the final image may come through the fallback layout
            self.finals.setdefault(candidate.index, candidate.image)
        for message in self.notes:
            self._comment(processed, f"ImageReward: {message}.")
        # Images cut short by an interrupt do not compete with finished ones: shown last, unranked, and saved only
        # where the WebUI saved them (SD.Next's option to keep interrupted images).
        unfinished = [c for c in candidates if c.index in self.unfinished]
        candidates = [c for c in candidates if c.index not in self.unfinished] + unfinished
        competing = len(candidates) - len(unfinished)
        if unfinished:
            saved = sum(1 for c in unfinished if self.saves.of(c.index))
            how = (
                "like the WebUI, they were not saved"
                if not saved
                else "they were saved, as the WebUI's setting to keep interrupted images asks"
                if saved == len(unfinished)
                else f"{saved} of them were saved, as the WebUI's setting to keep interrupted images asks"
            )
            self._comment(
                processed,
                f"ImageReward: {len(unfinished)} image(s) of the interrupted batch are shown last, unranked; {how}.",
            )
        scores = [self.scores.get(c.index, math.nan) for c in candidates]

        selection: Selection | None = None
        if self.failure is not None:
            self._comment(processed, f"ImageReward: {self.failure}; all {len(candidates)} images were kept.", False)
            kept = list(range(len(candidates)))
        elif self.unplanned is not None or all(math.isnan(s) for s in scores[:competing]):
            reason = self.unplanned or "no image could be scored"
            self._comment(processed, f"ImageReward: {reason}; all {len(candidates)} images were kept, unsorted.")
            kept = list(range(len(candidates)))
        else:
            groups, names = self._groups(candidates[:competing])
            rule = self.args.selection(self.keep_best_if_none, self.per_group)
            selection = select(scores[:competing], groups, rule)
            if selection.message:
                self._comment(processed, f"ImageReward: {selection.message}")
            if selection.below_threshold and len(groups) > 1:
                which = ", ".join(names[g] for g in selection.below_threshold)
                outcome = "kept its best candidate" if selection.fallback else "kept nothing"
                self._comment(processed, f"ImageReward: below the threshold, each of these {outcome}: {which}.")
            kept = selection.kept + list(range(competing, len(candidates)))
        discarded = [i for i in range(len(candidates)) if i not in set(kept)]
        self._apply(p, processed, hooks, Outcome(candidates, kept, discarded, selection, scores), job_params)
        return selection

    # ------------------------------------------------------------------------------------- two phases, finish

    def _first_passes(self, indices: Sequence[int]) -> list[Candidate]:
        assert self.phases is not None
        return [Candidate(g, self.phases.first_images[g], self.phases.first_infotexts.get(g, "")) for g in indices]

    def _finish_phases(self, p: Any, processed: Any, hooks: SaveHooks, job_params: dict[str, Any]) -> Selection | None:
        phases = self.phases
        assert phases is not None
        for message in self.notes:
            self._comment(processed, f"ImageReward: {message}.")
        if phases.layout is None:  # interrupted in phase 1: nothing was finished
            return self._finish_phase_one_only(p, processed, hooks, job_params)
        made = [c for c in self._made(processed) if phases.source(c.index) is not None]
        made = [c for c in made if not phases.source(c.index).filler]  # fillers keep img2img batches whole: dropped
        unfinished = [c for c in made if c.index in self.unfinished]
        finished = [c for c in made if c.index not in self.unfinished]
        order = {g: n for n, g in enumerate(phases.kept)}
        keep = sorted((c for c in finished if phases.source(c.index).source in order),
                      key=lambda c: order[phases.source(c.index).source])  # fmt: skip
        drop = [c for c in finished if phases.source(c.index).source not in order]
        candidates = keep + drop + unfinished
        kept = list(range(len(keep))) + list(range(len(keep) + len(drop), len(candidates)))
        discarded = list(range(len(keep), len(keep) + len(drop)))
        selection = self._phase_selection(candidates[: len(keep) + len(drop)], len(keep))
        self._phase_comments(processed, len(unfinished))
        if self.unplanned is not None:  # phase 2's batches were changed by another script: keep what was made
            self._comment(processed, f"ImageReward: {self.unplanned}; all {len(made)} finished images were kept.")
            candidates, kept, discarded, selection = made, list(range(len(made))), [], None
        if self.args.check_previews:
            finals = {phases.source(c.index).source: self.scores.get(c.index, math.nan) for c in finished}
            slots: dict[int, list[int]] = {}
            for g in finals:
                slots.setdefault(phases.plan.slots[g], []).append(g)
            what = "preview" if phases.sampling.preview_steps is not None else "first pass"
            found = agreement(list(slots.values()), phases.first_scores, finals)
            self._comment(processed, f"ImageReward: {found.sentence(what)}.")
        scores = [self.scores.get(c.index, math.nan) for c in candidates]
        self._apply(p, processed, hooks, Outcome(candidates, kept, discarded, selection, scores), job_params)
        self._keep_first_passes_aside(p, hooks, {phases.source(c.index).source for c in made})
        # The summary counts what phase 1 compared: every candidate scored, not only the finished ones.
        stats = processed.extra_generation_params[DETAILS_KEY]["summary"]
        compared = sum(1 for g in phases.competing if math.isfinite(phases.first_scores.get(g, math.nan)))
        stats.update(scored=compared, discarded=max(compared - len(keep), 0), finished=len(made))
        return selection

    def _finish_phase_one_only(
        self, p: Any, processed: Any, hooks: SaveHooks, job_params: dict[str, Any]
    ) -> Selection | None:
        """Interrupted before phase 2: the best first passes so far, shown and not saved (nothing was finished)."""
        phases = self.phases
        assert phases is not None
        competing = [g for g in sorted(phases.first_images) if g not in self.unfinished]
        shown, _ = self._first_pass_choice(competing)
        candidates = self._first_passes(shown)
        self.unfinished.update(shown)
        self.writes_nothing = True
        self._comment(
            processed,
            f"ImageReward: the job stopped in phase 1, before any candidate was finished; the best first pass of "
            f"each requested image so far is shown ({len(shown)}), not saved.",
        )
        shown_all = list(range(len(candidates)))
        outcome = Outcome(candidates, shown_all, [], None, [math.nan] * len(candidates))
        self._apply(p, processed, hooks, outcome, job_params)
        return None

    def _first_pass_choice(self, competing: list[int]) -> tuple[list[int], Selection | None]:
        """Phase 1's choice among `competing` (phase-1 indices), by each requested image's candidates; when nothing
        could be scored, each requested image's first candidate (the WebUI's own seed), unranked."""
        phases = self.phases
        assert phases is not None
        scores = [phases.first_scores.get(g, math.nan) for g in competing]
        if self.failure is not None or all(math.isnan(s) for s in scores):
            return [g for g in competing if phases.plan.candidate[g] == 0], None
        by_slot: dict[int, list[int]] = {}
        for position, g in enumerate(competing):
            by_slot.setdefault(phases.plan.slots[g], []).append(position)
        chosen = select(scores, list(by_slot.values()), self.args.selection(self.keep_best_if_none, self.per_group))
        return [competing[i] for i in chosen.kept], chosen

    def _phase_selection(self, candidates: list[Candidate], kept_count: int) -> Selection | None:
        """Phase 1's ranks, for the finished images (their positions in `candidates`)."""
        phases = self.phases
        assert phases is not None
        chosen = phases.selection
        if chosen is None:
            return None
        where = {g: i for i, g in enumerate(phases.competing)}
        positions = [where[phases.source(c.index).source] for c in candidates]
        return Selection(
            kept=list(range(kept_count)),
            discarded=list(range(kept_count, len(candidates))),
            rank=[chosen.rank[i] for i in positions],
            group_of=[chosen.group_of[i] for i in positions],
            group_size=[chosen.group_size[i] for i in positions],
            fallback=chosen.fallback,
            message=chosen.message,
            below_threshold=chosen.below_threshold,
        )

    def _phase_comments(self, processed: Any, unfinished: int) -> None:
        phases = self.phases
        assert phases is not None
        chosen = phases.selection
        if self.failure is not None:
            self._comment(processed, f"ImageReward: {self.failure}; each requested image's first candidate (the "
                          "WebUI's own seed) was finished, unranked.", False)  # fmt: skip
        elif chosen is not None and chosen.message:
            self._comment(processed, f"ImageReward: {chosen.message}")
        finished = sum(1 for slot in phases.layout or [] if not slot.filler)
        cost = Cost(len(phases.first_images), finished, phases.sampling)
        self._comment(processed, f"ImageReward: {cost.sentence()}.")
        if unfinished:
            self._comment(
                processed,
                f"ImageReward: {unfinished} image(s) of the interrupted batch are shown last, unranked; like the "
                "WebUI, they were not saved.",
            )

    def _keep_first_passes_aside(self, p: Any, hooks: SaveHooks, finished: set[int]) -> None:
        """With "keep discarded": the first passes of candidates that were never finished go to the discarded
        folder, named and marked as first passes."""
        phases = self.phases
        if phases is None or not self.args.keep_discarded:
            return
        folder = hooks.discarded_dir(p)
        for g in sorted(phases.first_images):
            if g in finished or g >= phases.plan.total:
                continue
            text = with_setting(phases.first_infotexts.get(g, ""), self._first_key, self._first_text(g))
            seed = _at(getattr(p, "all_seeds", []), g, -1)
            try:
                hooks.save_first_pass(p, phases.first_images[g], seed, self.prompts.get(g, ""), text, folder)
            except Exception:
                log.error("ImageReward: could not keep first pass %d aside", g + 1, exc_info=True)

    @property
    def _first_key(self) -> str:
        preview = self.phases is not None and self.phases.sampling.preview_steps is not None
        return f"{self.score_key} {'preview' if preview else 'first pass'}"

    def _first_text(self, g: int) -> str | None:
        value = self.phases.first_scores.get(g) if self.phases is not None else None
        return None if value is None or math.isnan(value) else format_score(value, score_decimals(self.args.scorer))

    def _groups(self, candidates: list[Candidate]) -> tuple[list[list[int]], list[str]]:
        """Groups of positions in `candidates` that compete, and a name for each (the requested image)."""
        by_key: dict[Any, list[int]] = {}
        for position, candidate in enumerate(candidates):
            if self.candidates_per_image > 1 and self.plan is not None:
                key: Any = self.plan.slots[candidate.index] if candidate.index < self.plan.total else -1
            else:  # one try per image: the whole job competes (within one prompt when asked)
                key = self.prompts.get(candidate.index, "") if self.args.by_prompt else 0
            by_key.setdefault(key, []).append(position)
        by_slot = self.candidates_per_image > 1 and self.plan is not None
        names = [f"image {key + 1}" if by_slot else f"group {n + 1}" for n, key in enumerate(by_key)]
        return list(by_key.values()), names

    def final_infotext(self, candidate: Candidate) -> str:
        unfinished = candidate.index in self.unfinished  # no score to compete with the kept: a plain label instead
        score = None if unfinished else self.score_text(candidate.index)
        text = with_setting(candidate.infotext, self.score_key, score)
        if self.phases is not None and self.phases.broken is None:
            slot = self.phases.source(candidate.index)
            source = slot.source if slot is not None else candidate.index
            text = with_setting(text, self._first_key, self._first_text(source))
        for name, value in sorted(self.member_scores.get(candidate.index, {}).items()):
            shown = None if math.isnan(value) or unfinished else format_score(value, score_decimals(name))
            text = with_setting(text, score_key(name), shown)
        if unfinished:
            status = UNFINISHED_SAVED if candidate.index in self.unfinished_saved else UNFINISHED
            text = with_setting(text, STATUS_KEY, status)
        if self.failure is not None:
            text = with_setting(text, ERROR_KEY, "scoring failed, nothing was filtered")
        return text

    def _apply(self, p: Any, processed: Any, hooks: SaveHooks, outcome: Outcome, job_params: dict[str, Any]) -> None:
        """The outcome into `processed` (the gallery first: whatever happens while writing files, the user sees every
        kept image), then the files, then the job's parameters for the API."""
        chosen = [outcome.candidates[i] for i in outcome.kept]
        self.unfinished_saved = {c.index for c in chosen if c.index in self.unfinished and self.saves.of(c.index)}
        texts = [self.final_infotext(c) for c in chosen]
        for candidate, text in zip(chosen, texts, strict=True):
            if isinstance(getattr(candidate.image, "info", None), dict) and "parameters" in candidate.image.info:
                candidate.image.info["parameters"] = text
        grid, grid_text, save_grid = self._gallery(p, processed, hooks, outcome, chosen, texts)

        problems = self._write(p, hooks, outcome.candidates, chosen, texts, outcome.discarded)
        if grid is not None and save_grid:
            try:
                hooks.save_grid(p, grid, grid_text)
            except Exception as exc:
                problems.append(f"the grid: {exc}")
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            self._comment(processed, f"ImageReward: some files could not be written ({shown}).")

        params = {k: v for k, v in job_params.items() if k not in self._score_keys()}
        unfinished = {i for i, c in enumerate(outcome.candidates) if c.index in self.unfinished}
        saved = {i for i, c in enumerate(outcome.candidates) if c.index in self.unfinished_saved}
        params[SCORES_KEY] = [None if i in unfinished else _round(outcome.scores[i]) for i in outcome.kept]
        first = processed.index_of_first_image
        params[DETAILS_KEY] = self._details(outcome.selection, outcome.kept, outcome.scores, first, unfinished, saved)
        if self.failure is not None:
            params[ERROR_KEY] = self.failure
        # A new dict: the WebUI shares p.extra_generation_params between X/Y/Z cells, which must not see these.
        processed.extra_generation_params = params

    def _gallery(
        self, p: Any, processed: Any, hooks: SaveHooks, outcome: Outcome, chosen: list[Candidate], texts: list[str]
    ) -> tuple[Any, str, bool]:
        """The kept images (and the grid of them) into `processed`, with the per-image lists in the same order.
        Returns the grid, its text and whether to save it."""

        def pick(values: Sequence[Any], default: Any) -> list[Any]:
            return [_at(values, c.index, default) for c in chosen]

        images = [c.image for c in chosen]
        grid, grid_text, show_grid, save_grid = None, self.without_scores(texts[0]) if texts else "", False, False
        finished = [c.image for c in chosen if c.index not in self.unfinished]  # the grid: never an unfinished image
        if finished:
            show_grid, save_grid = hooks.grid_wanted(p, len(finished))
            save_grid = save_grid and not self.writes_nothing
            if show_grid or save_grid:
                grid = hooks.make_grid(p, finished, grid_text)
        gallery_images, gallery_texts = list(images), list(texts)
        first = 0
        if grid is not None and show_grid:
            gallery_images.insert(0, grid)
            gallery_texts.insert(0, grid_text)
            first = 1
        processed.all_prompts = pick(processed.all_prompts, "")
        processed.all_negative_prompts = pick(processed.all_negative_prompts, "")
        processed.all_seeds, processed.all_subseeds = pick(processed.all_seeds, -1), pick(processed.all_subseeds, -1)
        processed.images = gallery_images + [extra for c in chosen for extra in c.extras]
        if not gallery_texts:  # nothing kept: the WebUI's info panel still needs one text
            gallery_texts = [self.without_scores(outcome.candidates[0].infotext)]
        processed.infotexts = gallery_texts
        processed.index_of_first_image = first
        processed.info = gallery_texts[0]
        if chosen:
            processed.seed, processed.subseed = processed.all_seeds[0], processed.all_subseeds[0]
        return grid, grid_text, save_grid

    def _write(
        self,
        p: Any,
        hooks: SaveHooks,
        candidates: list[Candidate],
        chosen: list[Candidate],
        texts: list[str],
        discarded: list[int],
    ) -> list[str]:
        """Replay the held-back saves: every save of the kept images; when the job keeps discarded images aside,
        every save of those too (their "before" copies beside them), into the discarded folder. Returns what could
        not be written."""
        problems: list[str] = []

        def replay(save: DeferredSave, arguments: dict[str, Any]) -> None:
            try:
                hooks.replay(p, save, arguments)
            except Exception as exc:
                what = f"image {save.index + 1}" + (f" ({save.suffix})" if save.suffix else "")
                problems.append(f"{what}: {exc}")
                log.error("ImageReward: could not write %s", what, exc_info=True)

        for candidate, text in zip(chosen, texts, strict=True):
            for save in self.saves.of(candidate.index):
                arguments = dict(save.arguments)
                if save.is_final:
                    arguments["info"] = text
                replay(save, arguments)
        if self.args.keep_discarded:  # everything the WebUI would have written for them, beside each other
            folder = hooks.discarded_dir(p)
            for position in discarded:
                candidate = candidates[position]
                for save in self.saves.of(candidate.index):
                    info = self.final_infotext(candidate) if save.is_final else save.arguments.get("info")
                    replay(save, {**save.arguments, "info": info, "path": folder})
        self.saves.clear()
        return problems

    def _details(
        self,
        selection: Selection | None,
        kept: list[int],
        scores: list[float],
        first: int,
        unfinished: set[int],
        saved: set[int],
    ) -> dict:
        """The API's per-image details (`unfinished`: positions in `scores` of images shown unranked; `saved`: those
        of them the WebUI saved all the same)."""
        images = []
        for position, i in enumerate(kept):
            # position: among the job's images, after index_of_first_image (a script may insert its own grid later,
            # as the prompt matrix does, which moves every gallery index but not the positions)
            entry: dict[str, Any] = {"index": first + position, "position": position, "score": _round(scores[i])}
            if i in unfinished:
                entry.update(score=None, unfinished=True, saved=i in saved)
            elif selection is not None and i < len(selection.rank):
                entry.update(
                    group=selection.group_of[i],
                    rank=selection.rank[i],
                    group_size=selection.group_size[i],
                    best=selection.rank[i] == 1,
                )
            images.append(entry)
        if selection is not None:
            stats = summary(scores[: len(selection.rank)], selection)
        else:
            finite = [s for i, s in enumerate(scores) if not math.isnan(s) and i not in unfinished]
            stats = {
                "scored": len(finite),
                "kept": len(kept) - len(unfinished),
                "discarded": 0,
                "min": min(finite, default=None),
                "max": max(finite, default=None),
            }
        stats = {key: _round(value) if isinstance(value, float) else value for key, value in stats.items()}
        stats.update(
            scorer=self.args.scorer,
            score_key=self.score_key,
            mode=self.args.mode.value,
            candidates=self.candidates_per_image,
            threshold=self.args.threshold if self.args.mode in (Mode.THRESHOLD, Mode.TOP_K_ABOVE_THRESHOLD) else None,
            fallback=bool(selection and selection.fallback),
            failed=self.failure is not None,
            unfinished=len(unfinished),
            messages=list(self.messages),
        )
        return {"version": DETAILS_VERSION, "images": images, "summary": stats}

    def _comment(self, processed: Any, message: str, log_it: bool = True) -> None:
        self.messages.append(message)
        if log_it:
            log.warning(message)
        processed.comments = f"{processed.comments or ''}{message}\n"


JOB_ATTR = "_imagereward_job"


def job_of(p: Any) -> BestOfNJob | None:
    return getattr(p, JOB_ATTR, None)


def _at(values: Sequence[Any], index: int, default: Any) -> Any:
    return values[index] if 0 <= index < len(values) else default


def _to_pil(image: Any) -> Any:
    """A decoded CHW float image in 0..1 as the WebUI turns it into pixels: scaled by 255 and truncated."""
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    array = np.moveaxis(image.detach().to("cpu").float().numpy(), 0, 2)
    return Image.fromarray((255.0 * array).astype(np.uint8))


def _safe(make: Callable[[], str], default: str) -> str:
    try:
        return make()
    except Exception:
        return default


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 4)
