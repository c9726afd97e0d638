"""The real `script.py` under the stand-in WebUI host (`tests/webui_host.py`), in the workflows users combine it with:
ADetailer, dynamic prompts, the prompt matrix, img2img with several init images, inpaint masks, interrupts, the
WebUI's own save options, X/Y/Z, the gallery's Upscale, scoring and saving failures."""

from __future__ import annotations

import importlib
import logging
import threading
from copy import copy
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image

from imagereward.infotext import parse_infotext, read_score
from imagereward.webui.args import PASTE_FIELDS
from imagereward.webui.job import DETAILS_KEY, SCORES_KEY, TRUNCATION_NOTE
from imagereward.webui.runtime import ScorerRuntime
from tests.webui_host import (
    ADetailer,
    DynamicPrompts,
    FakeScorer,
    Host,
    P,
    Runner,
    pixel_score,
    process_images,
    prompt_matrix,
)


class Spy:
    """An always-on script after ours: records where each final image was generated."""

    def __init__(self) -> None:
        self.made: list[dict[str, Any]] = []

    def postprocess_image_after_composite(self, p: P, pp: Any, *args: Any) -> None:
        i = p.iteration * p.batch_size + p.batch_index
        self.made.append(
            {
                "seed": p.all_seeds[i],
                "prompt": p.all_prompts[i],
                "iteration": p.iteration,
                "batch": p.batch_index,
                "image": pp.image.copy(),
            }
        )

    def by_seed(self, seed: int) -> dict[str, Any]:
        return next(m for m in self.made if m["seed"] == seed)


class World:
    def __init__(self, root: Path) -> None:
        self.host = Host(root)
        self.host.install()
        self.script = importlib.import_module("imagereward.webui.script")
        self.script.register_callbacks()
        self.scorer = FakeScorer()
        self.loads = 0

        def loader(settings: Any) -> FakeScorer:
            self.loads += 1
            if isinstance(self.scorer, Exception):
                raise self.scorer
            return self.scorer

        self.script.RUNTIME = ScorerRuntime(loader)
        self.spy = Spy()

    def p(self, ir: dict[str, Any] | None, before: list[Any] = (), after: list[Any] = (), **kwargs: Any) -> P:
        p = P(host=self.host, **kwargs)
        ours = self.script.ImageRewardScript()
        args = ({"enabled": True, **ir},) if ir is not None else ({"enabled": False},)
        p.scripts = Runner([*((s, ()) for s in before), (ours, args), *((s, ()) for s in after), (self.spy, ())])
        return p

    def run(self, p: P) -> Any:
        processed = process_images(p)
        assert p.scripts.errors == []
        return processed

    def kept(self, processed: Any) -> list[str]:
        return processed.infotexts[processed.index_of_first_image :]


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.host.uninstall()


TOP1 = {"mode": "top-k", "candidates": 4, "k": 1}


def seed_of(text: str) -> int:
    return int(parse_infotext(text).settings["Seed"])


def best_by_slot(world: World, scores_of: dict[int, float], slots: dict[int, list[int]]) -> list[int]:
    return [max(seeds, key=lambda s: scores_of[s]) for seeds in slots.values()]


# ------------------------------------------------------------------------------------------ the plain case


def test_top_k_best_of_4_batch_2_count_2_keeps_the_best_of_each_requested_image(world: World) -> None:
    p = world.p(TOP1, batch_size=2, n_iter=2)
    processed = world.run(p)
    kept = world.kept(processed)
    assert len(world.spy.made) == 16 and len(kept) == 4
    # Each requested image r has its own slot: seeds 1000 + r + 4c, all made at r's batch index.
    for r, text in enumerate(kept):
        slot = [1000 + r + 4 * c for c in range(4)]
        made = [world.spy.by_seed(s) for s in slot]
        assert {m["batch"] for m in made} == {r % 2}
        scores = {s: pixel_score("a red car", _final(world, s)) for s in slot}
        assert seed_of(text) == max(slot, key=lambda s: scores[s])
        assert read_score(text) == pytest.approx(scores[seed_of(text)], abs=5e-4)
    # Files: the 4 kept images and the grid; each PNG carries its score and re-scores to it.
    finals = world.host.disk.finals()
    assert sorted(f.seed for f in finals) == sorted(seed_of(t) for t in kept)
    for f in finals:
        assert read_score(f.info) == pytest.approx(pixel_score("a red car", Image.open(f.path)), abs=1e-3)
    assert processed.all_seeds == [seed_of(t) for t in kept]
    assert processed.extra_generation_params[SCORES_KEY] == pytest.approx([read_score(t) for t in kept], abs=6e-4)
    assert "ImageReward mode" in processed.extra_generation_params  # the API's info keeps the job's settings
    assert p.n_iter == 2  # p is restored


