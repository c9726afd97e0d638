"""One generation job with ImageReward on: best-of-N expansion, per-image scores, and the final selection.

The WebUI objects are duck-typed: `p` needs the attributes of `StableDiffusionProcessing` used here (n_iter,
batch_size, iteration, batch_index, prompts, do_not_save_samples, do_not_save_grid, extra_generation_params) and
`processed` those of `Processed` (images, infotexts, all_prompts, all_negative_prompts, all_seeds, all_subseeds,
index_of_first_image, seed, subseed, info, comments, extra_generation_params).

Why saving is deferred: a top-k over N candidates can span several batches, and images the WebUI saves in its
per-image loop cannot be unsaved. So the job turns the WebUI's saving off while the candidates are made, and in
`finish` saves the kept images (and the grid) itself, through the WebUI's own save function.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..infotext import SCORE_KEY, format_score, with_setting
from ..selection import Mode, Selection, make_groups, select, summary
from .args import JobArgs

log = logging.getLogger("imagereward")

DETAILS_KEY = "ImageReward details"
SCORES_KEY = "ImageReward scores"


class SaveHooks(Protocol):
    """What `finish` needs from the WebUI; the script implements it with `modules.images`."""

    def should_save_samples(self, p: Any) -> bool: ...
    def save_sample(self, p: Any, image: Any, seed: int, prompt: str, infotext: str) -> None: ...
    def save_discarded(self, p: Any, image: Any, seed: int, prompt: str, infotext: str) -> None: ...
    def grid_wanted(self, p: Any, count: int) -> tuple[bool, bool]: ...  # (return it in the gallery, save it)
    def make_grid(self, p: Any, images: list[Any], infotext: str) -> Any: ...
    def save_grid(self, p: Any, grid: Any, infotext: str) -> None: ...


@dataclass
class Candidate:
    index: int  # position in generation order (the global image index)
    image: Any
    infotext: str


class BestOfNJob:
    def __init__(self, args: JobArgs, *, keep_best_if_none: bool = True) -> None:
        self.args = args
        self.keep_best_if_none = keep_best_if_none
        self.scores: dict[int, float] = {}
        self.failure: str | None = None
        self.image_index: dict[int, int] = {}
        self.notes: list[str] = []
        self.messages: list[str] = []  # what the job's comments said, also returned in the details for API users
        self._original: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------- job start

    @property
    def candidates(self) -> int:
        return self.args.candidates

    def start(self, p: Any) -> None:
        """Before the prompts are set up: N candidates per requested image, the WebUI's own saving off."""
        self._original = {
            "n_iter": p.n_iter,
            "do_not_save_samples": p.do_not_save_samples,
            "do_not_save_grid": p.do_not_save_grid,
        }
        # More batches rather than larger ones: memory use stays what the user chose.
        p.n_iter = p.n_iter * self.candidates
        p.do_not_save_samples = True
        p.do_not_save_grid = True
        p.extra_generation_params.update(self.args.infotext_params())
        p.extra_generation_params[SCORE_KEY] = self.infotext_score

    def restore(self, p: Any) -> None:
        for name, value in self._original.items():
            setattr(p, name, value)

    # ------------------------------------------------------------------------------------------- per batch

    @staticmethod
    def batch_indices(p: Any, count: int) -> list[int]:
        return [p.iteration * p.batch_size + i for i in range(count)]

    def record_scores(self, indices: Sequence[int], scores: Sequence[float]) -> None:
        for index, score in zip(indices, scores, strict=True):
            self.scores[index] = float(score)

    def record_failure(self, message: str) -> None:
        if self.failure is None:
            self.failure = message

    def note(self, message: str) -> None:
        """Something the user should read once in the job's comments (e.g. a truncated prompt)."""
        if message not in self.notes:
            self.notes.append(message)

    def remember_image(self, p: Any, image: Any) -> None:
        """Called per image after compositing: ties the final image object to its generation index."""
        self.image_index[id(image)] = p.iteration * p.batch_size + p.batch_index

    def infotext_score(
        self,
        p: Any = None,
        index: int | None = None,
        all_prompts: Any = None,
        use_main_prompt: bool = False,
        **_: Any,
    ) -> str | None:
        """`extra_generation_params` callable: the image's score, or None (no entry) when it has none.

        The WebUI calls it with batch lists and a batch index from its per-image loop, and with whole-job lists and a
        job index from `Processed.infotext`; the grid's infotext (use_main_prompt) gets no score.
        """
        if use_main_prompt or index is None or p is None:
            return None
        if all_prompts is not None and all_prompts is getattr(p, "prompts", None):
            index = p.iteration * p.batch_size + index
        score = self.scores.get(index)
        return None if score is None or math.isnan(score) else format_score(score)

    # ----------------------------------------------------------------------------------------------- finish

    def _candidates(self, processed: Any) -> tuple[list[Candidate], list[Any]]:
        """The job's candidate images in generation order, and the other images of the gallery (masks etc.)."""
        first = processed.index_of_first_image
        images = list(processed.images[first:])
        texts = list(processed.infotexts[first:])
        if self.image_index and all(id(img) in self.image_index for img in images[: len(texts)]):
            candidates, extras = [], []
            for image in images:
                index = self.image_index.get(id(image))
                if index is None:
                    extras.append(image)
                else:
                    candidates.append(Candidate(index, image, ""))
            candidates.sort(key=lambda c: c.index)
            for position, candidate in enumerate(candidates):
                candidate.infotext = texts[position] if position < len(texts) else ""
            return candidates, extras
        # Another script replaced the image objects: fall back to the WebUI's order (one infotext per candidate).
        count = min(len(images), len(texts))
        return [Candidate(i, images[i], texts[i]) for i in range(count)], images[count:]

    def finish(self, p: Any, processed: Any, hooks: SaveHooks) -> Selection | None:
        """Select, reorder the gallery and the per-image lists together, save what is kept. Always restores `p`."""
        self.restore(p)
        for message in self.notes:
            self._comment(processed, f"ImageReward: {message}.")
        candidates, extras = self._candidates(processed)
        if not candidates:
            return None
        scores = [self.scores.get(c.index, math.nan) for c in candidates]
        if self.failure or all(math.isnan(s) for s in scores):
            reason = self.failure or "no image could be scored"
            self._comment(processed, f"ImageReward: {reason}; all {len(candidates)} images were kept.")
            order = list(range(len(candidates)))
            self._apply(p, processed, hooks, candidates, order, [], extras, None, scores)
            return None

        prompts = [_at(processed.all_prompts, c.index, "") for c in candidates] if self.args.by_prompt else None
        groups = make_groups(len(candidates), self.candidates, prompts)
        selection = select(scores, groups, self.args.selection(self.keep_best_if_none))
        if selection.message:
            self._comment(processed, f"ImageReward: {selection.message}")
        self._apply(p, processed, hooks, candidates, selection.kept, selection.discarded, extras, selection, scores)
        return selection

    def _apply(
        self,
        p: Any,
        processed: Any,
        hooks: SaveHooks,
        candidates: list[Candidate],
        kept: list[int],
        discarded: list[int],
        extras: list[Any],
        selection: Selection | None,
        scores: list[float],
    ) -> None:
        chosen = [candidates[i] for i in kept]
        texts = [c.infotext for c in chosen]
        images = [c.image for c in chosen]

        saving = hooks.should_save_samples(p)
        if saving:
            for c in chosen:
                hooks.save_sample(
                    p,
                    c.image,
                    _at(processed.all_seeds, c.index, -1),
                    _at(processed.all_prompts, c.index, ""),
                    c.infotext,
                )
            if self.args.keep_discarded:
                for i in discarded:
                    c = candidates[i]
                    hooks.save_discarded(
                        p,
                        c.image,
                        _at(processed.all_seeds, c.index, -1),
                        _at(processed.all_prompts, c.index, ""),
                        c.infotext,
                    )

        first = 0
        if chosen:
            show_grid, save_grid = hooks.grid_wanted(p, len(chosen))
            if show_grid or save_grid:
                grid_text = with_setting(texts[0], SCORE_KEY, None)
                grid = hooks.make_grid(p, images, grid_text)
                if save_grid:
                    hooks.save_grid(p, grid, grid_text)
                if show_grid:
                    images.insert(0, grid)
                    texts.insert(0, grid_text)
                    first = 1

        def pick(values: Sequence[Any], default: Any) -> list[Any]:
            return [_at(values, c.index, default) for c in chosen]

        processed.all_prompts = pick(processed.all_prompts, "")
        processed.all_negative_prompts = pick(processed.all_negative_prompts, "")
        processed.all_seeds = pick(processed.all_seeds, -1)
        processed.all_subseeds = pick(processed.all_subseeds, -1)
        processed.images = images + extras
        if not texts:  # nothing kept: the WebUI's info panel still needs one text
            texts = [with_setting(candidates[0].infotext, SCORE_KEY, None)] if candidates else [processed.info]
        processed.infotexts = texts
        processed.index_of_first_image = first
        processed.info = texts[0]
        if chosen:
            processed.seed = processed.all_seeds[0]
            processed.subseed = processed.all_subseeds[0]

        kept_scores = [scores[i] for i in kept]
        params = {k: v for k, v in processed.extra_generation_params.items() if k != SCORE_KEY}
        params[SCORES_KEY] = [None if math.isnan(s) else round(s, 4) for s in kept_scores]
        params[DETAILS_KEY] = self._details(selection, kept, scores, first)
        # A new dict: the WebUI shares p.extra_generation_params between X/Y/Z cells, which must not see these.
        processed.extra_generation_params = params

    def _details(self, selection: Selection | None, kept: list[int], scores: list[float], first: int) -> dict:
        images = []
        for position, i in enumerate(kept):
            entry: dict[str, Any] = {"index": first + position, "score": _round(scores[i])}
            if selection is not None:
                entry.update(
                    group=selection.group_of[i],
                    rank=selection.rank[i],
                    group_size=selection.group_size[i],
                    best=selection.rank[i] == 1,
                )
            images.append(entry)
        if selection is not None:
            stats = summary(scores, selection)
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
            mode=self.args.mode.value,
            candidates=self.candidates,
            threshold=self.args.threshold if self.args.mode in (Mode.THRESHOLD, Mode.TOP_K_ABOVE_THRESHOLD) else None,
            fallback=bool(selection and selection.fallback),
            messages=list(self.messages),
        )
        return {"version": 1, "images": images, "summary": stats}

    def _comment(self, processed: Any, message: str) -> None:
        self.messages.append(message)
        log.warning(message)
        processed.comments = f"{processed.comments or ''}{message}\n"


def _at(values: Sequence[Any], index: int, default: Any) -> Any:
    return values[index] if 0 <= index < len(values) else default


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 4)
