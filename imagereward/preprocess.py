"""Image -> normalised (3, 224, 224) pixels, two ways.

`pil_to_pixels` repeats the reference's torchvision pipeline with the same PIL calls, so its output is identical for
8-bit images: bicubic resize of the short side to 224 (PIL's own antialiasing; note that PIL resizes palette images
with nearest neighbour and RGBA/LA with premultiplied alpha), centre crop, conversion to RGB *after* resizing and
cropping, scaling to [0, 1], CLIP's mean and std. Two deliberate departures from the reference, both for images the
reference mis-reads: 16-bit and float images (`I;16`, `I`, `F`), which PIL's `convert("RGB")` clips at 255, are
scaled to 8 bits first (`to_8bit`); and an EXIF orientation tag is applied unless the caller turns that off.

`tensor_to_pixels` does the same on tensors already in memory (the WebUI's decoded batch, on the GPU): antialiased
bicubic interpolation in torch, and for an alpha channel PIL's premultiply-resize-unpremultiply, then alpha dropped
as PIL's `convert("RGB")` drops it. It keeps floats where PIL rounds to uint8 after each resize pass; the tests bound
the effect on pixels and scores.

Accepted in memory: tensors CHW (or BCHW batches), numpy arrays HxW or HxWxC (as PIL and OpenCV give them), with 1
(grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels; uint8 in 0..255, uint16 in 0..65535, float in 0..1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from . import limits, stealth
from .errors import ImageInputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224

#: Float pixels may stray this far outside 0..1 (rounding, an unclamped resize) and are clamped; beyond, refused.
FLOAT_RANGE_SLACK = 0.05
#: PIL modes with more than 8 bits per sample, which `convert("RGB")` clips at 255.
HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
EXIF_ORIENTATION = 0x0112

ImageInput = Image.Image | str | os.PathLike | torch.Tensor | np.ndarray

_LAYOUT = "a CHW tensor (channels first) or a BCHW batch, with 1, 2, 3 or 4 channels"
_ARRAY_LAYOUT = "an HxW or HxWxC numpy array (channels last, as PIL and OpenCV give them) with 1, 2, 3 or 4 channels"


def resized_size(height: int, width: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """torchvision's Resize(int): the short side becomes `size`, the long side is scaled and truncated."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def crop_box(height: int, width: int, size: int = IMAGE_SIZE, rounding: str = "round") -> tuple[int, int]:
    """(top, left) of the centred size x size window: torchvision's CenterCrop rounds half to even ("round"),
    transformers' image processors round down ("floor")."""
    if rounding == "floor":
        return (height - size) // 2, (width - size) // 2
    return round((height - size) / 2.0), round((width - size) / 2.0)


