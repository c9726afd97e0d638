"""A CLIP network (ViT image tower, causal text tower, two projections) as a transformers `CLIPModel`, filled from
either of the two checkpoint layouts in use, without a random initialisation first.

For the other families (PickScore, HPSv2.1) the whole interface is:

    # (a) a transformers-format release (config.json + state dict with `vision_model.*`, `text_model.*` keys)
    model = build_from_hf(config_dict, state, with_text=True, device=device, dtype=dtype)
    # (b) an OpenAI / open_clip state dict (`visual.conv1.weight`, `transformer.resblocks.N.attn.in_proj_weight`, ...)
    config = openai_config(state, activation="gelu", vision_head_width=80)   # open_clip ViT-H/14
    model = build_from_openai(state, config, with_text=True, device=device, dtype=dtype)
    check_openai_state(state, config)      # CheckpointError unless every tensor is there with the right shape

    image = image_embeddings(model, pixels)                    # (B, E) float32, unit length
    text = text_embeddings(model, input_ids, attention_mask)   # (B, E) float32, unit length

`with_text=False` builds a `CLIPVisionModelWithProjection` instead (the image tower and its projection only): the
text tower's weights are then neither checked nor read nor kept. Both classes have the submodules used here
(`vision_model`, `visual_projection`; `text_model`, `text_projection` and `logit_scale` for the full model), whose
names and outputs are the same from transformers 4.30 to 5.x; the text tower is read at the [EOT] token ourselves
rather than through `pooler_output`, whose rule for finding [EOT] changed between versions.

The activation is the caller's: OpenAI's CLIP uses QuickGELU (`x * sigmoid(1.702 x)`, "quick_gelu"), open_clip's
ViT-H/14 the exact GELU ("gelu"). The number of attention heads does not show in any tensor's shape, so the caller
gives the width of one head (64 in OpenAI's models and in open_clip's text towers, 80 in open_clip's ViT-H/14 image
tower).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from ..weights import assign_weights, state_problems, summarise_names

#: Upper bounds on what a checkpoint may describe (the largest CLIP in use, open_clip's ViT-bigG/14, fits): no key
#: name or shape makes us build a larger network than that.
MAX_WIDTH = 2048
MAX_LAYERS = 48
MAX_GRID = 64
MAX_VOCAB = 49408
MAX_CONTEXT = 77


@dataclass(frozen=True)
class TowerConfig:
    """One transformer tower: residual width, blocks, heads and MLP width."""

    width: int
    layers: int
    heads: int
    mlp_dim: int


@dataclass(frozen=True)
class ClipConfig:
    """A CLIP network: ViT image tower (patches of `patch_size` px at `image_size` px), text tower over
    `context_length` tokens of a `vocab_size` vocabulary, both projected to `embed_dim`."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision: TowerConfig
    text: TowerConfig
    vocab_size: int
    context_length: int
    activation: str  # "quick_gelu" (OpenAI) or "gelu" (open_clip ViT-H/14)
    layer_norm_eps: float = 1e-5  # torch's LayerNorm default, used by both OpenAI's and open_clip's code

    def to_hf(self) -> Any:
        """The transformers `CLIPConfig` of this network."""
        from transformers import CLIPConfig

        vision = {
            "hidden_size": self.vision.width,
            "intermediate_size": self.vision.mlp_dim,
            "num_hidden_layers": self.vision.layers,
            "num_attention_heads": self.vision.heads,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_act": self.activation,
            "layer_norm_eps": self.layer_norm_eps,
            "projection_dim": self.embed_dim,
        }
        text = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.text.width,
            "intermediate_size": self.text.mlp_dim,
            "num_hidden_layers": self.text.layers,
            "num_attention_heads": self.text.heads,
            "max_position_embeddings": self.context_length,
            "hidden_act": self.activation,
            "layer_norm_eps": self.layer_norm_eps,
            "projection_dim": self.embed_dim,
            # the last two ids are [SOT] and [EOT] in every CLIP vocabulary; padding is id 0 in both references
            "bos_token_id": self.vocab_size - 2,
            "eos_token_id": self.vocab_size - 1,
            "pad_token_id": 0,
        }
        if self.text.layers == 0:  # image tower only (`with_text=False`): transformers' default text sizes, unused
            return CLIPConfig(vision_config=vision, projection_dim=self.embed_dim)
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=self.embed_dim)


