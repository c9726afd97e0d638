"""Interrupts in the WebUI's loop, in A1111 1.10's order and in Forge Neo's (issue 22.1): where the interrupt lands
(during a batch's sampling, or after it was decoded, during its post-processing), what the gallery shows, how the
images cut short are labelled, and what is saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagereward.infotext import parse_infotext, read_score
from imagereward.webui.job import DETAILS_KEY, SCORES_KEY, STATUS_KEY, UNFINISHED
from tests.test_webui_host import TOP1, World, interrupt_at, seed_of
from tests.webui_host import pixel_score

LOOPS = ["a1111", "forge-neo"]


@pytest.fixture(params=LOOPS)
def world(tmp_path: Path, request: pytest.FixtureRequest):
    w = World(tmp_path)
    w.host.loop = request.param
    yield w
    w.host.uninstall()


def settings_of(text: str) -> dict[str, str]:
    return parse_infotext(text).settings


def best_of_4_in_4_batches(world: World, **hooks):
    """Best of 4, top-k 1, batch size 1, batch count 1: one requested image, its 4 candidates in 4 batches."""
    p = world.p(TOP1, batch_size=1, n_iter=1, **hooks)
    return p, world.run(p)


def assert_unfinished(text: str) -> None:
    settings = settings_of(text)
    assert read_score(text) is None and settings[STATUS_KEY] == UNFINISHED


def test_interrupt_during_the_sampling_of_batch_3(world: World) -> None:
    p, processed = best_of_4_in_4_batches(world, before_sampling=interrupt_at(2))
    shown = world.kept(processed)
    seeds = p.all_seeds
    # Batches 1 and 2 finished and compete; batch 3's half-sampled image is shown last, batch 4 never ran.
    assert [m["seed"] for m in world.spy.made] == seeds[:3]
    assert len(shown) == 2
    best = max(seeds[:2], key=lambda s: pixel_score("a red car", world.spy.by_seed(s)["image"]))
    assert seed_of(shown[0]) == best and read_score(shown[0]) is not None
    assert seed_of(shown[1]) == seeds[2]
    assert_unfinished(shown[1])
    # On disk: the kept image only, with its score.
    assert [f.seed for f in world.host.disk.finals()] == [best]
    assert [f for f in world.host.disk.files if "grid" in f.path.name] == []  # one finished image: no grid
    assert read_score(world.host.disk.finals()[0].info) == pytest.approx(read_score(shown[0]))
    # The API: the kept image's score, then the unfinished one's none; the details say which is which.
    params = processed.extra_generation_params
    assert params[SCORES_KEY][0] is not None and params[SCORES_KEY][1] is None
    first, second = params[DETAILS_KEY]["images"]
    assert first["rank"] == 1 and first["index"] == processed.index_of_first_image
    assert second == {"index": first["index"] + 1, "position": 1, "score": None, "unfinished": True, "saved": False}
    summary = params[DETAILS_KEY]["summary"]
    assert (summary["scored"], summary["kept"], summary["discarded"], summary["unfinished"]) == (2, 1, 1, 1)
    assert "1 image(s) of the interrupted batch are shown last" in processed.comments
    json.dumps(params)  # what the API returns


def test_interrupt_during_the_post_processing_of_batch_2(world: World) -> None:
    """The interrupt lands after batch 2 was decoded (the progress already shows job 3): the WebUI then reads its
    save flag as interrupted and does not save batch 2's image; it shows it. So do we: last, labelled, unsaved."""
    p, processed = best_of_4_in_4_batches(world, after_decoding=interrupt_at(1))
    shown = world.kept(processed)
    seeds = p.all_seeds
    assert world.host.state.job_no == 2 and world.host.first_passes == 2  # batches 3 and 4 never ran
    assert [seed_of(t) for t in shown] == seeds[:2]
    assert read_score(shown[0]) is not None
    assert_unfinished(shown[1])
    assert [f.seed for f in world.host.disk.finals()] == [seeds[0]]
    details = processed.extra_generation_params[DETAILS_KEY]
    assert [e.get("unfinished", False) for e in details["images"]] == [False, True]


def test_without_the_extension_the_webui_shows_the_interrupted_batch_and_does_not_save_it(world: World) -> None:
    """The WebUI's own behaviour the two tests above follow (batch count 4 without the extension)."""
    p = world.p(None, batch_size=1, n_iter=4, after_decoding=interrupt_at(1))
    processed = world.run(p)
    assert [seed_of(t) for t in world.kept(processed)] == p.all_seeds[:2]
    assert [f.seed for f in world.host.disk.finals()] == p.all_seeds[:1]


def test_an_interrupt_during_post_processing_with_save_incomplete_images_competes(world: World) -> None:
    """With "save incomplete images" the WebUI saves the interrupted batch: its image is a candidate like any other."""
    world.host.opts.save_incomplete_images = True
    _, processed = best_of_4_in_4_batches(world, after_decoding=interrupt_at(1))
    shown = world.kept(processed)
    assert len(shown) == 1 and STATUS_KEY not in settings_of(shown[0]) and read_score(shown[0]) is not None
    assert [f.seed for f in world.host.disk.finals()] == [seed_of(shown[0])]


UNFINISHED_INFO = Path(__file__).parent / "fixtures" / "generation_info_unfinished.json"


@pytest.mark.parametrize("world", ["a1111"], indirect=True)
def test_the_unfinished_image_fixture_the_javascript_tests_read(world: World) -> None:
    """tests/js/contract.test.js draws the badges of this job: a score for the kept image, the plain label for the
    unfinished one (regenerate with IMAGEREWARD_WRITE_FIXTURES=1 when the Python side changes what it writes)."""
    import os

    from tests.test_webui_host import _same

    _, processed = best_of_4_in_4_batches(world, before_sampling=interrupt_at(2))
    info = json.loads(
        json.dumps(
            {
                "index_of_first_image": processed.index_of_first_image,
                "infotexts": processed.infotexts,
                "extra_generation_params": processed.extra_generation_params,
            }
        )
    )
    if os.environ.get("IMAGEREWARD_WRITE_FIXTURES"):
        UNFINISHED_INFO.write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    assert _same(info, json.loads(UNFINISHED_INFO.read_text(encoding="utf-8")))
