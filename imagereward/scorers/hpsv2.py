"""HPSv2.1 as a model family: OpenCLIP ViT-H/14 fine-tuned on HPDv2's human preferences.

What the reference computes (PyPI `hpsv2==1.2.0`, `hpsv2.score(images, prompt, hps_version="v2.1")`, which builds
its vendored open_clip's `ViT-H-14` and loads `HPS_v2.1_compressed.pt` into it), for an image x and a prompt p:

    image = normalise(visual(x))                 text = normalise(text_tower(p)[EOT] @ text_projection)
    hpsv2.1(x, p) = <image, text>                (the cosine: the model's logit_scale is NOT applied)

so scores are small numbers (about 0.2 to 0.35 for real images and prompts), unlike PickScore's ~20. The reference
returns each as a numpy float32.

Surprises in the reference, matched here:
- Preprocessing is not CLIP's resize-and-crop. `create_model_and_transforms(..., light_augmentation=True)` makes
  the validation transform: RGB conversion, `ToTensor` *first* (0..1 floats), then `ResizeMaxSize(224)`: the
  *longest* side becomes 224 (each side `round(side * 224 / longest)`), resized by torchvision on the float tensor
  (bicubic with antialiasing, i.e. torch's `interpolate(..., antialias=True)`; no clamping, no rounding to 8 bits),
  then zero-padded to 224 x 224 (left/top get half the padding, rounded down) *before* CLIP's normalisation, so the
  border is black, not grey. The whole image is seen, letterboxed. (`letterbox_pixels`.)
- The reference scores under `torch.cuda.amp.autocast()`: fp16 on a CUDA GPU, nothing on the CPU (fp32 there).
- `HPS_v2.1_compressed.pt` is `{"state_dict": <open_clip CLIP state dict>}` with fp16 tensors ("compressed": 1.97
  GB for 986 M parameters); `load_state_dict` copies them into the fp32 model.

Where the reference fails and we give a score instead (see CONTRIBUTING.md's departures):
- RGBA images: `_convert_to_rgb_or_rgba` keeps the alpha channel and the 3-channel patch convolution refuses the
  4-channel tensor. Here the colour channels are scored (alpha dropped, as `convert("RGB")` does).
- A non-square image whose longest side is already 224 px: `ResizeMaxSize` then neither resizes nor pads, and the
  model refuses the non-square tensor. Here it is padded like every other image.

Files (in `<models folder>/hpsv2.1/`):
- `HPS_v2.1_compressed.pt` from xswu/HPSv2, read with `weights_only=True` and cached as
  `HPS_v2.1_compressed.safetensors`;
- `clip-tokenizer/vocab.json`, `merges.txt` (`clip_text`): OpenAI's BPE, which is the vocabulary of open_clip's
  `SimpleTokenizer` (ftfy + HTML-entity cleaning, [SOT] 75 pieces [EOT], padded with 0 to 77).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from PIL import Image

from ..hub import HubFile
from ..preprocess import CLIP_MEAN, CLIP_STD
from .base import LoadedModel, ModelFamily, PixelSpec, ScoringModel
from .clip_backbone import ClipConfig
from .clip_text import TOKENIZER_DIRNAME, VOCAB_SIZE, tokenizer_files

FAMILY_KEY = "hpsv2.1"
OUTPUTS = ("hpsv2.1",)
REPO_ID = "xswu/HPSv2"
CHECKPOINT_NAME = "HPS_v2.1_compressed.pt"
CACHE_NAME = "HPS_v2.1_compressed.safetensors"
WHAT = "HPSv2.1 checkpoint"

CHECKPOINT_FILE = HubFile((REPO_ID,), CHECKPOINT_NAME, CHECKPOINT_NAME, alternatives=(CACHE_NAME,), checkpoint=True)
# Small files first: a failure on the big checkpoint then leaves everything else in place.
FILES: tuple[HubFile, ...] = (*tokenizer_files(), CHECKPOINT_FILE)

#: open_clip's ViT-H/14 uses the exact GELU (not OpenAI's QuickGELU) and 16 attention heads in both towers.
ACTIVATION = "gelu"
HEADS = 16
#: A narrower test model has one head per 16 channels (the release: 1280 / 16 = 80 and 1024 / 16 = 64 wide heads).
MIN_HEAD_WIDTH = 16


def head_width(width: int) -> int:
    """The width of one attention head of a tower `width` wide: 16 heads, or fewer for a narrow test model."""
    heads = max(1, min(HEADS, width // MIN_HEAD_WIDTH))
    return width // heads if width % heads == 0 else width


# ------------------------------------------------------------------------------------------------------ pixels

IMAGE_SIZE = 224


def letterbox_pixels(image: Image.Image, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(3, size, size) float32: the reference's `preprocess_val(image)` for a PIL image, as the engine computes it
    (`PixelSpec(fit="letterbox")`, `preprocess.letterbox`); 16-bit and float images are scaled to 8 bits first and
    RGBA is read as its colour channels (see the module's docstring)."""
    from ..preprocess import pil_to_pixels

    return pil_to_pixels(image, size, normalisation=(CLIP_MEAN, CLIP_STD), fit="letterbox")