# ---------------------------------------------------------------------------------------------------- key map
# OpenAI / open_clip key -> transformers key. Each rule names exactly what it maps; `in_proj_*` (query, key and value
# stacked) is split in three by `_split_in_proj`. The projections are stored as (in, out) matrices applied as
# `x @ proj`; transformers keeps a Linear's (out, in) weight, so they are transposed.

_BLOCK = r"resblocks\.(\d+)\."
_LAYER_RULES: tuple[tuple[str, str], ...] = (
    (_BLOCK + r"ln_1\.", r"encoder.layers.\1.layer_norm1."),
    (_BLOCK + r"ln_2\.", r"encoder.layers.\1.layer_norm2."),
    (_BLOCK + r"attn\.out_proj\.", r"encoder.layers.\1.self_attn.out_proj."),
    (_BLOCK + r"mlp\.c_fc\.", r"encoder.layers.\1.mlp.fc1."),
    (_BLOCK + r"mlp\.c_proj\.", r"encoder.layers.\1.mlp.fc2."),
)
VISION_RULES: tuple[tuple[str, str], ...] = (
    (r"^visual\.conv1\.weight$", "vision_model.embeddings.patch_embedding.weight"),
    (r"^visual\.class_embedding$", "vision_model.embeddings.class_embedding"),
    (r"^visual\.positional_embedding$", "vision_model.embeddings.position_embedding.weight"),
    (r"^visual\.ln_pre\.", "vision_model.pre_layrnorm."),  # sic: transformers' name
    *((r"^visual\.transformer\." + pattern, "vision_model." + target) for pattern, target in _LAYER_RULES),
    (r"^visual\.ln_post\.", "vision_model.post_layernorm."),
    (r"^visual\.proj$", "visual_projection.weight"),
)
TEXT_RULES: tuple[tuple[str, str], ...] = (
    (r"^token_embedding\.weight$", "text_model.embeddings.token_embedding.weight"),
    (r"^positional_embedding$", "text_model.embeddings.position_embedding.weight"),
    *((r"^transformer\." + pattern, "text_model." + target) for pattern, target in _LAYER_RULES),
    (r"^ln_final\.", "text_model.final_layer_norm."),
    (r"^text_projection$", "text_projection.weight"),
    (r"^logit_scale$", "logit_scale"),
)
_IN_PROJ = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
_TRANSPOSED = ("visual_projection.weight", "text_projection.weight")
#: In OpenAI's TorchScript release but not weights: the image size, context length and vocabulary size as numbers.
#: open_clip keeps the causal mask as a buffer in some versions.
IGNORED_OPENAI_KEYS = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask"})


def _is_vision(key: str) -> bool:
    return key.startswith("visual.")


def openai_to_hf(key: str) -> str | None:
    """The transformers name of an OpenAI/open_clip key (None for keys no rule maps; `in_proj_*` excepted)."""
    for pattern, replacement in VISION_RULES if _is_vision(key) else TEXT_RULES:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    return None


