"""BLIP score, as the reference package computes it (`image-reward==1.5`, `ImageReward.load_score("BLIP")`).

Salesforce's BLIP pre-trained with a ViT-L/16 image encoder (`model_large.pth`). The score is the cosine of two
contrastive (ITC) features, each the [CLS] token of its encoder through a linear projection to 256 dimensions:

    image = normalise(vision_proj(ViT(pixels)[:, 0]))
    text  = normalise(text_proj(BERT_text_mode(prompt)[:, 0]))
    score = sum(image * text)                                  in -1..1

The text encoder runs in BLIP's "text" mode: its layers skip their cross-attention, so the prompt is encoded alone
(`[CLS]` first, not `[ENC]`). The tokenizer (bert-base-uncased + `[DEC]`, `[ENC]`, 35 tokens), the preprocessing
(bicubic resize of the short side to 224, centre crop, RGB after the crop, CLIP's mean and std) and the BERT config
(`med_config.json` from THUDM/ImageReward, the file the reference's `load_score` downloads) are ImageReward's, so the
ViT, BERT and tokenizer are the ones in `imagereward.model` and `imagereward.text`.

The release file, `{"model": state_dict}` of Salesforce's pre-training class, also holds what pre-training needed
and the score never reads (momentum encoders, the ITM head, the caption decoder, feature queues, the text
encoder's cross-attention). Only the tensors the score uses are taken, through the explicit key map below; every
other entry must be one of those named as unused, so a file of another kind is refused with the names. The used
tensors are converted once to `model_large.safetensors` beside the release (a fraction of its size).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig, VisionConfig
from ..errors import CheckpointError, ImageRewardError
from ..hub import MED_CONFIG_FILE, MED_CONFIG_NAME, TOKENIZER_CONFIG_FILE, TOKENIZER_DIRNAME, VOCAB_FILE, HubFile
from ..model import TextEncoder, VisionTransformer
from ..weights import VIT_L16, blip_vision_config, expected_shapes, load_torch_file, map_checked, tensor_shape
from ..weights import summarise_names as _summarise
from .base import LoadedModel, ModelFamily, ScoringModel

CHECKPOINT_NAME = "model_large.pth"
SAFETENSORS_NAME = "model_large.safetensors"
#: The address the reference's `load_score` downloads from (`ImageReward/utils.py`, `_SCORES["BLIP"]`). Neither the
#: reference (it checks nothing) nor Salesforce (BLIP's README and `load_checkpoint(check_hash=False)`) states a
#: hash or size, so the download is checked against the size the server announces, and loading checks every tensor.
CHECKPOINT_URL = "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/model_large.pth"

CHECKPOINT_FILE = HubFile(
    (), CHECKPOINT_NAME, CHECKPOINT_NAME, url=CHECKPOINT_URL, alternatives=(SAFETENSORS_NAME,), checkpoint=True
)
# Small files first: a failure on the big checkpoint then leaves the rest in place. med_config.json comes from the
# ImageReward hub repository, as the reference's load_score gets it; the vocabulary from bert-base-uncased.
FILES: tuple[HubFile, ...] = (MED_CONFIG_FILE, VOCAB_FILE, TOKENIZER_CONFIG_FILE, CHECKPOINT_FILE)

OUTPUTS = ("blip",)

#: BLIP's contrastive feature width (`BLIP_Pretrain(embed_dim=256)`, as the reference builds it).
EMBED_DIM = 256


@dataclass(frozen=True)
class BlipScoreConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)  # from med_config.json
    embed_dim: int = EMBED_DIM


class BlipScoreModel(ScoringModel):
    """Cosine of BLIP's projected, normalised [CLS] features of the image and of the prompt."""

    outputs = OUTPUTS
    # The projections and the cosine stay in fp32 under fp16 weights: they are small, and the scores of different
    # images are compared with one another.
    fp32_modules = ("vision_proj", "text_proj")

    def __init__(self, config: BlipScoreConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionTransformer(config.vision)
        self.text = TextEncoder(config.text, image_width=None)  # BLIP's text mode: no cross-attention
        self.vision_proj = nn.Linear(config.vision.width, config.embed_dim)
        self.text_proj = nn.Linear(config.text.hidden_size, config.embed_dim)

    def forward(  # type: ignore[override]
        self, pixels: torch.Tensor, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        if input_ids is None or attention_mask is None:
            raise ImageRewardError("the BLIP score reads the prompt: give one")
        return {"blip": (self.image_features(pixels) * self.text_features(input_ids, attention_mask)).sum(dim=-1)}

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) unit vectors, fp32."""
        cls = self.vision(pixels.to(self.vision.patch_embed.weight.dtype))[:, 0, :]
        return F.normalize(self.vision_proj(cls.to(self.vision_proj.weight.dtype)), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) unit vectors, fp32."""
        cls = self.text(input_ids, attention_mask)[:, 0, :]
        return F.normalize(self.text_proj(cls.to(self.text_proj.weight.dtype)), dim=-1)


# ---------------------------------------------------------------------------------------------------- key map

# Release key (inside "model") -> our parameter name. Each rule names exactly what it maps.
_VIT = r"^visual_encoder\."
_EMBEDDINGS = r"^text_encoder\.embeddings\."
_LAYER = r"^text_encoder\.encoder\.layer\.(\d+)\."
_WB = r"\.(weight|bias)$"
KEY_RULES: tuple[tuple[str, str], ...] = (
    (_VIT + r"patch_embed\.proj" + _WB, r"vision.patch_embed.\1"),
    (_VIT + r"(cls_token|pos_embed)$", r"vision.\1"),
    (_VIT + r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)" + _WB, r"vision.blocks.\1.\2.\3"),
    (_VIT + r"norm" + _WB, r"vision.norm.\1"),
    (_EMBEDDINGS + r"(word_embeddings|position_embeddings)\.weight$", r"text.\1.weight"),
    (_EMBEDDINGS + r"LayerNorm" + _WB, r"text.embed_norm.\1"),
    (_LAYER + r"attention\.self\.(query|key|value)" + _WB, r"text.layers.\1.self_attn.\2.\3"),
    (_LAYER + r"attention\.output\.dense" + _WB, r"text.layers.\1.self_attn.out.\2"),
    (_LAYER + r"attention\.output\.LayerNorm" + _WB, r"text.layers.\1.self_attn_norm.\2"),
    (_LAYER + r"intermediate\.dense" + _WB, r"text.layers.\1.ffn_in.\2"),
    (_LAYER + r"output\.dense" + _WB, r"text.layers.\1.ffn_out.\2"),
    (_LAYER + r"output\.LayerNorm" + _WB, r"text.layers.\1.ffn_norm.\2"),
    (r"^(vision_proj|text_proj)" + _WB, r"\1.\2"),
)
#: In the release and not read by the score: the text encoder's cross-attention (BLIP's image-grounded mode only)
#: and BERT's position-id buffer.
UNUSED_KEYS = re.compile(_LAYER + r"crossattention\.|" + _EMBEDDINGS + r"position_ids$")
#: Saved by Salesforce's pre-training class (`BLIP_Pretrain`) beside the encoders: momentum encoders and
#: projections, the image-text matching head, the caption decoder, the contrastive queues and temperature.
TRAINING_ONLY_KEYS = re.compile(
    r"^(visual_encoder_m|text_encoder_m|vision_proj_m|text_proj_m|itm_head|text_decoder)\.|"
    r"^(image_queue|text_queue|queue_ptr|temp)$"
)


def release_to_ours(key: str) -> str | None:
    """Our parameter name for a release key the score uses, or None."""
    for pattern, replacement in KEY_RULES:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    return None


def select_used(state: Mapping[str, torch.Tensor], where: object = "the checkpoint") -> dict[str, torch.Tensor]:
    """The release's tensors that the score reads (release names); refuses a key that is neither used nor one of the
    release's known unused entries."""
    used: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        if release_to_ours(key) is not None:
            used[key] = tensor
        elif not (UNUSED_KEYS.match(key) or TRAINING_ONLY_KEYS.match(key)):
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{where} is not Salesforce's BLIP model_large.pth: it has entries no BLIP pre-training checkpoint has: "
            f"{_summarise(unknown)}"
        )
    return used


