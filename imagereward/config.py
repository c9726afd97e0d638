"""Configuration of the ImageReward v1.0 model, as dataclasses.

The released model is BLIP's ViT-L/16 image encoder feeding, through cross-attention, a 12-layer BERT text encoder
(`med_config.json`), whose [CLS] output goes through a purely linear MLP head; the head's output is normalised with
the mean and standard deviation of the training set's rewards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError

#: Reward statistics of the training set; the released model reports `(reward - mean) / std`.
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072

#: Text length the model was trained with: [CLS] + at most 33 word pieces + [SEP].
MAX_TEXT_LENGTH = 35


@dataclass(frozen=True)
class VisionConfig:
    """BLIP's ViT: pre-norm transformer blocks over 16x16 patches plus a class token."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_dim: int = 4096
    layer_norm_eps: float = 1e-6

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TextConfig:
    """BLIP's BERT ("MED"): post-norm layers of self-attention, cross-attention to the image, feed-forward."""

    vocab_size: int = 30524
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_med_config(cls, med: Mapping[str, Any]) -> TextConfig:
        """Read BLIP's `med_config.json` (a BERT config). `encoder_width` is ignored: it is the ViT's width."""
        if med.get("hidden_act", "gelu") != "gelu":
            raise CheckpointError(f"med_config.json: hidden_act {med.get('hidden_act')!r} is not supported (gelu)")
        try:
            return cls(
                vocab_size=int(med["vocab_size"]),
                hidden_size=int(med["hidden_size"]),
                num_layers=int(med["num_hidden_layers"]),
                num_heads=int(med["num_attention_heads"]),
                intermediate_size=int(med["intermediate_size"]),
                max_position_embeddings=int(med.get("max_position_embeddings", 512)),
                layer_norm_eps=float(med.get("layer_norm_eps", 1e-12)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"med_config.json lacks or has a bad value for {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> TextConfig:
        path = Path(path)
        try:
            med = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path} does not exist (the BERT configuration that comes with the model)") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable JSON file: {exc}") from None
        if not isinstance(med, dict):
            raise CheckpointError(f"{path} does not hold a JSON object")
        return cls.from_med_config(med)


@dataclass(frozen=True)
class HeadConfig:
    """The reward head: Linear layers without activations (dropout between them is a no-op at inference)."""

    hidden_sizes: tuple[int, ...] = (1024, 128, 64, 16)
    score_mean: float = SCORE_MEAN
    score_std: float = SCORE_STD


@dataclass(frozen=True)
class ImageRewardConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