def _split_in_proj(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
    match = _IN_PROJ.match(key)
    if match is None:
        return None
    tower = "vision_model" if match.group(1) else "text_model"
    prefix = f"{tower}.encoder.layers.{match.group(2)}.self_attn."
    if tensor.shape[0] % 3:
        raise CheckpointError(f"{key} has shape {tuple(tensor.shape)}: its first size is not 3 x width")
    query, key_, value = tensor.chunk(3, dim=0)
    kind = match.group(3)
    return {f"{prefix}q_proj.{kind}": query, f"{prefix}k_proj.{kind}": key_, f"{prefix}v_proj.{kind}": value}


def _summarise(keys: Iterable[str], limit: int = 6) -> str:
    return summarise_names(keys, limit)


# ------------------------------------------------------------------------------------------ configuration from shapes


def _shape(state: Mapping[str, torch.Tensor], key: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in state[key].shape)
    except KeyError:
        raise CheckpointError(f"the checkpoint has no {key!r}: it is not {what}") from None


def _count_blocks(state: Mapping[str, torch.Tensor], prefix: str, what: str) -> int:
    pattern = re.compile("^" + re.escape(prefix) + r"resblocks\.(\d{1,4})\.")
    numbers = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    if not numbers or numbers != set(range(len(numbers))) or len(numbers) > MAX_LAYERS:
        raise CheckpointError(
            f"the checkpoint's {prefix}resblocks are numbered {_summarise(map(str, sorted(numbers)))}; expected "
            f"0..n-1 with n at most {MAX_LAYERS}: it is not {what}"
        )
    return len(numbers)


def openai_config(
    state: Mapping[str, torch.Tensor],
    *,
    activation: str,
    vision_head_width: int = 64,
    text_head_width: int = 64,
    with_text: bool = True,
    what: str = "a CLIP checkpoint",
) -> ClipConfig:
    """The network an OpenAI/open_clip state dict describes, checked against sane bounds before anything is built.

    With `with_text=False` the text tower's sizes are not read (they are set to 0 and never used)."""
    problems: list[str] = []
    conv = _shape(state, "visual.conv1.weight", what)
    positions = _shape(state, "visual.positional_embedding", what)
    proj = _shape(state, "visual.proj", what)
    fc = _shape(state, "visual.transformer.resblocks.0.mlp.c_fc.weight", what)
    width = conv[0] if len(conv) == 4 else 0
    patch = conv[-1] if len(conv) == 4 else 0
    grid = round((positions[0] - 1) ** 0.5) if len(positions) == 2 else 0
    if not (len(conv) == 4 and conv[1] == 3 and conv[2] == conv[3] and 0 < width <= MAX_WIDTH):
        problems.append(f"patch embedding {conv} (expected (width, 3, patch, patch), width up to {MAX_WIDTH})")
    elif width % vision_head_width:
        problems.append(f"image width {width} is not a multiple of the head width {vision_head_width}")
    if not (len(positions) == 2 and positions == (grid * grid + 1, width) and 0 < grid <= MAX_GRID):
        problems.append(f"image position embedding {positions} (expected (grid * grid + 1, {width}))")
    if not (len(proj) == 2 and proj[0] == width and 0 < proj[1] <= MAX_WIDTH):
        problems.append(f"image projection {proj} (expected ({width}, embedding size))")
    if not (len(fc) == 2 and fc[1] == width and 0 < fc[0] <= 8 * MAX_WIDTH):
        problems.append(f"image MLP {fc} (expected (mlp width, {width}))")
    embed_dim = proj[1] if len(proj) == 2 else 0
    text = TowerConfig(0, 0, 0, 0)
    vocab = context = 0
    if with_text:
        tokens = _shape(state, "token_embedding.weight", what)
        text_positions = _shape(state, "positional_embedding", what)
        text_proj = _shape(state, "text_projection", what)
        text_fc = _shape(state, "transformer.resblocks.0.mlp.c_fc.weight", what)
        text_width = tokens[1] if len(tokens) == 2 else 0
        vocab, context = (tokens[0] if tokens else 0), (text_positions[0] if text_positions else 0)
        if not (len(tokens) == 2 and 2 < vocab <= MAX_VOCAB and 0 < text_width <= MAX_WIDTH):
            problems.append(f"token embedding {tokens} (expected (vocabulary up to {MAX_VOCAB}, width))")
        elif text_width % text_head_width:
            problems.append(f"text width {text_width} is not a multiple of the head width {text_head_width}")
        if not (len(text_positions) == 2 and text_positions[1] == text_width and 2 < context <= MAX_CONTEXT):
            problems.append(f"text position embedding {text_positions} (expected (up to {MAX_CONTEXT}, {text_width}))")
        if text_proj != (text_width, embed_dim):
            problems.append(f"text projection {text_proj} (expected {(text_width, embed_dim)})")
        if not (len(text_fc) == 2 and text_fc[1] == text_width and 0 < text_fc[0] <= 8 * MAX_WIDTH):
            problems.append(f"text MLP {text_fc} (expected (mlp width, {text_width}))")
        if not problems:
            layers = _count_blocks(state, "transformer.", what)
            text = TowerConfig(text_width, layers, text_width // text_head_width, text_fc[0])
    if problems:
        raise CheckpointError(f"the checkpoint is not {what}: " + "; ".join(problems))
    vision = TowerConfig(width, _count_blocks(state, "visual.transformer.", what), width // vision_head_width, fc[0])
    return ClipConfig(
        embed_dim=embed_dim,
        image_size=patch * grid,
        patch_size=patch,
        vision=vision,
        text=text,
        vocab_size=vocab,
        context_length=context,
        activation=activation,
    )


# ------------------------------------------------------------------------------------------------------ building


def _empty_model(hf_config: Any, with_text: bool) -> Any:
    """The transformers model on the meta device: no memory, no random initialisation."""
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    if with_text:
        with torch.device("meta"):
            return CLIPModel(hf_config)
    vision_config = hf_config.vision_config
    vision_config.projection_dim = hf_config.projection_dim  # CLIPVisionConfig's own default (512) is not ours
    with torch.device("meta"):
        return CLIPVisionModelWithProjection(vision_config)


def _expected(model: Any) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a checkpoint must give (the position ids are made here, never read)."""
    return {name: tuple(t.shape) for name, t in model.state_dict().items() if not name.endswith("position_ids")}


def _problems(expected: Mapping[str, tuple[int, ...]], tensors: Mapping[str, torch.Tensor]) -> list[str]:
    return state_problems(expected, tensors)


def _position_ids(length: int, shape: torch.Size, device: torch.device | str) -> torch.Tensor:
    return torch.arange(length, device=device).expand(shape).clone()


def _fill(
    model: Any, tensors: Mapping[str, torch.Tensor], what: str, device: torch.device | str, dtype: torch.dtype
) -> Any:
    """Check every tensor against the empty model's, then assign them (moved to `device`/`dtype`)."""
    expected = _expected(model)
    problems = _problems(expected, tensors)
    if problems:
        raise CheckpointError(f"this is not a complete {what}: " + "; ".join(problems))
    converted = {name: tensors[name].to(device=device, dtype=dtype) for name in expected}
    # The position ids are a buffer, persistent in transformers 4.30 (so in its state dict), not in later versions.
    for name, buffer in model.state_dict(keep_vars=True).items():
        if name.endswith("position_ids"):
            converted[name] = _position_ids(buffer.shape[-1], buffer.shape, device)
    assign_weights(model, converted)
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:
            if not name.endswith("position_ids"):
                raise CheckpointError(f"{what}: the model's buffer {name} has no value")
            owner_name, _, attribute = name.rpartition(".")
            model.get_submodule(owner_name)._buffers[attribute] = _position_ids(buffer.shape[-1], buffer.shape, device)
    return model.requires_grad_(False).eval()


def map_openai_state(state: Mapping[str, torch.Tensor], *, with_text: bool = True) -> dict[str, torch.Tensor]:
    """OpenAI/open_clip keys -> transformers keys (the text tower's keys dropped with `with_text=False`).
    Unknown keys are kept under their own name, so that `_fill` reports them."""
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in IGNORED_OPENAI_KEYS or (not with_text and not _is_vision(key)):
            continue
        split = _split_in_proj(key, tensor)
        if split is not None:
            mapped.update(split)
            continue
        name = openai_to_hf(key)
        if name is None:
            mapped[key] = tensor
        elif name in _TRANSPOSED:
            mapped[name] = tensor.t()
        else:
            mapped[name] = tensor
    return mapped


def check_openai_state(
    state: Mapping[str, torch.Tensor], config: ClipConfig, *, with_text: bool = True, what: str = "CLIP checkpoint"
) -> None:
    """CheckpointError unless `state` holds exactly the tensors of `config`'s network (of its image tower only,
    with `with_text=False`), with their shapes, as floating point. Nothing is built but an empty (meta) model."""
    problems = _problems(
        _expected(_empty_model(config.to_hf(), with_text)), map_openai_state(state, with_text=with_text)
    )
    if problems:
        raise CheckpointError(f"this is not a complete {what}: " + "; ".join(problems))


def build_from_openai(
    state: Mapping[str, torch.Tensor],
    config: ClipConfig,
    *,
    with_text: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    what: str = "CLIP checkpoint",
) -> Any:
    """`CLIPModel` (or `CLIPVisionModelWithProjection` with `with_text=False`) holding an OpenAI/open_clip state
    dict's weights; `config` from `openai_config`."""
    model = _empty_model(config.to_hf(), with_text)
    return _fill(model, map_openai_state(state, with_text=with_text), what, device, dtype)


def build_from_hf(
    config: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    *,
    with_text: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    what: str = "CLIP checkpoint",
) -> Any:
    """The same from a transformers release: its `config.json` (as a dict) and state dict (`vision_model.*`,
    `visual_projection.weight`, `text_model.*`, `text_projection.weight`, `logit_scale`)."""
    from transformers import CLIPConfig

    try:
        hf_config = CLIPConfig.from_dict(dict(config))
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"the {what}'s config.json is not a CLIP configuration: {exc}") from None
    unused = ("text_model.", "text_projection.", "logit_scale") if not with_text else ()
    tensors = {
        key: tensor
        for key, tensor in state.items()
        if not key.endswith("position_ids") and not (unused and key.startswith(unused))
    }
    model = _empty_model(hf_config, with_text)
    return _fill(model, tensors, what, device, dtype)


# ---------------------------------------------------------------------------------------------------- embeddings


def image_embeddings(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) normalised pixels -> (B, E) unit-length image embeddings, float32.

    The class token after the last block and `post_layernorm` (`pooler_output`), projected; normalised in float32
    (the references normalise in the compute dtype: the same in fp32)."""
    weight = model.visual_projection.weight
    pooled = model.vision_model(pixel_values=pixels.to(device=weight.device, dtype=weight.dtype)).pooler_output
    return F.normalize(model.visual_projection(pooled).float(), dim=-1)


def text_embeddings(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) token ids ([SOT] ... [EOT], padded with 0) -> (B, E) unit-length text embeddings, float32.

    The text tower is causal, so [EOT]'s state depends only on the tokens before it; it is found as the largest id
    of the row (as OpenAI's and open_clip's code do: [EOT] is the vocabulary's last id), read after
    `final_layer_norm` and projected."""
    weight = model.text_projection.weight
    ids = input_ids.to(weight.device)
    mask = attention_mask.to(weight.device) if attention_mask is not None else None
    hidden = model.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
    eot = hidden[torch.arange(hidden.shape[0], device=hidden.device), ids.argmax(dim=-1)]
    return F.normalize(model.text_projection(eot).float(), dim=-1)


def logit_scale(model: Any) -> torch.Tensor:
    """exp(logit_scale): the learned temperature by which CLIP-based preference models multiply the cosine."""
    return model.logit_scale.float().exp()
