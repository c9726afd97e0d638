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
    assert code == 1  # some files could not be scored; the rest were
    assert "broken.png" not in err and "6 scored, 6 kept, 2 failed" not in err  # -q: errors once, in the output
    assert errors["broken.png"].count("broken.png") == 0  # the row shows the path; the message does not repeat it


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
    code, _, err = run(args[:-1], capsys)  # a second run finds identical copies there: skipped, and said so
    assert code == 0 and len(list(best.iterdir())) == 2
    assert "0 copied" in err and "2 already there with the same content, skipped" in err
    (best / kept[0]).write_bytes(b"another file of the user's")  # a different file is never overwritten
    run(args, capsys)
    assert sorted(p.name for p in best.iterdir()) == sorted([*kept, kept[0].replace(".png", "-1.png")])
    assert (best / kept[0]).read_bytes() == b"another file of the user's"
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
    (tmp_path / "empty").mkdir()
    code, _, err = run([str(outputs), "--models-dir", str(tmp_path / "empty"), "--offline", "-q"], capsys)
    assert code == 3
    assert "ImageReward.pt" in err and "med_config.json" in err and "vocab.txt" in err and "Traceback" not in err
    assert "--offline" in err and "offline=False" not in err  # command-line wording


def test_usage_errors_are_short(tmp_path: Path, capsys) -> None:
    code, _, err = run([str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "no such file or folder" in err and "no images found" in err
    code, _, err = run([str(tmp_path), "-k", "0"], capsys)
    assert code == 2 and "--top-k must be at least 1" in err


def test_a_mistyped_models_dir_is_named_and_not_created(outputs: Path, tmp_path: Path, capsys) -> None:
    typo = tmp_path / "modles"
    code, _, err = run([str(outputs), "--models-dir", str(typo), "-q"], capsys)
    assert code == 2 and "--models-dir" in err and "does not exist" in err and "network" not in err
    assert not typo.exists()


@pytest.mark.parametrize("device", ["gpu", "cuda:7", "mps", "tpu"])
def test_bad_devices_are_one_line_errors_before_loading(outputs: Path, model_dir: Path, device: str, capsys) -> None:
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 CUDA devices")
    if device == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    code, out, err = run([str(outputs), "--models-dir", str(model_dir), "--offline", "-q", "--device", device], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and f"--device {device}" in err


def test_copy_target_problems_are_found_before_scoring(outputs: Path, model_dir: Path, tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    for target, words in (
        (a_file, "is a file, not a folder"),
        (dangling, "broken symbolic link"),
        (tmp_path / "no" / "such" / "parent", "does not exist"),
    ):
        code, out, err = run(
            [str(outputs), "--models-dir", str(model_dir), "--offline", "-q", "--copy-to", str(target)], capsys
        )
        assert code == 2 and words in err and out == "" and "Traceback" not in err
    assert a_file.read_text() == "mine"


def test_output_file_problems_are_found_before_scoring(outputs: Path, model_dir: Path, tmp_path: Path, capsys) -> None:
    image = outputs / "00000-0.png"
    before = image.read_bytes()
    for target, words in (
        (tmp_path, "is a folder"),
        (tmp_path / "missing" / "out.csv", "does not exist"),
        (image, "is one of the images"),
    ):
        code, _, err = run([str(outputs), "--models-dir", str(model_dir), "--offline", "-q", "-o", str(target)], capsys)
        assert code == 2 and words in err and "Traceback" not in err
    assert image.read_bytes() == before


def test_output_format_follows_the_suffix(outputs: Path, model_dir: Path, tmp_path: Path, capsys) -> None:
    files = [str(outputs / "00000-0.png"), str(outputs / "00002-2.png")]
    for name, check in (
        ("out.json", lambda text: len(json.loads(text)) == 2),
        ("out.csv", lambda text: text.startswith("path,score,")),
        ("out.txt", lambda text: text.split()[:2] == ["rank", "score"]),
    ):
        code, out, _ = run(
            [*files, "--models-dir", str(model_dir), "--offline", "-q", "-o", str(tmp_path / name)], capsys
        )
        assert code == 0 and out == "" and check((tmp_path / name).read_text(encoding="utf-8"))


def test_threshold_keeps_the_best_when_none_passes_unless_asked(outputs: Path, model_dir: Path, capsys) -> None:
    files = [str(outputs / "00000-0.png"), str(outputs / "00002-2.png")]
    common = [*files, "--models-dir", str(model_dir), "--offline", "-q", "-f", "json", "-t", "100"]
    code, out, _ = run(common, capsys)
    assert code == 0 and [r["kept"] for r in json.loads(out)] == [True, False]  # as the WebUI: the best is kept
    code, out, _ = run([*common, "--no-keep-best-if-none"], capsys)
    assert code == 0 and [r["kept"] for r in json.loads(out)] == [False, False]


def test_summary_errors_once_and_aligned_rows(outputs: Path, model_dir: Path, capsys) -> None:
    code, out, err = run([str(outputs), "--models-dir", str(model_dir), "--offline", "-k", "1"], capsys)
    assert code == 1
    lines = out.splitlines()
    file_column = lines[0].index("file")
    error_rows = [line for line in lines if " error " in line]
    assert len(error_rows) == 2  # error rows have the same columns as the others (with -k: a blank "kept")
    assert all(line[file_column - 2 : file_column] == "  " and line[file_column] in "…/" for line in lines[1:])
    assert "broken.png" not in err  # the error is in the table, once
    assert "6 scored, 2 kept, 2 failed" in err and "model loaded" in err


def test_long_prompts_are_flagged(outputs: Path, model_dir: Path, capsys) -> None:
    long_prompt = " ".join(["a very detailed painting of a lighthouse"] * 10)
    code, out, err = run(
        [str(outputs / "00000-0.png"), "-p", long_prompt, "--models-dir", str(model_dir), "--offline", "-f", "json"],
        capsys,
    )
    assert code == 0 and json.loads(out)[0]["truncated"] is True
    assert "longer than the model reads" in err


def test_version_and_help(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("imagereward ")
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "between -2 and +2" in text and "exit status:" in text


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
    models.mkdir()
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
    first, second = json.loads(out), json.loads(out2)
    assert code == 0 and [r["path"] for r in second] == [r["path"] for r in first]
    # The .pt (first run) and the conversion (second run) hold the same bits; scores agree within float rounding
    # (kernels may round differently by memory alignment on some CPUs, e.g. with AVX-512).
    assert [r["score"] for r in second] == pytest.approx([r["score"] for r in first], abs=1e-5)
    assert fake_hub.requests_for("ImageReward.pt") == []  # no network once the files are there


def test_the_table_fits_the_terminal() -> None:
    from imagereward.cli import Row, render

    rows = [
        Row(
            path="/a/very/long/folder/name/that/goes/on/and/on/image-00001.png", prompt="word " * 40, score=0.5, rank=1
        ),
        Row(path="short.png", prompt=None, error="not a readable image (" + "x" * 200 + ")"),
    ]
    for row in rows[:1]:
        row.kept = True
    for width in (60, 100):
        lines = render(rows, "table", True, width).splitlines()
        assert all(len(line) <= width for line in lines), lines
        assert lines[1].rstrip().endswith("…") and "image-00001.png" in lines[1]
    wide = render(rows, "table", True, None).splitlines()
    assert ("word " * 40).strip() in wide[1]  # no terminal (a pipe, -o): nothing cut
