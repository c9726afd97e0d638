"""HPSv2.1 (`hpsv2.1`, family `hpsv2.1`): parity with `hpsv2.score(..., hps_version="v2.1")` of PyPI's `hpsv2==1.2.0`,
run by `tests/reference/hpsv2_worker.py`.

Always: committed golden scores produced by the reference for a tiny random checkpoint that the reference's own
code wrote in the release's format (`tests/fixtures/scorers/hpsv2/`); the letterbox preprocessing; loading through
the registry with the files placed; what the loader reads and refuses. When `IMAGEREWARD_HPSV2_REFERENCE_PYTHON`
names an interpreter with hpsv2 installed (`/work/hpsenv`): live comparisons on a new tiny checkpoint, and the
full-size model when `IMAGEREWARD_HPSV2_FULL_CHECKPOINT_DIR` names a folder written by `hpsv2_worker.py
make-checkpoint --size full` (slow).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagereward.errors import CheckpointError, ModelFileMissingError
from imagereward.preprocess import CLIP_MEAN, CLIP_STD
from imagereward.scorers import hpsv2
from imagereward.scorers.registry import FAMILY_MODULES, load_scorers
from imagereward.scorers.specs import SCORERS

FIXTURES = Path(__file__).parent / "fixtures"
RELEASE = FIXTURES / "scorers" / "hpsv2" / "release"
GOLDENS = FIXTURES / "scorers" / "hpsv2" / "goldens.json"
IMAGES = FIXTURES / "images"
WORKER = Path(__file__).parent / "reference" / "hpsv2_worker.py"
REFERENCE_PYTHON = os.environ.get("IMAGEREWARD_HPSV2_REFERENCE_PYTHON")
FULL_DIR = os.environ.get("IMAGEREWARD_HPSV2_FULL_CHECKPOINT_DIR")
needs_reference = pytest.mark.skipif(not REFERENCE_PYTHON, reason="IMAGEREWARD_HPSV2_REFERENCE_PYTHON is not set")
TOLERANCE = 1e-5  # cosines of about 0.06..0.2 on the tiny model; measured 9e-8


def goldens() -> dict:
    return json.loads(GOLDENS.read_text("utf-8"))


def scored_items() -> list[dict]:
    """Golden items with a score: every image, RGBA as its colour channels ("rgba_alpha.png#rgb")."""
    return [item for item in goldens()["items"] if "score" in item]


def image_path(item: dict) -> Path:
    return IMAGES / item["image"].split("#")[0]


def place_files(models_dir: Path, source: Path = RELEASE) -> Path:
    folder = models_dir / hpsv2.FAMILY_KEY
    for file in hpsv2.FILES:
        target = folder / file.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / file.relpath, target)
    return folder


def by_prompt(items: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(item["prompt"], []).append(item)
    return groups


def model_scores(loaded, prompt: str, paths: list[Path]) -> torch.Tensor:
    pixels = torch.stack([hpsv2.letterbox_pixels(Image.open(path)) for path in paths])
    batch = loaded.encoder([prompt] * len(paths))
    with torch.inference_mode():
        return loaded.model(pixels, batch.input_ids, batch.attention_mask)["hpsv2.1"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory):
    """The committed release, loaded from a copy (loading writes the safetensors cache beside the .pt)."""
    folder = place_files(tmp_path_factory.mktemp("release"))
    return hpsv2.FAMILY.load(folder, frozenset({"hpsv2.1"}), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def scorers(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("models")
    place_files(root)
    return load_scorers(["hpsv2.1"], root, device="cpu", offline=True, progress=False, batch_size=8)


# ------------------------------------------------------------------------------------------------- the table


def test_registered() -> None:
    assert FAMILY_MODULES["hpsv2.1"] == "imagereward.scorers.hpsv2"
    assert SCORERS["hpsv2.1"].family == hpsv2.FAMILY.key == "hpsv2.1"
    assert {file.relpath for file in hpsv2.FILES} == {
        "HPS_v2.1_compressed.pt",
        "clip-tokenizer/vocab.json",
        "clip-tokenizer/merges.txt",
    }
    assert hpsv2.CHECKPOINT_FILE.repo_id == "xswu/HPSv2"
    assert hpsv2.CHECKPOINT_FILE.alternatives == ("HPS_v2.1_compressed.safetensors",)


def test_golden_fixture_is_what_the_reference_scored() -> None:
    data = goldens()
    info = json.loads((RELEASE / "reference_info.json").read_text("utf-8"))
    assert data["checkpoint_sha256"] == info["sha256"]
    assert len(scored_items()) == 8 * 5
    errors = [item for item in data["items"] if "error" in item]
    assert {item["image"] for item in errors} == {"rgba_alpha.png"}  # the reference fails on RGBA
    assert all("4 channels" in item["error"] for item in errors)


def test_release_format() -> None:
    """What `img_score.score` loads: {"state_dict": open_clip keys}, fp16 ("compressed")."""
    checkpoint = torch.load(RELEASE / hpsv2.CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"state_dict"}
    state = checkpoint["state_dict"]
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in state and "logit_scale" in state
    assert {t.dtype for t in state.values()} == {torch.float16}


# ------------------------------------------------------------------------------------------------- pixels


def test_letterbox_geometry() -> None:
    """A 300 x 100 white image: 224 x 75 (round(100 * 224 / 300) = 75) with 149 rows of padding, 74 above and 75
    below, black (zero) before the normalisation."""
    image = Image.new("RGB", (300, 100), (255, 255, 255))
    pixels = hpsv2.letterbox_pixels(image)
    assert pixels.shape == (3, 224, 224)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    levels = pixels * std + mean
    assert torch.allclose(levels[:, :74], torch.zeros(3, 74, 224), atol=1e-6)
    assert torch.allclose(levels[:, 74 + 75 :], torch.zeros(3, 75, 224), atol=1e-6)
    assert torch.allclose(levels[:, 76:147], torch.ones(3, 71, 224), atol=1e-3)


def test_letterbox_pads_an_image_already_224_long() -> None:
    """The reference neither resizes nor pads it (and then fails); it is padded here, 62 rows above."""
    pixels = hpsv2.letterbox_pixels(Image.new("RGB", (224, 100), (51, 102, 153)))
    levels = pixels * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1)
    assert pixels.shape == (3, 224, 224)
    assert torch.allclose(levels[:, 61], torch.zeros(3, 224), atol=1e-6)
    assert torch.allclose(levels[:, 62], torch.tensor([0.2, 0.4, 0.6]).view(3, 1).expand(3, 224), atol=1e-6)
    assert torch.allclose(levels[:, 162], torch.zeros(3, 224), atol=1e-6)


def test_rgba_is_scored_as_its_colour_channels(loaded) -> None:
    rgba = Image.open(IMAGES / "rgba_alpha.png")
    assert rgba.mode == "RGBA"
    assert torch.equal(hpsv2.letterbox_pixels(rgba), hpsv2.letterbox_pixels(rgba.convert("RGB")))


# ------------------------------------------------------------------------------------------------- goldens


def test_tokens_of_the_long_prompt(loaded) -> None:
    prompts = [*by_prompt(scored_items())]
    batch = loaded.encoder(prompts)
    assert batch.truncated == tuple(len(p) > 200 for p in prompts)
    assert sum(batch.truncated) == 1


def test_model_matches_goldens(loaded) -> None:
    worst = 0.0
    for prompt, items in by_prompt(scored_items()).items():
        got = model_scores(loaded, prompt, [image_path(item) for item in items])
        worst = max(worst, float((got - torch.tensor([item["score"] for item in items])).abs().max()))
    assert worst < TOLERANCE


def test_scores_through_the_registry_match_goldens(scorers) -> None:
    for prompt, items in by_prompt(scored_items()).items():
        got = scorers.score(prompt, [image_path(item) for item in items], clean_prompts=False)["hpsv2.1"]
        np.testing.assert_allclose(got, [item["score"] for item in items], atol=TOLERANCE, rtol=0)


def test_arrays_match_goldens_too(scorers) -> None:
    """The reference resizes float tensors, so in-memory images (the tensor path) match as closely as files."""
    items = [item for item in scored_items() if item["image"] != "palette.png"]  # an array of a P image is indices
    for prompt, group in by_prompt(items).items():
        arrays = [np.asarray(Image.open(image_path(item))) for item in group]
        got = scorers.score(prompt, arrays, clean_prompts=False)["hpsv2.1"]
        np.testing.assert_allclose(got, [item["score"] for item in group], atol=TOLERANCE, rtol=0)


# ------------------------------------------------------------------------------------------------- files


def test_safetensors_cache_and_fp32_file(tmp_path: Path, loaded) -> None:
    folder = place_files(tmp_path)
    state = torch.load(folder / hpsv2.CHECKPOINT_NAME, map_location="cpu", weights_only=True)["state_dict"]
    torch.save({"state_dict": {k: v.float() for k, v in state.items()}, "epoch": 10}, folder / hpsv2.CHECKPOINT_NAME)
    other = hpsv2.FAMILY.load(folder, frozenset({"hpsv2.1"}), torch.device("cpu"), torch.float32)
    assert (folder / hpsv2.CACHE_NAME).is_file()
    paths = [IMAGES / "rgb_wide.png", IMAGES / "gray.png"]
    assert torch.allclose(model_scores(other, "a cat", paths), model_scores(loaded, "a cat", paths), atol=1e-6)
    (folder / hpsv2.CHECKPOINT_NAME).unlink()  # the conversion stands for the release file
    again = load_scorers(["hpsv2.1"], tmp_path, device="cpu", offline=True, progress=False)
    assert again.scorers[0].model.outputs == ("hpsv2.1",)


def test_missing_files_are_named_offline(tmp_path: Path) -> None:
    folder = place_files(tmp_path)
    (folder / hpsv2.CHECKPOINT_NAME).unlink()
    with pytest.raises(ModelFileMissingError) as info:
        load_scorers(["hpsv2"], tmp_path, device="cpu", offline=True, progress=False)
    assert "HPS_v2.1_compressed.pt" in str(info.value) and "xswu/HPSv2" in str(info.value)


def test_truncated_checkpoint_counts_as_missing(tmp_path: Path) -> None:
    folder = place_files(tmp_path)
    data = (folder / hpsv2.CHECKPOINT_NAME).read_bytes()
    (folder / hpsv2.CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileMissingError, match="truncated"):
        load_scorers(["hpsv2.1"], tmp_path, device="cpu", offline=True, progress=False)
    with pytest.raises(CheckpointError):
        hpsv2.FAMILY.load(folder, frozenset({"hpsv2.1"}), torch.device("cpu"), torch.float32)


def test_wrong_checkpoints_are_refused(tmp_path: Path) -> None:
    folder = place_files(tmp_path)
    path = folder / hpsv2.CHECKPOINT_NAME
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    torch.save({"state_dict": {k: v for k, v in state.items() if k != "ln_final.bias"}}, path)
    with pytest.raises(CheckpointError, match="final_layer_norm"):
        hpsv2.FAMILY.load(folder, frozenset({"hpsv2.1"}), torch.device("cpu"), torch.float32)
    torch.save({"state_dict": {**state, "visual.extra": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match=r"visual\.extra"):
        hpsv2.FAMILY.load(folder, frozenset({"hpsv2.1"}), torch.device("cpu"), torch.float32)
    torch.save({"state_dict": state, "args": Path("x")}, path)
    with pytest.raises(CheckpointError, match="refused for safety"):
        hpsv2.FAMILY.load(folder, frozenset({"hpsv2.1"}), torch.device("cpu"), torch.float32)
    assert not (folder / hpsv2.CACHE_NAME).exists()  # nothing refused was converted


def test_head_widths() -> None:
    assert hpsv2.head_width(1280) == 80 and hpsv2.head_width(1024) == 64  # the release: 16 heads in both towers
    assert hpsv2.head_width(32) == 16  # the tiny test model: 2 heads


# ------------------------------------------------------------------------------------------------- random release


def test_write_random_release_tiny(tmp_path: Path) -> None:
    hpsv2.write_random_release(tmp_path, size="tiny", seed=1)
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()} == {
        file.relpath for file in hpsv2.FILES
    }
    loaded = hpsv2.FAMILY.load(tmp_path, frozenset({"hpsv2.1"}), torch.device("cpu"), torch.float32)
    scores = model_scores(loaded, "a cat on a sofa", [IMAGES / "rgb_512.png", IMAGES / "la.png"])
    assert scores.shape == (2,) and torch.isfinite(scores).all() and scores.abs().max() <= 1.0


# ------------------------------------------------------------------------------------------------- live reference


def run_worker(*args: str) -> dict:
    assert REFERENCE_PYTHON
    result = subprocess.run(
        [REFERENCE_PYTHON, str(WORKER), *args], capture_output=True, text=True, check=False, timeout=3600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def compare_live(folder: Path, tmp_path: Path, prompts: list[str]) -> float:
    out = tmp_path / "scores.json"
    prompt_args = [arg for prompt in prompts for arg in ("--prompt", prompt)]
    run_worker("score", "--checkpoint-dir", str(folder), "--images-dir", str(IMAGES), *prompt_args, "--out", str(out))
    items = [item for item in json.loads(out.read_text("utf-8"))["items"] if "score" in item]
    loaded = hpsv2.FAMILY.load(folder, frozenset({"hpsv2.1"}), torch.device("cpu"), torch.float32)
    worst = 0.0
    for prompt, group in by_prompt(items).items():
        got = model_scores(loaded, prompt, [image_path(item) for item in group])
        worst = max(worst, float((got - torch.tensor([item["score"] for item in group])).abs().max()))
    print(f"{folder}: {len(items)} scores, max abs diff {worst:.3g}")
    return worst


LIVE_PROMPTS = [
    "a cat",
    "Two  dogs &amp; a \u201cparrot\u201d,   watercolour",
    "caf\u00e9 au lait, \ufb01ne art",
    " ".join(["a very long prompt about a lighthouse on a stormy coast"] * 12),
]


@needs_reference
@pytest.mark.slow
def test_live_parity_on_a_new_tiny_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "release"
    vocab = RELEASE / "clip-tokenizer"
    run_worker("make-checkpoint", "--size", "tiny", "--seed", "7", "--vocab", str(vocab), "--out", str(folder))
    assert compare_live(folder, tmp_path, LIVE_PROMPTS) < TOLERANCE


@needs_reference
@pytest.mark.slow
@pytest.mark.skipif(not FULL_DIR, reason="IMAGEREWARD_HPSV2_FULL_CHECKPOINT_DIR is not set")
def test_live_parity_full_size(tmp_path: Path) -> None:
    assert FULL_DIR
    prompts = [*by_prompt(scored_items())]
    assert compare_live(Path(FULL_DIR), tmp_path, prompts) < 1e-4