def letterbox(batch: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(B, C, H, W) floats in 0..1 -> (B, C, size, size): HPSv2's `ResizeMaxSize`. The long side becomes `size`
    (each side `round(side * size / long)`, Python's rounding) by torchvision's tensor resize (torch's bicubic with
    antialiasing, on the floats: no clamping, no rounding to 8 bits), then zero padding, half of it (rounded down)
    on the left and top. An image whose long side is already `size` is padded too (the reference would neither
    resize nor pad it, and fail on a non-square one)."""
    height, width = int(batch.shape[-2]), int(batch.shape[-1])
    scale = size / float(max(height, width))
    if scale != 1.0:
        height, width = (round(side * scale) for side in (height, width))
        batch = _resize(batch, height, width)
    pad_h, pad_w = size - height, size - width
    return F.pad(batch, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file within the size limits, or raise ImageInputError naming the file."""
    return limits.open_image(path)


# ---------------------------------------------------------------------------------------------------------- PIL path


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says (as viewers show it); the image itself when there is none."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block must not stop scoring: read the pixels as stored
        return image
    if orientation in (None, 1):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, KeyError, TypeError):  # a tag PIL cannot apply: the pixels as stored
        return image


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float images as 8-bit grey ("L"); other modes unchanged (the reference-exact path).

    PIL's `convert("RGB")`, which the reference uses, clips these modes at 255: a 16-bit gradient turns almost all
    white. Scaling: `I;16*` by 255/65535; `I` as 8-bit data when no value exceeds 255 (PIL's clipping would change
    nothing), else as 16-bit; `F` as 0..1 data when no value exceeds 1, as 8-bit data when none exceeds 255, else as
    16-bit. Values below 0 become 0, values above the range 255. Rounded to the nearest level.
    """
    if image.mode not in HIGH_DEPTH_MODES:
        return image
    values = np.array(image, dtype=np.float32)  # a writable copy
    if values.size == 0:
        return Image.new("L", image.size)
    top = float(np.nanmax(values))
    if image.mode.startswith("I;16") or top > 255.0:
        scale = 255.0 / 65535.0
    elif image.mode == "F" and top <= 1.0:
        scale = 255.0
    else:
        scale = 1.0
    values = np.nan_to_num(values, copy=False, nan=0.0)
    values *= scale
    np.rint(values, out=values)
    np.clip(values, 0.0, 255.0, out=values)
    return Image.fromarray(values.astype(np.uint8), "L")


def pil_resize_crop(
    image: Image.Image, size: int = IMAGE_SIZE, *, rgb_first: bool = False, crop_rounding: str = "round"
) -> Image.Image:
    """Resize (bicubic, short side) and centre-crop with PIL, then convert to RGB: the reference's order.
    `rgb_first` converts before resizing instead, as transformers' CLIP image processor does; so does an image whose
    alpha channel only carries stealth infotext (`stealth`), which the WebUI scored as the opaque image it shows."""
    if rgb_first or stealth.image_carries_infotext(image):
        image = image.convert("RGB")  # stealth infotext: an alpha channel that carries text, not transparency
    height, width = image.height, image.width
    if height < 1 or width < 1:
        raise ImageInputError(f"the image has no pixels (size {width}x{height})")
    limits.check_size(width, height)
    new_h, new_w = resized_size(height, width, size)
    if (new_h, new_w) != (height, width):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = crop_box(new_h, new_w, size, crop_rounding)
    image = image.crop((left, top, left + size, top + size))
    return image.convert("RGB")


Normalisation = tuple[tuple[float, float, float], tuple[float, float, float]]
CLIP_NORMALISATION: Normalisation = (CLIP_MEAN, CLIP_STD)


def _normalise(
    pixels: torch.Tensor, normalisation: Normalisation = CLIP_NORMALISATION, *, in_place: bool = False
) -> torch.Tensor:
    """[0, 1] pixels (..., 3, H, W) -> normalised with the model's mean and std (CLIP's by default); `in_place`
    overwrites `pixels` (the same arithmetic, no new tensor)."""
    mean = torch.tensor(normalisation[0], dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(normalisation[1], dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    return pixels.sub_(mean).div_(std) if in_place else (pixels - mean) / std


def pil_to_uint8(
    image: Image.Image, size: int = IMAGE_SIZE, *, rgb_first: bool = False, crop_rounding: str = "round"
) -> np.ndarray:
    """The reference's pixels before scaling: (size, size, 3) uint8 (16-bit and float images scaled to 8 bits)."""
    resized = pil_resize_crop(to_8bit(image), size, rgb_first=rgb_first, crop_rounding=crop_rounding)
    return np.asarray(resized, dtype=np.uint8)


def uint8_to_pixels(array: np.ndarray, normalisation: Normalisation = CLIP_NORMALISATION) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 normalised."""
    return _normalise(torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0), normalisation)


def pil_to_pixels(
    image: Image.Image,
    size: int = IMAGE_SIZE,
    *,
    normalisation: Normalisation = CLIP_NORMALISATION,
    rgb_first: bool = False,
    crop_rounding: str = "round",
    fit: str = "crop",
) -> torch.Tensor:
    """(3, size, size) float32, identical to the reference's preprocessing for 8-bit images.

    `fit="letterbox"`: the whole image, RGB (RGBA: its colour channels), as 0..1 floats, through `letterbox`."""
    if fit == "letterbox":
        return _normalise(pil_letterbox(image, size), normalisation)
    return uint8_to_pixels(pil_to_uint8(image, size, rgb_first=rgb_first, crop_rounding=crop_rounding), normalisation)


def pil_letterbox(image: Image.Image, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(3, size, size) floats in about 0..1, before normalisation: the whole image, RGB (RGBA: its colour channels),
    through `letterbox` (`fit="letterbox"`)."""
    image = to_8bit(image)
    limits.check_size(image.width, image.height)
    rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    floats = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255.0)
    return letterbox(floats.unsqueeze(0), size)[0]


