"""The torch-free scorer table agrees with the models it names, and the score endpoint's early reduction of an image
leaves every scorer's score unchanged (each scorer sees images its own way: crop rounding, RGB order, letterbox)."""

from __future__ import annotations

import base64
import importlib
import io
from pathlib import Path

import pytest
from PIL import Image

from imagereward.scorers import registry
from imagereward.scorers.specs import SCORERS
from imagereward.webui.api import score_request
from tests.checkpoints import write_model_dir

FAMILIES = sorted({spec.family for spec in SCORERS.values()})


def _models(key: str, root: Path) -> Path:
    folder = registry.family_folder(root, registry.get_family(key))
    if key == "":
        write_model_dir(folder)
    else:
        importlib.import_module(registry.FAMILY_MODULES[key]).write_random_release(folder, size="tiny", seed=0)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for key in FAMILIES:
        _models(key, root)
    return root


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_the_table_describes_the_model(models: Path, name: str) -> None:
    spec = SCORERS[name]
    scorer = registry.load_family(spec.family, [name], models, device="cpu", offline=True, progress=False)
    pixels = scorer.model.pixel_spec
    assert scorer.outputs == (name,) and scorer.needs_prompt == spec.needs_prompt
    assert pixels.rgb_before_resize == spec.rgb_first
    assert (pixels.fit == "letterbox") == spec.letterbox
    assert (pixels.crop_rounding == "floor") == spec.floor_crop


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("name", ["pickscore", "hpsv2.1", "clip"])
def test_the_endpoint_reduction_keeps_each_scorers_score(models: Path, name: str) -> None:
    scorer = registry.load_family(SCORERS[name].family, [name], models, device="cpu", offline=True, progress=False)
    gradient = Image.linear_gradient("L").resize((291, 200))  # an odd margin: crop rounding matters
    rgba = Image.merge("RGBA", [gradient, gradient.rotate(90), gradient.transpose(Image.FLIP_LEFT_RIGHT), gradient])
    samples = [gradient.convert("RGB"), rgba, gradient.convert("P"), Image.linear_gradient("L").resize((200, 331))]
    encoded = [_png(image) for image in samples]
    direct = scorer.score("a red fox", [Image.open(io.BytesIO(base64.b64decode(e))) for e in encoded])

    def score(prompts, images, clean, **choice):
        assert choice["scorer"] == name
        return scorer.score(list(prompts), list(images), clean_prompts=clean)

    answer = score_request({"prompt": "a red fox", "images": encoded, "scorer": name}, score)
    assert answer["scores"] == pytest.approx(direct, abs=2e-5)


def test_images_kept_whole_are_bounded_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagereward.webui import api

    monkeypatch.setattr(api, "MAX_WHOLE_PIXELS", 100 * 100)
    image = _png(Image.new("RGB", (80, 80), "red"))

    def score(prompts, images, clean, **choice):
        return [0.0] * len(images)

    assert score_request({"prompt": "x", "images": [image], "scorer": "hpsv2.1"}, score)["scores"] == [0.0]
    with pytest.raises(api.ApiError, match="kept whole until scored"):
        score_request({"prompt": "x", "images": [image, image], "scorer": "hpsv2.1"}, score)
    assert score_request({"prompt": "x", "images": [image] * 3, "scorer": "pickscore"}, score)["scores"] == [0.0] * 3


def test_command_line_with_two_scorers_and_files_placed_offline(models: Path, tmp_path: Path, capsys) -> None:
    """The issue's acceptance: `imagereward --scorer pickscore --scorer aesthetic DIR` with the files in place."""
    import json

    from imagereward.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    sources = sorted((Path(__file__).parent / "fixtures" / "images").glob("*.png"))[:3]
    for i, source in enumerate(sources):
        Image.open(source).convert("RGB").save(folder / f"{i}.png")
    args = [str(folder), "-p", "a red fox", "--scorer", "pickscore", "--scorer", "aesthetic", "--models-dir",
            str(models), "--offline", "-q", "-f", "json"]  # fmt: skip
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(set(r["scores"]) == {"pickscore", "aesthetic"} for r in rows)
    direct = registry.load_scorers(["pickscore", "aesthetic"], models, offline=True).score(
        "a red fox", [folder / f"{i}.png" for i in range(3)]
    )
    by_path = {Path(r["path"]).name: r["scores"] for r in rows}
    for i in range(3):
        assert by_path[f"{i}.png"]["pickscore"] == pytest.approx(direct["pickscore"][i], abs=1e-5)
        assert by_path[f"{i}.png"]["aesthetic"] == pytest.approx(direct["aesthetic"][i], abs=1e-5)
    assert main([str(folder), "--scorer", "aesthetic", "--models-dir", str(models), "--offline", "-q"]) == 0
