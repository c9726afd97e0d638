"""The job bookkeeping under the WebUI hooks, driven through a stand-in of the WebUI's processing loop."""

from __future__ import annotations

import math
from copy import copy

import pytest

from imagereward.infotext import read_score
from imagereward.selection import Mode
from imagereward.webui.args import JobArgs
from imagereward.webui.job import DETAILS_KEY, SCORES_KEY, BestOfNJob
from tests.webui_sim import FakeP, Recorder, run_job


def fake_score(seed: int, prompt: str) -> float:
    """Distinct, deterministic scores that are not monotonic in the seed."""
    return round(((seed * 37) % 23) / 10.0 - 1.0, 3)


def seed_of(text: str) -> int:
    return int(text.split("Seed: ")[1].split(",")[0])


def job(**kwargs) -> BestOfNJob:
    return BestOfNJob(JobArgs(enabled=True, **kwargs))


def test_best_of_n_keeps_the_best_of_each_slot_and_keeps_lists_aligned() -> None:
    p, hooks = FakeP(batch_size=2, n_iter=2), Recorder()
    processed, webui_saved = run_job(p, job(mode=Mode.TOP_K, candidates=4, k=1), fake_score, hooks)

    all_seeds = list(range(100, 116))  # 2 x 2 requested, 4 candidates each: 16 generated
    slots = [all_seeds[i : i + 4] for i in range(0, 16, 4)]
    expected = [max(slot, key=lambda s: (fake_score(s, "a cat"), -s)) for slot in slots]

    assert webui_saved == []  # the WebUI's own saving was off while candidates were made
    assert processed.index_of_first_image == 1  # a grid of the kept images comes first
    assert processed.images[0].info["grid_of"] == 4
    kept_texts = processed.infotexts[1:]
    assert [seed_of(t) for t in kept_texts] == expected
    assert processed.all_seeds == expected
    assert processed.seed == expected[0]
    assert processed.all_subseeds == [s + 1000 for s in expected]
    assert len(processed.images) == len(processed.infotexts) == 5
    for text, seed in zip(kept_texts, expected, strict=True):
        assert read_score(text) == pytest.approx(fake_score(seed, "a cat"), abs=5e-4)
    assert read_score(processed.infotexts[0]) is None  # no score on the grid
    assert [s[1] for s in hooks.saved] == expected and all(s[0] == "sample" for s in hooks.saved)
    assert len(hooks.grids) == 1 and read_score(hooks.grids[0]) is None
    # p is as the user left it
    assert (p.n_iter, p.do_not_save_samples, p.do_not_save_grid) == (2, False, False)
    # the API sees each kept image's score as a list and the details for the overlays
    params = processed.extra_generation_params
    assert params[SCORES_KEY] == [pytest.approx(fake_score(s, "a cat"), abs=1e-4) for s in expected]
    details = params[DETAILS_KEY]
    assert [img["index"] for img in details["images"]] == [1, 2, 3, 4]
    assert all(img["rank"] == 1 and img["best"] and img["group_size"] == 4 for img in details["images"])
    assert details["summary"]["scored"] == 16 and details["summary"]["kept"] == 4
    assert details["summary"]["discarded"] == 12
    assert DETAILS_KEY not in p.extra_generation_params  # the shared dict of p stays clean


def test_sort_mode_keeps_everything_best_first() -> None:
    p, hooks = FakeP(batch_size=3, n_iter=2), Recorder(return_grid=False, grid_save=False)
    processed, _ = run_job(p, job(mode=Mode.SORT), fake_score, hooks)
    seeds = [seed_of(t) for t in processed.infotexts]
    assert sorted(seeds) == list(range(100, 106))
    scores = [fake_score(s, "a cat") for s in seeds]
    assert scores == sorted(scores, reverse=True)
    assert processed.all_seeds == seeds
    assert [img["rank"] for img in processed.extra_generation_params[DETAILS_KEY]["images"]] == [1, 2, 3, 4, 5, 6]


def test_threshold_with_nothing_passing_keeps_the_best_and_says_so() -> None:
    p, hooks = FakeP(batch_size=2, n_iter=1), Recorder()
    processed, _ = run_job(p, job(mode=Mode.THRESHOLD, threshold=5.0, candidates=2), fake_score, hooks)
    best = max(range(100, 104), key=lambda s: fake_score(s, "a cat"))
    assert [seed_of(t) for t in processed.infotexts] == [best]
    assert processed.index_of_first_image == 0  # one image: no grid
    assert "below the threshold" in processed.comments
    summary = processed.extra_generation_params[DETAILS_KEY]["summary"]
    assert summary["fallback"] is True
    assert any("below the threshold" in m for m in summary["messages"])  # API users see it too
    assert [s[1] for s in hooks.saved] == [best]


def test_threshold_with_nothing_passing_can_keep_nothing() -> None:
    p, hooks = FakeP(batch_size=2, n_iter=1), Recorder()
    processed, _ = run_job(
        p,
        BestOfNJob(JobArgs(enabled=True, mode=Mode.THRESHOLD, threshold=5.0), keep_best_if_none=False),
        fake_score,
        hooks,
    )
    assert processed.images == []
    assert len(processed.infotexts) == 1 and read_score(processed.infotexts[0]) is None
    assert hooks.saved == [] and hooks.grids == []
    assert "below the threshold" in processed.comments