# ---------------------------------------------------------------------------------------------------- checking


_RELEASE = "BLIP's model_large.pth"


def infer_config(state: Mapping[str, torch.Tensor], text: TextConfig) -> BlipScoreConfig:
    """The configuration the (used) tensors describe, checked before anything is built: the vision and text encoders
    as ImageReward's (`weights.blip_vision_config`), and projections that map both to one feature width."""
    vision_proj = tensor_shape(state, "vision_proj.weight", _RELEASE)
    embed_dim = vision_proj[0] if len(vision_proj) == 2 else 0

    def projection(width: int) -> list[str]:
        if 1 <= embed_dim <= 4096 and vision_proj == (embed_dim, width):
            return []
        return [f"vision_proj {vision_proj} (expected (features, {width}))"]

    vision = blip_vision_config(state, text, "", _RELEASE, "BLIP", projection)
    return BlipScoreConfig(vision=vision, text=text, embed_dim=embed_dim)


def map_state_dict(state: Mapping[str, torch.Tensor], model: BlipScoreModel) -> dict[str, torch.Tensor]:
    """Release names -> ours, refusing anything missing, unknown, misshapen or not floating point."""
    return map_checked(state, expected_shapes(model), release_to_ours, "a complete BLIP model_large.pth")


def check_state(state: Mapping[str, torch.Tensor], text_config: TextConfig) -> BlipScoreModel:
    """Refuse anything but the used tensors of a complete checkpoint; returns the empty (meta-device) model."""
    config = infer_config(state, text_config)
    with torch.device("meta"):
        model = BlipScoreModel(config)
    map_state_dict(state, model)
    return model