def _final(world: World, seed: int) -> Image.Image:
    return world.spy.by_seed(seed)["image"]


# ---------------------------------------------------------------------------------------------- 1. ADetailer


def test_adetailer_replays_on_copies_do_not_wipe_scores_or_offload_per_batch(world: World) -> None:
    world.scorer.device = world.scorer.device.__class__("cuda")  # pretend: moves are recorded, nothing allocated
    world.host.opts.imagereward_keep_on_gpu = False
    ad = ADetailer()
    p = world.p(TOP1, before=[ad], batch_size=1, n_iter=2)
    processed = world.run(p)
    assert ad.replays == 8  # postprocess replayed on a copy for every batch
    kept = world.kept(processed)
    assert len(kept) == 2 and all(read_score(t) is not None for t in kept)
    finals = world.host.disk.finals()
    assert len(finals) == 2 and all("ImageReward: " in f.info for f in finals)
    assert world.scorer.moves == ["cpu"]  # offloaded once, after the job


def test_adetailer_detailed_pixels_are_what_is_scored_and_saved(world: World) -> None:
    world.host.opts.ad_save_images_before = True
    p = world.p(TOP1, before=[ADetailer(save_before=True)], batch_size=1, n_iter=1)
    processed = world.run(p)
    final = world.host.disk.finals()[0]
    saved = Image.open(final.path)
    assert saved.getpixel((0, 0)) == (250, 240, 10)  # the detailed image
    assert read_score(final.info) == pytest.approx(pixel_score("a red car", saved), abs=1e-3)
    before = [f for f in world.host.disk.files if f.suffix == "-ad-before"]
    assert [f.seed for f in before] == [final.seed]  # ADetailer's "save before" only for the kept image
    assert read_score(world.kept(processed)[0]) == pytest.approx(read_score(final.info))


# ----------------------------------------------------------------------------------- 2. interrupt and skip


def interrupt_at(batch: int, flag: str = "interrupted"):
    def hook(p: P, n: int) -> None:
        if n == batch:
            setattr(p.host.state, flag, True)

    return hook


def test_interrupt_after_the_second_batch_saves_the_finished_candidates_the_webui_would_have(world: World) -> None:
    p = world.p(TOP1, batch_size=2, n_iter=2, before_sampling=interrupt_at(2))
    processed = world.run(p)
    # Batches 0 and 1 finished (candidates 0 and 1 of requested images 0, 1); batch 2 was interrupted while
    # sampling: the WebUI shows it but does not save it (save_incomplete_images is off).
    assert len(world.spy.made) == 6
    kept = world.kept(processed)
    assert len(kept) == 4  # the best finished candidate of each partial group, then the 2 unfinished images
    finished = {0: [1000, 1004], 1: [1001, 1005]}
    for r, seeds in finished.items():
        best = max(seeds, key=lambda s: pixel_score("a red car", _final(world, s)))
        assert seed_of(kept[r]) == best
    assert [seed_of(t) for t in kept[2:]] == [1008, 1009]
    assert sorted(f.seed for f in world.host.disk.finals()) == sorted(seed_of(t) for t in kept[:2])
    assert all("ImageReward: " in f.info for f in world.host.disk.finals())
    assert "interrupted batch are shown last" in processed.comments


def test_skip_in_the_last_batch_still_saves_earlier_batches(world: World) -> None:
    p = world.p({"mode": "sort", "candidates": 2}, batch_size=1, n_iter=1, before_sampling=interrupt_at(1, "skipped"))
    processed = world.run(p)
    assert [seed_of(t) for t in world.kept(processed)] == [1000, 1001]  # the finished one first
    assert [f.seed for f in world.host.disk.finals()] == [1000]  # the skipped batch is not saved, the first is


def test_save_incomplete_images_saves_the_interrupted_batch_too(world: World) -> None:
    world.host.opts.save_incomplete_images = True
    p = world.p({"mode": "sort", "candidates": 2}, batch_size=1, n_iter=1, before_sampling=interrupt_at(1))
    world.run(p)
    assert sorted(f.seed for f in world.host.disk.finals()) == [1000, 1001]


# ------------------------------------------------------------------------------ 3. dynamic prompts, matrix


