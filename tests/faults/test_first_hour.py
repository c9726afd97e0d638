"""The first hour of a new user: the benchmark helper's --help, the offline message for a folder the user never named,
the files `--scorer aesthetic` needs, Ctrl-C in the command line, and --version from a WebUI's extension folder."""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest

import imagereward
from imagereward import cli
from imagereward.errors import ModelFileMissingError
from imagereward.hub import resolve_model_files

ROOT = Path(__file__).resolve().parents[2]
BENCH_SCRIPT = ROOT / "bench" / "make_full_checkpoint.py"
IMAGES = ROOT / "tests" / "fixtures" / "images"
VOCAB = ROOT / "tests" / "fixtures" / "bert-base-uncased" / "vocab.txt"


def bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_full_checkpoint", BENCH_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------- bench/make_full_checkpoint.py


def test_make_full_checkpoint_help_writes_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH_SCRIPT), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "folder" in result.stdout and "--seed" in result.stdout
    assert list(tmp_path.iterdir()) == []  # no folder named --help, no 1.8 GB checkpoint


def test_make_full_checkpoint_writes_a_complete_models_folder(tmp_path: Path) -> None:
    folder = tmp_path / "random-model"
    tiny = {"width": 64, "depth": 2, "hidden": 32, "layers": 2, "ffn": 64}
    bench_module().write_full(folder, 3, vocab=True, dims=tiny, config={"hidden": 32, "layers": 2, "heads": 2})
    assert (folder / "bert-base-uncased" / "vocab.txt").read_bytes() == VOCAB.read_bytes()
    files = resolve_model_files(folder, offline=True, progress=False)  # complete: nothing to download
    assert files.checkpoint == folder / "ImageReward.pt"
    from imagereward.scorer import ImageRewardScorer

    scorer = ImageRewardScorer.load(folder, offline=True, progress=False, device="cpu")
    assert len(scorer.score("a cat", [IMAGES / "rgb_512.png"])) == 1


