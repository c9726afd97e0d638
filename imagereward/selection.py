"""Which images to keep and in which order: pure functions over scores.

A job's images are split into groups of images that compete with each other (:func:`make_groups`): the candidates
for one requested image in best-of-N, optionally only those sharing a prompt, since ImageReward scores are
comparable only for the same prompt. :func:`select` then ranks each group and applies the mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["Mode", "Selection", "SelectionSettings", "make_groups", "select", "summary"]


class Mode(str, Enum):
    """What to keep."""

    SORT = "sort"  # keep all, order best first within groups
    TOP_K = "top-k"  # keep the k best of each group
    THRESHOLD = "threshold"  # keep those with score >= threshold
    TOP_K_ABOVE_THRESHOLD = "top-k above threshold"  # the k best of each group among those >= threshold


_USES_K = (Mode.TOP_K, Mode.TOP_K_ABOVE_THRESHOLD)
_USES_THRESHOLD = (Mode.THRESHOLD, Mode.TOP_K_ABOVE_THRESHOLD)


@dataclass(frozen=True)
class SelectionSettings:
    """How :func:`select` chooses; ``k`` and ``threshold`` matter only to the modes that use them."""

    mode: Mode = Mode.SORT
    k: int = 1
    threshold: float = 0.0
    sort: bool = True  # order kept images best first within their group (else generation order)
    keep_best_if_none: bool = True  # when no candidate passes the threshold, keep the best one anyway
    per_group: bool = True  # ...the best of each group with none passing (False: of the job, only when none passes)


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select`. Per-image lists are indexed by the image's index in generation order."""

    kept: list[int]  # indices in display order
    discarded: list[int]  # indices in generation order
    rank: list[int]  # 1-based rank of image i within its group (score descending; ties: lower index first)
    group_of: list[int]  # 0-based group number of image i (groups numbered by their first index)
    group_size: list[int]  # size of image i's group
    fallback: bool  # nothing passed the threshold (in a group, or in the job) and the best was kept anyway
    message: str | None  # a sentence for the user when something noteworthy happened
    below_threshold: tuple[int, ...] = ()  # groups (0-based, by first index) where no candidate passed


def make_groups(count: int, candidates_per_slot: int = 1, prompts: Sequence[str] | None = None) -> list[list[int]]:
    """Groups of image indices that compete with each other, ordered by their first index.

    Best-of-N: the candidates of one requested image are ``candidates_per_slot`` consecutive images (a last,
    shorter slot of an interrupted job is a group of its own); with 1 the whole job is one slot. With ``prompts``
    (one per image) each slot is further split by prompt.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a whole number >= 0, got {count!r}")
    if isinstance(candidates_per_slot, bool) or not isinstance(candidates_per_slot, int) or candidates_per_slot < 1:
        raise ValueError(f"candidates_per_slot must be a whole number >= 1, got {candidates_per_slot!r}")
    if prompts is not None and len(prompts) != count:
        raise ValueError(f"got {len(prompts)} prompts for {count} images; give one prompt per image")
    size = count if candidates_per_slot == 1 else candidates_per_slot
    slots = [list(range(start, min(start + size, count))) for start in range(0, count, max(size, 1))]
    if prompts is None:
        return slots
    groups: list[list[int]] = []
    for slot in slots:
        by_prompt: dict[str, list[int]] = {}
        for index in slot:
            by_prompt.setdefault(prompts[index], []).append(index)
        groups.extend(by_prompt.values())  # dicts keep insertion order: groups come by first index
    return groups


def _score(value: Any) -> float:
    """A score as a float; None and unreadable values count as failed (NaN)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _check_groups(groups: Sequence[Sequence[int]], count: int) -> list[list[int]]:
    """The groups, each in generation order, ordered by first index; ValueError unless they partition the images."""
    seen = [False] * count
    checked: list[list[int]] = []
    for number, group in enumerate(groups):
        if len(group) == 0:
            raise ValueError(f"group {number} is empty; every group needs at least one image")
        for index in group:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
                raise ValueError(f"group {number} holds {index!r}, which is not an image index in 0..{count - 1}")
            if seen[index]:
                raise ValueError(f"image {index} is in more than one group; groups must not overlap")
            seen[index] = True
        checked.append(sorted(group))
    missing = [i for i, found in enumerate(seen) if not found]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise ValueError(f"images {shown} are in no group; the groups must cover all {count} images")
    checked.sort(key=lambda g: g[0])
    return checked