def load_pil(item: ImageInput, *, exif_orientation: bool = True) -> Image.Image:
    """A PIL image from a PIL image or a path, turned as its EXIF orientation says unless `exif_orientation` is off."""
    if isinstance(item, (str, os.PathLike, Path)):
        item = open_image(item)
    if not isinstance(item, Image.Image):
        raise ImageInputError(f"expected a PIL image or a path, got {type(item).__name__}")
    return apply_exif_orientation(item) if exif_orientation else item


# ------------------------------------------------------------------------------------------------------- tensor path


def _shape(value: torch.Tensor | np.ndarray) -> tuple[int, ...]:
    return tuple(int(n) for n in value.shape)


def hwc_to_chw(array: np.ndarray) -> torch.Tensor:
    """A numpy image (HxW or HxWxC, as PIL and OpenCV give them) as a CHW tensor (a copy: numpy views of PIL
    images are read-only). uint16 arrays become float in 0..1; errors name the shape that was given."""
    shape = _shape(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4:
        hint = ""
        if array.ndim == 3 and 1 <= array.shape[0] <= 4:
            hint = "; this looks channels-first: pass array.transpose(1, 2, 0)"
        elif array.ndim == 4:
            hint = "; for several images pass a list of arrays"
        raise ImageInputError(f"expected {_ARRAY_LAYOUT}, got shape {shape}{hint}")
    if array.shape[2] == 4 and stealth.alpha_carries_infotext(array[:, :, 3]):
        array = array[:, :, :3]  # as for the image's file: its alpha carries stealth infotext, not transparency
    if array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    elif array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float32)
    elif array.dtype != np.uint8 and array.dtype.kind != "f":
        raise ImageInputError(
            f"numpy images must be uint8 (0..255), uint16 (0..65535) or float (0..1), got {array.dtype}, shape {shape}"
        )
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1)


def as_chw(item: torch.Tensor | np.ndarray) -> torch.Tensor:
    """One image from memory as a CHW tensor, checked: numpy arrays are HxW(xC), tensors CHW."""
    if isinstance(item, np.ndarray):
        return hwc_to_chw(item)
    if item.ndim != 3 or not 1 <= item.shape[0] <= 4:
        hint = ""
        if item.ndim == 3 and 1 <= item.shape[-1] <= 4:
            hint = "; this looks channels-last (HWC): pass tensor.permute(2, 0, 1)"
        elif item.ndim == 2:
            hint = "; a grey image needs its channel dimension: pass tensor[None]"
        raise ImageInputError(f"expected {_LAYOUT}, got a tensor of shape {_shape(item)}{hint}")
    return item


def check_batch_shape(batch: torch.Tensor) -> None:
    """A 4-D tensor given as a batch must be BCHW; say so with the shape that was given."""
    if batch.ndim != 4 or not 1 <= batch.shape[1] <= 4:
        hint = "; this looks channels-last (BHWC): pass batch.permute(0, 3, 1, 2)" if 1 <= batch.shape[-1] <= 4 else ""
        raise ImageInputError(f"expected {_LAYOUT}, got a batch of shape {_shape(batch)}{hint}")


def _range_error(low: float, high: float) -> ImageInputError:
    if not (math.isfinite(low) and math.isfinite(high)):
        return ImageInputError("a float image tensor holds NaN or infinite values; pass finite pixel values in 0..1")
    if low < -FLOAT_RANGE_SLACK and low >= -1.0 - FLOAT_RANGE_SLACK and high <= 1.0 + FLOAT_RANGE_SLACK:
        hint = "it looks like -1..1 (what a VAE decoder returns): pass (x + 1) / 2, clamped to 0..1"
    elif high > 1.0 + FLOAT_RANGE_SLACK and low >= -FLOAT_RANGE_SLACK and high <= 255.0 + FLOAT_RANGE_SLACK:
        hint = "it looks like 0..255: pass x / 255, or the image as uint8"
    else:
        hint = "scale it to 0..1"
    return ImageInputError(f"float image values must lie in 0..1, got {low:.4g}..{high:.4g}: {hint}")