@pytest.mark.parametrize("combinatorial", [False, True])
def test_dynamic_prompts_candidates_share_their_requested_images_prompt(world: World, combinatorial: bool) -> None:
    dp = DynamicPrompts(combinatorial=combinatorial)
    p = world.p(TOP1, before=[dp], prompt="a {red|blue|green} car", batch_size=1, n_iter=2)
    processed = world.run(p)
    kept = world.kept(processed)
    requested = 3 if combinatorial else 2
    assert len(world.spy.made) == 4 * requested and len(kept) == requested
    by_slot: dict[int, set[str]] = {}
    for made in world.spy.made:
        by_slot.setdefault((made["seed"] - 1000) % requested, set()).add(made["prompt"])
    assert all(len(prompts) == 1 for prompts in by_slot.values())  # N tries of the same image
    if combinatorial:
        assert sorted(parse_infotext(t).prompt for t in kept) == ["a blue car", "a green car", "a red car"]


def test_dynamic_prompts_running_after_us_is_detected_and_every_image_kept(world: World) -> None:
    p = world.p(TOP1, after=[DynamicPrompts()], prompt="a {red|blue|green} car", batch_size=1, n_iter=2)
    processed = world.run(p)
    assert len(world.kept(processed)) == len(world.spy.made)  # nothing compared that should not compete
    assert "another script changed the job's images" in processed.comments


def test_prompt_matrix_gets_n_candidates_per_prompt(world: World) -> None:
    p = world.p(TOP1, prompt="a car | red | at night", batch_size=2, n_iter=1)
    prompt_matrix(p)
    processed = world.run(p)
    kept = world.kept(processed)
    assert len(world.spy.made) == 16
    assert sorted(parse_infotext(t).prompt for t in kept) == sorted(
        ["a car", "a car, red", "a car, at night", "a car, red, at night"]
    )


# ------------------------------------------------------------------------------ 4. several init images


def test_img2img_with_two_init_images_compares_candidates_of_the_same_init_image(world: World) -> None:
    init = [Image.new("RGB", (16, 16), "red"), Image.new("RGB", (16, 16), "blue")]
    p = world.p(TOP1, batch_size=2, n_iter=1, init_images=init)
    processed = world.run(p)
    kept = world.kept(processed)
    assert len(kept) == 2
    for r, text in enumerate(kept):
        assert world.spy.by_seed(seed_of(text))["batch"] == r  # init image r
    groups = {}
    for made in world.spy.made:
        groups.setdefault((made["seed"] - 1000) % 2, set()).add(made["batch"])
    assert groups == {0: {0}, 1: {1}}


# ----------------------------------------------------------------------------------- 5. inpaint masks


def test_inpaint_return_mask_masks_are_not_candidates(world: World) -> None:
    world.host.opts.return_mask = True
    mask = Image.new("L", (16, 16), 255)
    init = [Image.new("RGB", (16, 16), "gray")]
    p = world.p(TOP1, batch_size=1, n_iter=2, init_images=init, image_mask=mask)
    processed = world.run(p)
    first = processed.index_of_first_image
    kept = world.kept(processed)
    assert len(kept) == 2
    images = processed.images[first:]
    assert len(images) == 4  # the 2 kept images, then their 2 masks
    assert all(im.getpixel((0, 0)) == (255, 255, 255) for im in images[2:])
    assert details(processed)["summary"]["scored"] == 8


def details(processed: Any) -> dict:
    return processed.extra_generation_params[DETAILS_KEY]


# ------------------------------------------------------------------------------ 6. the WebUI's save options


def test_save_before_options_and_masks_only_for_kept_images_with_their_own_numbers(world: World) -> None:
    opts = world.host.opts
    opts.save_images_before_face_restoration = True
    opts.save_images_before_color_correction = True
    opts.save_images_before_highres_fix = True
    opts.save_mask = True
    init = [Image.new("RGB", (16, 16), "gray")]
    p = world.p(
        TOP1, batch_size=2, n_iter=1, restore_faces=True, enable_hr=True, color_correction=True,
        init_images=init, image_mask=Image.new("L", (16, 16), 255),
    )  # fmt: skip
    processed = world.run(p)
    kept_seeds = {seed_of(t) for t in world.kept(processed)}
    files = world.host.disk.files
    suffixes = {"", "-before-face-restoration", "-before-color-correction", "-before-highres-fix", "-mask"}
    for suffix in suffixes:
        assert {f.seed for f in files if f.suffix == suffix and "grid" not in f.path.name} == kept_seeds, suffix
    for f in files:
        if "grid" in f.path.name:
            continue
        made = world.spy.by_seed(f.seed)
        assert (f.iteration, f.batch_index) == (made["iteration"], made["batch"])  # [generation_number] etc.


def test_discarded_images_never_reach_disk_unless_kept_aside(world: World) -> None:
    p = world.p(TOP1, batch_size=1, n_iter=1)
    world.run(p)
    assert len(world.host.disk.finals()) == 1
    world2_files = len(world.host.disk.files)
    p = world.p({**TOP1, "keep_discarded": True}, batch_size=1, n_iter=1)
    world.run(p)
    aside = [f for f in world.host.disk.files[world2_files:] if "imagereward-discarded" in str(f.path)]
    assert len(aside) == 3 and all("ImageReward: " in f.info for f in aside)


