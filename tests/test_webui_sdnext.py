"""The real `script.py` in SD.Next's processing loop (`tests/sdnext_host.py`): best of N, the held-back saves, an
interrupt (no `postprocess` there), "finish only the kept" (not possible there) and the Control tab's list."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagereward.infotext import parse_infotext, read_score
from imagereward.webui.args import FIELD_NAMES
from imagereward.webui.host import A1111, SDNEXT, accepted, detect
from imagereward.webui.job import DETAILS_KEY, SCORES_KEY, UNFINISHED_SAVED
from imagereward.webui.runtime import ScorerRuntime
from tests.sdnext_host import SDNextHost, paste, process_images
from tests.webui_host import FakeScorer, Host, P, Runner, pixel_score, sample


class World:
    def __init__(self, root: Path) -> None:
        self.host = SDNextHost(root)
        self.host.install()
        self.script = importlib.import_module("imagereward.webui.script")
        self.script.register_callbacks()
        self.script.RUNTIME = ScorerRuntime(lambda settings: FakeScorer())

    def p(self, ir: dict[str, Any], **kwargs: Any) -> P:
        p = P(host=self.host, **kwargs)
        p.scripts = Runner([(self.script.ImageRewardScript(), ({"enabled": True, **ir},))])
        return p

    def run(self, p: P) -> Any:
        processed = process_images(p)
        assert p.scripts.errors == []
        return processed


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.host.uninstall()


TOP1 = {"mode": "top-k", "candidates": 4, "k": 1}


def seed_of(text: str) -> int:
    return int(parse_infotext(text).settings["Seed"])


def image_of(seed: int, prompt: str = "a red car", size: int = 16, requested: int = 4) -> Image.Image:
    """The 8-bit image SD.Next makes of the stand-in pipeline's output for `seed` (a candidate keeps the variation
    seed of its requested image: 5000 + the image's number)."""
    import numpy as np

    subseed = 5000 + (seed - 1000) % requested
    array = np.moveaxis(sample(seed, subseed, prompt, -1, size).numpy(), 0, 2)
    return Image.fromarray((255.0 * array).astype(np.uint8))


def test_the_host_is_detected_as_sdnext(world: World) -> None:
    assert world.script.HOST.name == SDNEXT
    assert detect().name == SDNEXT