def test_make_full_checkpoint_never_overwrites_a_real_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "ImageReward.pt").write_bytes(b"the user's real download")
    assert bench_module().main([str(folder)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert (folder / "ImageReward.pt").read_bytes() == b"the user's real download"


# ------------------------------------------------------------------------------------- offline: the folder


def test_offline_message_for_the_default_folder_does_not_ask_about_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGEREWARD_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USERPROFILE", str(tmp_path / "home"))
    with pytest.raises(ModelFileMissingError) as excinfo:
        resolve_model_files(offline=True, progress=False)
    message = str(excinfo.value)
    assert "is its name right" not in message
    assert "default models folder" in message and "--models-dir" in message and "IMAGEREWARD_HOME" in message

    monkeypatch.setenv("IMAGEREWARD_HOME", str(tmp_path / "mistyped"))  # a name the user gave: maybe mistyped
    with pytest.raises(ModelFileMissingError, match=r"IMAGEREWARD_HOME=.*mistyped: is that name right"):
        resolve_model_files(offline=True, progress=False)
    with pytest.raises(ModelFileMissingError, match="is its name right"):  # a folder named in the call
        resolve_model_files(tmp_path / "other", offline=True, progress=False)


# ------------------------------------------------------------------------- offline: the files a scorer needs


def missing_message(names: list[str], models: Path) -> str:
    from imagereward.scorers.registry import load_scorers

    with pytest.raises(ModelFileMissingError) as excinfo:
        load_scorers(names, models, offline=True, progress=False, device="cpu")
    return str(excinfo.value)


def test_aesthetic_alone_lists_no_tokenizer_files(tmp_path: Path) -> None:
    from imagereward.scorers import openai_clip

    tmp_path.joinpath("models").mkdir()
    aesthetic = missing_message(["aesthetic"], tmp_path / "models")
    assert openai_clip.CLIP_NAME in aesthetic and openai_clip.AESTHETIC_NAME in aesthetic
    assert "vocab.json" not in aesthetic and "merges.txt" not in aesthetic
    assert "is its name right" not in aesthetic  # the family's subfolder is ours, made by the first download
    clip = missing_message(["clip"], tmp_path / "models")
    assert openai_clip.CLIP_NAME in clip and "vocab.json" in clip and "merges.txt" in clip
    assert openai_clip.AESTHETIC_NAME not in clip
    both = missing_message(["clip", "aesthetic"], tmp_path / "models")
    for name in (openai_clip.CLIP_NAME, openai_clip.AESTHETIC_NAME, "vocab.json", "merges.txt"):
        assert name in both


def test_aesthetic_on_the_command_line_lists_no_tokenizer_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    code = cli.main([str(IMAGES / "rgb_512.png"), "--scorer", "aesthetic", "--models-dir", str(models), "--offline"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_NOTHING_SCORED
    assert "ViT-L-14.pt" in err and "vocab.json" not in err and "merges.txt" not in err


# ----------------------------------------------------------------------------------------------------- Ctrl-C


class InterruptedScorer:
    """Scores the first batch, then raises KeyboardInterrupt as Ctrl-C would."""

    names: ClassVar[list[str]] = ["imagereward"]
    needs_prompt = True
    batch_size = 2
    device = "cpu"

    def __init__(self) -> None:
        self.calls = 0

    def score(self, prompts: Any, images: list[Any], clean_prompts: bool = True) -> dict[str, list[float]]:
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return {"imagereward": [float(i) for i in range(len(images))]}

    def truncated(self, prompts: list[str], *, clean: bool = True) -> list[bool]:
        return [False] * len(prompts)


def images_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for source in sorted(IMAGES.glob("*.png"))[:5]:
        shutil.copyfile(source, folder / source.name)
    return folder


def test_ctrl_c_writes_the_images_already_scored_marked_as_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_load_scorer", lambda args, names: InterruptedScorer())
    out = tmp_path / "scores.csv"
    best = tmp_path / "best"
    code = cli.main([str(images_folder(tmp_path)), "-p", "a cat", "-o", str(out), "-k", "1", "--copy-to", str(best)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_INTERRUPTED
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert len(rows) == 5
    scored = [r for r in rows if r["score"]]
    assert len(scored) == 2 and {r["rank"] for r in scored} == {"1", "2"}
    assert [r["error"] for r in rows if not r["score"]] == [cli.NOT_SCORED_INTERRUPTED] * 3
    assert "interrupted" in err and "partial" in err and "2 of 5" in err and str(out) in err
    assert "nothing was copied" in err and not best.exists()


def test_ctrl_c_before_any_score_says_nothing_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scorer = InterruptedScorer()
    scorer.calls = 1  # the first batch is interrupted
    monkeypatch.setattr(cli, "_load_scorer", lambda args, names: scorer)
    out = tmp_path / "scores.json"
    code = cli.main([str(images_folder(tmp_path)), "-p", "a cat", "-o", str(out), "-q"])
    assert code == cli.EXIT_INTERRUPTED
    assert "nothing written" in capsys.readouterr().err and not out.exists()


# --------------------------------------------------------------------------------------------------- --version


#: Runs `python -m imagereward --version` as if pip had never installed the package: no distribution metadata.
NO_METADATA = """
import importlib.metadata, runpy, sys

def not_installed(name, *args, **kwargs):
    raise importlib.metadata.PackageNotFoundError(name)

importlib.metadata.version = importlib.metadata.distribution = importlib.metadata.metadata = not_installed
import imagereward
print(imagereward.__file__, file=sys.stderr)
sys.argv = ["imagereward", "--version"]
runpy.run_module("imagereward", run_name="__main__", alter_sys=True)
"""


def test_version_without_package_metadata(tmp_path: Path) -> None:
    """As in a WebUI's extensions folder: a copy of the package on the path, which pip never installed."""
    extension = tmp_path / "sd-webui-imagereward"
    shutil.copytree(ROOT / "imagereward", extension / "imagereward", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(extension)}
    result = subprocess.run(
        [sys.executable, "-c", NO_METADATA], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(str(extension / "imagereward"))  # the copy, not the repository's package
    assert result.stdout.strip() == f"imagereward {imagereward.__version__}"


def test_packaging_reads_the_same_version() -> None:
    pyprojecttoml = pytest.importorskip("setuptools.config.pyprojecttoml")
    config = pyprojecttoml.read_configuration(ROOT / "pyproject.toml")
    assert "version" in config["project"]["dynamic"]
    assert config["project"]["version"] == imagereward.__version__