def test_api_without_save_images_writes_nothing(world: World) -> None:
    p = world.p(TOP1, batch_size=2, n_iter=1, do_not_save_samples=True, do_not_save_grid=True)
    processed = world.run(p)
    assert world.host.disk.files == []
    assert len(world.kept(processed)) == 2


# ----------------------------------------------------------------------------- 8, 9. failures, low VRAM


def test_a_scoring_failure_is_tried_once_per_job_keeps_everything_and_is_logged_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.scorer = FakeScorer(fail=True)
    p = world.p(TOP1, batch_size=1, n_iter=2)
    with caplog.at_level(logging.WARNING, logger="imagereward"):
        processed = world.run(p)
    assert len(world.scorer.calls) == 1
    assert len(world.kept(processed)) == 8
    assert len([r for r in caplog.records if "model file is broken" in r.getMessage()]) == 1
    finals = world.host.disk.finals()
    assert len(finals) == 8 and all("ImageReward error:" in f.info for f in finals)
    assert "model file is broken" in processed.comments


def test_a_model_that_cannot_load_is_tried_once_per_job(world: World) -> None:
    world.scorer = FileNotFoundError("models/ImageReward/ImageReward.pt is missing")
    p = world.p(TOP1, batch_size=1, n_iter=3)
    processed = world.run(p)
    assert world.loads == 1
    assert len(world.kept(processed)) == 12


def test_low_vram_holds_the_gpu_only_while_scoring(world: World) -> None:
    world.scorer.device = world.scorer.device.__class__("cuda")
    world.host.cmd_opts.lowvram = True
    p = world.p(TOP1, batch_size=1, n_iter=1)
    world.run(p)
    # back to the GPU for each batch, off it right after: 4 batches
    assert world.scorer.moves == ["cpu", "cuda", "cpu", "cuda", "cpu", "cuda", "cpu"]


# ----------------------------------------------------------------------------------- 11. saving fails


def test_a_save_failure_half_way_leaves_the_gallery_complete_and_says_what_was_not_saved(world: World) -> None:
    world.host.disk.fail_after = 1
    p = world.p(TOP1, batch_size=2, n_iter=1)
    processed = world.run(p)
    kept = world.kept(processed)
    assert len(kept) == 2 and all(read_score(t) is not None for t in kept)
    assert processed.index_of_first_image == 1  # the grid is still shown
    assert "could not be written" in processed.comments and "No space left" in processed.comments


# ------------------------------------------------------------------------------ 12. paste-back, the limit


def test_paste_back_restores_every_setting() -> None:
    from imagereward.selection import Mode
    from imagereward.webui.args import JobArgs

    params = JobArgs(enabled=True, mode=Mode.TOP_K, candidates=4, by_prompt=False, clean_prompt=False).infotext_params()
    params = {**params, "ImageReward": "0.5"}
    pasted = {name: (key(params) if callable(key) else params.get(key)) for name, key in PASTE_FIELDS}
    assert pasted["enabled"] is True and pasted["mode"] == "top-k" and pasted["candidates"] == "4"
    assert pasted["by_prompt"] is False and pasted["clean_prompt"] is False
    defaults = {name: key({}) for name, key in PASTE_FIELDS if callable(key)}
    assert defaults == {
        "enabled": False,
        "by_prompt": True,
        "clean_prompt": True,
        "scorer": "ImageReward",  # images from before the scorer choice paste back ImageReward
        "weights": "",
        "finish_kept": False,  # images from before the two phases paste back plain best-of-N
        "preview_percent": 100,
        "check_previews": False,
    }
    two = JobArgs(enabled=True, mode=Mode.TOP_K, candidates=4, finish_kept=True, preview_percent=25).infotext_params()
    pasted = {name: (key(two) if callable(key) else two.get(key)) for name, key in PASTE_FIELDS}
    assert pasted["finish_kept"] is True and pasted["preview_percent"] == 25 and pasted["check_previews"] is False


def test_truncated_prompts_get_one_note_with_one_limit(world: World) -> None:
    world.scorer.truncate = True
    processed = world.run(world.p(TOP1, batch_size=1, n_iter=2))
    assert processed.comments.count("longer than ImageReward reads") == 1
    assert "33 word pieces, 35 tokens" in TRUNCATION_NOTE


# ------------------------------------------------------------------------------------- 14. the saved file