def test_a1111_stays_a1111(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.install()
    try:
        assert detect().name == A1111
    finally:
        host.uninstall()


def test_best_of_4_batch_2_count_2_keeps_the_best_of_each_requested_image(world: World) -> None:
    p = world.p(TOP1, batch_size=2, n_iter=2)
    processed = world.run(p)
    kept = processed.infotexts[processed.index_of_first_image :]
    assert len(kept) == 4 and processed.index_of_first_image == 1  # the grid of the kept images first
    for r, text in enumerate(kept):
        slot = [1000 + r + 4 * c for c in range(4)]  # requested image r's 4 candidates
        scores = {s: pixel_score("a red car", image_of(s)) for s in slot}
        assert seed_of(text) == max(slot, key=lambda s: scores[s])
        assert read_score(text) == pytest.approx(scores[seed_of(text)], abs=5e-4)
    finals = world.host.disk.finals()
    assert sorted(f.seed for f in finals) == sorted(seed_of(t) for t in kept)
    for f in finals:  # every saved file carries its score, and re-scores to it
        assert read_score(f.info) == pytest.approx(pixel_score("a red car", Image.open(f.path)), abs=1e-3)
    grids = [f for f in world.host.disk.files if f.path.name.split("-")[1] == "grid"]
    assert len(grids) == 1  # the kept images' grid, saved with SD.Next's save_image (no short_filename)
    assert processed.all_seeds == [seed_of(t) for t in kept]
    assert processed.extra_generation_params[SCORES_KEY] == pytest.approx([read_score(t) for t in kept], abs=6e-4)
    assert p.n_iter == 2


def test_the_kept_images_texts_give_the_users_batch_numbers_back(world: World) -> None:
    p = world.p(TOP1, batch_size=2, n_iter=2)
    processed = world.run(p)
    # The plan ran 8 batches of 2; pasted back, "Batch: 8x2" would make 4 times the images again.
    for text in processed.infotexts:
        assert parse_infotext(text).settings["Batch"] == "2x2"
    for f in world.host.disk.finals():
        assert parse_infotext(f.info).settings["Batch"] == "2x2"
    for image in processed.images[processed.index_of_first_image :]:
        assert parse_infotext(image.info["parameters"]).settings["Batch"] == "2x2"


def test_the_control_tabs_result_fills_its_generation_info_box(world: World) -> None:
    import json

    from tests.webui_host import _Component

    result, box, other = _Component(), _Component(), _Component()
    for callback in world.host.after_component:
        callback(other, elem_id="control_gallery")
        callback(result, elem_id="control-result")
        callback(box, elem_id="generation_info_control")
    assert not hasattr(other, "handlers")
    [(fn, inputs, outputs)] = result.handlers
    assert inputs == []
    assert outputs == [box]
    processed = world.run(world.p(TOP1, batch_size=1, n_iter=1))
    assert json.loads(fn())["infotexts"] == processed.infotexts


def test_an_interrupt_finishes_the_job_without_sdnext_calling_postprocess(world: World) -> None:
    def interrupt(p: P, n: int) -> None:
        if n == 2:
            p.host.state.interrupted = True

    world.host.opts.keep_incomplete = False  # SD.Next then stops before the batch-list hook
    p = world.p(TOP1, batch_size=2, n_iter=2, before_sampling=interrupt)
    processed = world.run(p)
    # Batches 0 and 1 (candidates 0 and 1 of requested images 0 and 1) finished; SD.Next stopped in batch 2.
    kept = processed.infotexts[processed.index_of_first_image :]
    slots = ([1000, 1004], [1001, 1005])
    best = [max(seeds, key=lambda s: pixel_score("a red car", image_of(s))) for seeds in slots]
    assert [seed_of(t) for t in kept] == best
    assert all(read_score(t) is not None for t in kept)
    assert sorted(f.seed for f in world.host.disk.finals()) == sorted(best)  # the held-back saves were written
    assert all(read_score(f.info) is not None for f in world.host.disk.finals())
    assert p.n_iter == 2


def _best_of(*slots: list[int]) -> list[int]:
    return [max(seeds, key=lambda s: pixel_score("a red car", image_of(s))) for seeds in slots]


def test_an_interrupt_with_keep_incomplete_shows_the_preview_last_and_saves_it_unranked(world: World) -> None:
    """SD.Next's default: the interrupted batch becomes its live preview (no per-image hook sees it) and is saved."""
    preview = Image.new("RGB", (32, 16), (90, 90, 90))  # a preview of the batch's two images side by side

    def interrupt(p: P, n: int) -> None:
        if n == 2:
            p.host.state.interrupted = True
            p.host.current_image = preview

    p = world.p(TOP1, batch_size=2, n_iter=2, before_sampling=interrupt)
    processed = world.run(p)
    shown = processed.infotexts[processed.index_of_first_image :]
    best = _best_of([1000, 1004], [1001, 1005])
    assert [seed_of(t) for t in shown[:2]] == best
    assert all(read_score(t) is not None for t in shown[:2])
    last = parse_infotext(shown[2])
    assert processed.images[-1] is preview
    assert read_score(shown[2]) is None and last.settings["ImageReward status"] == UNFINISHED_SAVED
    assert "another script" not in processed.comments
    assert "they were saved, as the WebUI's setting to keep interrupted images asks" in processed.comments
    files = world.host.disk.finals()
    assert sorted(f.seed for f in files) == sorted([*best, 1008])  # the kept two, and the preview SD.Next saved
    [saved_preview] = [f for f in files if f.seed == 1008]
    assert parse_infotext(saved_preview.info).settings["ImageReward status"] == UNFINISHED_SAVED
    assert saved_preview.image.size == preview.size
    grid = processed.images[0]
    assert grid.info["grid_of"] == 2  # the grid holds the kept images, never the preview
    details = processed.extra_generation_params[DETAILS_KEY]
    assert details["images"][-1] == {"index": 3, "position": 2, "score": None, "unfinished": True, "saved": True}
    assert details["summary"]["unfinished"] == 1 and details["summary"]["kept"] == 2


def test_an_interrupt_with_keep_incomplete_and_no_preview_keeps_the_finished_ranked(world: World) -> None:
    def interrupt(p: P, n: int) -> None:
        if n == 2:
            p.host.state.interrupted = True  # no live preview (the API's default): SD.Next's batch is empty

    processed = world.run(world.p(TOP1, batch_size=2, n_iter=2, before_sampling=interrupt))
    shown = processed.infotexts[processed.index_of_first_image :]
    assert [seed_of(t) for t in shown] == _best_of([1000, 1004], [1001, 1005])
    assert all(read_score(t) is not None for t in shown)
    assert "another script" not in processed.comments and "unsorted" not in processed.comments
    assert sorted(f.seed for f in world.host.disk.finals()) == sorted(seed_of(t) for t in shown)


def test_a_skip_ranks_every_finished_candidate(world: World) -> None:
    """A skip empties SD.Next's batch, and its loop then passes over the next batch too (it clears the flag there)."""

    def skip(p: P, n: int) -> None:
        if n == 2:
            p.host.state.skipped = True

    processed = world.run(world.p(TOP1, batch_size=2, n_iter=2, before_sampling=skip))
    shown = processed.infotexts[processed.index_of_first_image :]
    # Batches 2 and 3 (candidates 2 and 3 of requested images 0 and 1) were never made.
    slots = ([1000, 1004], [1001, 1005], [1002, 1006, 1010, 1014], [1003, 1007, 1011, 1015])
    assert [seed_of(t) for t in shown] == _best_of(*slots)
    assert all(read_score(t) is not None for t in shown)
    assert "another script" not in processed.comments and "unsorted" not in processed.comments
    assert sorted(f.seed for f in world.host.disk.finals()) == sorted(seed_of(t) for t in shown)


def test_paste_back_of_a_kept_image_restores_the_accordion_in_sdnexts_paste(world: World) -> None:
    """SD.Next's paste fails as a whole on a paste key that is a function returning a plain value."""
    p = world.p({**TOP1, "by_prompt": False}, batch_size=2, n_iter=2)
    processed = world.run(p)
    kept = processed.infotexts[processed.index_of_first_image]
    params = dict(parse_infotext(kept).settings)
    script = world.script.ImageRewardScript()
    controls = script.ui(False)
    updates = paste(script.infotext_fields, params, skip=("batch",))
    values = {
        id(output): update.get("value") for (output, _), update in zip(script.infotext_fields, updates, strict=True)
    }
    by_name = {name: values.get(id(control)) for name, control in zip(FIELD_NAMES, controls, strict=True)}
    assert values[id(script.infotext_fields[0][0])] is True  # the accordion: on
    assert by_name["mode"] == "top-k" and by_name["candidates"] == 4 and by_name["by_prompt"] is False
    assert by_name["scorer"] == "ImageReward" and by_name["finish_kept"] is False


def test_finish_only_the_kept_is_refused_with_a_plain_note(world: World) -> None:
    p = world.p({**TOP1, "finish_kept": True}, batch_size=1, n_iter=1)
    processed = world.run(p)
    assert len(processed.infotexts[processed.index_of_first_image :]) == 1
    assert "finishing only the kept candidates is off for this job: SD.Next samples with one" in processed.comments
    assert len(world.host.disk.finals()) == 1


def test_the_accordion_greys_out_finish_only_the_kept(world: World) -> None:
    components = world.script.ImageRewardScript().ui(False)
    by_id = {c.kwargs.get("elem_id"): c for c in components}
    finish = by_id["imagereward_finish_kept"]
    assert finish.kwargs["interactive"] is False
    assert finish.kwargs["info"].startswith("Not available in SD.Next:")
    assert "interactive" not in by_id["imagereward_candidates"].kwargs


def test_the_control_tab_runs_the_script(world: World) -> None:
    assert "ImageReward" in world.host.control_extensions


def test_accepted_drops_arguments_a_function_does_not_take() -> None:
    def save(image: Any, path: str, info: str = "", p: Any = None) -> None: ...

    def anything(image: Any, **kwargs: Any) -> None: ...

    assert accepted(save, {"info": "x", "short_filename": True}) == {"info": "x"}
    assert accepted(anything, {"short_filename": True}) == {"short_filename": True}
