"""PickScore v1 (`pickscore`, family `pickscore-v1`): parity with the model card's code (transformers' AutoProcessor +
AutoModel), run by `tests/reference/pickscore_worker.py`.

Always: committed golden scores and token ids produced by the reference for a tiny random checkpoint that the
reference's own classes wrote in the release's layout (`tests/fixtures/scorers/pickscore/`); loading through the
registry with the files placed; what the loader reads and refuses. When `IMAGEREWARD_PICKSCORE_REFERENCE_PYTHON`
names an interpreter with transformers 4.55 (`/work/refenv`): live comparisons on a new tiny checkpoint (both weight
files), and the full-size model when `IMAGEREWARD_PICKSCORE_FULL_CHECKPOINT_DIR` names a folder written by
`pickscore_worker.py make-checkpoint --size full` (slow).
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
from imagereward.preprocess import resized_size, uint8_to_pixels
from imagereward.scorers import pickscore
from imagereward.scorers.registry import FAMILY_MODULES, load_scorers
from imagereward.scorers.specs import SCORERS

FIXTURES = Path(__file__).parent / "fixtures"
RELEASE = FIXTURES / "scorers" / "pickscore" / "release"
GOLDENS = FIXTURES / "scorers" / "pickscore" / "goldens.json"
IMAGES = FIXTURES / "images"
WORKER = Path(__file__).parent / "reference" / "pickscore_worker.py"
REFERENCE_PYTHON = os.environ.get("IMAGEREWARD_PICKSCORE_REFERENCE_PYTHON")
FULL_DIR = os.environ.get("IMAGEREWARD_PICKSCORE_FULL_CHECKPOINT_DIR")
needs_reference = pytest.mark.skipif(not REFERENCE_PYTHON, reason="IMAGEREWARD_PICKSCORE_REFERENCE_PYTHON is not set")
#: Images whose crop offset differs between transformers' floor and torchvision's rounding (291 - 224 = 67).
FLOOR_CROP_IMAGES = {"palette.png"}
TOLERANCE = 1e-4  # scores are about +-20 (exp(logit_scale) = 100 times a cosine); measured 7.6e-6


def goldens() -> dict:
    return json.loads(GOLDENS.read_text("utf-8"))


def place_files(models_dir: Path, source: Path = RELEASE) -> Path:
    """The family's folder as a download leaves it (FILES' relative paths)."""
    folder = models_dir / pickscore.FAMILY_KEY
    for file in pickscore.FILES:
        target = folder / file.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / file.relpath, target)
    return folder


def processor_pixels(path: Path) -> torch.Tensor:
    """transformers' CLIPImageProcessor, written out: RGB first, short side to 224 (PIL bicubic), crop at
    (side - 224) // 2, CLIP's normalisation."""
    image = Image.open(path).convert("RGB")
    height, width = resized_size(image.height, image.width, 224)
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), Image.BICUBIC)
    top, left = (height - 224) // 2, (width - 224) // 2
    array = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.uint8)
    return uint8_to_pixels(array)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> pickscore.LoadedModel:
    """The committed release, loaded from a copy with the downloaded files only (nothing is written to tests/)."""
    folder = place_files(tmp_path_factory.mktemp("release"))
    return pickscore.FAMILY.load(folder, frozenset({"pickscore"}), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    place_files(root)
    return root


@pytest.fixture(scope="module")
def scorers(models_dir: Path):
    return load_scorers(["pickscore"], models_dir, device="cpu", offline=True, progress=False, batch_size=8)


def by_prompt(items: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(item["prompt"], []).append(item)
    return groups


# ------------------------------------------------------------------------------------------------- the table


def test_registered() -> None:
    assert FAMILY_MODULES["pickscore-v1"] == "imagereward.scorers.pickscore"
    assert SCORERS["pickscore"].family == pickscore.FAMILY.key == "pickscore-v1"
    assert pickscore.FAMILY.outputs == ("pickscore",)
    names = {file.relpath for file in pickscore.FILES}
    assert names == {
        "config.json",
        "model.safetensors",
        "processor/preprocessor_config.json",
        "processor/vocab.json",
        "processor/merges.txt",
    }
    assert all(file.repo_id for file in pickscore.FILES)  # all on the hub: no URL files


def test_golden_fixture_is_what_the_reference_scored() -> None:
    data = goldens()
    info = json.loads((RELEASE / "reference_info.json").read_text("utf-8"))
    assert data["model_sha256"] == info["files"]["model.safetensors"]["sha256"]
    assert len(data["items"]) == 8 * 5
    assert max(len(ids) for ids in data["tokens"].values()) == 77  # one prompt was truncated by the reference


# ------------------------------------------------------------------------------------------------- prompts


def test_tokens_match_the_reference(loaded) -> None:
    for prompt, ids in goldens()["tokens"].items():
        assert loaded.encoder([prompt]).input_ids[0].tolist() == ids, prompt


def test_html_entities_are_kept_as_written(loaded) -> None:
    """transformers' tokenizer does not decode "&amp;" (OpenAI's does): PickScore reads it as written."""
    encoder = loaded.encoder
    assert encoder(["fish &amp; chips"]).input_ids.tolist() != encoder(["fish & chips"]).input_ids.tolist()
    assert pickscore.hf_normalise("A\u0301  B\tC") == "\u00e1 b c"


def test_long_prompt_is_truncated_like_the_reference(loaded) -> None:
    long_prompt = max(goldens()["tokens"], key=len)
    batch = loaded.encoder([long_prompt, "a cat"])
    assert batch.truncated == (True, False)
    assert batch.input_ids.shape[1] == 77 and int(batch.input_ids[0, -1]) == loaded.encoder.end_id


# ------------------------------------------------------------------------------------------------- goldens


def test_model_matches_goldens(loaded) -> None:
    """Model and prompt encoder against the reference, with transformers' preprocessing written out."""
    worst = 0.0
    for prompt, items in by_prompt(goldens()["items"]).items():
        pixels = torch.stack([processor_pixels(IMAGES / item["image"]) for item in items])
        batch = loaded.encoder([prompt] * len(items))
        with torch.inference_mode():
            got = loaded.model(pixels, batch.input_ids, batch.attention_mask)["pickscore"]
        expected = torch.tensor([item["score"] for item in items])
        worst = max(worst, float((got - expected).abs().max()))
    assert worst < TOLERANCE


def test_scores_through_the_registry_match_goldens(scorers) -> None:
    for prompt, items in by_prompt(goldens()["items"]).items():
        got = scorers.score(prompt, [IMAGES / item["image"] for item in items], clean_prompts=False)["pickscore"]
        np.testing.assert_allclose(got, [item["score"] for item in items], atol=TOLERANCE, rtol=0)


def test_engine_crops_like_transformers(scorers) -> None:
    """palette.png is cropped one row higher than torchvision would: the score then moves by about 1e-3."""
    assert scorers.scorers[0].model.pixel_spec.crop_rounding == "floor"
    items = [item for item in goldens()["items"] if item["image"] in FLOOR_CROP_IMAGES]
    assert len(items) == 5
    for item in items:
        got = scorers.score(item["prompt"], [IMAGES / item["image"]], clean_prompts=False)["pickscore"][0]
        assert abs(got - item["score"]) < TOLERANCE


def test_arrays_take_the_processor_path_too(scorers) -> None:
    """In-memory images (the tensor path: RGB first, then torch's antialiased bicubic instead of PIL's) score within
    4e-4 of their files on the tiny model (scores about +-20). An array of a palette image holds indices: left out."""
    items = [item for item in goldens()["items"] if item["image"] != "palette.png"]
    for prompt, group in by_prompt(items).items():
        arrays = [np.asarray(Image.open(IMAGES / item["image"])) for item in group]
        got = scorers.score(prompt, arrays, clean_prompts=False)["pickscore"]
        np.testing.assert_allclose(got, [item["score"] for item in group], atol=2e-3, rtol=0)


def test_pixel_spec_follows_the_processor_config(loaded) -> None:
    spec = loaded.model.pixel_spec
    assert (spec.size, spec.rgb_before_resize) == (224, True)
    assert spec.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


# ------------------------------------------------------------------------------------------------- files


def legacy_bin(folder: Path) -> None:
    """The repo's older weights file in place of model.safetensors: a plain `torch.save` of the state dict, with
    the `position_ids` buffers (int64) that transformers of 2023 saved."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    state["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    state["vision_model.embeddings.position_ids"] = torch.arange(257).unsqueeze(0)
    torch.save(state, folder / pickscore.LEGACY_WEIGHTS_NAME)
    (folder / "model.safetensors").unlink()


def test_pytorch_model_bin_is_read_and_cached(tmp_path: Path, loaded) -> None:
    folder = place_files(tmp_path)
    legacy_bin(folder)
    other = pickscore.FAMILY.load(folder, frozenset({"pickscore"}), torch.device("cpu"), torch.float32)
    assert (folder / "pytorch_model.safetensors").is_file()  # converted once, read next time
    pixels = processor_pixels(IMAGES / "rgb_512.png").unsqueeze(0)
    batch = loaded.encoder(["a cat"])
    with torch.inference_mode():
        a = loaded.model(pixels, batch.input_ids, batch.attention_mask)["pickscore"]
        b = other.model(pixels, batch.input_ids, batch.attention_mask)["pickscore"]
    assert torch.allclose(a, b, rtol=0, atol=1e-5)  # the same weights (memory layout may change the last bit)
    again = pickscore.FAMILY.load(folder, frozenset({"pickscore"}), torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        again_scores = again.model(pixels, batch.input_ids, batch.attention_mask)["pickscore"]
    assert torch.allclose(again_scores, a, rtol=0, atol=1e-5)


def test_a_placed_pytorch_model_bin_counts_as_present_offline(tmp_path: Path) -> None:
    """A user who put the repo's older pytorch_model.bin in place is not asked for model.safetensors."""
    from imagereward.hub import present_path, resolve_files

    folder = place_files(tmp_path)
    legacy_bin(folder)
    weights_file = next(f for f in pickscore.FAMILY.files if f.relpath == pickscore.WEIGHTS_NAME)
    assert present_path(folder, weights_file) == folder / pickscore.LEGACY_WEIGHTS_NAME
    resolve_files(folder, pickscore.FAMILY.files, offline=True)  # no "missing" error
    (folder / pickscore.LEGACY_WEIGHTS_NAME).write_bytes(b"PK\x03\x04 cut off")  # a truncated copy does not count
    assert present_path(folder, weights_file) is None


def test_missing_files_are_named_offline(tmp_path: Path) -> None:
    folder = place_files(tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "processor" / "merges.txt").unlink()
    with pytest.raises(ModelFileMissingError) as info:
        load_scorers(["pickscore"], tmp_path, device="cpu", offline=True, progress=False)
    message = str(info.value)
    assert "model.safetensors" in message and "merges.txt" in message
    assert "yuvalkirstain/PickScore_v1" in message and "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in message


def test_truncated_weights_are_refused(tmp_path: Path) -> None:
    folder = place_files(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_scorers(["pickscore"], tmp_path, device="cpu", offline=True, progress=False)


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = place_files(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    del state["text_projection.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"text_projection\.weight"):
        load_scorers(["pickscore"], tmp_path, device="cpu", offline=True, progress=False)


def test_bad_config_is_refused(tmp_path: Path) -> None:
    folder = place_files(tmp_path)
    (folder / "config.json").write_text("{not json", "utf-8")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_scorers(["pickscore"], tmp_path, device="cpu", offline=True, progress=False)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}), "utf-8")
    with pytest.raises(CheckpointError, match="not a CLIP configuration"):
        load_scorers(["pickscore"], tmp_path, device="cpu", offline=True, progress=False)


def test_other_preprocessing_is_refused(tmp_path: Path) -> None:
    folder = place_files(tmp_path)
    path = folder / "processor" / "preprocessor_config.json"
    config = json.loads(path.read_text("utf-8"))
    path.write_text(json.dumps({**config, "crop_size": 256}), "utf-8")
    with pytest.raises(CheckpointError, match="crop"):
        load_scorers(["pickscore"], tmp_path, device="cpu", offline=True, progress=False)


def test_a_pickle_with_code_is_refused(tmp_path: Path) -> None:
    folder = place_files(tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save({"weights": Path("x")}, folder / pickscore.LEGACY_WEIGHTS_NAME)
    with pytest.raises(CheckpointError):
        pickscore.FAMILY.load(folder, frozenset({"pickscore"}), torch.device("cpu"), torch.float32)


# ------------------------------------------------------------------------------------------------- random release


def test_write_random_release_tiny(tmp_path: Path) -> None:
    pickscore.write_random_release(tmp_path, size="tiny", seed=3)
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()} == {
        file.relpath for file in pickscore.FILES
    }
    loaded = pickscore.FAMILY.load(tmp_path, frozenset({"pickscore"}), torch.device("cpu"), torch.float32)
    batch = loaded.encoder(["a cat", "a dog on a skateboard"])
    pixels = torch.stack([processor_pixels(IMAGES / "rgb_512.png"), processor_pixels(IMAGES / "gray.png")])
    with torch.inference_mode():
        scores = loaded.model(pixels, batch.input_ids, batch.attention_mask)["pickscore"]
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert loaded.model.scale == pytest.approx(100.0)


def test_fp16_weights_keep_the_scale_in_fp32(loaded, tmp_path: Path) -> None:
    half = pickscore.FAMILY.load(place_files(tmp_path), frozenset({"pickscore"}), torch.device("cpu"), torch.bfloat16)
    assert half.model.clip.logit_scale.dtype == torch.bfloat16
    assert half.model.scale == loaded.model.scale  # a Python float from the checkpoint's fp32 value


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
    data = json.loads(out.read_text("utf-8"))
    loaded = pickscore.FAMILY.load(folder, frozenset({"pickscore"}), torch.device("cpu"), torch.float32)
    worst = 0.0
    for prompt, items in by_prompt(data["items"]).items():
        assert loaded.encoder([prompt]).input_ids[0].tolist() == data["tokens"][prompt]
        pixels = torch.stack([processor_pixels(IMAGES / item["image"]) for item in items])
        batch = loaded.encoder([prompt] * len(items))
        with torch.inference_mode():
            got = loaded.model(pixels, batch.input_ids, batch.attention_mask)["pickscore"]
        worst = max(worst, float((got - torch.tensor([i["score"] for i in items])).abs().max()))
    print(f"{folder}: {len(data['items'])} scores, max abs diff {worst:.3g}")
    return worst


LIVE_PROMPTS = [
    "a cat",
    "Two  dogs &amp; a \u201cparrot\u201d, <|endoftext|> watercolour",
    "caf\u00e9 au lait, \ufb01ne art, full-width \uff21\uff22",
    " ".join(["a very long prompt about a lighthouse on a stormy coast"] * 12),
]


@needs_reference
@pytest.mark.slow
def test_live_parity_on_a_new_tiny_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "release"
    vocab = RELEASE / "processor"
    run_worker("make-checkpoint", "--size", "tiny", "--seed", "7", "--vocab", str(vocab), "--out", str(folder), "--bin")
    assert compare_live(folder, tmp_path, LIVE_PROMPTS) < TOLERANCE
    (folder / "model.safetensors").rename(tmp_path / "kept.safetensors")  # now the .bin is what is read
    loaded = pickscore.FAMILY.load(folder, frozenset({"pickscore"}), torch.device("cpu"), torch.float32)
    assert loaded.model.scale == pytest.approx(100.0)


@needs_reference
@pytest.mark.slow
@pytest.mark.skipif(not FULL_DIR, reason="IMAGEREWARD_PICKSCORE_FULL_CHECKPOINT_DIR is not set")
def test_live_parity_full_size(tmp_path: Path) -> None:
    assert FULL_DIR
    prompts = [*goldens()["tokens"]]
    assert compare_live(Path(FULL_DIR), tmp_path, prompts) < TOLERANCE