def test_score_of_the_saved_file_matches_with_face_restoration_and_colour_correction(world: World) -> None:
    init = [Image.new("RGB", (16, 16), "gray")]
    p = world.p(TOP1, batch_size=1, n_iter=2, restore_faces=True, color_correction=True, init_images=init)
    world.run(p)
    for f in world.host.disk.finals():
        assert read_score(f.info) == pytest.approx(pixel_score("a red car", Image.open(f.path)), abs=1e-3)


def test_real_tiny_model_rescoring_the_saved_png_reproduces_the_infotext(world: World, model_dir: Path) -> None:
    from imagereward.scorer import ImageRewardScorer

    scorer = ImageRewardScorer.load(model_dir, device="cpu", offline=True, progress=False)
    world.script.RUNTIME = ScorerRuntime(lambda settings: scorer)
    p = world.p(TOP1, before=[ADetailer()], batch_size=2, n_iter=1, width=64, height=64)
    world.run(p)
    finals = world.host.disk.finals()
    assert len(finals) == 2
    for f in finals:
        again = scorer.score(parse_infotext(f.info).prompt, [f.path], clean_prompts=True)[0]
        assert read_score(f.info) == pytest.approx(again, abs=1e-3)


# ------------------------------------------------------------------------------- 15. below the threshold


def test_threshold_keeps_the_best_of_each_requested_image_with_none_passing(world: World) -> None:
    # Find a threshold that one requested image reaches and the other does not.
    p = world.p({"mode": "sort", "candidates": 4}, batch_size=2, n_iter=1)
    processed = world.run(p)
    best = [read_score(t) for t in world.kept(processed)[::4]]
    threshold = round((best[0] + best[1]) / 2, 3)
    p = world.p(
        {"mode": "top-k above threshold", "candidates": 4, "k": 2, "threshold": threshold}, batch_size=2, n_iter=1
    )
    processed = world.run(p)
    kept = world.kept(processed)
    low = 0 if best[0] < best[1] else 1
    assert any(read_score(t) < threshold for t in kept)  # the low image kept its best candidate
    assert f"image {low + 1}" in processed.comments
    world.host.opts.imagereward_below_threshold = "keep nothing"
    processed = world.run(
        world.p({"mode": "threshold", "candidates": 4, "threshold": threshold}, batch_size=2, n_iter=1)
    )
    assert all(read_score(t) >= threshold for t in world.kept(processed))
    assert "kept nothing" in processed.comments


# --------------------------------------------------------------------------------------- X/Y/Z, Upscale


def test_xyz_cells_share_extra_generation_params_without_inheriting_our_entries(world: World) -> None:
    base = world.p(TOP1, batch_size=1, n_iter=1)
    cell_on = copy(base)
    processed_on = world.run(cell_on)
    cell_off = world.p(None, batch_size=1, n_iter=1)
    cell_off.extra_generation_params = base.extra_generation_params  # X/Y/Z's copies share the dict
    processed_off = world.run(cell_off)
    assert read_score(world.kept(processed_on)[0]) is not None
    assert "ImageReward" not in processed_off.infotexts[0]


def test_upscale_of_one_image_scores_it_alone(world: World) -> None:
    p = world.p(TOP1, batch_size=1, n_iter=1, firstpass_image=Image.new("RGB", (16, 16)))
    processed = world.run(p)
    assert len(world.spy.made) == 1 and len(world.kept(processed)) == 1
    assert read_score(world.kept(processed)[0]) is not None


def test_api_limit_matches_the_ui() -> None:
    from imagereward.webui.args import ArgumentError, validate

    assert validate({"candidates": 64}).candidates == 64
    with pytest.raises(ArgumentError, match="between 1 and 64"):
        validate({"candidates": 65})


# ------------------------------------------------------------------------------------ 10. the score endpoint


def _client(world: World):
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    app = fastapi.FastAPI()
    for callback in world.host.app_started:
        callback(None, app)
    return app, TestClient(app)


def _png_b64() -> str:
    import base64
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_score_endpoint_follows_the_webui_api_rules(world: World) -> None:
    world.host.cmd_opts.api = False
    app, _ = _client(world)
    assert all(getattr(route, "path", "") != "/imagereward/v1/score" for route in app.routes)  # no --api: no route

    world.host.cmd_opts.api = True
    world.host.cmd_opts.api_auth = "alice:s3cret:x,bob:pw"
    _, client = _client(world)
    body = {"prompt": "a red car", "images": [_png_b64()]}
    assert client.post("/imagereward/v1/score", json=body).status_code == 401
    assert client.post("/imagereward/v1/score", json=body, auth=("alice", "wrong")).status_code == 401
    answer = client.post("/imagereward/v1/score", json=body, auth=("alice", "s3cret:x"))
    assert answer.status_code == 200 and len(answer.json()["scores"]) == 1


