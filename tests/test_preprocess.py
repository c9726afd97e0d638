"""Preprocessing: the PIL path repeats the reference's steps; the tensor path stays within a measured bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagereward.errors import ImageInputError
from imagereward.preprocess import (
    crop_box,
    open_image,
    pil_resize_crop,
    pil_to_pixels,
    resized_size,
    tensor_to_pixels,
)

IMAGES = Path(__file__).parent / "fixtures" / "images"


def test_resize_and_crop_geometry_matches_torchvision() -> None:
    assert resized_size(512, 512) == (224, 224)
    assert resized_size(384, 640) == (224, 373)  # int(224 * 640 / 384) = 373, truncated
    assert resized_size(500, 300) == (373, 224)
    assert resized_size(90, 120) == (224, 298)  # upscaling
    assert crop_box(224, 373) == (0, 74)  # round(74.5) -> 74: Python's round, as torchvision uses
    assert crop_box(224, 375) == (0, 76)  # round(75.5) -> 76


def test_rgb_conversion_happens_after_resize_and_crop() -> None:
    """RGBA is resized with premultiplied alpha by PIL; converting first would change the colours under alpha."""
    rgba = Image.open(IMAGES / "rgba_alpha.png")
    assert rgba.mode == "RGBA"
    ours = np.asarray(pil_resize_crop(rgba))
    converted_first = np.asarray(pil_resize_crop(rgba.convert("RGB")))
    assert ours.shape == (224, 224, 3)
    assert not np.array_equal(ours, converted_first)
    expected = np.asarray(rgba.resize(resized_size(rgba.height, rgba.width)[::-1], Image.BICUBIC).convert("RGB"))
    top, left = crop_box(*expected.shape[:2])
    assert np.array_equal(ours, expected[top : top + 224, left : left + 224])


def test_palette_images_keep_pil_behaviour() -> None:
    palette = Image.open(IMAGES / "palette.png")
    assert palette.mode == "P"
    out = pil_resize_crop(palette)
    assert out.mode == "RGB" and out.size == (224, 224)
    # PIL resizes palette images with nearest neighbour: every output colour is a palette colour
    colours = {tuple(c) for c in np.asarray(palette.convert("RGB")).reshape(-1, 3)}
    assert {tuple(c) for c in np.asarray(out).reshape(-1, 3)} <= colours


def test_pixels_are_normalised_with_clip_statistics() -> None:
    white = pil_to_pixels(Image.new("RGB", (300, 300), (255, 255, 255)))
    assert white.shape == (3, 224, 224)
    expected = (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]
    )
    assert torch.allclose(white[:, 0, 0], expected)


@pytest.mark.parametrize("name", ["rgb_512.png", "rgb_wide.png", "rgb_tall.png", "gray.png", "small_upscale.png"])
def test_tensor_path_is_close_to_the_pil_path(name: str) -> None:
    image = Image.open(IMAGES / name).convert("RGB")
    reference = pil_to_pixels(image)
    as_uint8 = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    ours = tensor_to_pixels(as_uint8)[0]
    diff = (ours - reference).abs()
    # PIL resizes in two passes and rounds/clamps to uint8 after each; torch keeps floats. One grey level is
    # 1/255/0.27 = 0.0146 normalised units. Measured on these images: mean 0.0018-0.0031; a handful of pixels at
    # hard edges differ by up to 10 levels (max 0.147 on the 120x90 upscale).
    assert diff.mean() < 0.005
    assert torch.quantile(diff.flatten(), 0.999) < 0.03
    assert diff.max() < 0.2


def test_tensor_layouts_and_dtypes_agree() -> None:
    array = np.asarray(Image.open(IMAGES / "rgb_wide.png").convert("RGB"))
    chw = torch.from_numpy(array.copy()).permute(2, 0, 1)
    from_uint8 = tensor_to_pixels(chw)
    from_float = tensor_to_pixels(chw.float() / 255)
    from_batch = tensor_to_pixels(torch.stack([chw, chw]))
    from_numpy = tensor_to_pixels(array)
    assert torch.allclose(from_uint8, from_float, atol=1e-6)
    assert torch.allclose(from_batch[1:], from_uint8, atol=1e-6)
    assert torch.allclose(from_numpy, from_uint8, atol=1e-6)
    gray = tensor_to_pixels(chw[:1])
    assert gray.shape == (1, 3, 224, 224)
    rgba = tensor_to_pixels(torch.cat([chw, torch.zeros_like(chw[:1])]))
    assert torch.allclose(rgba, from_uint8)  # alpha is dropped, as PIL's RGBA -> RGB does


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch.zeros(2, 3), "CHW or BCHW"),
        (torch.zeros(5, 8, 8), "1, 3 or 4 channels"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), "uint8"),
    ],
)
def test_bad_tensors_are_explained(tensor: torch.Tensor, message: str) -> None:
    with pytest.raises(ImageInputError, match=message):
        tensor_to_pixels(tensor)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(ImageInputError, match=r"broken\.png: not a readable image"):
        open_image(broken)
    with pytest.raises(ImageInputError, match="no such file"):
        open_image(tmp_path / "missing.png")
    truncated = tmp_path / "truncated.png"
    data = (IMAGES / "rgb_512.png").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageInputError, match=r"truncated\.png"):
        open_image(truncated)
