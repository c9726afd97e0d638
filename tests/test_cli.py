"""The command line end to end: a folder of WebUI PNGs ranked by their own prompts."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin

from imagereward.cli import main
from tests.checkpoints import med_config, official_state_dict
from tests.fake_hub import FakeHub

IMAGES = Path(__file__).parent / "fixtures" / "images"
VOCAB = Path(__file__).parent / "fixtures" / "bert-base-uncased" / "vocab.txt"
CAT, DOG = "a cat on a sofa", "(a dog:1.2) in the park <lora:dogs:0.8>"


def webui_png(source: Path, target: Path, prompt: str | None, seed: int) -> Path:
    info = PngImagePlugin.PngInfo()
    if prompt is not None:
        info.add_text(
            "parameters",
            f"{prompt}\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: {seed}, Size: 512x512, Model: sd15",
        )
    Image.open(source).convert("RGB").save(target, pnginfo=info)
    return target


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    folder = tmp_path / "txt2img-images"
    folder.mkdir()
    sources = sorted(IMAGES.glob("*.png"))
    for i, source in enumerate(sources[:6]):
        webui_png(source, folder / f"{i:05d}-{i}.png", CAT if i % 2 == 0 else DOG, i)
    webui_png(sources[6], folder / "no-infotext.png", None, 0)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (folder / "notes.txt").write_text("not an image")
    return folder


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ranks_a_folder_by_each_images_own_prompt(outputs: Path, model_dir: Path, capsys) -> None:
    code, out, err = run([str(outputs), "--models-dir", str(model_dir), "--offline", "-q", "-f", "json"], capsys)
    rows = json.loads(out)
    scored = [r for r in rows if r["score"] is not None]
    assert len(scored) == 6 and {r["prompt"] for r in scored} == {CAT, DOG}
    for prompt in (CAT, DOG):  # ranks run within each prompt, best first
        group = [r for r in scored if r["prompt"] == prompt]
        assert [r["rank"] for r in group] == [1, 2, 3]
        assert [r["score"] for r in group] == sorted((r["score"] for r in group), reverse=True)
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert "pass --prompt" in errors["no-infotext.png"]
    assert "not a readable image" in errors["broken.png"]
    assert code == 1 and "broken.png" in err  # the rest was still scored


def test_prompt_option_and_top_k_copy(outputs: Path, model_dir: Path, tmp_path: Path, capsys) -> None:
    best = tmp_path / "best"
    best.mkdir()
    before = {p.name: p.read_bytes() for p in outputs.iterdir()}
    files = [str(outputs / name) for name in ("00000-0.png", "00001-1.png", "00002-2.png")]
    options = ["-p", "a photo", "-k", "2", "--copy-to", str(best), "--models-dir", str(model_dir), "--offline", "-q"]
    args = [*files, *options]
    code, out, _ = run([*args, "-f", "csv"], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["kept"] for r in rows] == ["1", "1", "0"] and [r["rank"] for r in rows] == ["1", "2", "3"]
    kept = sorted(Path(r["path"]).name for r in rows if r["kept"] == "1")
    assert sorted(p.name for p in best.iterdir()) == kept
    run(args, capsys)  # a second copy never overwrites: numbered names instead
    assert len(list(best.iterdir())) == 4
    assert {p.name: p.read_bytes() for p in outputs.iterdir()} == before  # originals untouched


def test_threshold_and_table(outputs: Path, model_dir: Path, capsys) -> None:
    code, out, _ = run(
        [
            str(outputs / "00000-0.png"),
            str(outputs / "00002-2.png"),
            "-t",
            "-100",
            "--models-dir",
            str(model_dir),
            "--offline",
            "-q",
        ],
        capsys,
    )
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["rank", "score", "kept"]
    assert all(" yes " in line for line in lines[1:])


def test_offline_without_model_names_the_missing_files(outputs: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run([str(outputs), "--models-dir", str(tmp_path / "empty"), "--offline", "-q"], capsys)
    assert code == 1
    assert "ImageReward.pt" in err and "Traceback" not in err


def test_usage_errors_are_short(tmp_path: Path, capsys) -> None:
    code, _, err = run([str(tmp_path / "nowhere")], capsys)
    assert code == 1 and "no such file or folder" in err and "no images found" in err
    code, _, err = run([str(tmp_path), "-k", "0"], capsys)
    assert code == 1 and "--top-k must be at least 1" in err


def test_first_run_downloads_the_model_from_the_hub(
    fake_hub: FakeHub,
    outputs: Path,
    tmp_path: Path,
    capsys,
) -> None:
    """The model comes from the (loopback) hub into the models folder on first use, then is used offline."""
    buffer = io.BytesIO()
    torch.save(official_state_dict(), buffer)
    fake_hub.add_file("THUDM/ImageReward", "ImageReward.pt", buffer.getvalue(), lfs=True)
    fake_hub.add_file("THUDM/ImageReward", "med_config.json", json.dumps(med_config()).encode())
    fake_hub.add_file("google-bert/bert-base-uncased", "vocab.txt", VOCAB.read_bytes())
    models = tmp_path / "models"
    code, out, _ = run(
        [str(outputs / "00000-0.png"), str(outputs / "00002-2.png"), "--models-dir", str(models), "-q", "-f", "json"],
        capsys,
    )
    assert code == 0 and len(json.loads(out)) == 2
    assert (models / "ImageReward.pt").exists() and (models / "bert-base-uncased" / "vocab.txt").exists()
    assert (models / "ImageReward.safetensors").exists()  # converted once for fast, pickle-free loads
    fake_hub.clear_requests()
    shutil.rmtree(tmp_path / "hf-home", ignore_errors=True)
    code, out2, _ = run(
        [str(outputs / "00000-0.png"), str(outputs / "00002-2.png"), "--models-dir", str(models), "-q", "-f", "json"],
        capsys,
    )
    assert code == 0 and json.loads(out2) == json.loads(out)
    assert fake_hub.requests_for("ImageReward.pt") == []  # no network once the files are there
