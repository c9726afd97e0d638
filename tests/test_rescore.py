"""A WebUI's score and the command line's re-score of the saved PNG agree.

The hook scores each final image as the WebUI hands it over: `255 * x` of the decoder's floats, truncated to 8 bits,
as a PIL image, several in one batch. The WebUI then saves it: as it is (A1111, Forge Neo), or, in reForge, with
its "stealth infotext" written into the lowest bit of each alpha value (its default until the settings are saved).
The command line opens the PNG and scores it alone. Both go through the same PIL resize; what differed was the
saved alpha channel, which PIL's RGBA resize premultiplies into the colour.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from imagereward.cli import main
from imagereward.infotext import read_score
from imagereward.preprocess import pil_resize_crop
from imagereward.stealth import alpha_carries_infotext, image_carries_infotext

PROMPT = "a lighthouse at dusk, (oil painting:1.2)"
#: Same pixels, same prompt: only the batches differ (two of 2 in the hook, one of 4 in the command line), and with
#: them the order of the floating-point sums. Measured up to 3.6e-7 on the test checkpoint (bounded 25 times above).
FLOAT_NOISE = 1e-5
#: (height, width) of decoded WebUI images: the smallest, SD 1.5's square, and both non-square orientations.
SIZES = [(64, 64), (512, 512), (512, 768), (768, 512)]


def decoded(height: int, width: int, seed: int) -> torch.Tensor:
    """A decoder's output as the WebUI holds it after clamping: CHW floats in 0..1, smooth with fine noise."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, max(height // 8, 1), max(width // 8, 1)), dtype=np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    fine = torch.from_numpy(rng.normal(0.0, 0.04, (3, height, width)).astype(np.float32))
    return (smooth + fine).clamp(0.0, 1.0)


def as_webui_image(sample: torch.Tensor) -> Image.Image:
    """What `postprocess_image_after_composite` receives: `255 * x`, truncated to uint8, as a PIL image."""
    return Image.fromarray((255.0 * np.moveaxis(sample.numpy(), 0, 2)).astype(np.uint8))


def infotext(seed: int, height: int, width: int, score: float) -> str:
    return (
        f"{PROMPT}\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: {seed}, "
        f"Size: {width}x{height}, Model: random-sd15, ImageReward: {score:.3f}, Version: f1.0"
    )


def with_stealth_alpha(image: Image.Image, text: str, *, compressed: bool = True) -> Image.Image:
    """The image as reForge saves it by default: opaque RGBA whose alpha values, column by column from the top left,
    carry in their lowest bit a signature, the payload's length in bits (32 bits) and the (gzipped) text."""
    payload = gzip.compress(text.encode()) if compressed else text.encode()
    signature = b"stealth_pngcomp" if compressed else b"stealth_pnginfo"
    bits = np.concatenate(
        [
            np.unpackbits(np.frombuffer(signature, np.uint8)),
            np.unpackbits(np.frombuffer((8 * len(payload)).to_bytes(4, "big"), np.uint8)),
            np.unpackbits(np.frombuffer(payload, np.uint8)),
        ]
    )
    rgba = np.array(image.convert("RGBA"))
    rgba[:, :, 3] = 255
    column_major = rgba[:, :, 3].T.copy().reshape(-1)
    if len(bits) > column_major.size:
        raise ValueError("the text does not fit in the image")
    column_major[: len(bits)] = (column_major[: len(bits)] & 0xFE) | bits
    rgba[:, :, 3] = column_major.reshape(rgba.shape[1], rgba.shape[0]).T
    return Image.fromarray(rgba, "RGBA")


def save_png(image: Image.Image, text: str, path: Path) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    image.save(path, pnginfo=info)
    return path


