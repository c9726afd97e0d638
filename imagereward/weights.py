"""Reading the released checkpoint safely and mapping its keys onto `ImageRewardModel`.

The release is `ImageReward.pt`: a plain `torch.save` of the reference model's state dict (625 tensors, fp32).
It is read with `weights_only=True` (never unpickling arbitrary objects), checked key by key against what the model
needs, converted once to `ImageReward.safetensors` beside it (a plain safetensors file holding only the checkpoint's
tensors, written by `safetensors.torch.save_file`), and afterwards read from that file, which needs no unpickler and
loads at the speed of the disk. Every family's release goes through the same `load_with_cache`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
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

#: v3: a plain safetensors file (v2 inserted `__imagereward_padding_N` tensors to align the others to 64 bytes),
#: source stamp with change time and inode. Older conversions are rewritten once, with a message.
_CACHE_FORMAT = "imagereward-state-dict-v3"
#: The pseudo-tensors of a v2 conversion, left out when one is read (the source .pt gone, so it is not rewritten).
_OLD_PADDING_PREFIX = "__imagereward_padding_"
#: CPU kernels (AVX-512) may round differently on weights that are not 64-byte aligned; torch's allocator aligns to
#: 64, safetensors' data only to 8. Tensors read at another offset are copied once (1.2e-7 in a score otherwise).
_ALIGN = 64

log = logging.getLogger("imagereward")


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


def summarise_names(keys: Iterable[str], limit: int = 8) -> str:
    """`a, b, c and 5 more`: key names for an error message, sorted."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


_summarise = summarise_names


_LAYER_KEY = re.compile(r"^blip\.text_encoder\.encoder\.layer\.(\d{1,4})\.")
#: The release's vision encoder, ViT-L/16 at 224 px: nothing larger is ever built, whatever a checkpoint says.
VIT_L16 = VisionConfig()


def numbered_blocks(
    state: Mapping[str, torch.Tensor], pattern: re.Pattern[str], what: str, most: int, release: str
) -> int:
    """How many numbered blocks the keys name (`pattern`'s group 1); they must be 0..n-1 with n <= `most` (no gaps,
    no huge numbers), else the checkpoint is not `release`."""
    numbers = {int(m.group(1)) for key in state if (m := pattern.match(key)) and len(m.group(1)) <= 4}
    count = len(numbers)
    if count == 0 or count > most or numbers != set(range(count)):
        shown = sorted(numbers)
        raise CheckpointError(
            f"the checkpoint's {what} are numbered [{_summarise(map(str, shown), 6)}]; expected 0..n-1 with n at most "
            f"{most}: it is not {release}"
        )
    return count


def tensor_shape(state: Mapping[str, torch.Tensor], key: str, release: str) -> tuple[int, ...]:
    """The shape of `state[key]`; a missing key means the checkpoint is not `release`."""
    try:
        return tuple(int(d) for d in state[key].shape)
    except KeyError:
        raise CheckpointError(f"the checkpoint has no {key!r}: it is not {release}") from None


_RELEASE = "an ImageReward checkpoint"


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tensor_shape(state, key, _RELEASE)


