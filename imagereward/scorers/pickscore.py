"""PickScore v1 as a model family: CLIP ViT-H/14 fine-tuned on Pick-a-Pic's human preferences.

What the reference computes (the model card of `yuvalkirstain/PickScore_v1`, with transformers' `AutoProcessor` from
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K` and `AutoModel` from the PickScore repo), for an image x and a prompt p:

    image = normalise(visual_projection(vision_model(x).pooler_output))
    text = normalise(text_projection(text_model(p)[EOT]))
    pickscore(x, p) = exp(logit_scale) * <text, image>           (exp(logit_scale) is about 100 in the release)

The card then takes a softmax over the images of one prompt; the score shown here is the value before it (what the
Pick-a-Pic paper calls PickScore), so each image has its own number and images of one prompt compare by it.

Preprocessing is transformers' `CLIPImageProcessor` (the slow, PIL one: transformers up to 4.5x picks it for this
processor by default): convert to RGB *first*, bicubic resize of the short side to 224 px, centre crop at
`(size - 224) // 2` (floor, where torchvision rounds half to even), scale to 0..1, CLIP's mean and std. Prompts go
through `CLIPTokenizerFast` with `truncation=True, max_length=77`: [SOT], the first 75 pieces, [EOT]. Its only text
cleaning is the tokenizer's normaliser (NFC, runs of whitespace to one space, lower case): unlike OpenAI's and
open_clip's tokenizers it does not decode HTML entities or fix text with ftfy, so "fish &amp; chips" keeps its
"&amp;" here (`hf_normalise`).

Files (in `<models folder>/pickscore-v1/`):
- `config.json`, `model.safetensors` from yuvalkirstain/PickScore_v1 (3.94 GB, fp32; the repo's older
  `pytorch_model.bin`, same weights plus `position_ids` buffers, is read too when it is there instead, with
  `weights_only=True`, and cached as `pytorch_model.safetensors`);
- `processor/preprocessor_config.json`, `processor/vocab.json`, `processor/merges.txt` from
  laion/CLIP-ViT-H-14-laion2B-s32B-b79K (the processor the model card loads; the PickScore repo holds the same
  files and is tried when the laion repo is not reachable).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ModelFileMissingError
from ..hub import HubFile
from ..preprocess import CLIP_MEAN, CLIP_STD
from .base import LoadedModel, ModelFamily, PixelSpec, ScoringModel
from .clip_text import CONTEXT_LENGTH, ClipPromptEncoder

FAMILY_KEY = "pickscore-v1"
OUTPUTS = ("pickscore",)
MODEL_REPO_ID = "yuvalkirstain/PickScore_v1"
PROCESSOR_REPO_ID = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PROCESSOR_DIRNAME = "processor"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"  # the repo's first upload; model.safetensors is its conversion
PREPROCESSOR_NAME = "preprocessor_config.json"

_PROCESSOR_REPOS = (PROCESSOR_REPO_ID, MODEL_REPO_ID)
# Small files first: a failure on the big checkpoint then leaves everything else in place.
FILES: tuple[HubFile, ...] = (
    HubFile(_PROCESSOR_REPOS, PREPROCESSOR_NAME, f"{PROCESSOR_DIRNAME}/{PREPROCESSOR_NAME}"),
    HubFile(_PROCESSOR_REPOS, "vocab.json", f"{PROCESSOR_DIRNAME}/vocab.json"),
    HubFile(_PROCESSOR_REPOS, "merges.txt", f"{PROCESSOR_DIRNAME}/merges.txt"),
    HubFile((MODEL_REPO_ID,), CONFIG_NAME, CONFIG_NAME),
    HubFile(
        (MODEL_REPO_ID,),
        WEIGHTS_NAME,
        WEIGHTS_NAME,
        alternatives=("pytorch_model.safetensors", LEGACY_WEIGHTS_NAME),  # the repo's older file, placed by hand
    ),
)

WHAT = "PickScore v1 checkpoint"

# ------------------------------------------------------------------------------------------------------ prompts

_WHITESPACE = re.compile(r"\s+")


def hf_normalise(text: str) -> str:
    """What `CLIPTokenizerFast`'s normaliser does to a prompt (NFC, whitespace runs to one space, lower case), and
    nothing else: PickScore's reference reads HTML entities and curly quotes as written."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).lower()


def pickscore_encoder(folder: Path, context_length: int = CONTEXT_LENGTH) -> ClipPromptEncoder:
    """The CLIP BPE tokenizer with transformers' text normalisation instead of OpenAI's cleaning, as PickScore's
    processor tokenizes (no html unescaping, no ftfy fixes)."""
    return ClipPromptEncoder(folder, context_length, clean=hf_normalise)