def rescore(paths: list[Path], model_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, float]:
    """The command line's scores of saved files (each with the prompt of its own infotext), by file name."""
    code = main([*map(str, paths), "--models-dir", str(model_dir), "--offline", "-q", "-f", "json", "--no-sort"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0
    return {Path(r["path"]).name: float(r["score"]) for r in rows}


@pytest.mark.parametrize("host", ["a1111", "reforge"])
@pytest.mark.parametrize("height,width", SIZES)
def test_the_saved_png_re_scores_to_the_hooks_score(
    scorer, model_dir: Path, tmp_path: Path, capsys, host: str, height: int, width: int
) -> None:
    seeds = [900 + i for i in range(4)]
    images = [as_webui_image(decoded(height, width, seed)) for seed in seeds]
    hook = [s for i in (0, 2) for s in scorer.score([PROMPT] * 2, images[i : i + 2])]  # batch size 2, as the job
    paths = []
    for seed, image, score in zip(seeds, images, hook, strict=True):
        text = infotext(seed, height, width, score)
        saved = with_stealth_alpha(image, text) if host == "reforge" else image
        paths.append(save_png(saved, text, tmp_path / f"{seed}.png"))
    again = rescore(paths, model_dir, capsys)
    for path, score in zip(paths, hook, strict=True):
        assert Image.open(path).mode == ("RGBA" if host == "reforge" else "RGB")
        assert again[path.name] == pytest.approx(score, abs=FLOAT_NOISE)
        assert again[path.name] == pytest.approx(read_score(Image.open(path).info["parameters"]), abs=5e-4 + 1e-6)


def test_premultiplying_the_stealth_alpha_would_move_the_pixels() -> None:
    """Why the rule exists: resized as RGBA, the 254s of the payload darken the colour the WebUI scored."""
    image = as_webui_image(decoded(64, 64, 900))
    stealthy = with_stealth_alpha(image, infotext(900, 64, 64, 0.0))
    premultiplied = np.asarray(stealthy.resize((224, 224), Image.BICUBIC).convert("RGB"), dtype=np.int16)
    scored = np.asarray(pil_resize_crop(image), dtype=np.int16)
    assert np.abs(premultiplied - scored).max() >= 1
    assert np.array_equal(np.asarray(pil_resize_crop(stealthy)), scored)


@pytest.mark.parametrize("compressed", [True, False])
def test_stealth_infotext_is_recognised_in_images_and_arrays(compressed: bool) -> None:
    image = as_webui_image(decoded(64, 96, 1))
    stealthy = with_stealth_alpha(image, infotext(1, 64, 96, 0.5), compressed=compressed)
    assert image_carries_infotext(stealthy)
    assert alpha_carries_infotext(np.asarray(stealthy)[:, :, 3])
    assert not image_carries_infotext(image)  # RGB
    assert not image_carries_infotext(image.convert("RGBA"))  # opaque, no signature


def test_real_transparency_keeps_the_reference_path(tmp_path: Path) -> None:
    """An alpha channel with anything below 254 is transparency, even if its first bits spell a signature."""
    stealthy = np.array(with_stealth_alpha(as_webui_image(decoded(64, 64, 2)), "x"))
    stealthy[40:, 40:, 3] = 128
    assert not alpha_carries_infotext(stealthy[:, :, 3])
    assert not image_carries_infotext(Image.fromarray(stealthy, "RGBA"))
    fixture = Image.open(Path(__file__).parent / "fixtures" / "images" / "rgba_alpha.png")
    assert not image_carries_infotext(fixture)
    assert not alpha_carries_infotext(np.full((10, 10), 255, np.uint8))  # fewer pixels than the signature's bits
    assert not alpha_carries_infotext(np.full((64, 64), 255, np.uint16))


def test_an_array_of_a_stealth_png_scores_as_its_file(scorer, tmp_path: Path) -> None:
    image = as_webui_image(decoded(64, 64, 3))
    path = save_png(with_stealth_alpha(image, infotext(3, 64, 64, 0.0)), "x", tmp_path / "s.png")
    array = np.asarray(Image.open(path))
    assert array.shape == (64, 64, 4)
    by_file, by_array, by_rgb = scorer.score(PROMPT, [path, array, image])
    assert by_file == pytest.approx(by_rgb, abs=FLOAT_NOISE)
    assert by_array == pytest.approx(by_rgb, abs=2e-3)  # the tensor path's own resize: CONTRIBUTING.md's bound