def blip_vision_config(
    state: Mapping[str, torch.Tensor],
    text: TextConfig,
    prefix: str,
    release: str,
    name: str,
    more_problems: Callable[[int], list[str]] = lambda width: [],
) -> VisionConfig:
    """The vision encoder a BLIP-family checkpoint (ImageReward's, BLIP's own) describes, checked with its text
    encoder against `text` (the med_config.json) before anything is built; keys are `prefix` + BLIP's names.

    The vision encoder may be ViT-L/16 or a narrower/shallower one of the same family (small test checkpoints):
    16 px patches at 224 px, width a multiple of 64 up to 1024 (heads = width / 64, as in every BLIP ViT), MLP 4x
    width, blocks numbered 0..depth-1 with depth <= 24. The text encoder must have exactly the layers and sizes that
    `med_config.json` names. So the model's size is bounded by the release's and by the tensors actually present.
    `more_problems(width)` adds a model's own checks; every problem is reported at once as not fitting `name`.
    """

    def shape(key: str) -> tuple[int, ...]:
        return tensor_shape(state, prefix + key, release)

    patch = shape("visual_encoder.patch_embed.proj.weight")
    width = patch[0] if patch else 0
    problems = []
    if not (len(patch) == 4 and 64 <= width <= VIT_L16.width and width % 64 == 0 and patch[1:] == (3, 16, 16)):
        problems.append(f"patch embedding {patch} (expected (width, 3, 16, 16), width a multiple of 64 up to 1024)")
    grid = VIT_L16.image_size // VIT_L16.patch_size
    pos = shape("visual_encoder.pos_embed")
    if pos != (1, grid * grid + 1, width):
        problems.append(f"position embedding {pos} (expected {(1, grid * grid + 1, width)})")
    fc1 = shape("visual_encoder.blocks.0.mlp.fc1.weight")
    if fc1 != (4 * width, width):
        problems.append(f"block 0 MLP {fc1} (expected {(4 * width, width)})")
    words = shape("text_encoder.embeddings.word_embeddings.weight")
    if words != (text.vocab_size, text.hidden_size):
        problems.append(f"word embeddings {words} (med_config.json: {(text.vocab_size, text.hidden_size)})")
    if text.num_heads < 1 or text.hidden_size % text.num_heads:
        problems.append(f"med_config.json: {text.hidden_size} hidden units do not split into {text.num_heads} heads")
    problems += more_problems(width)
    if problems:
        raise CheckpointError(f"the checkpoint does not fit {name}'s configuration: " + "; ".join(problems))
    quoted = re.escape(prefix)
    blocks = re.compile("^" + quoted + r"visual_encoder\.blocks\.(\d{1,4})\.")
    depth = numbered_blocks(state, blocks, "vision blocks", VIT_L16.depth, release)
    text_layers = re.compile("^" + quoted + r"text_encoder\.encoder\.layer\.(\d{1,4})\.")
    layers = numbered_blocks(state, text_layers, "text layers", max(1, text.num_layers), release)
    if layers != text.num_layers:
        raise CheckpointError(f"the checkpoint has {layers} text layers, med_config.json names {text.num_layers}")
    return replace(VIT_L16, width=width, depth=depth, num_heads=width // 64, mlp_dim=4 * width)


def infer_config(state: Mapping[str, torch.Tensor], text: TextConfig) -> ImageRewardConfig:
    """The configuration the weights describe, checked before anything is built (`blip_vision_config`)."""
    vision = blip_vision_config(state, text, "blip.", _RELEASE, "ImageReward")
    return replace(ImageRewardConfig(), vision=vision, text=text)


def map_state_dict(state: Mapping[str, torch.Tensor], model: ImageRewardModel) -> dict[str, torch.Tensor]:
    """Official keys -> our names, refusing anything missing, unknown, misshapen or not floating point."""
    state = {key: value for key, value in _strip_prefix(state).items() if not IGNORED_KEYS.match(key)}
    return map_checked(state, expected_shapes(model), official_to_ours, "a complete ImageReward v1.0 checkpoint")


def expected_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the model holds (on the meta device: nothing is allocated)."""
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def state_problems(
    expected: Mapping[str, tuple[int, ...]], tensors: Mapping[str, torch.Tensor], unknown: Iterable[str] = ()
) -> list[str]:
    """What keeps `tensors` (already under the model's names) from filling a model of `expected` shapes: unknown
    names (those given, and any not expected), missing ones, wrong shapes, tensors that are not floating point."""
    problems = []
    unknown = [*unknown, *(name for name in tensors if name not in expected)]
    if unknown:
        problems.append(f"unexpected keys: {_summarise(unknown)}")
    missing = [name for name in expected if name not in tensors]
    if missing:
        problems.append(f"missing {len(missing)} of {len(expected)} tensors, e.g. {_summarise(missing, 4)}")
    bad_shapes = [
        f"{name} {tuple(tensors[name].shape)} (expected {tuple(shape)})"
        for name, shape in expected.items()
        if name in tensors and tuple(tensors[name].shape) != tuple(shape)
    ]
    if bad_shapes:
        problems.append(f"wrong shapes: {_summarise(bad_shapes, 4)}")
    not_float = [name for name in expected if name in tensors and not tensors[name].is_floating_point()]
    if not_float:
        problems.append(f"tensors that are not floating point: {_summarise(not_float, 4)}")
    return problems


def map_checked(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    rename: Callable[[str], str | None],
    what: str,
) -> dict[str, torch.Tensor]:
    """Every tensor of a release's state dict under the model's name (`rename`: release key -> ours, or None for a
    key no rule names), refused with every problem at once unless it fills the model exactly."""
    mapped: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        ours = rename(key)
        if ours is None or ours not in expected:
            unknown.append(key)
        else:
            mapped[ours] = tensor
    problems = state_problems(expected, mapped, unknown)
    if problems:
        raise CheckpointError(f"this is not {what}: " + "; ".join(problems))
    return mapped


# ---------------------------------------------------------------------------------------------------------- reading


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when the message is empty (e.g. a bare EOFError)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _file_stamp(path: Path) -> dict[str, str]:
    """What identifies the source's current content without reading 1.8 GB: size and mtime, which a copy tool can
    preserve, plus the change time and inode, which no tool can set back (any write or replacement changes them).
    A stamp that differs for another reason (the folder was copied) only costs one more conversion."""
    stat = path.stat()
    return {
        "source_name": path.name,
        "source_size": str(stat.st_size),
        "source_mtime_ns": str(stat.st_mtime_ns),
        "source_ctime_ns": str(stat.st_ctime_ns),
        "source_inode": str(stat.st_ino),
    }


def read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a `.pt` or `.bin` (a `{"state_dict": ...}` wrapper opened): `load_torch_file`."""
    state = load_torch_file(path)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return dict(state)


def load_torch_file(path: Path) -> object:
    """`torch.load` restricted to tensors and plain containers; memory-mapped when the format allows.

    `torch.serialization.load` rather than `torch.load`: AUTOMATIC1111 replaces `torch.load` with its own checker,
    which rejects files written by current torch (their `.format_version` entry) and returns None.
    `weights_only=True` gives the same protection here.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{path} could not be read: {_first_line(exc)}") from None
    if size == 0:
        raise CheckpointError(
            f"{path} is empty (0 bytes), probably an interrupted copy or download: delete it to download it again, "
            "or replace it with the complete file"
        )
    with path.open("rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # neither a zip nor a pickle: no unpickler
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (is it truncated or corrupt? delete it to download it again): "
            f"it starts with {head!r}"
        )
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
            f"(a file from an untrusted source could run code when unpickled). Details: {_first_line(exc)}"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError, IndexError, KeyError) as exc:
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint (is it truncated or corrupt? "
            f"delete it to download it again): {_first_line(exc)}"
        ) from None
    return state


def read_safetensors(path: Path, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file and its metadata (the padding pseudo-tensors of our v2 conversions left
    out). On the CPU, a tensor that does not start on a 64-byte boundary is copied to one (see `_ALIGN`)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            metadata = handle.metadata() or {}
            keys = [key for key in handle.keys() if not key.startswith(_OLD_PADDING_PREFIX)]  # noqa: SIM118
            tensors = {key: handle.get_tensor(key) for key in keys}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from None
    if torch.device(device).type == "cpu":
        tensors = {k: t.clone() if t.data_ptr() % _ALIGN else t for k, t in tensors.items()}
    return tensors, metadata


# ---------------------------------------------------------------------------------------------------------- writing


def _write_safetensors(tensors: Mapping[str, torch.Tensor], path: str, metadata: Mapping[str, str]) -> None:
    """A plain safetensors file (`safetensors.torch.save_file`), flushed to the disk before it is renamed."""
    from safetensors.torch import save_file

    save_file({k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}, path, metadata=dict(metadata))
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def write_safetensors_cache(state: Mapping[str, torch.Tensor], target: Path, source: Path) -> bool:
    """Write the checkpoint as safetensors next to its source, atomically, with the source's file mode.

    Returns False, leaving nothing behind, when that is not possible (read-only folder, full disk, any error of the
    writer): the conversion only makes later loads faster, so the caller keeps reading the `.pt`. Never raises.
    """
    from safetensors import SafetensorError

    tensors = {key: value for key, value in state.items() if not IGNORED_KEYS.match(key)}
    needed = sum(t.numel() * t.element_size() + 256 for t in tensors.values()) + (1 << 20)
    try:
        free = shutil.disk_usage(target.parent).free
    except OSError:
        free = needed
    if free < needed:
        log.warning(
            "ImageReward: not converting %s to safetensors (%.0f MB needed, %.0f MB free in %s); reading the .pt",
            source.name,
            needed / 1e6,
            free / 1e6,
            target.parent,
        )
        return False
    _remove_stale_temporaries(target.parent)
    metadata = {"format": "pt", "imagereward": _CACHE_FORMAT, **_file_stamp(source)}
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=".ImageReward-", suffix=".safetensors.tmp", dir=target.parent)
        os.close(fd)
        _write_safetensors(tensors, tmp_name, metadata)
        with contextlib.suppress(OSError):  # mkstemp makes 0600; the conversion gets its neighbour's mode (0644)
            os.chmod(tmp_name, stat.S_IMODE(source.stat().st_mode) | stat.S_IRUSR | stat.S_IWUSR)
        os.replace(tmp_name, target)
        tmp_name = None
        return True
    except (OSError, SafetensorError, ValueError, KeyError, RuntimeError) as exc:
        log.warning("ImageReward: could not write %s (%s); the .pt is read instead", target, _first_line(exc))
        return False
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


_TEMPORARY_GLOB = ".ImageReward-*.safetensors.tmp"
_STALE_AFTER_S = 3600.0


def _remove_stale_temporaries(folder: Path) -> None:
    """Remove conversions left half-written by an earlier crash (older versions also left one per failed attempt on
    a full disk). These names are only ever ours; one younger than an hour may belong to a conversion running now."""
    now = time.time()
    for leftover in folder.glob(_TEMPORARY_GLOB):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > _STALE_AFTER_S:
                leftover.unlink()


def _cache_matches(cache: Path, source: Path | None) -> bool:
    """The conversion is used when its source is gone, or when it was written by this format version from the
    source as it is now (same size, mtime, change time and inode)."""
    if source is None or not source.exists():
        return True
    from safetensors import safe_open

    try:
        with safe_open(str(cache), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:
        return False
    if metadata.get("imagereward", _CACHE_FORMAT) != _CACHE_FORMAT:
        log.info("%s was converted by an older version of this extension; converting %s again", cache.name, source.name)
        return False
    return all(metadata.get(key) == value for key, value in _file_stamp(source).items())


def _text_config_of(state: Mapping[str, torch.Tensor]) -> TextConfig:
    """The text encoder's sizes as the tensors give them, for checking a checkpoint without its med_config.json.
    (Head count does not change any shape; one head always divides.)"""
    words = _shape(state, "blip.text_encoder.embeddings.word_embeddings.weight")
    ffn = _shape(state, "blip.text_encoder.encoder.layer.0.intermediate.dense.weight")
    positions = _shape(state, "blip.text_encoder.embeddings.position_embeddings.weight")
    if len(words) != 2 or len(ffn) != 2 or len(positions) != 2:
        raise CheckpointError("the checkpoint's text embeddings are not matrices: it is not an ImageReward checkpoint")
    layers = len({m.group(1) for key in state if (m := _LAYER_KEY.match(key))})
    return replace(
        TextConfig(),
        vocab_size=words[0],
        hidden_size=words[1],
        num_layers=layers,
        num_heads=1,
        intermediate_size=ffn[0],
        max_position_embeddings=positions[0],
    )


def check_state(state: Mapping[str, torch.Tensor], text_config: TextConfig | None = None) -> ImageRewardModel:
    """Refuse anything but a complete ImageReward checkpoint; returns the (empty, meta-device) model it fits.

    Sizes are checked against the release's configuration before the model is built, so no key name or shape can
    make the model larger than the release (or than the tensors present); then every tensor's name, shape and dtype.
    """
    state = _strip_prefix(state)
    config = infer_config(state, text_config if text_config is not None else _text_config_of(state))
    with torch.device("meta"):
        model = ImageRewardModel(config)
    map_state_dict(state, model)
    return model


def load_state(
    checkpoint: str | Path, *, convert: bool = True, text_config: TextConfig | None = None
) -> tuple[dict[str, torch.Tensor], Path]:
    """ImageReward's state dict (official key names) from `.pt` or `.safetensors`, through `load_with_cache`; a
    folder stands for the conversion in it, else its `ImageReward.pt`. Only a checkpoint that passes `check_state`
    (against `text_config`, the med_config.json, when given) is converted."""
    path = Path(checkpoint)
    if path.is_dir():
        candidates = [path / SAFETENSORS_NAME, path / CHECKPOINT_NAME]
        path = next((c for c in candidates if c.exists()), candidates[1])
    return load_with_cache(
        path,
        read=lambda source: _strip_prefix(read_torch_checkpoint(source)),
        check=lambda state: check_state(state, text_config),
        convert=convert,
    )


def load_with_cache(
    source: str | Path,
    *,
    read: Callable[[Path], dict[str, torch.Tensor]] = read_torch_checkpoint,
    check: Callable[[Mapping[str, torch.Tensor]], object] | None = None,
    convert: bool = True,
) -> tuple[dict[str, torch.Tensor], Path]:
    """Any model's release checkpoint through one safetensors cache.

    A `<stem>.safetensors` beside `source` that was converted from it as it is now is read instead (any valid
    safetensors file, ours or another tool's); otherwise `source` is read with `read` (by default `torch.load`
    restricted to tensors), validated with `check` (which raises `CheckpointError` on anything but the expected
    checkpoint), and, with `convert`, written beside it so the next load needs no unpickling. Returns the state dict
    and the file actually read.
    """
    path = Path(source)
    if path.suffix == ".safetensors":
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}")
        return read_safetensors(path)[0], path
    cache = path.with_name(path.stem + ".safetensors")
    if cache.exists() and _cache_matches(cache, path):
        return read_safetensors(cache)[0], cache
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    state = read(path)
    if check is not None:
        check(state)  # a refused checkpoint is never converted
    if convert:
        write_safetensors_cache(state, cache, path)
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
    model = check_state(state, text_config)
    mapped = map_state_dict(state, model)
    head_names = {name for name, _ in model.head.named_parameters(prefix="head")}
    converted = {
        name: tensor.to(device=device, dtype=head_dtype if name in head_names else dtype)
        for name, tensor in mapped.items()
    }
    assign_weights(model, converted)
    return model.requires_grad_(False).eval()


def assign_weights(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Put each tensor into the model under its name, as `load_state_dict(strict=True, assign=True)` would.

    Written out rather than calling `load_state_dict`: AUTOMATIC1111 replaces `nn.Module.load_state_dict` for the
    whole process while it loads a Stable Diffusion checkpoint (`LoadStateDictOnMeta`), with a version that takes no
    `assign` argument, and a score request can arrive during that time."""
    expected = set(model.state_dict().keys())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointError(f"the weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in tensors.items():
        owner_name, _, attribute = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if attribute in owner._parameters:
            old = owner._parameters[attribute]
            owner._parameters[attribute] = torch.nn.Parameter(
                tensor, requires_grad=bool(old is not None and old.requires_grad)
            )
        else:
            owner._buffers[attribute] = tensor
