"""Image -> normalised (3, 224, 224) pixels, two ways.

`pil_to_pixels` repeats the reference's torchvision pipeline with the same PIL calls, so its output is identical:
bicubic resize of the short side to 224 (PIL's own antialiasing; note that PIL resizes palette images with nearest
neighbour and RGBA/LA with premultiplied alpha), centre crop, conversion to RGB *after* resizing and cropping,
scaling to [0, 1], CLIP's mean and std.

`tensor_to_pixels` does the same on tensors already in memory (the WebUI's decoded batch, on the GPU): antialiased
bicubic interpolation in torch. It differs from PIL by rounding only (PIL rounds to uint8 after resizing); the
tests bound the effect on scores.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import ImageInputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224

ImageInput = Image.Image | str | os.PathLike | torch.Tensor | np.ndarray


def resized_size(height: int, width: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """torchvision's Resize(int): the short side becomes `size`, the long side is scaled and truncated."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def crop_box(height: int, width: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """torchvision's CenterCrop: (top, left) of the centred size x size window."""
    return round((height - size) / 2.0), round((width - size) / 2.0)


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file, or raise ImageInputError naming the file."""
    try:
        with Image.open(path) as handle:
            handle.load()
            return handle.copy()
    except FileNotFoundError:
        raise ImageInputError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageInputError(f"{path}: not a readable image ({exc})") from None


def pil_resize_crop(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Resize (bicubic, short side) and centre-crop with PIL, then convert to RGB: the reference's order."""
    height, width = image.height, image.width
    new_h, new_w = resized_size(height, width, size)
    if (new_h, new_w) != (height, width):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = crop_box(new_h, new_w, size)
    image = image.crop((left, top, left + size, top + size))
    return image.convert("RGB")


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels (..., 3, H, W) -> CLIP-normalised."""
    mean = torch.tensor(CLIP_MEAN, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    return (pixels - mean) / std


def pil_to_uint8(image: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """The reference's pixels before scaling: (size, size, 3) uint8."""
    return np.asarray(pil_resize_crop(image, size), dtype=np.uint8)


def pil_to_pixels(image: Image.Image, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(3, size, size) float32, identical to the reference's preprocessing."""
    array = torch.from_numpy(pil_to_uint8(image, size).copy()).permute(2, 0, 1).float().div_(255.0)
    return _normalise(array)


def hwc_to_chw(array: np.ndarray) -> torch.Tensor:
    """A numpy image (HxW or HxWxC, as PIL and OpenCV give them) as a CHW tensor (a copy: numpy views of PIL
    images are read-only)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ImageInputError(f"a numpy image must be HxW or HxWxC, got shape {array.shape}")
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1)


def _as_float_batch(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) in CHW/BCHW (or HWC numpy) -> float (B, 3, H, W) in [0, 1]."""
    if isinstance(image, np.ndarray):
        image = hwc_to_chw(image)
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[1] not in (1, 3, 4):
        raise ImageInputError(
            f"an image tensor must be CHW or BCHW with 1, 3 or 4 channels, got shape {tuple(image.shape)}"
        )
    if image.dtype == torch.uint8:
        image = image.float().div_(255.0)
    elif image.is_floating_point():
        image = image.float()
    else:
        raise ImageInputError(f"image tensors must be uint8 (0..255) or floating point (0..1), got {image.dtype}")
    if image.shape[1] == 1:
        image = image.expand(-1, 3, -1, -1)
    elif image.shape[1] == 4:
        image = image[:, :3]  # like PIL's RGBA -> RGB: the alpha channel is dropped, not composited
    return image


def tensor_to_pixels(
    image: torch.Tensor | np.ndarray, size: int = IMAGE_SIZE, device: torch.device | str | None = None
) -> torch.Tensor:
    """(B, 3, size, size) float32 on `device` (default: the tensor's own), from CHW/BCHW tensors."""
    if isinstance(image, torch.Tensor) and device is not None:
        image = image.to(device, non_blocking=True)
    batch = _as_float_batch(image)
    if isinstance(image, np.ndarray) and device is not None:
        batch = batch.to(device)
    height, width = batch.shape[-2:]
    new_h, new_w = resized_size(height, width, size)
    if (new_h, new_w) != (height, width):
        batch = F.interpolate(batch, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        batch = batch.clamp_(0.0, 1.0)
    top, left = crop_box(new_h, new_w, size)
    batch = batch[:, :, top : top + size, left : left + size]
    return _normalise(batch)


def load_pil(item: ImageInput) -> Image.Image:
    """A PIL image from a PIL image or a path; other inputs are not PIL."""
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (str, os.PathLike, Path)):
        return open_image(item)
    raise ImageInputError(f"expected a PIL image or a path, got {type(item).__name__}")
