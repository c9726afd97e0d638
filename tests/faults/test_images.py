"""Decompression bombs and extreme aspect ratios: refused with the limit named, by every door; one bad image never
stops the others from being scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagereward import limits
from imagereward.cli import main
from imagereward.errors import ImageInputError
from tests.faults.craft import png, png_claiming

PROMPT = "a lighthouse at dusk"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two good images and the hostile ones of issue 9."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "good-1.png").write_bytes(png(64, 48))
    (images / "good-2.png").write_bytes(png(40, 90, (10, 200, 30)))
    (images / "bomb-40000.png").write_bytes(png_claiming(40000, 40000))  # PIL's own DecompressionBombError
    (images / "big-13000.png").write_bytes(png_claiming(13000, 13000))  # under PIL's limit, over ours
    (images / "strip-8000x1.png").write_bytes(png(8000, 1))  # 103 bytes; 1.8 million x 224 once resized
    return images


def test_the_command_line_scores_the_rest(folder: Path, model_dir: Path, capsys) -> None:
    """Issue 9.3: one bomb aborted the whole run with a traceback."""
    code = main([str(folder), "-p", PROMPT, "--models-dir", str(model_dir), "--offline", "-q", "-f", "json"])
    captured = capsys.readouterr()
    rows = {Path(r["path"]).name: r for r in json.loads(captured.out)}
    assert code == 1 and "Traceback" not in captured.err
    assert rows["good-1.png"]["score"] is not None and rows["good-2.png"]["score"] is not None
    assert "decompression bomb" in rows["bomb-40000.png"]["error"]
    assert "more than the limit of 67,108,864" in rows["big-13000.png"]["error"]
    assert "aspect ratio beyond the limit of 32:1" in rows["strip-8000x1.png"]["error"]


@pytest.mark.parametrize(
    ("name", "words"),
    [("bomb-40000.png", "decompression bomb"), ("big-13000.png", "pixels"), ("strip-8000x1.png", "aspect ratio")],
)
def test_the_library_refuses_paths_with_the_limit(folder: Path, scorer, name: str, words: str) -> None:
    with pytest.raises(ImageInputError, match=words):
        scorer.score(PROMPT, [folder / name])


def test_the_library_refuses_extreme_pil_images_tensors_and_arrays(scorer) -> None:
    with pytest.raises(ImageInputError, match="aspect ratio"):
        scorer.score(PROMPT, [Image.new("RGB", (8000, 1))])
    with pytest.raises(ImageInputError, match="aspect ratio"):
        scorer.score(PROMPT, [torch.zeros(3, 1, 8000, dtype=torch.uint8)])
    with pytest.raises(ImageInputError, match="aspect ratio"):
        scorer.score(PROMPT, [np.zeros((1, 8000, 3), dtype=np.uint8)])


def test_the_limit_holds_when_the_webui_switches_pils_check_off(folder: Path, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageInputError, match="more than the limit"):
        limits.open_image(folder / "bomb-40000.png")


def test_sizes_at_the_limits_are_accepted() -> None:
    limits.check_size(8192, 8192)
    limits.check_size(32 * 224, 224)
    limits.check_size(1, 32)
    for width, height in ((8193, 8192), (33, 1), (0, 10)):
        with pytest.raises(ImageInputError):
            limits.check_size(width, height)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a" + b"\0" * 7, b"\xff\xd8\xff\xe0" + b"\0" * 20, b"RIFF\0\0\0\0WEBPVP8 "],
    ids=["empty", "png-signature-only", "gif-header", "jpeg-header", "webp-header"],
)
def test_broken_files_are_clear_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "broken.img"
    path.write_bytes(data)
    with pytest.raises(ImageInputError, match=r"broken\.img"):
        limits.open_image(path)


def test_a_folder_or_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="no such file"):
        limits.open_image(tmp_path / "nope.png")
    with pytest.raises(ImageInputError, match="is a folder"):
        limits.open_image(tmp_path)


def test_an_open_file_is_not_left_behind(tmp_path: Path) -> None:
    """Decoded without a second copy; and multi-frame formats (which keep their file open) are copied and closed."""
    frames = [Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    image = limits.open_image(gif)
    assert image.size == (16, 16) and getattr(image, "fp", None) is None
