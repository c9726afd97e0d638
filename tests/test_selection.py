"""Selection: groups, ranks, modes, thresholds, fallbacks, validation."""

from __future__ import annotations

import math

import pytest

from imagereward.selection import Mode, Selection, SelectionSettings, make_groups, select, summary

NAN = math.nan


def settings(**kwargs: object) -> SelectionSettings:
    return SelectionSettings(**kwargs)  # type: ignore[arg-type]


# --- make_groups ----------------------------------------------------------------------------------------------------


def test_make_groups_whole_job_is_one_slot() -> None:
    assert make_groups(4) == [[0, 1, 2, 3]]
    assert make_groups(1) == [[0]]
    assert make_groups(0) == []
    assert make_groups(0, 3) == []


def test_make_groups_best_of_n() -> None:
    assert make_groups(6, 3) == [[0, 1, 2], [3, 4, 5]]
    assert make_groups(4, 4) == [[0, 1, 2, 3]]


def test_make_groups_partial_last_slot() -> None:
    assert make_groups(7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert make_groups(2, 3) == [[0, 1]]


def test_make_groups_by_prompt_whole_job() -> None:
    prompts = ["cat", "dog", "cat", "bird", "dog"]
    assert make_groups(5, 1, prompts) == [[0, 2], [1, 4], [3]]


def test_make_groups_by_prompt_within_slots() -> None:
    prompts = ["a", "b", "a", "b", "b", "a", "a"]
    # slots [0,1,2] [3,4,5] [6]; same prompt in different slots stays apart
    assert make_groups(7, 3, prompts) == [[0, 2], [1], [3, 4], [5], [6]]


def test_make_groups_by_prompt_single_prompt() -> None:
    assert make_groups(4, 2, ["p"] * 4) == [[0, 1], [2, 3]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1,), "count"),
        ((2.0,), "count"),
        ((True,), "count"),
        ((3, 0), "candidates_per_slot"),
        ((3, -2), "candidates_per_slot"),
        ((3, 1, ["a", "b"]), "2 prompts for 3 images"),
    ],
)
def test_make_groups_validation(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_groups(*args)


# --- select: modes --------------------------------------------------------------------------------------------------

SCORES = [0.1, 0.9, -0.5, 0.4, 0.7, 0.2]  # best-first order: 1, 4, 3, 5, 0, 2


def test_sort_keeps_all_best_first() -> None:
    result = select(SCORES, [list(range(6))], settings())
    assert result.kept == [1, 4, 3, 5, 0, 2]
    assert result.discarded == []
    assert result.rank == [5, 1, 6, 3, 2, 4]
    assert result.group_of == [0] * 6
    assert result.group_size == [6] * 6
    assert result.fallback is False
    assert result.message is None


def test_sort_off_keeps_generation_order() -> None:
    result = select(SCORES, [list(range(6))], settings(sort=False))
    assert result.kept == [0, 1, 2, 3, 4, 5]
    assert result.rank == [5, 1, 6, 3, 2, 4]


def test_sort_within_groups() -> None:
    result = select(SCORES, [[0, 1, 2], [3, 4, 5]], settings())
    assert result.kept == [1, 0, 2, 4, 3, 5]
    assert result.rank == [2, 1, 3, 2, 1, 3]
    assert result.group_of == [0, 0, 0, 1, 1, 1]
    assert result.group_size == [3] * 6


def test_top_k_whole_job() -> None:
    result = select(SCORES, [list(range(6))], settings(mode=Mode.TOP_K, k=2))
    assert result.kept == [1, 4]
    assert result.discarded == [0, 2, 3, 5]


def test_top_k_per_group() -> None:
    result = select(SCORES, make_groups(6, 3), settings(mode=Mode.TOP_K, k=1))
    assert result.kept == [1, 4]
    assert result.discarded == [0, 2, 3, 5]
    result = select(SCORES, make_groups(6, 3), settings(mode=Mode.TOP_K, k=2, sort=False))
    assert result.kept == [0, 1, 3, 4]


def test_top_k_larger_than_group_keeps_all() -> None:
    result = select(SCORES, make_groups(6, 3), settings(mode=Mode.TOP_K, k=10))
    assert result.kept == [1, 0, 2, 4, 3, 5]
    assert result.discarded == []
    assert result.message is None


def test_threshold() -> None:
    result = select(SCORES, [list(range(6))], settings(mode=Mode.THRESHOLD, threshold=0.4))
    assert result.kept == [1, 4, 3]  # 0.4 >= 0.4 passes
    assert result.discarded == [0, 2, 5]
    assert result.fallback is False
    assert result.message is None


def test_threshold_sort_off() -> None:
    result = select(SCORES, [list(range(6))], settings(mode="threshold", threshold=0.15, sort=False))
    assert result.kept == [1, 3, 4, 5]


def test_threshold_some_groups_empty_message() -> None:
    scores = [0.9, 0.1, 0.2, 0.3, 0.8, 0.0]
    result = select(scores, make_groups(6, 2), settings(mode=Mode.THRESHOLD, threshold=0.5, per_group=False))
    assert result.kept == [0, 4]
    assert result.fallback is False
    assert result.below_threshold == (1,)
    assert result.message == "No candidate reached the threshold 0.50 in 1 of 3 groups; nothing was kept for them."


def test_threshold_keeps_the_best_of_each_group_with_none_passing() -> None:
    scores = [0.9, 0.1, 0.2, 0.3, 0.8, 0.0]
    result = select(scores, make_groups(6, 2), settings(mode=Mode.THRESHOLD, threshold=0.5))
    assert result.kept == [0, 3, 4]  # group [2, 3] passes nothing: its best (3) is kept
    assert result.fallback is True
    assert result.below_threshold == (1,)
    assert result.message == "No candidate reached the threshold 0.50 in 1 of 3 groups; kept the best one of each."
    nothing = select(scores, make_groups(6, 2), settings(mode=Mode.THRESHOLD, threshold=0.5, keep_best_if_none=False))
    assert nothing.kept == [0, 4]
    assert nothing.below_threshold == (1,)


def test_top_k_above_threshold() -> None:
    scores = [0.9, 0.6, 0.55, 0.1, 0.7, 0.2, 0.3, 0.65]
    groups = make_groups(8, 4)  # [0..3], [4..7]
    result = select(scores, groups, settings(mode=Mode.TOP_K_ABOVE_THRESHOLD, k=2, threshold=0.5))
    assert result.kept == [0, 1, 4, 7]
    assert result.discarded == [2, 3, 5, 6]
    result = select(scores, groups, settings(mode=Mode.TOP_K_ABOVE_THRESHOLD, k=3, threshold=0.5))
    assert result.kept == [0, 1, 2, 4, 7]  # the second group has only two above the threshold
    result = select(scores, groups, settings(mode=Mode.TOP_K_ABOVE_THRESHOLD, k=3, threshold=0.5, sort=False))
    assert result.kept == [0, 1, 2, 4, 7]
    result = select(scores, groups, settings(mode=Mode.TOP_K_ABOVE_THRESHOLD, k=1, threshold=0.68))
    assert result.kept == [0, 4]


def test_mode_accepts_string_values() -> None:
    result = select(SCORES, [list(range(6))], settings(mode="top-k above threshold", k=1, threshold=0.0))
    assert result.kept == [1]
    assert Mode("top-k") is Mode.TOP_K
    assert Mode.SORT == "sort"


# --- select: ties, NaN, groups ----------------------------------------------------------------------------------------


def test_ties_broken_by_lower_index() -> None:
    scores = [0.5, 0.7, 0.5, 0.7]
    result = select(scores, [[0, 1, 2, 3]], settings())
    assert result.kept == [1, 3, 0, 2]
    assert result.rank == [3, 1, 4, 2]
    assert select(scores, [[0, 1, 2, 3]], settings(mode=Mode.TOP_K, k=1)).kept == [1]


def test_nan_ranks_last_and_never_passes() -> None:
    scores = [NAN, 0.2, -3.0, NAN]
    result = select(scores, [[0, 1, 2, 3]], settings())
    assert result.kept == [1, 2, 0, 3]
    assert result.rank == [3, 1, 2, 4]
    assert result.message == "2 of 4 images could not be scored."
    result = select(scores, [[0, 1, 2, 3]], settings(mode=Mode.THRESHOLD, threshold=-10.0))
    assert result.kept == [1, 2]
    assert result.discarded == [0, 3]
    result = select(scores, [[0, 1, 2, 3]], settings(mode=Mode.TOP_K, k=3))
    assert result.kept == [1, 2, 0]


def test_none_counts_as_failed() -> None:
    result = select([None, 1.0], [[0, 1]], settings(mode=Mode.TOP_K, k=1))  # type: ignore[list-item]
    assert result.kept == [1]
    assert result.rank == [2, 1]


def test_infinite_scores_rank_normally() -> None:
    result = select([-math.inf, 0.0, math.inf], [[0, 1, 2]], settings())
    assert result.kept == [2, 1, 0]


def test_partial_last_slot_is_its_own_group() -> None:
    scores = [0.1, 0.5, 0.3, 0.9, 0.2]
    result = select(scores, make_groups(5, 2), settings(mode=Mode.TOP_K, k=1))
    assert result.kept == [1, 3, 4]
    assert result.group_of == [0, 0, 1, 1, 2]
    assert result.group_size == [2, 2, 2, 2, 1]
    assert result.rank == [2, 1, 2, 1, 1]


def test_groups_by_prompt() -> None:
    prompts = ["cat", "dog", "cat", "dog", "cat", "dog"]
    scores = [0.1, 2.0, 0.3, -1.0, 0.2, 1.0]
    groups = make_groups(6, 1, prompts)
    assert groups == [[0, 2, 4], [1, 3, 5]]
    result = select(scores, groups, settings(mode=Mode.TOP_K, k=1))
    assert result.kept == [2, 1]
    assert result.group_of == [0, 1, 0, 1, 0, 1]
    result = select(scores, groups, settings())
    assert result.kept == [2, 4, 0, 1, 5, 3]


def test_unsorted_groups_are_normalised() -> None:
    scores = [0.1, 0.2, 0.3, 0.4]
    result = select(scores, [[3, 1], [2, 0]], settings(sort=False))
    assert result.kept == [0, 2, 1, 3]  # groups by first index: [0, 2] then [1, 3]
    assert result.group_of == [0, 1, 0, 1]


def test_empty_job() -> None:
    for mode in Mode:
        result = select([], [], settings(mode=mode))
        assert result == Selection([], [], [], [], [], False, None)


# --- select: nothing above the threshold ----------------------------------------------------------------------------


def test_all_below_threshold_keeps_best() -> None:
    scores = [0.1, 0.31, -0.2, 0.3] * 4
    result = select(scores, make_groups(16, 4), settings(mode=Mode.THRESHOLD, threshold=0.5, per_group=False))
    assert result.kept == [1]
    assert result.discarded == [i for i in range(16) if i != 1]
    assert result.fallback is True
    assert result.message == "All 16 candidates scored below the threshold 0.50 (best 0.31); kept the best one."
    per_group = select(scores, make_groups(16, 4), settings(mode=Mode.THRESHOLD, threshold=0.5))
    assert per_group.kept == [1, 5, 9, 13]
    assert per_group.below_threshold == (0, 1, 2, 3)
    assert per_group.message == (
        "All 16 candidates scored below the threshold 0.50 (best 0.31); kept the best one of each group."
    )


def test_all_below_threshold_keeps_none_when_asked() -> None:
    scores = [0.1, 0.31, -0.2, 0.3]
    config = settings(mode=Mode.TOP_K_ABOVE_THRESHOLD, k=2, threshold=0.5, keep_best_if_none=False)
    result = select(scores, [[0, 1], [2, 3]], config)
    assert result.kept == []
    assert result.discarded == [0, 1, 2, 3]
    assert result.fallback is False
    assert result.message == "All 4 candidates scored below the threshold 0.50 (best 0.31); nothing was kept."


def test_all_below_threshold_top_k_above_threshold_fallback_in_later_group() -> None:
    scores = [0.1, 0.2, 0.45, 0.3]
    config = settings(mode=Mode.TOP_K_ABOVE_THRESHOLD, k=1, threshold=0.5, per_group=False)
    result = select(scores, [[0, 1], [2, 3]], config)
    assert result.kept == [2]
    assert result.fallback is True


def test_single_candidate_below_threshold() -> None:
    result = select([0.125], [[0]], settings(mode=Mode.THRESHOLD, threshold=0.3125))
    assert result.kept == [0]
    assert result.fallback is True
    assert result.message == "The only candidate scored 0.125, below the threshold 0.312; kept it anyway."


def test_all_failed_with_threshold() -> None:
    result = select([NAN, NAN, NAN], [[0, 1, 2]], settings(mode=Mode.THRESHOLD))
    assert result.kept == [0]
    assert result.fallback is True
    assert result.message == "None of the candidates could be scored; kept the first one."
    result = select([NAN, NAN], [[0, 1]], settings(mode=Mode.THRESHOLD, keep_best_if_none=False))
    assert result.kept == []
    assert result.message == "None of the candidates could be scored; nothing was kept."


def test_fallback_skips_nan_for_best() -> None:
    result = select([NAN, -1.0, -0.5], [[0, 1, 2]], settings(mode=Mode.THRESHOLD, threshold=0.0))
    assert result.kept == [2]
    assert result.message == (
        "1 of 3 images could not be scored. "
        "All 3 candidates scored below the threshold 0.00 (best -0.50); kept the best one."
    )


def test_sort_and_top_k_ignore_threshold() -> None:
    assert select([-5.0, -6.0], [[0, 1]], settings(threshold=100.0)).kept == [0, 1]
    assert select([-5.0, -6.0], [[0, 1]], settings(mode=Mode.TOP_K, threshold=100.0)).kept == [0]


# --- validation -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, -1, 1.5, True, None])
@pytest.mark.parametrize("mode", [Mode.TOP_K, Mode.TOP_K_ABOVE_THRESHOLD])
def test_bad_k(mode: Mode, k: object) -> None:
    with pytest.raises(ValueError, match="k must be a whole number >= 1"):
        select([0.1], [[0]], settings(mode=mode, k=k))


def test_k_is_not_checked_where_unused() -> None:
    assert select([0.1], [[0]], settings(mode=Mode.SORT, k=0)).kept == [0]


@pytest.mark.parametrize("threshold", [NAN, "high", None])
def test_bad_threshold(threshold: object) -> None:
    with pytest.raises(ValueError, match="threshold must be a number"):
        select([0.1], [[0]], settings(mode=Mode.THRESHOLD, threshold=threshold))


def test_bad_mode() -> None:
    with pytest.raises(ValueError, match="unknown selection mode 'best'"):
        select([0.1], [[0]], settings(mode="best"))


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([[0, 1]], r"images 2 are in no group"),
        ([[0, 1], [1, 2]], r"image 1 is in more than one group"),
        ([[0, 1, 2, 3]], r"group 0 holds 3, which is not an image index in 0\.\.2"),
        ([[0, 1, 2], []], r"group 1 is empty"),
        ([[0, -1, 1, 2]], r"holds -1"),
        ([[0, 1.0, 2]], r"holds 1\.0"),
        ([], r"images 0, 1, 2 are in no group"),
    ],
)
def test_groups_must_partition(groups: list[list[int]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select([0.1, 0.2, 0.3], groups, settings())


# --- summary --------------------------------------------------------------------------------------------------------


def test_summary() -> None:
    scores = [0.1, NAN, 0.9, -0.4]
    result = select(scores, [[0, 1, 2, 3]], settings(mode=Mode.TOP_K, k=2))
    assert summary(scores, result) == {"scored": 3, "kept": 2, "discarded": 2, "min": -0.4, "max": 0.9}


def test_summary_without_finite_scores() -> None:
    result = select([NAN], [[0]], settings())
    assert summary([NAN], result) == {"scored": 0, "kept": 1, "discarded": 0, "min": None, "max": None}
    assert summary([], select([], [], settings())) == {"scored": 0, "kept": 0, "discarded": 0, "min": None, "max": None}