def _as_float_batch(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (0..255), uint16 (0..65535) or float (0..1) CHW/BCHW (or HWC numpy) -> float (B, C, H, W) in [0, 1]."""
    image = as_chw(image) if isinstance(image, np.ndarray) or image.ndim != 4 else image
    if image.ndim == 3:
        image = image.unsqueeze(0)
    check_batch_shape(image)
    if image.shape[-2] < 1 or image.shape[-1] < 1:
        raise ImageInputError(f"the image has no pixels (shape {_shape(image)})")
    if image.dtype == torch.uint8:
        return image.float().div_(255.0)
    if image.dtype == getattr(torch, "uint16", None):
        return image.float().div_(65535.0)
    if not image.is_floating_point():
        raise ImageInputError(
            f"image tensors must be uint8 (0..255), uint16 (0..65535) or floating point (0..1), got {image.dtype}"
        )
    image = image.float()
    low, high = torch.aminmax(image)
    low_value, high_value = float(low), float(high)
    if not (low_value >= -FLOAT_RANGE_SLACK and high_value <= 1.0 + FLOAT_RANGE_SLACK):
        raise _range_error(low_value, high_value)
    if low_value < 0.0 or high_value > 1.0:
        image = image.clamp(0.0, 1.0)
    return image


def _resize(batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(batch, size=(height, width), mode="bicubic", align_corners=False, antialias=True)


def _resize_with_alpha(batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """PIL's resize of RGBA/LA in 8-bit steps: premultiply, resize, unpremultiply; alpha stays the last channel.

    PIL rounds the premultiplied colour, resizes in two passes (horizontal, then vertical) rounding after each, and
    truncates the unpremultiplied colour (alpha 0 or 255 leaves the stored colour as it is); the same steps here, in
    units of 1/255. Unpremultiplying magnifies any difference where alpha is small, hence the exact steps.
    """
    levels = batch * 255.0
    colour, alpha = levels[:, :-1], levels[:, -1:]
    premultiplied = torch.round(colour * alpha / 255.0)
    resized = torch.cat([premultiplied, alpha], dim=1)
    for pass_size in ((resized.shape[-2], width), (height, width)):  # PIL: horizontal pass, then vertical
        resized = _resize(resized, *pass_size).clamp_(0.0, 255.0).round_()
    colour, alpha = resized[:, :-1], resized[:, -1:]
    straight = torch.floor(colour * 255.0 / alpha.clamp(min=1.0)).clamp_(max=255.0)
    keep = (alpha == 0) | (alpha == 255)
    colour = torch.where(keep, colour, straight)
    return torch.cat([colour, alpha], dim=1) / 255.0


def tensor_to_pixels(
    image: torch.Tensor | np.ndarray,
    size: int = IMAGE_SIZE,
    device: torch.device | str | None = None,
    *,
    normalisation: Normalisation = CLIP_NORMALISATION,
    rgb_first: bool = False,
    crop_rounding: str = "round",
    fit: str = "crop",
) -> torch.Tensor:
    """(B, 3, size, size) float32 on `device` (default: the tensor's own), from CHW/BCHW tensors or HxWxC arrays.

    uint8 is read as 0..255, uint16 as 0..65535, float as 0..1 (values slightly outside are clamped; values clearly
    outside, such as 0..255 or -1..1 floats, are refused with a message saying how to rescale).
    """
    if isinstance(image, torch.Tensor) and device is not None:
        image = image.to(device, non_blocking=True)
    batch = _as_float_batch(image)
    if device is not None:
        batch = batch.to(device)
    height, width = batch.shape[-2:]
    limits.check_size(int(width), int(height), "an image tensor")
    if fit == "letterbox":
        if batch.shape[1] in (2, 4):
            batch = batch[:, :-1]  # the colour channels, as for PIL images
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        return _normalise(letterbox(batch, size), normalisation)
    new_h, new_w = resized_size(height, width, size)
    if rgb_first and batch.shape[1] in (2, 4):
        batch = batch[:, :-1]  # converted before resizing: alpha dropped first, no premultiplication
    channels = batch.shape[1]
    if (new_h, new_w) != (height, width):
        if channels in (2, 4):
            batch = _resize_with_alpha(batch, new_h, new_w)
        else:
            batch = _resize(batch, new_h, new_w).clamp_(0.0, 1.0)
    if channels in (2, 4):
        batch = batch[:, :-1]  # as PIL's convert("RGB") does: alpha is dropped, not composited onto a background
    top, left = crop_box(new_h, new_w, size, crop_rounding)
    batch = batch[:, :, top : top + size, left : left + size]
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    return _normalise(batch, normalisation)
