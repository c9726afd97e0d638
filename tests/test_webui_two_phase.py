"""Best-of-N that finishes only the kept candidates, through the real `script.py` in the harness's A1111 loop.

Phase 1 samples every candidate's first pass (or a preview with fewer steps) and scores it; nothing of it reaches the
per-image work (face restoration, ADetailer, saving). Phase 2 finishes the kept ones: hires fix from the recorded
first pass (the image one go makes for that seed), or a full sampling of the kept seeds after previews.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from imagereward.infotext import parse_infotext, read_score
from imagereward.webui.job import DETAILS_KEY
from tests.test_webui_host import World, interrupt_at, seed_of
from tests.webui_host import ADetailer, DynamicPrompts, pixel_score

TWO = {"mode": "top-k", "candidates": 4, "k": 1, "finish_kept": True}
PLAIN_HR = {"enable_hr": True, "hr_second_pass_steps": 2, "steps": 4}


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.host.uninstall()


def one_go(world: World, seed: int, requested: int, after: Any = (), **kwargs: Any) -> np.ndarray:
    """The image the WebUI makes for `seed` in one go, without the extension (candidate seeds are the requested
    image's seed + c·R; the stand-in's pixels also depend on the subseed, which stays the requested image's)."""
    first, hires = world.host.first_passes, world.host.hires_passes
    subseed = 5000 + (seed - 1000) % requested
    p = world.p(
        None, after=after, batch_size=1, n_iter=1, seed=seed, subseed=subseed, do_not_save_samples=True, **kwargs
    )
    processed = world.run(p)
    world.host.first_passes, world.host.hires_passes = first, hires  # (not the job's cost)
    return np.asarray(processed.images[0].convert("RGB"))


def first_pass_score(seed: int, world: World, prompt: str = "a red car", steps: int = 4, subseed: int = 5000) -> float:
    from PIL import Image

    from tests.webui_host import DEFAULT_STEPS, _to_uint8, sample

    key = prompt if steps == DEFAULT_STEPS else f"{prompt}|{steps} steps"
    return pixel_score(prompt, Image.fromarray(_to_uint8(sample(seed, subseed, key, -1, 16))))


def settings_of(text: str) -> dict[str, str]:
    return parse_infotext(text).settings


def test_hires_runs_for_the_kept_candidates_only_and_makes_the_one_go_image(world: World) -> None:
    world.host.opts.save_images_before_highres_fix = True
    detailer = ADetailer()
    p = world.p(TWO, after=[detailer], batch_size=2, n_iter=2, **PLAIN_HR)
    processed = world.run(p)
    kept = world.kept(processed)

    assert world.host.first_passes == 16 and world.host.hires_passes == 4  # plain best-of-4: 16 and 16
    assert detailer.detailed == 4  # ADetailer ran on the kept images only
    assert len(kept) == 4 and len(world.spy.made) == 4
    # Each requested image r keeps the candidate with the best first pass (seeds 1000 + r + 4c).
    for r in range(4):
        seeds = [1000 + r + 4 * c for c in range(4)]
        best = max(seeds, key=lambda s: first_pass_score(s, world, subseed=5000 + r))
        assert seed_of(kept[r]) == best
    for text, image in zip(kept, processed.images[processed.index_of_first_image :], strict=False):
        seed = seed_of(text)
        assert np.array_equal(np.asarray(image.convert("RGB")), one_go(world, seed, 4, [ADetailer()], **PLAIN_HR))
        settings = settings_of(text)
        assert float(settings["ImageReward"]) == pytest.approx(pixel_score("a red car", image), abs=6e-4)
        subseed = 5000 + (seed - 1000) % 4
        assert float(settings["ImageReward first pass"]) == pytest.approx(
            first_pass_score(seed, world, subseed=subseed), abs=6e-4
        )
        assert settings["ImageReward finish"] == "kept only"
    finals = world.host.disk.finals()
    assert sorted(f.seed for f in finals) == sorted(seed_of(t) for t in kept)
    before = [f for f in world.host.disk.files if f.suffix == "-before-highres-fix"]
    assert sorted(f.seed for f in before) == sorted(seed_of(t) for t in kept)  # "save before" for the kept only
    assert all("ImageReward first pass: " in f.info and "ImageReward: " in f.info for f in finals)
    # plain: 16 x (4 + 2) = 96 steps; here 16 x 4 + 4 x 2 = 72
    assert "phase 1: 16 × 4 steps, phase 2: 4 × hires 2 steps; 75 % of the sampling steps" in processed.comments
    details = processed.extra_generation_params[DETAILS_KEY]
    assert [entry["rank"] for entry in details["images"]] == [1, 1, 1, 1]
    summary = details["summary"]  # what the gallery's summary line reads: 16 compared, 4 kept, 12 discarded
    assert (summary["scored"], summary["kept"], summary["discarded"], summary["finished"]) == (16, 4, 12, 4)


def test_without_hires_the_first_pass_is_reused_and_only_the_per_image_work_is_saved(world: World) -> None:
    detailer = ADetailer()
    p = world.p(TWO, after=[detailer], batch_size=2, n_iter=1)
    processed = world.run(p)
    assert world.host.first_passes == 8 and detailer.detailed == 2
    for text, image in zip(world.kept(processed), processed.images[processed.index_of_first_image :], strict=True):
        assert np.array_equal(np.asarray(image), one_go(world, seed_of(text), 2, [ADetailer()]))
    assert "no sampling (first passes reused)" in processed.comments


def test_preview_steps_sample_the_kept_seeds_again_at_full_steps(world: World) -> None:
    p = world.p({**TWO, "preview_percent": 25}, batch_size=1, n_iter=2, **PLAIN_HR)
    processed = world.run(p)
    kept = world.kept(processed)
    assert world.host.first_passes == 8 + 2 and world.host.hires_passes == 2  # 8 previews at 1 step, 2 full
    for r, text in enumerate(kept):
        seeds = [1000 + r + 2 * c for c in range(4)]
        assert seed_of(text) == max(seeds, key=lambda s: first_pass_score(s, world, steps=1, subseed=5000 + r))
        image = processed.images[processed.index_of_first_image + r]
        assert np.array_equal(np.asarray(image), one_go(world, seed_of(text), 2, **PLAIN_HR))
        assert "ImageReward preview" in settings_of(text) and settings_of(text)["ImageReward preview steps"] == "25%"
    assert "phase 1: 8 × 1 steps, phase 2: 2 × 4 steps + hires 2 steps" in processed.comments


def test_check_previews_finishes_every_candidate_and_reports_agreement(world: World) -> None:
    p = world.p({**TWO, "preview_percent": 50, "check_previews": True}, batch_size=2, n_iter=1)
    processed = world.run(p)
    assert world.host.first_passes == 8 + 8  # every candidate finished too
    assert len(world.kept(processed)) == 2 and len(world.host.disk.finals()) == 2  # the choice is the previews'
    assert "how well the previews predicted the finished images, over 2 requested image(s)" in processed.comments
    assert "rank correlation" in processed.comments


def test_threshold_finishes_a_varying_number_and_the_loop_ends_after_them(world: World) -> None:
    scores = {1000 + g: first_pass_score(1000 + g, world, subseed=5000 + g % 2) for g in range(8)}
    ordered = sorted(scores.values())
    threshold = (ordered[4] + ordered[5]) / 2  # three of the eight pass
    expected = set()
    for slot in (0, 1):
        seeds = [s for s in scores if (s - 1000) % 2 == slot]
        passing = [s for s in seeds if scores[s] >= threshold]
        expected.update(passing or [max(seeds, key=scores.get)])  # none passing: its best (the default rule)
    job = {"mode": "threshold", "threshold": threshold, "candidates": 4, "finish_kept": True}
    p = world.p(job, batch_size=2, n_iter=1)
    processed = world.run(p)
    kept = world.kept(processed)
    assert {seed_of(t) for t in kept} == expected
    assert world.host.first_passes == 8 and len(world.spy.made) == len(kept)  # the loop ended after them


def test_interrupt_in_phase_one_shows_the_best_first_passes_and_saves_nothing(world: World) -> None:
    p = world.p(TWO, batch_size=1, n_iter=2, before_sampling=interrupt_at(5), **PLAIN_HR)
    processed = world.run(p)
    kept = world.kept(processed)
    assert world.host.disk.files == [] and world.host.hires_passes == 0
    assert "stopped in phase 1" in processed.comments and len(kept) == 2
    assert all(read_score(t) is None and "ImageReward first pass" in settings_of(t) for t in kept)


def test_interrupt_in_phase_two_saves_the_finished_and_shows_the_rest_last(world: World) -> None:
    p = world.p(TWO, batch_size=1, n_iter=2, before_sampling=interrupt_at(9), **PLAIN_HR)  # phase 2: batches 8, 9
    processed = world.run(p)
    kept = world.kept(processed)
    assert len(world.host.disk.finals()) == 1 and len(kept) == 2
    assert read_score(kept[0]) is not None
    assert "interrupted batch are shown last" in processed.comments


def test_a_skipped_phase_one_batch_does_not_compete(world: World) -> None:
    p = world.p(TWO, batch_size=1, n_iter=1, before_sampling=interrupt_at(0, "skipped"))
    processed = world.run(p)
    assert seed_of(world.kept(processed)[0]) != 1000  # candidate 0 was cut short


def test_keep_discarded_puts_the_first_passes_aside_marked_as_such(world: World) -> None:
    p = world.p({**TWO, "keep_discarded": True}, batch_size=1, n_iter=1, **PLAIN_HR)
    world.run(p)
    aside = [f for f in world.host.disk.files if "imagereward-discarded" in str(f.path)]
    assert len(aside) == 3 and all(f.suffix == "-first-pass" for f in aside)
    assert all("ImageReward first pass: " in f.info for f in aside)
    assert all(f.image.size == (16, 16) for f in aside)  # first passes, not upscaled


def test_img2img_with_two_init_images_keeps_each_kept_image_on_its_init_image(world: World) -> None:
    from PIL import Image

    init = [Image.new("RGB", (16, 16), "red"), Image.new("RGB", (16, 16), "blue")]
    p = world.p({**TWO, "preview_percent": 50}, batch_size=2, n_iter=1, init_images=init)
    processed = world.run(p)
    kept = world.kept(processed)
    assert len(kept) == 2
    for r, text in enumerate(kept):
        assert world.spy.by_seed(seed_of(text))["batch"] == r  # finished at its requested image's batch index


def test_dynamic_prompts_keep_their_resolved_prompts_in_both_phases(world: World) -> None:
    p = world.p(TWO, before=[DynamicPrompts(combinatorial=True)], prompt="a {red|blue} car", batch_size=1, n_iter=1)
    processed = world.run(p)
    assert sorted(parse_infotext(t).prompt for t in world.kept(processed)) == ["a blue car", "a red car"]


def test_sort_mode_falls_back_to_plain_best_of_n_and_says_so(world: World) -> None:
    p = world.p({"mode": "sort", "candidates": 2, "finish_kept": True}, batch_size=1, n_iter=1, **PLAIN_HR)
    processed = world.run(p)
    assert world.host.hires_passes == 2 and "nothing to leave unfinished" in processed.comments


def test_a_webui_without_a_sampler_factory_falls_back(world: World) -> None:
    import sys

    factory = sys.modules["modules.sd_samplers"]
    make = factory.create_sampler
    del factory.create_sampler  # a host whose samplers come from elsewhere
    p = world.p(TWO, batch_size=1, n_iter=1, **PLAIN_HR)
    own = type(p).sample

    def sample(*args: Any, **kwargs: Any) -> Any:  # it samples its own way
        factory.create_sampler = make
        try:
            return own(p, *args, **kwargs)
        finally:
            del factory.create_sampler

    p.sample = sample
    processed = world.run(p)
    assert world.host.hires_passes == 4 and len(world.kept(processed)) == 1  # plain best-of-4
    assert "no `modules.sd_samplers.create_sampler`" in processed.comments


def test_a_scoring_failure_in_phase_one_finishes_each_requested_images_own_seed(world: World) -> None:
    from tests.webui_host import FakeScorer

    world.scorer = FakeScorer(fail=True)
    p = world.p(TWO, batch_size=2, n_iter=1, **PLAIN_HR)
    processed = world.run(p)
    assert sorted(seed_of(t) for t in world.kept(processed)) == [1000, 1001] and world.host.hires_passes == 2
    assert "model file is broken" in processed.comments


def test_the_api_turns_it_on_and_reads_both_scores(world: World) -> None:
    p = world.p({**TWO, "candidates": 2}, batch_size=1, n_iter=1, do_not_save_samples=True, **PLAIN_HR)
    processed = world.run(p)
    (text,) = world.kept(processed)
    settings = settings_of(text)
    assert not math.isnan(float(settings["ImageReward"])) and "ImageReward first pass" in settings


def test_a_skip_in_phase_two_leaves_that_image_unsaved_and_the_others_finished(world: World) -> None:
    p = world.p(TWO, batch_size=1, n_iter=2, before_sampling=interrupt_at(8, "skipped"), **PLAIN_HR)
    processed = world.run(p)
    kept = world.kept(processed)
    assert len(kept) == 2 and len(world.host.disk.finals()) == 1  # batch 8 skipped, batch 9 finished and saved
    assert world.host.disk.finals()[0].seed == seed_of(kept[0])


def test_xyz_cells_each_run_their_own_two_phases(world: World) -> None:
    from copy import copy

    base = world.p(TWO, batch_size=1, n_iter=1, **PLAIN_HR)
    first = world.run(copy(base))
    second = world.run(copy(base))  # X/Y/Z: cells are copies sharing extra_generation_params
    assert world.host.hires_passes == 2 and world.host.first_passes == 8
    assert [seed_of(t) for t in world.kept(first)] == [seed_of(t) for t in world.kept(second)]
    assert "ImageReward finish" not in base.extra_generation_params  # a cell does not leave its entries behind


def test_the_agreement_figures() -> None:
    from imagereward.webui.phases import agreement, spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)  # ties take their mean rank
    assert math.isnan(spearman([1, 1], [2, 3]))  # no spread
    previews = {0: 0.1, 1: 0.9, 2: 0.5, 10: 0.2, 11: 0.3}
    finals = {0: 0.2, 1: 0.8, 2: 0.1, 10: 0.9, 11: 0.1}
    found = agreement([[0, 1, 2], [10, 11]], previews, finals)
    assert found.groups == 2 and found.top1 == pytest.approx(0.5)
    assert found.rank_correlation == pytest.approx((0.5 + -1.0) / 2)
    assert "the best preview was also the best finished image in 50 % of them" in found.sentence("preview")
