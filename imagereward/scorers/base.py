"""What every scorer is made of, and what the shared engine (`imagereward.engine.Scorer`) needs from it.

A scorer is a *name* (`ScorerSpec`: what the user picks, its infotext key, its scale) computed by a *model family*
(`ModelFamily`: files to download, a loader giving a `ScoringModel` and its prompt encoder). One family may compute
several scorers from one forward pass: OpenAI CLIP ViT-L/14 gives both the CLIP score and the Aesthetic score, so an
image asked for both is encoded once.

Everything else is shared and lives elsewhere: batching, devices and dtypes, the out-of-memory fallback, offloading
(`engine.py`); downloads with resume, integrity checks and the offline message (`hub.py`); the safetensors cache
(`weights.py`); image preprocessing (`preprocess.py`, parameterised by `PixelSpec`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..hub import HubFile
from ..preprocess import CLIP_MEAN, CLIP_STD, IMAGE_SIZE


@dataclass(frozen=True)
class PixelSpec:
    """How a model wants its pixels: square side, normalisation, and where RGB conversion happens.

    `fit="crop"` (the default): PIL bicubic on the short side, then a centre crop (torchvision's `Resize` +
    `CenterCrop`, and transformers' `CLIPImageProcessor`). torchvision pipelines (ImageReward, OpenAI CLIP, open_clip)
    convert to RGB after the crop; transformers' processor converts first, which differs for RGBA and palette images
    only; and it places the crop at `(side - size) // 2` where torchvision rounds `(side - size) / 2` half to even
    (`crop_rounding="floor"`; a one-pixel shift when `side - size` is odd, e.g. 291 -> 224).

    `fit="letterbox"`: HPSv2's open_clip `ResizeMaxSize`: the image as 0..1 floats, its long side resized to `size`
    (torch's antialiased bicubic on the floats, no rounding to 8 bits), then zero-padded to a square before the
    normalisation (black borders).
    """

    size: int = IMAGE_SIZE
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    rgb_before_resize: bool = False
    crop_rounding: str = "round"  # "round" (torchvision) or "floor" (transformers)
    fit: str = "crop"  # "crop" or "letterbox"


@dataclass(frozen=True)
class TokenBatch:
    """Tokenised prompts: ids and mask (B, L), and for each prompt whether it was cut to the model's length."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    truncated: tuple[bool, ...]


class PromptEncoder(Protocol):
    """Turns prompts (already cleaned of WebUI syntax when asked) into a `TokenBatch`, exactly as the reference."""

    max_length: int

    def __call__(self, prompts: Sequence[str]) -> TokenBatch: ...


class ScoringModel(nn.Module):
    """A network giving one score per image (and prompt) for each name in `outputs`.

    Subclasses set `outputs`, `pixel_spec`, `needs_prompt` and, when some submodule must stay in fp32 while the
    rest runs in fp16 (a small head whose output is compared across images), `fp32_modules`.
    """

    outputs: tuple[str, ...] = ()
    pixel_spec: PixelSpec = PixelSpec()
    needs_prompt: bool = True
    fp32_modules: tuple[str, ...] = ()

    def forward(  # type: ignore[override]
        self, pixels: torch.Tensor, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """pixels (B, 3, S, S) normalised, float32; ids/mask (B, L) or None when no output needs a prompt.
        Returns each output's (B,) scores."""
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        """Any floating-point weight of the main network: tells the device and compute dtype."""
        for parameter in self.parameters():
            if parameter.is_floating_point():
                return parameter
        raise RuntimeError(f"{type(self).__name__} has no floating-point weights")


@dataclass(frozen=True)
class LoadedModel:
    model: ScoringModel
    encoder: PromptEncoder | None  # None when no output of the loaded model reads the prompt


#: (folder holding the family's files, outputs wanted, device, dtype) -> the model with its weights.
Loader = Callable[[Path, frozenset[str], torch.device, torch.dtype], LoadedModel]


@dataclass(frozen=True)
class ModelFamily:
    """One released network and the files it is loaded from."""

    key: str  # also the folder under the models folder ("" for ImageReward's own files, at its root)
    outputs: tuple[str, ...]  # scorer names it computes
    files: tuple[HubFile, ...]  # what `hub.resolve_files` downloads; `HubFile.url` for files not on the hub
    load: Loader
    backbone: str = ""  # for the documentation: "OpenAI CLIP ViT-L/14", ...
    size_mb: int = 0  # download size (documentation; the README's table quotes it)
    #: The `engine.Scorer` subclass a load returns (None: `Scorer` itself); ImageReward's names its model's type.
    scorer_class: type | None = None
