"""Preprocessing: the PIL path repeats the reference's steps; the tensor path stays within a measured bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from imagereward.errors import ImageInputError
from imagereward.preprocess import (
    apply_exif_orientation,
    crop_box,
    load_pil,
    open_image,
    pil_resize_crop,
    pil_to_pixels,
    resized_size,
    tensor_to_pixels,
    to_8bit,
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
    from_uint16 = tensor_to_pixels(array.astype(np.uint16) * 257)
    assert torch.allclose(from_uint16, from_uint8, atol=1e-6)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.zeros(2, 3), r"CHW tensor .* got a tensor of shape \(2, 3\); a grey image needs its channel"),
        (torch.zeros(5, 8, 8), r"1, 2, 3 or 4 channels, got a tensor of shape \(5, 8, 8\)"),
        (
            torch.zeros(64, 48, 3),
            r"shape \(64, 48, 3\); this looks channels-last \(HWC\): pass tensor\.permute\(2, 0, 1\)",
        ),
        (torch.zeros(2, 64, 48, 3), r"batch of shape \(2, 64, 48, 3\); .*permute\(0, 3, 1, 2\)"),
        (np.zeros((3, 64, 48), np.uint8), r"HxWxC numpy array .* shape \(3, 64, 48\); .*transpose\(1, 2, 0\)"),
        (np.zeros((2, 8, 8, 3), np.uint8), r"shape \(2, 8, 8, 3\); for several images pass a list"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), "uint8"),
        (np.zeros((8, 8, 3), np.int64), r"numpy images must be uint8 .* got int64, shape \(8, 8, 3\)"),
        (torch.zeros(3, 0, 8), "no pixels"),
    ],
)
def test_bad_shapes_and_dtypes_name_what_was_given(image: torch.Tensor | np.ndarray, message: str) -> None:
    with pytest.raises(ImageInputError, match=message):
        tensor_to_pixels(image)


@pytest.mark.parametrize(
    ("low", "high", "hint"),
    [
        (0.0, 255.0, r"got 0\.\.255: it looks like 0\.\.255: pass x / 255"),
        (-1.0, 1.0, r"got -1\.\.1: it looks like -1\.\.1 \(what a VAE decoder returns\): pass \(x \+ 1\) / 2"),
        (-3.0, 7.0, "scale it to 0..1"),
        (float("nan"), 0.5, "NaN or infinite"),
    ],
)
def test_float_values_outside_0_to_1_are_refused(low: float, high: float, hint: str) -> None:
    image = torch.full((3, 16, 16), 0.5)
    image[0, 0, 0], image[1, 0, 0] = low, high
    with pytest.raises(ImageInputError, match=r"float image values must lie in 0\.\.1|NaN"):
        tensor_to_pixels(image)
    with pytest.raises(ImageInputError, match=hint):
        tensor_to_pixels(image.permute(1, 2, 0).numpy())


def test_float_values_just_outside_0_to_1_are_clamped() -> None:
    """An unclamped bicubic resize overshoots a little; that is clamped, not refused."""
    image = torch.rand(3, 32, 32)
    overshoot = image.clone()
    overshoot[0, 0, 0], overshoot[1, 0, 0] = -0.04, 1.04
    clamped = overshoot.clamp(0, 1)
    assert torch.allclose(tensor_to_pixels(overshoot), tensor_to_pixels(clamped))


def _rgba(alpha: np.ndarray) -> np.ndarray:
    rgb = np.asarray(Image.open(IMAGES / "rgb_wide.png").convert("RGB"))
    return np.dstack([rgb, np.broadcast_to(alpha, rgb.shape[:2]).astype(np.uint8)])


def test_a_fully_transparent_array_is_read_as_pil_reads_its_file() -> None:
    """PIL resizes RGBA premultiplied: transparent pixels come out black. The tensor path used to keep the colours."""
    array = _rgba(np.zeros(1))
    expected = pil_to_pixels(Image.fromarray(array, "RGBA"))
    assert torch.allclose(tensor_to_pixels(array)[0], expected, atol=1e-6)
    assert torch.allclose(tensor_to_pixels(torch.from_numpy(array.copy()).permute(2, 0, 1))[0], expected, atol=1e-6)


@pytest.mark.parametrize("name", ["rgba_alpha.png", "la.png"])
def test_partial_alpha_is_read_as_pil_reads_the_file(name: str) -> None:
    image = Image.open(IMAGES / name)
    image.load()
    diff = (tensor_to_pixels(np.asarray(image))[0] - pil_to_pixels(image)).abs()
    # Measured: mean 0.0014 (RGBA), 0.00001 (LA); unpremultiplying magnifies PIL's fixed-point rounding at low alpha,
    # so a few pixels differ more. Dropping alpha before resizing (the old path) gave a mean of 0.04 (RGBA).
    assert diff.mean() < 0.003
    assert torch.quantile(diff.flatten(), 0.999) < 0.2


def test_alpha_is_dropped_without_a_resize_as_pil_convert_drops_it() -> None:
    array = np.asarray(Image.open(IMAGES / "rgb_512.png").convert("RGB").resize((224, 224)))
    rgba = np.dstack([array, np.full(array.shape[:2], 7, np.uint8)])
    assert torch.allclose(tensor_to_pixels(rgba), tensor_to_pixels(array))
    assert torch.allclose(tensor_to_pixels(rgba)[0], pil_to_pixels(Image.fromarray(rgba, "RGBA")), atol=1e-6)


def _gradient16() -> np.ndarray:
    return np.linspace(0, 65535, 300 * 200).reshape(200, 300).astype(np.uint16)


def test_16_bit_images_are_scaled_to_8_bits() -> None:
    """PIL's convert("RGB") (and so the reference) clips I;16 at 255: almost everything turned white."""
    gradient = _gradient16()
    image16 = Image.fromarray(gradient)
    assert image16.mode == "I;16"
    copy8 = Image.fromarray(np.rint(gradient / 257).astype(np.uint8), "L")
    assert np.array_equal(np.asarray(to_8bit(image16)), np.asarray(copy8))
    assert torch.equal(pil_to_pixels(image16), pil_to_pixels(copy8))
    clipped = np.asarray(pil_resize_crop(image16))
    assert (clipped == 255).mean() > 0.9  # what the reference sees
    as_int32 = Image.fromarray(gradient.astype(np.int32))
    assert as_int32.mode == "I"  # how older Pillow opens 16-bit PNGs
    assert torch.equal(pil_to_pixels(as_int32), pil_to_pixels(copy8))