# ------------------------------------------------------------------------------------------------------ pixels


def pixel_spec_from(config: Mapping[str, Any], path: Path) -> PixelSpec:
    """The PixelSpec that `CLIPImageProcessor` with this preprocessor_config.json amounts to; CheckpointError when
    it asks for something other than the short-side resize to the crop size that our preprocessing does."""

    def side(value: Any, keys: tuple[str, ...]) -> int | None:
        if isinstance(value, int):
            return value
        if isinstance(value, Mapping):
            sizes = {value.get(k) for k in keys if k in value}
            if len(sizes) == 1:
                (only,) = sizes
                return only if isinstance(only, int) else None
        return None

    crop = side(config.get("crop_size", 224), ("height", "width"))
    resize = side(config.get("size", 224), ("shortest_edge",))
    problems = []
    try:
        mean = tuple(float(v) for v in config.get("image_mean", CLIP_MEAN))
        std = tuple(float(v) for v in config.get("image_std", CLIP_STD))
        rescale = float(config.get("rescale_factor", 1 / 255))
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: image_mean, image_std and rescale_factor must be numbers") from None
    if abs(rescale - 1 / 255) > 1e-9:
        problems.append(f"rescale_factor {rescale} (expected 1/255)")
    if crop is None or resize is None or crop != resize or not 16 <= crop <= 1024:
        problems.append(f"resize {config.get('size')!r} and crop {config.get('crop_size')!r} (expected equal sides)")
    if config.get("resample", 3) != 3:
        problems.append(f"resample {config.get('resample')!r} (expected 3, bicubic)")
    for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"):
        if config.get(flag, True) is not True:
            problems.append(f"{flag} {config.get(flag)!r}")
    if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std):
        problems.append(f"mean {mean} / std {std}")
    if problems:
        raise CheckpointError(f"{path} describes a preprocessing PickScore does not use: " + "; ".join(problems))
    assert crop is not None
    # transformers' processor converts to RGB before resizing and crops at (side - size) // 2.
    return PixelSpec(
        size=crop,
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        rgb_before_resize=True,
        crop_rounding="floor",
    )


# ------------------------------------------------------------------------------------------------------- model


class PickScoreModel(ScoringModel):
    """CLIP ViT-H/14 (transformers' CLIPModel) giving exp(logit_scale) * cosine(prompt, image)."""

    outputs = OUTPUTS

    def __init__(self, clip: torch.nn.Module, scale: float, pixel_spec: PixelSpec) -> None:
        super().__init__()
        self.clip = clip
        # exp(logit_scale) as a Python float taken from the checkpoint's value in fp32: a model moved to fp16 would
        # otherwise round the scale itself (ln 100 -> 4.6055 in fp16, 0.03 % off every score).
        self.scale = scale
        self.pixel_spec = pixel_spec
        self.outputs = OUTPUTS
        self.needs_prompt = True

    def forward(  # type: ignore[override]
        self, pixels: torch.Tensor, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        from .clip_backbone import image_embeddings, text_embeddings

        if input_ids is None:
            raise ValueError("PickScore needs the prompt's token ids")
        image = image_embeddings(self.clip, pixels)
        text = text_embeddings(self.clip, input_ids, attention_mask)
        return {"pickscore": self.scale * (image * text).sum(dim=-1)}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFileMissingError(f"the {what} {path} is missing: delete the folder to download it again")
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc}): delete it to download it again") from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path} holds a {type(data).__name__}, not a JSON object: delete it to download it again"
        )
    return data


def _check_config(config: Mapping[str, Any], path: Path) -> None:
    if config.get("model_type") != "clip" or not isinstance(config.get("text_config"), Mapping):
        raise CheckpointError(f"{path} is not a CLIP configuration (model_type {config.get('model_type')!r})")


def weights_path(folder: Path) -> Path:
    """model.safetensors when it is there, else the repo's pytorch_model.bin (or its conversion)."""
    for name in (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME, "pytorch_model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    raise ModelFileMissingError(
        f"the PickScore weights are missing from {folder}: put {WEIGHTS_NAME} (or {LEGACY_WEIGHTS_NAME}) from "
        f"https://huggingface.co/{MODEL_REPO_ID} there"
    )


