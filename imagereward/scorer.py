"""ImageReward v1.0 as a scorer: load once, score many images in batches.

    scorer = ImageRewardScorer.load("models/ImageReward")        # downloads on first use
    scores = scorer.score("a cat on a sofa", ["a.png", "b.png"])   # one prompt for all, or one per image

Defaults: the device is CUDA when there is one, else an Apple GPU (MPS), else the CPU; fp16 on a GPU with the reward
head in fp32, fp32 on the CPU. bf16 only on request (measurably less accurate). On an out-of-memory error the batch is
halved and retried, down to one image. Batching, devices and the memory fallback are the shared engine's
(`engine.py`); loading is the registry's, as for every other scorer (`scorers/registry.load_family`, with
ImageReward's files and loader in `scorers/imagereward_family.py`). This module is the public name for both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .engine import Scorer
from .model import ImageRewardModel
from .text import PromptTokenizer

__all__ = ["ImageRewardScorer"]


class ImageRewardScorer(Scorer):
    """ImageReward v1.0 on one device. Thread-safe: calls are serialised by a lock."""

    model: ImageRewardModel

    def __init__(
        self,
        model: ImageRewardModel,
        encoder: PromptTokenizer,
        *,
        batch_size: int = 16,
        preprocess_workers: int | None = None,
    ) -> None:
        super().__init__(model, encoder, batch_size=batch_size, preprocess_workers=preprocess_workers)

    @classmethod
    def from_files(
        cls,
        checkpoint: str | Path,
        med_config: str | Path,
        tokenizer_dir: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        convert: bool = True,
    ) -> ImageRewardScorer:
        """Load from explicit local files (no network)."""
        from .scorers import imagereward_family
        from .scorers.registry import load_on_device

        def build(target: torch.device, weight_dtype: torch.dtype):
            return imagereward_family.load_files(
                Path(checkpoint), Path(med_config), Path(tokenizer_dir), target, weight_dtype, convert=convert
            )

        return load_on_device(build, "ImageReward", checkpoint, device, dtype, batch_size, scorer_class=cls)

    @classmethod
    def load(cls, models_dir: str | Path | None = None, **options: Any) -> ImageRewardScorer:
        """Load from `models_dir`, downloading the checkpoint and tokenizer there on first use. `options`: those of
        `load_scorers` (`registry.LoadOptions`): device, dtype, batch_size, offline, progress."""
        from .scorers.registry import LoadOptions, load_family

        scorer = load_family("", ("imagereward",), models_dir, LoadOptions(**options))
        return scorer if isinstance(scorer, cls) else cls(scorer.model, scorer.encoder, batch_size=scorer.batch_size)