def test_float_and_8_bit_int_images_keep_their_levels() -> None:
    levels = np.arange(256, dtype=np.uint8)[None, :].repeat(40, 0)
    reference = Image.fromarray(levels, "L")
    small_ints = Image.fromarray(levels.astype(np.int32))  # mode I holding 8-bit data: the reference-exact path
    assert np.array_equal(np.asarray(to_8bit(small_ints)), levels)
    unit_floats = Image.fromarray(levels.astype(np.float32) / 255)
    assert unit_floats.mode == "F"
    assert np.array_equal(np.asarray(to_8bit(unit_floats)), levels)
    assert np.array_equal(np.asarray(to_8bit(Image.fromarray(levels.astype(np.float32)))), levels)
    for mode in ("RGB", "RGBA", "L", "LA", "P", "1"):
        image = reference.convert(mode)
        assert to_8bit(image) is image  # 8-bit images are left to the reference's own pipeline


def _oriented_jpeg(path: Path, orientation: int) -> Image.Image:
    """A wide image stored with an EXIF orientation tag; returns the upright image a viewer shows."""
    stored = Image.open(IMAGES / "rgb_wide.png").convert("RGB")
    exif = stored.getexif()
    exif[0x0112] = orientation
    stored.save(path, quality=95, exif=exif.tobytes())
    return ImageOps.exif_transpose(Image.open(path))


def test_exif_orientation_is_applied_unless_turned_off(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    upright = _oriented_jpeg(path, 6)  # "rotate 90° clockwise to view"
    stored = open_image(path)
    assert upright.size == stored.size[::-1]
    assert load_pil(path).size == upright.size
    assert np.array_equal(np.asarray(load_pil(path)), np.asarray(upright))
    assert load_pil(path, exif_orientation=False).size == stored.size
    plain = Image.open(IMAGES / "rgb_wide.png")
    assert apply_exif_orientation(plain) is plain  # no tag: untouched, no copy


def test_images_without_pixels_are_refused() -> None:
    with pytest.raises(ImageInputError, match="no pixels"):
        pil_to_pixels(Image.new("RGB", (0, 5)))


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