# ------------------------------------------------------------------------------------------------------- model


class HPSv21Model(ScoringModel):
    """OpenCLIP ViT-H/14 (as transformers' CLIPModel) giving the cosine of prompt and image."""

    outputs = OUTPUTS

    def __init__(self, clip: torch.nn.Module, image_size: int) -> None:
        super().__init__()
        self.clip = clip
        self.outputs = OUTPUTS
        self.needs_prompt = True
        self.pixel_spec = PixelSpec(size=image_size, mean=CLIP_MEAN, std=CLIP_STD, fit="letterbox")

    def forward(  # type: ignore[override]
        self, pixels: torch.Tensor, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        from .clip_backbone import image_embeddings, text_embeddings

        if input_ids is None:
            raise ValueError("HPSv2.1 needs the prompt's token ids")
        image = image_embeddings(self.clip, pixels)
        text = text_embeddings(self.clip, input_ids, attention_mask)
        return {"hpsv2.1": (image * text).sum(dim=-1)}


def hps_config(state: Mapping[str, torch.Tensor]) -> ClipConfig:
    """The network the state dict describes (`clip_backbone.ClipConfig`), with open_clip ViT-H/14's activation and
    head widths; CheckpointError for anything else."""
    from .clip_backbone import openai_config

    def width(key: str, axis: int) -> int:
        tensor = state.get(key)
        return int(tensor.shape[axis]) if tensor is not None and tensor.ndim > axis else 64

    return openai_config(
        state,
        activation=ACTIVATION,
        vision_head_width=head_width(width("visual.conv1.weight", 0)),
        text_head_width=head_width(width("token_embedding.weight", 1)),
        what=f"an {WHAT}",
    )


def check_state(state: Mapping[str, torch.Tensor]) -> None:
    from .clip_backbone import check_openai_state

    check_openai_state(state, hps_config(state), what=WHAT)


def load(folder: Path, outputs: frozenset[str], device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from ..weights import load_with_cache, read_torch_checkpoint
    from .clip_backbone import build_from_openai
    from .clip_text import ClipPromptEncoder

    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown:
        raise ValueError(f"{FAMILY_KEY} computes {OUTPUTS}, not {unknown}")
    folder = Path(folder)
    state, _ = load_with_cache(folder / CHECKPOINT_NAME, read=read_torch_checkpoint, check=check_state)
    config = hps_config(state)
    clip = build_from_openai(state, config, device=device, dtype=dtype, what=WHAT)
    del state
    encoder = ClipPromptEncoder(folder / TOKENIZER_DIRNAME, context_length=config.context_length)
    return LoadedModel(HPSv21Model(clip, config.image_size), encoder)


FAMILY = ModelFamily(
    key=FAMILY_KEY,
    outputs=OUTPUTS,
    files=FILES,
    load=load,
    backbone="OpenCLIP ViT-H/14, fine-tuned on HPDv2",
    size_mb=1974,
)

# ----------------------------------------------------------------------------------- random releases (tests, bench)

#: (vision width, vision blocks, text width, text blocks, embedding) of each size; 224 px, 14 px patches, 77 tokens.
_SIZES = {"full": (1280, 32, 1024, 24, 1024), "tiny": (32, 2, 32, 2, 16)}


def random_state(size: str = "full", seed: int = 0, vocab_size: int = VOCAB_SIZE) -> dict[str, torch.Tensor]:
    """Random fp16 weights with open_clip's key names for every tensor of the release's network (or of the tiny
    test model): matrices N(0, 1/fan_in), biases and embeddings N(0, 0.02), LayerNorm weights 1, logit_scale
    ln(100). (With 0.02 everywhere the tiny model's cosines of different images lie within 0.01 of each other, too
    close for a check that fp16 keeps their order to mean anything.)"""
    vision_width, vision_layers, text_width, text_layers, embed = _SIZES[size]
    patch, grid = 14, IMAGE_SIZE // 14
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int, fan_in: int | None = None) -> torch.Tensor:
        std = 0.02 if fan_in is None else fan_in**-0.5
        return (torch.randn(*shape, generator=generator) * std).half()

    def norm(prefix: str, width: int) -> dict[str, torch.Tensor]:
        return {prefix + "weight": torch.ones(width).half(), prefix + "bias": normal(width)}

    def tower(prefix: str, width: int, layers: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i in range(layers):
            block = f"{prefix}resblocks.{i}."
            out |= norm(block + "ln_1.", width)
            out |= {
                block + "attn.in_proj_weight": normal(3 * width, width, fan_in=width),
                block + "attn.in_proj_bias": normal(3 * width),
                block + "attn.out_proj.weight": normal(width, width, fan_in=width),
                block + "attn.out_proj.bias": normal(width),
            }
            out |= norm(block + "ln_2.", width)
            out |= {
                block + "mlp.c_fc.weight": normal(4 * width, width, fan_in=width),
                block + "mlp.c_fc.bias": normal(4 * width),
                block + "mlp.c_proj.weight": normal(width, 4 * width, fan_in=4 * width),
                block + "mlp.c_proj.bias": normal(width),
            }
        return out

    return {
        "positional_embedding": normal(77, text_width),
        "text_projection": normal(text_width, embed, fan_in=text_width),  # applied as x @ text_projection
        "logit_scale": torch.tensor(math.log(100.0)).half(),
        "visual.class_embedding": normal(vision_width),
        "visual.positional_embedding": normal(grid * grid + 1, vision_width),
        "visual.proj": normal(vision_width, embed, fan_in=vision_width),
        "visual.conv1.weight": normal(vision_width, 3, patch, patch),
        **norm("visual.ln_pre.", vision_width),
        **tower("visual.transformer.", vision_width, vision_layers),
        **norm("visual.ln_post.", vision_width),
        "token_embedding.weight": normal(vocab_size, text_width),
        **tower("transformer.", text_width, text_layers),
        **norm("ln_final.", text_width),
    }


def write_random_release(folder: Path, *, size: str = "full", seed: int = 0, tokenizer_dir: Path | None = None) -> None:
    """Every file of the family in the release's names and format, with random weights: HPS_v2.1_compressed.pt as
    `{"state_dict": ...}` with fp16 tensors, and clip-tokenizer/{vocab.json, merges.txt}.

    The tokenizer is `tokenizer_dir`'s files when given, else a byte-level vocabulary with no merges (one token per
    character); the full-size model keeps the release's 49,408-row token embedding either way."""

    from .openai_clip import write_vocabulary

    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}")
    folder = Path(folder)
    vocab = write_vocabulary(folder / TOKENIZER_DIRNAME, tokenizer_dir)
    state = random_state(size, seed, vocab_size=VOCAB_SIZE if size == "full" else vocab)
    torch.save({"state_dict": state}, folder / CHECKPOINT_NAME)