def test_score_endpoint_waits_for_the_queue_lock(world: World) -> None:
    import threading

    _, client = _client(world)
    body = {"prompt": "a red car", "images": [_png_b64()]}
    result: dict[str, Any] = {}
    with world.host.queue_lock:  # a generation is running
        thread = threading.Thread(target=lambda: result.update(r=client.post("/imagereward/v1/score", json=body)))
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive() and world.scorer.calls == []  # no scoring in the middle of a generation
    thread.join(timeout=30)
    assert result["r"].status_code == 200 and len(world.scorer.calls) == 1


def test_score_endpoint_answers_503_not_500_when_scoring_fails(world: World) -> None:
    world.scorer = FakeScorer(fail=True)
    _, client = _client(world)
    answer = client.post("/imagereward/v1/score", json={"prompt": "x", "images": [_png_b64()]})
    assert answer.status_code == 503 and "model file is broken" in answer.json()["detail"]


# ----------------------------------------------------------------- the details contract, shared with the JS tests

GENERATION_INFO = Path(__file__).parent / "fixtures" / "generation_info.json"


class TableScorer(FakeScorer):
    """A stand-in `ScorerSet`: one column per scorer name, each a different function of the same pixels."""

    OFFSETS: ClassVar[dict[str, tuple[float, float]]] = {
        "pickscore": (21.0, 1.5),
        "imagereward": (0.0, 1.0),
        "hpsv2.1": (0.27, 0.02),
        "ensemble": (0.0, 0.9),
    }

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names

    def score(self, prompts: list[str], images: list[Any], clean_prompts: bool = False) -> dict[str, list[float]]:
        base = super().score(prompts, images, clean_prompts)
        return {name: [self.OFFSETS[name][0] + self.OFFSETS[name][1] * v for v in base] for name in self.names}


