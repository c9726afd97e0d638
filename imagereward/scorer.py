"""ImageReward v1.0 as a scorer: load once, score many images in batches.

    scorer = ImageRewardScorer.load("models/ImageReward")        # downloads on first use
    scores = scorer.score("a cat on a sofa", ["a.png", "b.png"])   # one prompt for all, or one per image

Defaults: the device is CUDA when there is one, else an Apple GPU (MPS), else the CPU; fp16 on a GPU with the reward
head in fp32, fp32 on the CPU. bf16 only on request (measurably less accurate). On an out-of-memory error the batch is
halved and retried, down to one image. Batching, devices and the memory fallback are the shared engine's
(`engine.py`); this module adds only how ImageReward's files are found and loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .config import TextConfig
from .engine import (
    DTYPES,
    Scorer,
    ScoringOutOfMemoryError,
    empty_cache,
    expand_prompts,
    flatten_images,
    is_out_of_memory,
    mps_available,
    resolve_device,
    resolve_dtype,
)
from .model import ImageRewardModel
from .text import PromptTokenizer
from .weights import build_model, load_state

log = logging.getLogger("imagereward")

__all__ = [
    "DTYPES",
    "ImageRewardScorer",
    "ScoringOutOfMemoryError",
    "empty_cache",
    "expand_prompts",
    "flatten_images",
    "is_out_of_memory",
    "mps_available",
    "resolve_device",
    "resolve_dtype",
]


class ImageRewardScorer(Scorer):
    """ImageReward v1.0 on one device. Thread-safe: calls are serialised by a lock."""

    model: ImageRewardModel

    def __init__(
        self,
        model: ImageRewardModel,
        tokenizer: PromptTokenizer,
        *,
        batch_size: int = 16,
        preprocess_workers: int | None = None,
    ) -> None:
        super().__init__(model, tokenizer, batch_size=batch_size, preprocess_workers=preprocess_workers)

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
        target = resolve_device(device)
        weight_dtype = resolve_dtype(dtype, target)
        text_config = TextConfig.from_file(med_config)
        tokenizer = PromptTokenizer(tokenizer_dir)
        # Loading must not happen under an inference-mode context (the WebUI generates under one): parameters made
        # there could not be moved between devices later.
        with torch.inference_mode(False), torch.no_grad():
            state, source = load_state(checkpoint, convert=convert, text_config=text_config)
            model = build_model(state, text_config, device=target, dtype=weight_dtype)
        del state
        log.info("ImageReward loaded from %s on %s (%s)", source, target, str(weight_dtype).replace("torch.", ""))
        return cls(model, tokenizer, batch_size=batch_size)

    @classmethod
    def load(
        cls,
        models_dir: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        offline: bool | None = None,
        progress: bool = True,
    ) -> ImageRewardScorer:
        """Load from `models_dir`, downloading the checkpoint and tokenizer there on first use."""
        from .hub import CHECKPOINT_NAME, resolve_model_files

        files = resolve_model_files(models_dir, offline=offline, progress=progress)
        # Given the .pt, loading checks that a conversion beside it is up to date (the .pt may have been replaced).
        checkpoint = files.checkpoint.with_name(CHECKPOINT_NAME)
        if not checkpoint.exists():
            checkpoint = files.checkpoint
        return cls.from_files(
            checkpoint, files.med_config, files.tokenizer_dir, device=device, dtype=dtype, batch_size=batch_size
        )