def build_model(
    state: Mapping[str, torch.Tensor],
    text_config: TextConfig,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> BlipScoreModel:
    """The model with the given (release-named, used) weights, built on the meta device and filled: no random init."""
    from ..weights import assign_weights

    model = check_state(state, text_config)
    mapped = map_state_dict(state, model)
    fp32 = {name for module in model.fp32_modules for name, _ in model.get_submodule(module).named_parameters(module)}
    assign_weights(
        model,
        {
            name: tensor.to(device=device, dtype=torch.float32 if name in fp32 else dtype)
            for name, tensor in mapped.items()
        },
    )
    return model.requires_grad_(False).eval()


# ---------------------------------------------------------------------------------------------------- reading


def read_release(path: Path) -> dict[str, torch.Tensor]:
    """The used tensors of `model_large.pth` (`{"model": state_dict}`), read with `weights_only=True` (nothing but
    tensors and plain containers is unpickled) and memory-mapped, so the unused entries are never read from disk."""
    checkpoint = load_torch_file(path)
    state = checkpoint.get("model") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} is not BLIP's model_large.pth: that file holds {{'model': state dict}}, this one "
            + (
                f"has the entries {_summarise([str(k) for k in checkpoint])}"
                if isinstance(checkpoint, Mapping)
                else f"holds a {type(checkpoint).__name__}"
            )
        )
    return select_used(state, path)


def load_state(folder: Path, text_config: TextConfig, *, convert: bool = True) -> tuple[dict[str, torch.Tensor], Path]:
    """The used tensors, from `model_large.safetensors` when it was converted from the release as it is now, else
    from `model_large.pth` (converted then, once checked). Returns them and the file read."""
    from ..weights import load_with_cache

    original = folder / CHECKPOINT_NAME
    source = original if original.exists() else folder / SAFETENSORS_NAME
    if not source.exists():
        raise CheckpointError(f"{original} does not exist (nor a converted {SAFETENSORS_NAME} beside it)")

    def check(state: Mapping[str, torch.Tensor]) -> None:
        check_state(state, text_config)

    state, read = load_with_cache(source, read=read_release, check=check, convert=convert)
    if read.suffix == ".safetensors":
        state = select_used(state, read)
    return state, read