def load(folder: Path, outputs: frozenset[str], device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from ..weights import load_with_cache, read_torch_checkpoint
    from .clip_backbone import build_from_hf

    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown:
        raise ValueError(f"{FAMILY_KEY} computes {OUTPUTS}, not {unknown}")
    folder = Path(folder)
    config = _read_json(folder / CONFIG_NAME, "PickScore configuration")
    _check_config(config, folder / CONFIG_NAME)
    processor = folder / PROCESSOR_DIRNAME
    spec = pixel_spec_from(_read_json(processor / PREPROCESSOR_NAME, "image processor configuration"), processor)

    def check(state: Mapping[str, torch.Tensor]) -> None:  # a refused .bin is never converted
        build_from_hf(config, state, device="meta", what=WHAT)

    state, _ = load_with_cache(weights_path(folder), read=read_torch_checkpoint, check=check)
    if "logit_scale" not in state or state["logit_scale"].numel() != 1:
        raise CheckpointError(f"this is not a complete {WHAT}: it has no logit_scale")
    scale = math.exp(float(state["logit_scale"].float()))
    clip = build_from_hf(config, state, device=device, dtype=dtype, what=WHAT)
    del state
    context = int(config["text_config"].get("max_position_embeddings", 77))
    encoder = pickscore_encoder(processor, context_length=context)
    return LoadedModel(PickScoreModel(clip, scale, spec), encoder)


FAMILY = ModelFamily(
    key=FAMILY_KEY,
    outputs=OUTPUTS,
    files=FILES,
    load=load,
    backbone="CLIP ViT-H/14 (transformers CLIPModel), fine-tuned on Pick-a-Pic",
    size_mb=3945,
)

# ----------------------------------------------------------------------------------- random releases (tests, bench)

#: The laion repo's preprocessor_config.json (CLIPFeatureExtractor layout, sizes as numbers).
PREPROCESSOR_CONFIG: dict[str, Any] = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": list(CLIP_MEAN),
    "image_std": list(CLIP_STD),
    "resample": 3,
    "size": 224,
}


def random_config(size: str = "full", vocab_size: int = 49408) -> dict[str, Any]:
    """config.json of the release (ViT-H/14: 1280 wide, 32 blocks, 14 px patches; text 1024 wide, 24 blocks;
    projections to 1024; exact GELU) or of the tiny test model (32 wide, 2 blocks of 2 heads, projections to 16)."""
    from .clip_backbone import ClipConfig, TowerConfig

    if size == "full":
        vision, text, embed = TowerConfig(1280, 32, 16, 5120), TowerConfig(1024, 24, 16, 4096), 1024
    elif size == "tiny":
        vision, text, embed = TowerConfig(32, 2, 2, 64), TowerConfig(32, 2, 2, 64), 16
    else:
        raise ValueError("size must be 'full' or 'tiny'")
    clip = ClipConfig(embed, 224, 14, vision, text, vocab_size, 77, "gelu")
    config = clip.to_hf().to_dict()
    config["architectures"] = ["CLIPModel"]
    return config


def random_hf_state(config: Mapping[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 weights for every tensor of the CLIPModel `config` describes, in transformers' key names:
    matrices (and the patch convolution) N(0, 1/fan_in), biases and embeddings N(0, 0.02), LayerNorm weights 1,
    logit_scale ln(100) as in the release. (With 0.02 everywhere the tiny model's scores of different images lie
    within 0.2 of each other, too close for a check that fp16 keeps their order to mean anything.)"""
    from transformers import CLIPConfig, CLIPModel

    with torch.device("meta"):
        empty = CLIPModel(CLIPConfig.from_dict(dict(config)))
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in empty.state_dict().items():
        if name.endswith("position_ids"):
            continue
        if name == "logit_scale":
            state[name] = torch.tensor(math.log(100.0))
        elif ("layer_norm" in name or "layrnorm" in name) and name.endswith(".weight"):
            state[name] = torch.ones(tensor.shape)
        elif name.endswith(".weight") and tensor.ndim >= 2 and "embedding" not in name.rsplit(".", 2)[-2]:
            fan_in = math.prod(tensor.shape[1:])
            state[name] = torch.randn(tensor.shape, generator=generator) * fan_in**-0.5
        else:
            state[name] = torch.randn(tensor.shape, generator=generator) * 0.02
    return state


def write_random_release(folder: Path, *, size: str = "full", seed: int = 0, tokenizer_dir: Path | None = None) -> None:
    """Every file of the family in the release's names and layout, with random weights: config.json,
    model.safetensors, processor/{preprocessor_config.json, vocab.json, merges.txt}.

    The tokenizer is `tokenizer_dir`'s vocab.json + merges.txt when given, else a byte-level vocabulary with no
    merges (one token per character); the full-size model keeps the release's 49,408-row token embedding either way."""
    from safetensors.torch import save_file

    from .openai_clip import write_vocabulary

    folder = Path(folder)
    processor = folder / PROCESSOR_DIRNAME
    vocab = write_vocabulary(processor, tokenizer_dir)
    (processor / PREPROCESSOR_NAME).write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n", "utf-8")
    config = random_config(size, 49408 if size == "full" else vocab)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    save_file(random_hf_state(config, seed), str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