def _generation_info(world: World, scorer: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the WebUI's Processed.js() gives the front end, for a fixed best-of-4 job (batch 2 x count 2)."""
    processed = world.run(world.p({**TOP1, **(scorer or {})}, batch_size=2, n_iter=2))
    return {
        "index_of_first_image": processed.index_of_first_image,
        "infotexts": processed.infotexts,
        "extra_generation_params": processed.extra_generation_params,
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-3
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, str) and read_score(a) is not None:
        return parse_infotext(a).prompt == parse_infotext(b).prompt and _same(read_score(a), read_score(b))
    return a == b


def test_details_json_matches_the_fixture_the_javascript_tests_read(world: World) -> None:
    """tests/js/contract.test.js reads the same file: if the Python side changes what it writes, this fails until
    the fixture is regenerated (IMAGEREWARD_WRITE_FIXTURES=1), and then the JavaScript tests check the new shape."""
    import json
    import os

    info = json.loads(json.dumps(_generation_info(world)))
    if os.environ.get("IMAGEREWARD_WRITE_FIXTURES"):
        GENERATION_INFO.write_text(json.dumps(info, indent=1) + "\n")
    assert _same(info, json.loads(GENERATION_INFO.read_text()))
    for entry in info["extra_generation_params"][DETAILS_KEY]["images"]:  # details agree with the infotexts
        assert entry["score"] == pytest.approx(read_score(info["infotexts"][entry["index"]]), abs=6e-4)


SCORER_JOBS = {
    "pickscore": ({"scorer": "pickscore"}, ("pickscore",), "PickScore"),
    "ensemble": (
        {"scorer": "ensemble", "weights": "imagereward=1,hpsv2.1=2"},
        ("ensemble", "imagereward", "hpsv2.1"),
        "Ensemble",
    ),
}


@pytest.mark.parametrize("job", sorted(SCORER_JOBS))
def test_other_scorers_write_their_own_key_and_the_fixture_the_javascript_tests_read(world: World, job: str) -> None:
    import json
    import os

    from imagereward.infotext import parse_infotext

    args, names, key = SCORER_JOBS[job]
    world.scorer = TableScorer(names)
    info = json.loads(json.dumps(_generation_info(world, args)))
    fixture = GENERATION_INFO.with_name(f"generation_info_{job}.json")
    if os.environ.get("IMAGEREWARD_WRITE_FIXTURES"):
        fixture.write_text(json.dumps(info, indent=1) + "\n")
    assert _same(info, json.loads(fixture.read_text()))
    details = info["extra_generation_params"][DETAILS_KEY]
    assert details["summary"]["scorer"] == names[0] and details["summary"]["score_key"] == key
    for entry in details["images"]:
        settings = parse_infotext(info["infotexts"][entry["index"]]).settings
        assert "ImageReward" not in settings or job == "ensemble"  # ImageReward's key only as an ensemble member
        assert float(settings[key]) == pytest.approx(entry["score"], abs=6e-4)
        assert settings["ImageReward scorer"] == key  # pastes back the choice
        for member in names[1:]:  # the ensemble's members are written beside it
            assert {"imagereward": "ImageReward", "hpsv2.1": "HPSv2-1"}[member] in settings
    scores = [entry["score"] for entry in details["images"]]
    assert len(scores) == 4 and all(isinstance(s, float) for s in scores)  # one kept per requested image


def test_the_scorer_table_fixture_the_javascript_tests_read_is_current() -> None:
    import json
    import os

    from imagereward.scorers.specs import front_end_table

    fixture = GENERATION_INFO.with_name("scorers.json")
    table = front_end_table()
    if os.environ.get("IMAGEREWARD_WRITE_FIXTURES"):
        fixture.write_text(json.dumps(table, indent=1) + "\n")
    assert table == json.loads(fixture.read_text())


def test_score_endpoint_refuses_an_oversized_body_before_holding_it(world: World, monkeypatch) -> None:
    from imagereward.webui import api

    monkeypatch.setattr(api, "MAX_BODY_BYTES", 2000)
    _, client = _client(world)
    answer = client.post("/imagereward/v1/score", json={"prompt": "x", "images": ["A" * 3000]})
    assert answer.status_code == 422 and "2,000" in answer.json()["detail"]
    assert world.scorer.calls == []


# ---------------------------------------------------------------------------------------------- the folder tab


def test_folder_tab_is_registered(world: World) -> None:
    (tabs,) = [callback() for callback in world.host.ui_tabs]
    _blocks, title, elem_id = tabs[0]
    assert title == "ImageReward" and elem_id == "imagereward_tab"


def _folder_tab_buttons(world: World) -> dict[str, Any]:
    """The tab as the WebUI builds it (through the registered `on_ui_tabs` callback), its buttons by label."""
    from imagereward.webui import tab

    built: dict[str, Any] = {}
    original = tab.gr.Button

    class Recording(original):  # type: ignore[misc,valid-type]
        def __init__(self, label: str = "", *args: Any, **kwargs: Any) -> None:
            super().__init__(label, *args, **kwargs)
            built[label] = self

    tab.gr.Button = Recording
    try:
        for callback in world.host.ui_tabs:
            callback()
    finally:
        tab.gr.Button = original
    return built


def test_folder_tab_show_handler_for_an_unscored_and_a_missing_folder(world: World, tmp_path: Path) -> None:
    show = _folder_tab_buttons(world)["Show"].handlers[0][0]
    (tmp_path / "empty").mkdir()
    items, _, line, page = show(str(tmp_path / "empty"), "", "", "", 1)
    assert items == [] and "has not been scored yet" in line and page == 1
    items, _, line, _ = show(str(tmp_path / "nowhere"), "", "", "", 1)
    assert items == [] and "is not a folder" in line  # a sentence, not a traceback


def test_a_job_whose_loop_failed_has_its_held_back_saves_written_by_the_next_job(world: World) -> None:
    def fail(p: P, n: int) -> None:
        if n == 2:
            raise RuntimeError("out of memory in the sampler")

    p = world.p(TOP1, batch_size=1, n_iter=1, before_sampling=fail)
    with pytest.raises(RuntimeError):
        process_images(p)  # the WebUI's loop raises: no postprocess
    assert world.host.disk.finals() == []  # held back
    del p
    import gc

    gc.collect()
    world.run(world.p(None, batch_size=1, n_iter=1))  # the next job, ImageReward off
    assert sorted(f.seed for f in world.host.disk.finals()) == [1000, 1000, 1001]  # 1000, 1001: the failed job


# ------------------------------------------------------------------------------------------- the scorer choice


def test_the_accordion_offers_the_scorers_and_the_threshold_follows_the_choice(world: World) -> None:
    from imagereward.webui.args import FIELD_NAMES

    world.host.opts.imagereward_scorers = ["PickScore", "Ensemble"]  # ImageReward is always offered
    script = world.script.ImageRewardScript()
    controls = script.ui(False)
    assert len(controls) == len(FIELD_NAMES)
    scorer = controls[FIELD_NAMES.index("scorer")]
    assert scorer.kwargs["choices"] == ["ImageReward", "PickScore", "Ensemble"]
    threshold, weights = controls[FIELD_NAMES.index("threshold")], controls[FIELD_NAMES.index("weights")]
    ((changed, inputs, outputs),) = scorer.handlers
    assert inputs == [scorer, threshold] and outputs == [threshold, weights]
    from imagereward.scorers.specs import SCORERS

    pick = SCORERS["pickscore"].scale
    slider, box = changed("PickScore", 0.0)  # PickScore's range and default, the weights box hidden
    assert (slider["minimum"], slider["maximum"], slider["value"]) == (
        pick.minimum,
        pick.maximum,
        pick.default_threshold,
    )
    assert box == {"visible": False}
    slider, _ = changed("PickScore", 21.5)  # a pasted PickScore threshold is kept
    assert slider["value"] == 21.5
    slider, _ = changed("ImageReward", 21.5)  # out of ImageReward's range: its default
    assert slider["value"] == 0.0 and slider["maximum"] == 3.0
    slider, box = changed("Ensemble", 0.5)
    assert slider["value"] == 0.5 and box == {"visible": True}
    pasted = dict(script.infotext_fields)
    assert pasted[scorer]({"ImageReward scorer": "PickScore"})["value"] == "PickScore"


def test_the_score_endpoint_takes_a_scorer(world: World) -> None:
    import base64
    import io

    world.scorer = TableScorer(("ensemble", "imagereward", "hpsv2.1"))
    _, client = _client(world)
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    body = {"prompt": "a red square", "images": [image], "scorer": "ensemble", "weights": "imagereward=1,hpsv2.1=1"}
    answer = client.post("/imagereward/v1/score", json=body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["scorer"] == "ensemble" and set(data["members"]) == {"imagereward", "hpsv2.1"}
    refused = client.post("/imagereward/v1/score", json={**body, "scorer": "ensemble", "weights": "pickscore=1"})
    assert refused.status_code == 422 and "cannot join the ensemble" in refused.json()["detail"]
    unknown = client.post("/imagereward/v1/score", json={**body, "scorer": "judge"})
    assert unknown.status_code == 422 and "scorer must be one of" in unknown.json()["detail"]


def test_kept_aside_discarded_images_keep_their_before_copies_beside_them(world: World) -> None:
    """Issue 22.6: with "keep discarded" and "save before highres fix", the discarded finals went to the discarded
    folder but their before-copies nowhere."""
    world.host.opts.save_images_before_highres_fix = True
    p = world.p({**TOP1, "keep_discarded": True}, batch_size=1, n_iter=1, enable_hr=True)
    processed = world.run(p)
    (kept,) = world.kept(processed)
    aside = [f for f in world.host.disk.files if "imagereward-discarded" in str(f.path)]
    finals = sorted(f.seed for f in aside if f.suffix == "")
    befores = sorted(f.seed for f in aside if f.suffix == "-before-highres-fix")
    assert len(finals) == 3 and befores == finals and seed_of(kept) not in finals
    assert all("ImageReward: " in f.info for f in aside if f.suffix == "")


def test_folder_tab_every_action_returns_the_page_it_shows(world: World, tmp_path: Path, scorer) -> None:
    """Issue 22.2: Next page on a one-page result set Page to 2 and emptied the gallery; after scoring another folder,
    Show said "page 1 of 1" with Page still 2. Score, Show, Next, Previous and Enter in a filter each return the page
    their gallery shows (a page past the end: the last one)."""
    pytest.importorskip("pyarrow")
    from imagereward.webui import tab
    from imagereward.webui.folders import FolderPolicy
    from tests.collection_data import write_images

    first, second = tmp_path / "out" / "first", tmp_path / "out" / "second"
    write_images(first, 3)
    write_images(second, 2, start=3)
    rules = FolderPolicy.make(restricted=False, output_folders=[tmp_path / "out"], stores_dir=tmp_path / "st")
    actions = tab.FolderTabActions(lambda *names: scorer, lambda: None, threading.Lock(), lambda: rules)
    items, _, status, page = actions.score(str(first), False, "", "", "")
    assert (len(items), page) == (3, 1) and "3 scored" in status and "page 1 of 1" in status
    items, _, status, page = actions.step(1)(str(first), "", "", "", page)  # Next on the only page
    assert (len(items), page) == (3, 1) and "page 1 of 1" in status
    items, _, _, page = actions.step(-1)(str(first), "", "", "", 1)
    assert (len(items), page) == (3, 1)
    items, _, status, page = actions.score(str(second), False, "", "", "")  # Page was 2 before this: now 1
    assert (len(items), page) == (2, 1) and "page 1 of 1" in status
    items, _, status, page = actions.show(str(second), "", "", "", 2)
    assert (len(items), page) == (2, 1) and "page 1 of 1" in status
    items, _, status, page = actions.first_page(str(first), "", "", "zzz no such prompt", 3)
    assert (items, page) == ([], 1) and "0 image(s) match; page 1 of 1" in status