def load(folder: Path, outputs: frozenset[str], device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from ..text import PromptTokenizer

    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown or not outputs:
        raise ImageRewardError(f"the BLIP model computes {', '.join(OUTPUTS)}, not {', '.join(unknown) or 'nothing'}")
    text_config = TextConfig.from_file(folder / MED_CONFIG_NAME)
    encoder = PromptTokenizer(folder / TOKENIZER_DIRNAME)  # the reference's tokenizer: BLIP's, 35 tokens
    state, _ = load_state(folder, text_config)
    model = build_model(state, text_config, device=device, dtype=dtype)
    model.outputs = tuple(name for name in OUTPUTS if name in outputs)
    model.needs_prompt = True
    return LoadedModel(model, encoder)


# ------------------------------------------------------------------------------------ random release (tests, GPU)

#: ImageReward's med_config.json (THUDM/ImageReward), which the reference's load_score reads for BLIP.
RELEASE_MED_CONFIG: dict[str, object] = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}
#: The tiny test size: ViT width 64 (one head), depth 2; BERT hidden 4, 2 layers, 2 heads.
TINY_VIT = replace(VIT_L16, width=64, depth=2, num_heads=1, mlp_dim=256)
TINY_MED_CONFIG = {
    **RELEASE_MED_CONFIG,
    "hidden_size": 4,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 8,
}
#: Salesforce's pre-training queue length.
RELEASE_QUEUE_SIZE = 57600
_BERT_VOCAB_SIZE = 30522