def test_rank_within_same_prompt_groups() -> None:
    prompts = ["a cat", "a dog"] * 4
    p, hooks = FakeP(batch_size=4, n_iter=2, prompt_list=prompts), Recorder(return_grid=False)
    processed, _ = run_job(p, job(mode=Mode.TOP_K, k=1, by_prompt=True), fake_score, hooks)
    kept = [(t.split("\n")[0], seed_of(t)) for t in processed.infotexts]
    cats = [s for s, pr in zip(range(100, 108), prompts, strict=True) if pr == "a cat"]
    dogs = [s for s, pr in zip(range(100, 108), prompts, strict=True) if pr == "a dog"]
    assert kept == [
        ("a cat", max(cats, key=lambda s: fake_score(s, ""))),
        ("a dog", max(dogs, key=lambda s: fake_score(s, ""))),
    ]
    assert processed.all_prompts == ["a cat", "a dog"]


def test_scoring_failure_keeps_and_saves_every_image() -> None:
    p, hooks = FakeP(batch_size=2, n_iter=1), Recorder(return_grid=False, grid_save=False)
    bad = job(mode=Mode.TOP_K, candidates=2)

    def failing(seed: int, prompt: str) -> float:
        bad.record_failure("the model file is missing")
        return math.nan

    processed, _ = run_job(p, bad, failing, hooks)
    assert [seed_of(t) for t in processed.infotexts] == [100, 101, 102, 103]
    assert [s[1] for s in hooks.saved] == [100, 101, 102, 103]
    assert "the model file is missing; all 4 images were kept" in processed.comments
    assert all(read_score(t) is None for t in processed.infotexts)


def test_interrupted_job_ranks_the_partial_slot_and_restores_p() -> None:
    p, hooks = FakeP(batch_size=2, n_iter=1, interrupt_after_batches=3), Recorder(return_grid=False)
    processed, _ = run_job(p, job(mode=Mode.TOP_K, candidates=4, k=1), fake_score, hooks)
    # 6 of 8 candidates were made: one full slot of 4 and a partial slot of 2
    first = max(range(100, 104), key=lambda s: fake_score(s, ""))
    second = max(range(104, 106), key=lambda s: fake_score(s, ""))
    assert [seed_of(t) for t in processed.infotexts] == [first, second]
    assert p.n_iter == 1


def test_discarded_images_are_saved_aside_only_when_asked() -> None:
    p, hooks = FakeP(batch_size=2, n_iter=1), Recorder(return_grid=False, grid_save=False)
    run_job(p, job(mode=Mode.TOP_K, candidates=2, k=1, keep_discarded=True), fake_score, hooks)
    kinds = [s[0] for s in hooks.saved]
    assert kinds.count("sample") == 2 and kinds.count("discarded") == 2
    discarded = [s for s in hooks.saved if s[0] == "discarded"]
    assert all(read_score(s[3]) is not None for s in discarded)


def test_api_job_without_saving_saves_nothing_and_restores_the_flag() -> None:
    p, hooks = FakeP(batch_size=2, n_iter=1, do_not_save_samples=True), Recorder(grid_save=False)
    processed, webui_saved = run_job(p, job(mode=Mode.TOP_K, candidates=2, keep_discarded=True), fake_score, hooks)
    assert hooks.saved == [] and webui_saved == []
    assert p.do_not_save_samples is True
    assert len(processed.extra_generation_params[SCORES_KEY]) == 2


def test_infotext_callable_handles_batch_and_job_indices() -> None:
    j = job()
    p = FakeP(batch_size=2)
    p.iteration, p.prompts = 1, ["x", "y"]
    j.record_scores([2, 3], [0.25, -0.5])
    assert j.infotext_score(p=p, index=1, all_prompts=p.prompts) == "-0.500"  # batch list: index within batch
    assert j.infotext_score(p=p, index=2, all_prompts=["a", "b", "c", "d"]) == "0.250"  # job list: global index
    assert j.infotext_score(p=p, index=0, all_prompts=["a"], use_main_prompt=True) is None  # grid
    assert j.infotext_score(p=p, index=0, all_prompts=["a"]) is None  # not scored (e.g. params.txt before scoring)


def test_xyz_cells_sharing_extra_params_stay_independent() -> None:
    base = FakeP(batch_size=2, n_iter=1)
    first, second = copy(base), copy(base)  # X/Y/Z plot copies p shallowly: extra_generation_params is shared
    assert first.extra_generation_params is second.extra_generation_params
    one, _ = run_job(first, job(mode=Mode.TOP_K, candidates=2), fake_score, Recorder(return_grid=False))
    two, _ = run_job(second, job(mode=Mode.TOP_K, candidates=2), fake_score, Recorder(return_grid=False))
    assert all(DETAILS_KEY not in t and SCORES_KEY not in t for t in one.infotexts + two.infotexts)
    assert len(two.extra_generation_params[SCORES_KEY]) == 2  # 2 requested images, best of 2 each
    assert first.n_iter == second.n_iter == 1