def _check_settings(settings: SelectionSettings) -> Mode:
    try:
        mode = Mode(settings.mode)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in Mode)
        raise ValueError(f"unknown selection mode {settings.mode!r}; choose one of {choices}") from None
    if mode in _USES_K:
        k = settings.k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a whole number >= 1 for mode {mode.value!r}, got {k!r}")
    if mode in _USES_THRESHOLD:
        try:
            threshold = float(settings.threshold)
        except (TypeError, ValueError):
            threshold = math.nan
        if math.isnan(threshold):
            raise ValueError(f"threshold must be a number for mode {mode.value!r}, got {settings.threshold!r}")
    return mode


def _fmt(value: float) -> str:
    """A number for a message: two decimals, three when the third one is needed."""
    text = f"{value:.3f}"
    return text[:-1] if text.endswith("0") else text


def select(scores: Sequence[float], groups: list[list[int]], settings: SelectionSettings) -> Selection:
    """Rank the images of each group by score and keep what ``settings`` asks for.

    A NaN (or None) score marks an image that could not be scored: it ranks last and never passes a threshold.
    """
    mode = _check_settings(settings)
    values = [_score(s) for s in scores]
    count = len(values)
    ordered = _check_groups(groups, count)

    def key(index: int) -> tuple[bool, float, int]:
        value = values[index]
        return (math.isnan(value), -value if not math.isnan(value) else 0.0, index)

    rank = [0] * count
    group_of = [0] * count
    group_size = [0] * count
    by_rank: list[list[int]] = []
    for number, group in enumerate(ordered):
        best_first = sorted(group, key=key)
        by_rank.append(best_first)
        for position, index in enumerate(best_first, start=1):
            rank[index] = position
            group_of[index] = number
            group_size[index] = len(group)

    threshold = float(settings.threshold)

    def passes(index: int) -> bool:
        return mode not in _USES_THRESHOLD or (not math.isnan(values[index]) and values[index] >= threshold)

    kept_sets: list[list[int]] = []
    for best_first in by_rank:
        chosen = [i for i in best_first if passes(i)]
        if mode in _USES_K:
            chosen = chosen[: settings.k]
        kept_sets.append(chosen)

    fallback = False
    messages: list[str] = []
    failed = sum(math.isnan(v) for v in values)
    empty = tuple(n for n, chosen in enumerate(kept_sets) if not chosen) if mode in _USES_THRESHOLD else ()
    nothing_passed = count > 0 and len(empty) == len(ordered)
    if failed and not (nothing_passed and failed == count):  # (that case has its own message below)
        messages.append(
            f"{failed} of {count} images could not be scored." if count > 1 else "The image could not be scored."
        )
    if nothing_passed:
        best = min(range(count), key=key)
        per_group = settings.per_group and len(ordered) > 1
        messages.append(_below_threshold_message(values, best, threshold, settings.keep_best_if_none, per_group))
        if settings.keep_best_if_none:
            fallback = True
            if per_group:
                kept_sets = [best_first[:1] for best_first in by_rank]
            else:
                kept_sets = [[best] if best in group else [] for group in ordered]
    elif empty and len(ordered) > 1:
        if settings.keep_best_if_none and settings.per_group:
            fallback = True
            for number in empty:
                kept_sets[number] = by_rank[number][:1]
            action = "kept the best one of each"
        else:
            action = "nothing was kept for them"
        messages.append(
            f"No candidate reached the threshold {_fmt(threshold)} in {len(empty)} of {len(ordered)} groups; {action}."
        )

    kept: list[int] = []
    for chosen in kept_sets:
        kept.extend(chosen if settings.sort else sorted(chosen))
    kept_set = set(kept)
    discarded = [i for i in range(count) if i not in kept_set]
    return Selection(kept, discarded, rank, group_of, group_size, fallback, " ".join(messages) or None, empty)


def _below_threshold_message(
    values: list[float], best: int, threshold: float, keep_best: bool, per_group: bool = False
) -> str:
    count = len(values)
    limit = _fmt(threshold)
    if math.isnan(values[best]):
        what = "None of the candidates could be scored" if count > 1 else "The candidate could not be scored"
        action = "kept the first one" if count > 1 else "kept it anyway"
        if per_group:
            action = "kept the first one of each group"
    elif count == 1:
        what = f"The only candidate scored {_fmt(values[best])}, below the threshold {limit}"
        action = "kept it anyway"
    else:
        what = f"All {count} candidates scored below the threshold {limit} (best {_fmt(values[best])})"
        action = "kept the best one of each group" if per_group else "kept the best one"
    if not keep_best:
        action = "nothing was kept"
    return f"{what}; {action}."


def summary(scores: Sequence[float], selection: Selection) -> dict[str, Any]:
    """Counts and score range of a selection: ``scored`` counts the images with a finite score."""
    finite = [v for v in (_score(s) for s in scores) if math.isfinite(v)]
    return {
        "scored": len(finite),
        "kept": len(selection.kept),
        "discarded": len(selection.discarded),
        "min": min(finite) if finite else None,
        "max": max(finite) if finite else None,
    }
