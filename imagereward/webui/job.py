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

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import MAX_TEXT_LENGTH
from ..infotext import format_score, with_setting
from ..selection import Mode, Selection, select, summary
from .args import JobArgs, score_decimals, score_key
from .plan import CandidatePlan, PlanError, apply_plan
from .saves import DeferredSave, SaveBuffer

log = logging.getLogger("imagereward")

DETAILS_KEY = "ImageReward details"
SCORES_KEY = "ImageReward scores"
ERROR_KEY = "ImageReward error"
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


@dataclass
class Candidate:
    index: int  # the generated image's global index (generation order)
    image: Any
    infotext: str
    extras: list[Any] = field(default_factory=list)  # images the WebUI returned after it (masks)


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
        self.saves = SaveBuffer()
        self.capturing = False
        self.notes: list[str] = []
        self.messages: list[str] = []  # what the job's comments said, also returned in the details
        self._original: dict[str, Any] = {}
        self._added_params: list[str] = []

    @property
    def candidates(self) -> int:
        return self.args.candidates

    @property
    def score_key(self) -> str:
        return self.args.score_key

    def _score_keys(self) -> list[str]:
        """Every infotext key the job writes a score under (the ranking one first)."""
        return [self.score_key, *(score_key(name) for name in self._members())]

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

    def make_plan(self, p: Any) -> None:
        """After every `process` hook has resolved the requested images: N candidates for each."""
        try:
            self.plan = apply_plan(p, self.candidates)
        except PlanError as exc:
            self.unplanned = f"the job's images could not be planned ({exc})"
        self.capturing = True

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
        if self.plan is not None and self.unplanned is None:
            reason = self.plan.mismatch(p.iteration, p.batch_size, list(p.prompts), count)
            if reason:
                self.unplanned = f"another script changed the job's images ({reason})"

    def collect(self, p: Any, image: Any) -> None:
        """The final image of one generated index; scores the batch once its last image is in."""
        index = p.iteration * p.batch_size + p.batch_index
        self.finals[index] = image
        self.prompts[index] = _at(p.all_prompts, index, "")
        expected = self.batch_counts.get(p.iteration)
        if expected is not None and p.batch_index >= expected - 1:
            self.score_pending()

    def score_pending(self) -> None:
        pending = sorted(i for i in self.finals if i not in self.scores)
        if not pending or self.failure is not None:
            return
        prompts = [self.prompts[i] for i in pending]
        try:
            result = self.scoring.score(prompts, [self.finals[i] for i in pending])
            table = result if isinstance(result, dict) else {self.args.scorer: list(result)}
            scores = table[self.args.scorer]
            if any(self.scoring.truncated(prompts)):
                self.note(TRUNCATION_NOTE if self.args.scorer == "imagereward" else TRUNCATION_NOTE_OTHER)
        except Exception as exc:  # never lose the user's images over a scoring problem: keep them all
            self.failure = str(exc) or type(exc).__name__
            log.error("ImageReward: %s; the job keeps every image unscored", self.failure, exc_info=True)
            return
        for position, (index, score) in enumerate(zip(pending, scores, strict=True)):
            self.scores[index] = float(score)
            members = {name: float(values[position]) for name, values in table.items() if name != self.args.scorer}
            if members:
                self.member_scores[index] = members

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
        for key in self._score_keys():
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

    def _candidates(self, processed: Any) -> list[Candidate]:
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
        candidates = self._candidates(processed)
        if not candidates:
            self.abandon(hooks)
            return None
        for candidate in candidates:  # the final image may come through the fallback layout
            self.finals.setdefault(candidate.index, candidate.image)
        for message in self.notes:
            self._comment(processed, f"ImageReward: {message}.")
        # Images cut short by an interrupt do not compete with finished ones: shown last, unranked, not saved.
        unfinished = [c for c in candidates if c.index in self.unfinished]
        candidates = [c for c in candidates if c.index not in self.unfinished] + unfinished
        competing = len(candidates) - len(unfinished)
        if unfinished:
            self._comment(
                processed,
                f"ImageReward: {len(unfinished)} image(s) of the interrupted batch are shown last, unranked; "
                "like the WebUI, they were not saved.",
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
        self._apply(p, processed, hooks, candidates, kept, discarded, selection, scores, job_params)
        return selection

    def _groups(self, candidates: list[Candidate]) -> tuple[list[list[int]], list[str]]:
        """Groups of positions in `candidates` that compete, and a name for each (the requested image)."""
        by_key: dict[Any, list[int]] = {}
        for position, candidate in enumerate(candidates):
            if self.candidates > 1 and self.plan is not None:
                key: Any = self.plan.slots[candidate.index] if candidate.index < self.plan.total else -1
            else:  # one try per image: the whole job competes (within one prompt when asked)
                key = self.prompts.get(candidate.index, "") if self.args.by_prompt else 0
            by_key.setdefault(key, []).append(position)
        by_slot = self.candidates > 1 and self.plan is not None
        names = [f"image {key + 1}" if by_slot else f"group {n + 1}" for n, key in enumerate(by_key)]
        return list(by_key.values()), names

    def final_infotext(self, candidate: Candidate) -> str:
        text = with_setting(candidate.infotext, self.score_key, self.score_text(candidate.index))
        for name, value in sorted(self.member_scores.get(candidate.index, {}).items()):
            shown = None if math.isnan(value) else format_score(value, score_decimals(name))
            text = with_setting(text, score_key(name), shown)
        if self.failure is not None:
            text = with_setting(text, ERROR_KEY, "scoring failed, nothing was filtered")
        return text

    def _apply(
        self,
        p: Any,
        processed: Any,
        hooks: SaveHooks,
        candidates: list[Candidate],
        kept: list[int],
        discarded: list[int],
        selection: Selection | None,
        scores: list[float],
        job_params: dict[str, Any],
    ) -> None:
        chosen = [candidates[i] for i in kept]
        texts = [self.final_infotext(c) for c in chosen]
        images = [c.image for c in chosen]
        for image, text in zip(images, texts, strict=True):
            if isinstance(getattr(image, "info", None), dict) and "parameters" in image.info:
                image.info["parameters"] = text
        extras = [extra for c in chosen for extra in c.extras]

        # The gallery first: whatever happens while writing files, the user sees every kept image.
        def pick(values: Sequence[Any], default: Any) -> list[Any]:
            return [_at(values, c.index, default) for c in chosen]

        all_prompts, all_negative_prompts = pick(processed.all_prompts, ""), pick(processed.all_negative_prompts, "")
        all_seeds, all_subseeds = pick(processed.all_seeds, -1), pick(processed.all_subseeds, -1)
        first = 0
        grid = None
        grid_text = self.without_scores(texts[0]) if texts else ""
        show_grid = save_grid = False
        if chosen:
            show_grid, save_grid = hooks.grid_wanted(p, len(chosen))
            if show_grid or save_grid:
                grid = hooks.make_grid(p, list(images), grid_text)
        gallery_images, gallery_texts = list(images), list(texts)
        if grid is not None and show_grid:
            gallery_images.insert(0, grid)
            gallery_texts.insert(0, grid_text)
            first = 1
        processed.all_prompts, processed.all_negative_prompts = all_prompts, all_negative_prompts
        processed.all_seeds, processed.all_subseeds = all_seeds, all_subseeds
        processed.images = gallery_images + extras
        if not gallery_texts:  # nothing kept: the WebUI's info panel still needs one text
            gallery_texts = [self.without_scores(candidates[0].infotext)]
        processed.infotexts = gallery_texts
        processed.index_of_first_image = first
        processed.info = gallery_texts[0]
        if chosen:
            processed.seed, processed.subseed = all_seeds[0], all_subseeds[0]

        problems = self._write(p, hooks, candidates, chosen, texts, discarded)
        if grid is not None and save_grid:
            try:
                hooks.save_grid(p, grid, grid_text)
            except Exception as exc:
                problems.append(f"the grid: {exc}")
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            self._comment(processed, f"ImageReward: some files could not be written ({shown}).")

        params = {k: v for k, v in job_params.items() if k not in self._score_keys()}
        params[SCORES_KEY] = [_round(scores[i]) for i in kept]
        params[DETAILS_KEY] = self._details(selection, kept, scores, first, texts)
        if self.failure is not None:
            params[ERROR_KEY] = self.failure
        # A new dict: the WebUI shares p.extra_generation_params between X/Y/Z cells, which must not see these.
        processed.extra_generation_params = params

    def _write(
        self,
        p: Any,
        hooks: SaveHooks,
        candidates: list[Candidate],
        chosen: list[Candidate],
        texts: list[str],
        discarded: list[int],
    ) -> list[str]:
        """Replay the held-back saves: every save of the kept images; the finished image of discarded ones only
        when the job keeps them aside. Returns what could not be written."""
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
        if self.args.keep_discarded:
            folder = hooks.discarded_dir(p)
            for position in discarded:
                candidate = candidates[position]
                for save in self.saves.of(candidate.index):
                    if save.is_final:
                        replay(save, {**save.arguments, "info": self.final_infotext(candidate), "path": folder})
        self.saves.clear()
        return problems

    def _details(
        self, selection: Selection | None, kept: list[int], scores: list[float], first: int, texts: list[str]
    ) -> dict:
        images = []
        for position, i in enumerate(kept):
            # position: among the job's images, after index_of_first_image (a script may insert its own grid later,
            # as the prompt matrix does, which moves every gallery index but not the positions)
            entry: dict[str, Any] = {"index": first + position, "position": position, "score": _round(scores[i])}
            if selection is not None and i < len(selection.rank):
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
            finite = [s for s in scores if not math.isnan(s)]
            stats = {
                "scored": len(finite),
                "kept": len(kept),
                "discarded": 0,
                "min": min(finite, default=None),
                "max": max(finite, default=None),
            }
        stats = {key: _round(value) if isinstance(value, float) else value for key, value in stats.items()}
        stats.update(
            scorer=self.args.scorer,
            score_key=self.score_key,
            mode=self.args.mode.value,
            candidates=self.candidates,
            threshold=self.args.threshold if self.args.mode in (Mode.THRESHOLD, Mode.TOP_K_ABOVE_THRESHOLD) else None,
            fallback=bool(selection and selection.fallback),
            failed=self.failure is not None,
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


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 4)