def release_layout(
    vision: VisionConfig, text: TextConfig, embed_dim: int = EMBED_DIM, *, training: bool = True, queue: int = 0
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every entry of the release's `"model"` state dict: key -> (shape, kind), kind one of "linear", "norm_weight",
    "bias", "embedding", "token", "position", "ids", "queue", "scalar" (how to draw it). Written from Salesforce's
    pre-training class, independently of `KEY_RULES`."""
    layout: dict[str, tuple[tuple[int, ...], str]] = {}

    def linear(prefix: str, out_f: int, in_f: int) -> None:
        layout[f"{prefix}.weight"] = ((out_f, in_f), "linear")
        layout[f"{prefix}.bias"] = ((out_f,), "bias")

    def norm(prefix: str, size: int) -> None:
        layout[f"{prefix}.weight"] = ((size,), "norm_weight")
        layout[f"{prefix}.bias"] = ((size,), "bias")

    def vit(prefix: str) -> None:
        w = vision.width
        layout[f"{prefix}.cls_token"] = ((1, 1, w), "token")
        layout[f"{prefix}.pos_embed"] = ((1, vision.num_patches + 1, w), "position")
        layout[f"{prefix}.patch_embed.proj.weight"] = ((w, 3, vision.patch_size, vision.patch_size), "linear")
        layout[f"{prefix}.patch_embed.proj.bias"] = ((w,), "bias")
        for b in range(vision.depth):
            p = f"{prefix}.blocks.{b}"
            norm(f"{p}.norm1", w)
            linear(f"{p}.attn.qkv", 3 * w, w)
            linear(f"{p}.attn.proj", w, w)
            norm(f"{p}.norm2", w)
            linear(f"{p}.mlp.fc1", vision.mlp_dim, w)
            linear(f"{p}.mlp.fc2", w, vision.mlp_dim)
        norm(f"{prefix}.norm", w)

    def bert(prefix: str) -> None:  # BLIP's BERT with cross-attention to the image (med_config's add_cross_attention)
        h = text.hidden_size
        layout[f"{prefix}.embeddings.position_ids"] = ((1, text.max_position_embeddings), "ids")
        layout[f"{prefix}.embeddings.word_embeddings.weight"] = ((text.vocab_size, h), "embedding")
        layout[f"{prefix}.embeddings.position_embeddings.weight"] = ((text.max_position_embeddings, h), "embedding")
        norm(f"{prefix}.embeddings.LayerNorm", h)
        for i in range(text.num_layers):
            p = f"{prefix}.encoder.layer.{i}"
            for attention, kv_width in (("attention", h), ("crossattention", vision.width)):
                linear(f"{p}.{attention}.self.query", h, h)
                linear(f"{p}.{attention}.self.key", h, kv_width)
                linear(f"{p}.{attention}.self.value", h, kv_width)
                linear(f"{p}.{attention}.output.dense", h, h)
                norm(f"{p}.{attention}.output.LayerNorm", h)
            linear(f"{p}.intermediate.dense", text.intermediate_size, h)
            linear(f"{p}.output.dense", h, text.intermediate_size)
            norm(f"{p}.output.LayerNorm", h)

    vit("visual_encoder")
    bert("text_encoder")
    linear("vision_proj", embed_dim, vision.width)
    linear("text_proj", embed_dim, text.hidden_size)
    if training:
        linear("itm_head", 2, text.hidden_size)
        vit("visual_encoder_m")
        linear("vision_proj_m", embed_dim, vision.width)
        bert("text_encoder_m")
        linear("text_proj_m", embed_dim, text.hidden_size)
        layout["image_queue"] = ((embed_dim, queue or RELEASE_QUEUE_SIZE), "queue")
        layout["text_queue"] = ((embed_dim, queue or RELEASE_QUEUE_SIZE), "queue")
        layout["queue_ptr"] = ((1,), "ids")
        layout["temp"] = ((), "scalar")
        bert("text_decoder.bert")
        h = text.hidden_size
        layout["text_decoder.cls.predictions.bias"] = ((text.vocab_size,), "bias")
        linear("text_decoder.cls.predictions.transform.dense", h, h)
        norm("text_decoder.cls.predictions.transform.LayerNorm", h)
        linear("text_decoder.cls.predictions.decoder", text.vocab_size, h)
    return layout


def _draw(shape: tuple[int, ...], kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "ids":
        return (
            torch.arange(shape[-1]).expand(shape).clone() if len(shape) == 2 else torch.zeros(shape, dtype=torch.long)
        )
    if kind == "scalar":
        return torch.tensor(0.07)
    # Linear (and patch) weights ~ N(0, 1/fan_in) keep every layer's output at the scale of its input, so the scores
    # of different images and prompts spread (about +-0.1) as with trained weights rather than collapsing together.
    fan_in = math.prod(shape[1:]) if kind == "linear" else 1
    std = {"linear": fan_in**-0.5, "bias": 0.05, "norm_weight": 0.1, "embedding": 0.5, "token": 1.0, "position": 0.5}
    tensor = torch.randn(shape, generator=generator) * std.get(kind, 1.0)
    if kind == "norm_weight":
        tensor += 1.0
    elif kind == "queue":
        tensor = F.normalize(tensor, dim=0)
    return tensor


def write_test_vocab(path: Path) -> None:
    """A stand-in for bert-base-uncased's vocab.txt with the same size and special-token ids ([PAD] 0, [UNK] 100,
    [CLS] 101, [SEP] 102, [MASK] 103), so that [DEC] and [ENC] get 30522 and 30523: lower-case letters, digits and
    punctuation as words and as "##" continuations; the other entries are unused placeholders."""
    pieces = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    pieces += list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    words = pieces + [f"##{p}" for p in pieces]
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    vocab += [f"[unused{i}]" for i in range(99, 99 + _BERT_VOCAB_SIZE - len(vocab))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")


def write_random_release(folder: Path, *, size: str = "full", seed: int = 0, training_entries: bool = True) -> None:
    """Write `model_large.pth` (`{"model": ...}` with every release entry, random), `med_config.json` and a stand-in
    `bert-base-uncased/vocab.txt` into `folder`, with our code only, so that `FAMILY.load(folder, ...)` works.

    `size="full"` is the release's architecture (ViT-L/16, BERT-base; 4.4 GB with the training entries, 1.8 GB
    without); "tiny" the test size. Linear weights ~ N(0, 1/fan_in), biases N(0, 0.05), LayerNorm weights
    1 + N(0, 0.1), embeddings N(0, 0.5)."""
    if size not in ("full", "tiny"):
        raise ValueError(f"size must be 'full' or 'tiny', not {size!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    med = RELEASE_MED_CONFIG if size == "full" else TINY_MED_CONFIG
    (folder / MED_CONFIG_NAME).write_text(json.dumps(med, indent=2) + "\n", encoding="utf-8")
    write_test_vocab(folder / VOCAB_FILE.relpath)
    vision = VIT_L16 if size == "full" else TINY_VIT
    layout = release_layout(
        vision, TextConfig.from_med_config(med), training=training_entries, queue=0 if size == "full" else 64
    )
    generator = torch.Generator().manual_seed(seed)
    state = {key: _draw(shape, kind, generator) for key, (shape, kind) in layout.items()}
    torch.save({"model": state}, folder / CHECKPOINT_NAME)


FAMILY = ModelFamily(
    key="blip-large",
    outputs=OUTPUTS,
    files=FILES,
    load=load,
    backbone="BLIP ViT-L/16 + BERT-base (contrastive features)",
    size_mb=4350,  # estimated: every entry of Salesforce's pre-training class in fp32; no size is published
)
