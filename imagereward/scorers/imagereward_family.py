"""ImageReward v1.0 as a model family: its files sit at the root of the models folder (for compatibility with every
earlier version of this extension and with the reference package's layout)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import TextConfig
from ..hub import CHECKPOINT_FILE, HUB_FILES, MED_CONFIG_NAME, TOKENIZER_DIRNAME, present_path
from .base import LoadedModel, ModelFamily


def load(folder: Path, outputs: frozenset[str], device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from ..text import PromptTokenizer
    from ..weights import build_model, load_state

    checkpoint = present_path(folder, CHECKPOINT_FILE) or folder / CHECKPOINT_FILE.relpath
    original = folder / CHECKPOINT_FILE.relpath
    if original.exists():  # loading checks that a conversion beside it is up to date (the .pt may have been replaced)
        checkpoint = original
    text_config = TextConfig.from_file(folder / MED_CONFIG_NAME)
    state, _ = load_state(checkpoint, text_config=text_config)
    model = build_model(state, text_config, device=device, dtype=dtype)
    return LoadedModel(model, PromptTokenizer(folder / TOKENIZER_DIRNAME))


FAMILY = ModelFamily(
    key="",
    outputs=("imagereward",),
    files=HUB_FILES,
    load=load,
    backbone="BLIP ViT-L/16 + BERT-base with cross-attention",
    size_mb=1790,
)
