"""Reading the released checkpoint safely and mapping its keys onto `ImageRewardModel`.

The release is `ImageReward.pt`: a plain `torch.save` of the reference model's state dict (625 tensors, fp32).
It is read with `weights_only=True` (never unpickling arbitrary objects), checked key by key against what the model
needs, converted once to `ImageReward.safetensors` beside it, and afterwards read from that file, which needs no
unpickler and loads at the speed of the disk.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import torch

from .config import ImageRewardConfig, TextConfig, VisionConfig
from .errors import CheckpointError
from .hub import CHECKPOINT_NAME, SAFETENSORS_NAME
from .model import ImageRewardModel

# Official key -> our parameter name, applied in order. Each rule names exactly what it maps, so a stray key
# matches none of them and is reported.
_VIT = r"^blip\.visual_encoder\."
_BERT = r"^blip\.text_encoder\.embeddings\."
_LAYER = r"^blip\.text_encoder\.encoder\.layer\.(\d+)\."
KEY_RULES: tuple[tuple[str, str], ...] = (
    (_VIT + r"patch_embed\.proj\.", "vision.patch_embed."),
    (_VIT + r"(cls_token|pos_embed)$", r"vision.\1"),
    (_VIT + r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.", r"vision.blocks.\1.\2."),
    (_VIT + r"norm\.", "vision.norm."),
    (_BERT + r"(word_embeddings|position_embeddings)\.", r"text.\1."),
    (_BERT + r"LayerNorm\.", "text.embed_norm."),
    (_LAYER + r"attention\.self\.(query|key|value)\.", r"text.layers.\1.self_attn.\2."),
    (_LAYER + r"attention\.output\.dense\.", r"text.layers.\1.self_attn.out."),
    (_LAYER + r"attention\.output\.LayerNorm\.", r"text.layers.\1.self_attn_norm."),
    (_LAYER + r"crossattention\.self\.(query|key|value)\.", r"text.layers.\1.cross_attn.\2."),
    (_LAYER + r"crossattention\.output\.dense\.", r"text.layers.\1.cross_attn.out."),
    (_LAYER + r"crossattention\.output\.LayerNorm\.", r"text.layers.\1.cross_attn_norm."),
    (_LAYER + r"intermediate\.dense\.", r"text.layers.\1.ffn_in."),
    (_LAYER + r"output\.dense\.", r"text.layers.\1.ffn_out."),
    (_LAYER + r"output\.LayerNorm\.", r"text.layers.\1.ffn_norm."),
)
# The MLP head interleaves Dropout modules: Linear layers sit at indices 0, 2, 4, 6 and 7 of `mlp.layers`.
HEAD_LAYER_INDICES = (0, 2, 4, 6, 7)
_HEAD_RULE = re.compile(r"^mlp\.layers\.(\d+)\.(weight|bias)$")

# Present in the release but unused by the score: BLIP's contrastive projections and BERT's position-id buffer.
IGNORED_KEYS = re.compile(r"^blip\.(vision_proj|text_proj)\.(weight|bias)$|" + _BERT + r"position_ids$")

_CACHE_FORMAT = "imagereward-state-dict-v1"


def official_to_ours(key: str) -> str | None:
    """Our parameter name for an official key, or None when the key is not one the model uses."""
    match = _HEAD_RULE.match(key)
    if match:
        index = int(match.group(1))
        if index not in HEAD_LAYER_INDICES:
            return None
        return f"head.layers.{HEAD_LAYER_INDICES.index(index)}.{match.group(2)}"
    for pattern, replacement in KEY_RULES:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    return None


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints saved from a DataParallel wrapper prefix every key with `module.`."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def _summarise(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def infer_config(state: Mapping[str, torch.Tensor], text: TextConfig) -> ImageRewardConfig:
    """The vision encoder's size from the tensors' shapes; heads = width / 64 as in every BLIP ViT (B: 12, L: 16)."""
    try:
        pos = state["blip.visual_encoder.pos_embed"]
        patch = state["blip.visual_encoder.patch_embed.proj.weight"]
        fc1 = state["blip.visual_encoder.blocks.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise CheckpointError(f"the checkpoint has no {exc.args[0]!r}: it is not an ImageReward checkpoint") from None
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blip\.visual_encoder\.blocks\.(\d+)\.", k)))
    grid = round((int(pos.shape[1]) - 1) ** 0.5)
    vision = VisionConfig(
        image_size=grid * patch_size,
        patch_size=patch_size,
        width=width,
        depth=depth,
        num_heads=max(1, width // 64),
        mlp_dim=int(fc1.shape[0]),
    )
    return replace(ImageRewardConfig(), vision=vision, text=text)


def map_state_dict(state: Mapping[str, torch.Tensor], model: ImageRewardModel) -> dict[str, torch.Tensor]:
    """Official keys -> our names, refusing anything missing, unknown, misshapen or not floating point."""
    state = _strip_prefix(state)
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    mapped: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        if IGNORED_KEYS.match(key):
            continue
        ours = official_to_ours(key)
        if ours is None or ours not in expected:
            unknown.append(key)
            continue
        mapped[ours] = tensor
    problems = []
    if unknown:
        problems.append(f"unexpected keys: {_summarise(unknown)}")
    missing = [name for name in expected if name not in mapped]
    if missing:
        problems.append(f"missing {len(missing)} of {len(expected)} tensors, e.g. {_summarise(missing, 4)}")
    bad_shapes = [
        f"{name} {tuple(mapped[name].shape)} (expected {tuple(shape)})"
        for name, shape in expected.items()
        if name in mapped and mapped[name].shape != shape
    ]
    if bad_shapes:
        problems.append(f"wrong shapes: {_summarise(bad_shapes, 4)}")
    not_float = [name for name, tensor in mapped.items() if not tensor.is_floating_point()]
    if not_float:
        problems.append(f"tensors that are not floating point: {_summarise(not_float, 4)}")
    if problems:
        raise CheckpointError("this is not a complete ImageReward v1.0 checkpoint: " + "; ".join(problems))
    return mapped


# ---------------------------------------------------------------------------------------------------------- reading


def _file_stamp(path: Path) -> dict[str, str]:
    stat = path.stat()
    return {"source_name": path.name, "source_size": str(stat.st_size), "source_mtime_ns": str(stat.st_mtime_ns)}


def read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """`torch.load` restricted to tensors and plain containers; memory-mapped when the format allows.

    `torch.serialization.load` rather than `torch.load`: AUTOMATIC1111 replaces `torch.load` with its own checker,
    which rejects files written by current torch (their `.format_version` entry) and returns None.
    `weights_only=True` gives the same protection here.
    """
    load = torch.serialization.load
    try:
        try:
            state = load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format: no mmap
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} contains Python objects other than tensors, which are refused for safety "
            f"(a file from an untrusted source could run code when unpickled). Details: {str(exc).splitlines()[0]}"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint (is it truncated or corrupt? "
            f"delete it to download it again): {str(exc).splitlines()[0]}"
        ) from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return dict(state)


def read_safetensors(path: Path, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            metadata = handle.metadata() or {}
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from None


def write_safetensors_cache(state: Mapping[str, torch.Tensor], target: Path, source: Path) -> bool:
    """Write the checkpoint as safetensors next to its source, atomically. Returns False when that is not possible
    (read-only folder, full disk): the caller then simply keeps reading the `.pt`."""
    from safetensors.torch import save_file

    tensors = {key: value.contiguous() for key, value in state.items() if not IGNORED_KEYS.match(key)}
    metadata = {"format": "pt", "imagereward": _CACHE_FORMAT, **_file_stamp(source)}
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=".ImageReward-", suffix=".safetensors.tmp", dir=target.parent)
        os.close(fd)
    except OSError:
        return False
    try:
        save_file(tensors, tmp_name, metadata=metadata)
        os.replace(tmp_name, target)
        return True
    except OSError:
        Path(tmp_name).unlink(missing_ok=True)
        return False


def _cache_matches(cache: Path, source: Path | None) -> bool:
    """The conversion is used when its source is gone, or when it records the source's current size and mtime."""
    if source is None or not source.exists():
        return True
    from safetensors import safe_open

    try:
        with safe_open(str(cache), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:
        return False
    return all(metadata.get(key) == value for key, value in _file_stamp(source).items())


def load_state(checkpoint: str | Path, *, convert: bool = True) -> tuple[dict[str, torch.Tensor], Path]:
    """Read the official-format state dict from `.pt` or `.safetensors`; returns it and the file actually read.

    For a `.pt`, a matching `ImageReward.safetensors` beside it is read instead; when there is none, the `.pt` is
    read and (with `convert`) written once as safetensors so the next load is fast and needs no unpickling.
    """
    path = Path(checkpoint)
    if path.is_dir():
        candidates = [path / SAFETENSORS_NAME, path / CHECKPOINT_NAME]
        path = next((c for c in candidates if c.exists()), candidates[1])
    if path.suffix == ".safetensors":
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}")
        return read_safetensors(path)[0], path
    cache = path.with_name(path.stem + ".safetensors")
    if cache.exists() and _cache_matches(cache, path):
        return read_safetensors(cache)[0], cache
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    state = read_torch_checkpoint(path)
    if convert:
        write_safetensors_cache(_strip_prefix(state), cache, path)
    return state, path


def build_model(
    state: Mapping[str, torch.Tensor],
    text_config: TextConfig,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    head_dtype: torch.dtype = torch.float32,
) -> ImageRewardModel:
    """The model with the given weights, without a random initialisation first: it is built on the meta device and
    each tensor is moved to `device`/`dtype` as it is assigned, so peak memory stays near the weights' size."""
    state = _strip_prefix(state)
    config = infer_config(state, text_config)
    with torch.device("meta"):
        model = ImageRewardModel(config)
    mapped = map_state_dict(state, model)
    head_names = {name for name, _ in model.head.named_parameters(prefix="head")}
    converted = {
        name: tensor.to(device=device, dtype=head_dtype if name in head_names else dtype)
        for name, tensor in mapped.items()
    }
    model.load_state_dict(converted, strict=True, assign=True)
    return model.requires_grad_(False).eval()
