"""ImageReward v1.0 as a model family: its files sit at the root of the models folder (for compatibility with every
earlier version of this extension and with the reference package's layout)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import TextConfig
from ..hub import CHECKPOINT_FILE, HUB_FILES, MED_CONFIG_NAME, TOKENIZER_DIRNAME
from ..scorer import ImageRewardScorer
from .base import LoadedModel, ModelFamily


def load(folder: Path, outputs: frozenset[str], device: torch.device, dtype: torch.dtype) -> LoadedModel:
    # Given the .pt, loading checks that a conversion beside it is up to date (the .pt may have been replaced);
    # without it, `load_state` reads the conversion in the folder.
    original = folder / CHECKPOINT_FILE.relpath
    checkpoint = original if original.exists() else folder
    return load_files(checkpoint, folder / MED_CONFIG_NAME, folder / TOKENIZER_DIRNAME, device, dtype)


def load_files(
    checkpoint: Path,
    med_config: Path,
    tokenizer_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    *,
    convert: bool = True,
) -> LoadedModel:
    """The model from explicit files: the checkpoint (`.pt`, `.safetensors` or a folder holding one), its
    med_config.json and the folder of the BERT tokenizer's vocabulary."""
    from ..text import PromptTokenizer
    from ..weights import build_model, load_state

    text_config = TextConfig.from_file(med_config)
    tokenizer = PromptTokenizer(tokenizer_dir)
    state, _ = load_state(checkpoint, convert=convert, text_config=text_config)
    model = build_model(state, text_config, device=device, dtype=dtype)
    return LoadedModel(model, tokenizer)


FAMILY = ModelFamily(
    key="",
    outputs=("imagereward",),
    files=HUB_FILES,
    load=load,
    backbone="BLIP ViT-L/16 + BERT-base with cross-attention",
    size_mb=1790,
    scorer_class=ImageRewardScorer,
)
