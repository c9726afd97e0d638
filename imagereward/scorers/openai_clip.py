"""OpenAI CLIP ViT-L/14 as a model family: the CLIP score and the LAION aesthetic score, from one image encoding.

What the reference (`image-reward==1.5`, `ImageReward.load_score("CLIP")` / `load_score("Aesthetic")`) computes, for
an image x and a prompt p, with OpenAI's `clip.load("ViT-L/14")` preprocessing (bicubic resize of the short side to
224 px, centre crop, RGB, CLIP's mean/std):

    image = normalise(visual(x) @ visual.proj)              text = normalise(text_tower(p)[EOT] @ text_projection)
    clip(x, p) = <image, text>                               (the cosine; no logit scale)
    aesthetic(x) = MLP(image)                                (float32; five Linear layers with nothing between them)

The aesthetic head is LAION's "improved aesthetic predictor" (`sac+logos+ava1-l14-linearMSE.pth`), a regression to
the mean 1..10 rating of the SAC, LAION-Logos and AVA data sets, read from CLIP's unit-length image embedding.

Files (in `<models folder>/openai-clip-vit-l-14/`):
- `ViT-L-14.pt`, OpenAI's release: a TorchScript archive with fp16 weights. It is never given to `torch.jit.load`
  (which would run the code stored in it): `read_clip_release` reads the tensors out of the archive's `data.pkl`
  with an unpickler that knows only tensors and the archive's module records, so any other object is refused.
  A plain state dict under that name (what `clip.load(jit=False)` also accepts) is read with `weights_only=True`.
  Either is converted once to `ViT-L-14.safetensors` beside it (`weights.load_with_cache`).
- `sac+logos+ava1-l14-linearMSE.pth`, LAION's MLP head (a plain state dict), likewise cached as safetensors.
- `clip-tokenizer/vocab.json`, `merges.txt`: the BPE vocabulary (`clip_text`), from openai/clip-vit-large-patch14.

With only `aesthetic` asked for, the text tower is neither built nor kept and no tokenizer is loaded.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..hub import HubFile
from .base import LoadedModel, ModelFamily, PixelSpec, ScoringModel
from .clip_text import CONTEXT_LENGTH, TOKENIZER_DIRNAME, VOCAB_SIZE, tokenizer_files

FAMILY_KEY = "openai-clip-vit-l-14"
OUTPUTS = ("clip", "aesthetic")

CLIP_NAME = "ViT-L-14.pt"
CLIP_SHA256 = "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"  # the folder name of OpenAI's URL
CLIP_URL = f"https://openaipublic.azureedge.net/clip/models/{CLIP_SHA256}/{CLIP_NAME}"
AESTHETIC_NAME = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
)
#: Not stated by the reference or by LAION's repository; the same value (and 3,714,759 bytes) is pinned by several
#: unrelated public projects that download this file.
AESTHETIC_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"

CLIP_FILE = HubFile(
    (), CLIP_NAME, CLIP_NAME, url=CLIP_URL, sha256=CLIP_SHA256, alternatives=("ViT-L-14.safetensors",), checkpoint=True
)
AESTHETIC_FILE = HubFile(
    (),
    AESTHETIC_NAME,
    AESTHETIC_NAME,
    url=AESTHETIC_URL,
    sha256=AESTHETIC_SHA256,
    alternatives=("sac+logos+ava1-l14-linearMSE.safetensors",),
    checkpoint=True,
)
# Small files first: a failure on the big checkpoint then leaves everything else in place.
FILES: tuple[HubFile, ...] = (*tokenizer_files(), AESTHETIC_FILE, CLIP_FILE)


def files_for(files: tuple[HubFile, ...], outputs: frozenset[str]) -> tuple[HubFile, ...]:
    """Of the family's `files`, those the outputs asked for read: the CLIP checkpoint always, the tokenizer only for
    `clip` (the aesthetic score reads no prompt), the aesthetic head only for `aesthetic`. Takes `files` rather than
    reading FILES so that a family whose addresses were replaced (a mirror, the tests' fake hub) is filtered too."""
    tokenizer_prefix = f"{TOKENIZER_DIRNAME}/"
    return tuple(
        file
        for file in files
        if not (file.relpath.startswith(tokenizer_prefix) and "clip" not in outputs)
        and not (file.relpath == AESTHETIC_NAME and "aesthetic" not in outputs)
    )


#: OpenAI's CLIP uses QuickGELU (x * sigmoid(1.702 x)) in both towers; every head is 64 wide.
ACTIVATION = "quick_gelu"
HEAD_WIDTH = 64

# ------------------------------------------------------------------------------------------- the TorchScript archive

#: Storage class names in a TorchScript `data.pkl` -> dtype.
_STORAGE_DTYPES = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ModuleRecord:
    """What a TorchScript archive stores for one module: its attributes (parameters, buffers, submodules, flags).
    Stands for every `__torch__.*` class, whose code is never looked at."""

    def __init__(self) -> None:
        self.attributes: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"a module record holds a {type(state).__name__}, not its attributes")
        self.attributes = state


def _rebuild_tensor(
    storage: torch.Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> torch.Tensor:
    """`torch._utils._rebuild_tensor_v2`'s arithmetic: a view of the flat storage (bounds checked by torch)."""
    return storage.as_strided(tuple(size), tuple(stride), int(offset))


class _ArchiveUnpickler(pickle.Unpickler):
    """Reads a TorchScript `data.pkl`: module records, tensors and their storages, nothing else."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__.") or module == "__torch__":
            return _ModuleRecord
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not a tensor or a module record")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, dtype, key, _location, numel = pid
        key = str(key)
        if key not in self._storages:
            if not re.fullmatch(r"\d+", key):
                raise pickle.UnpicklingError(f"storage key {key!r:.40} is not a number")
            name = f"{self._prefix}data/{key}"
            info = self._archive.getinfo(name)
            element = torch.empty((), dtype=dtype).element_size()
            if info.file_size != int(numel) * element:
                raise pickle.UnpicklingError(f"{name} has {info.file_size} bytes, {numel} x {element} expected")
            buffer = bytearray(info.file_size)
            with self._archive.open(info) as fh:
                fh.readinto(buffer)  # type: ignore[attr-defined]
            self._storages[key] = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
        return self._storages[key]


def _collect(record: _ModuleRecord, prefix: str, out: dict[str, torch.Tensor], depth: int = 0) -> None:
    if depth > 16:
        raise CheckpointError("the archive's modules are nested more than 16 deep: not a CLIP model")
    for name, value in record.attributes.items():
        if isinstance(value, torch.Tensor):
            if name != "attn_mask":  # the text tower's causal mask, where a version stores it as an attribute
                out[prefix + name] = value
        elif isinstance(value, _ModuleRecord):
            _collect(value, f"{prefix}{name}.", out, depth + 1)


def is_torchscript_archive(path: Path) -> bool:
    """A zip whose single top folder holds `constants.pkl` or `code/` (what `torch.jit.save` writes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(re.fullmatch(r"[^/]+/(constants\.pkl|code/.*)", name) for name in names)


def read_torchscript_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict a TorchScript archive's `model.state_dict()` would give, read without running its code."""
    try:
        with zipfile.ZipFile(path) as archive:
            data_names = [n for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
            if len(data_names) != 1:
                raise CheckpointError(f"{path} is a zip without one data.pkl: not a TorchScript archive")
            prefix = data_names[0][: -len("data.pkl")]
            if f"{prefix}byteorder" in archive.namelist() and archive.read(f"{prefix}byteorder") != b"little":
                raise CheckpointError(f"{path} was written on a big-endian machine; it cannot be read here")
            root = _ArchiveUnpickler(archive.read(data_names[0]), archive, prefix).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, KeyError, RuntimeError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"{path} could not be read as OpenAI's CLIP archive (is it truncated or corrupt? delete it to download "
            f"it again): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"{path} could not be read: {exc}") from None
    if not isinstance(root, _ModuleRecord):
        raise CheckpointError(f"{path} holds a {type(root).__name__}, not a TorchScript module")
    state: dict[str, torch.Tensor] = {}
    _collect(root, "", state)
    return state


def read_clip_release(path: Path) -> dict[str, torch.Tensor]:
    """OpenAI's `ViT-L-14.pt` (TorchScript archive) or a plain state dict saved under that name."""
    from ..weights import read_torch_checkpoint

    if is_torchscript_archive(path):
        return read_torchscript_weights(path)
    return read_torch_checkpoint(path)


# ---------------------------------------------------------------------------------------------- the aesthetic head

#: The release's MLP: Linear layers at these indices of `layers` (Dropouts between them), widths 768 -> 1 below.
HEAD_INDICES = (0, 2, 4, 6, 7)
HEAD_WIDTHS = (768, 1024, 128, 64, 16, 1)
_HEAD_KEY = re.compile(r"^layers\.(\d+)\.(weight|bias)$")


class AestheticHead(nn.Module):
    """LAION's aesthetic predictor: five Linear layers applied in turn, with no activation between them (as
    released: its ReLUs are commented out), on the unit-length CLIP image embedding."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        x = embedding.to(self.layers[0].weight.dtype)
        for layer in self.layers:
            x = layer(x)
        return x.squeeze(-1)


def head_widths(state: Mapping[str, torch.Tensor], embed_dim: int | None = None) -> tuple[int, ...]:
    """The head's layer widths from its tensors; CheckpointError unless it is the release's MLP (or a narrower one
    of the same shape, for tests) reading `embed_dim` inputs."""
    expected = {f"layers.{i}.{kind}" for i in HEAD_INDICES for kind in ("weight", "bias")}
    unknown, missing = sorted(set(state) - expected), sorted(expected - set(state))
    if unknown or missing:
        raise CheckpointError(
            f"this is not LAION's aesthetic predictor: unexpected tensors {unknown[:5]}, missing {missing[:5]}"
        )
    weights = [tuple(state[f"layers.{i}.weight"].shape) for i in HEAD_INDICES]
    biases = [tuple(state[f"layers.{i}.bias"].shape) for i in HEAD_INDICES]
    widths = (weights[0][1] if len(weights[0]) == 2 else 0, *(w[0] for w in weights))
    fits = all(len(w) == 2 and w == (widths[k + 1], widths[k]) for k, w in enumerate(weights))
    fits = fits and all(b == (widths[k + 1],) for k, b in enumerate(biases))
    fits = fits and widths[-1] == 1 and all(0 < w <= most for w, most in zip(widths, HEAD_WIDTHS, strict=True))
    if not fits:
        raise CheckpointError(f"the aesthetic predictor's layers have shapes {weights}: expected {HEAD_WIDTHS} chained")
    if not all(t.is_floating_point() for t in state.values()):
        raise CheckpointError("the aesthetic predictor holds tensors that are not floating point")
    if embed_dim is not None and widths[0] != embed_dim:
        raise CheckpointError(
            f"the aesthetic predictor reads {widths[0]}-wide embeddings but the CLIP model gives {embed_dim}: they do "
            "not belong together"
        )
    return widths


def build_head(state: Mapping[str, torch.Tensor], embed_dim: int, device: torch.device | str) -> AestheticHead:
    from ..weights import assign_weights

    widths = head_widths(state, embed_dim)
    with torch.device("meta"):
        head = AestheticHead(widths)
    tensors = {
        f"layers.{k}.{kind}": state[f"layers.{i}.{kind}"].to(device=device, dtype=torch.float32)
        for k, i in enumerate(HEAD_INDICES)
        for kind in ("weight", "bias")
    }
    assign_weights(head, tensors)
    return head.requires_grad_(False).eval()


# ------------------------------------------------------------------------------------------------------- the model


class OpenAIClipScorer(ScoringModel):
    """CLIP ViT-L/14 giving the CLIP score (cosine of image and prompt) and/or the aesthetic score (MLP on the image
    embedding); the image tower runs once for both."""

    def __init__(self, clip: nn.Module, head: AestheticHead | None, outputs: tuple[str, ...], image_size: int) -> None:
        super().__init__()
        self.clip = clip
        self.aesthetic_head = head
        self.outputs = outputs
        self.needs_prompt = "clip" in outputs
        self.fp32_modules = ("aesthetic_head",) if head is not None else ()
        self.pixel_spec = PixelSpec(size=image_size)  # OpenAI's torchvision pipeline: RGB after the crop

    def forward(  # type: ignore[override]
        self, pixels: torch.Tensor, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        from .clip_backbone import image_embeddings, text_embeddings

        image = image_embeddings(self.clip, pixels)
        scores: dict[str, torch.Tensor] = {}
        for name in self.outputs:
            if name == "clip":
                if input_ids is None:
                    raise ValueError("the CLIP score needs the prompt's token ids")
                text = text_embeddings(self.clip, input_ids, attention_mask)
                scores[name] = (image * text).sum(dim=-1)
            elif name == "aesthetic":
                assert self.aesthetic_head is not None
                scores[name] = self.aesthetic_head(image).float()
        return scores


def _check_clip_release(state: Mapping[str, torch.Tensor]) -> None:
    from .clip_backbone import check_openai_state, openai_config

    what = "OpenAI CLIP checkpoint"
    config = openai_config(state, activation=ACTIVATION, vision_head_width=HEAD_WIDTH, text_head_width=HEAD_WIDTH)
    check_openai_state(state, config, what=what)


def load(folder: Path, outputs: frozenset[str], device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from ..weights import load_with_cache, read_torch_checkpoint
    from .clip_backbone import build_from_openai, openai_config
    from .clip_text import ClipPromptEncoder

    wanted = tuple(name for name in OUTPUTS if name in outputs)
    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown or not wanted:
        raise ValueError(f"{FAMILY_KEY} computes {OUTPUTS}, not {unknown or 'nothing'}")
    with_text = "clip" in wanted
    folder = Path(folder)
    state, _ = load_with_cache(folder / CLIP_NAME, read=read_clip_release, check=_check_clip_release)
    config = openai_config(
        state,
        activation=ACTIVATION,
        vision_head_width=HEAD_WIDTH,
        text_head_width=HEAD_WIDTH,
        with_text=with_text,
        what="an OpenAI CLIP checkpoint",
    )
    encoder = None
    if with_text:  # read before the weights are built: a missing or foreign vocabulary fails fast
        encoder = ClipPromptEncoder(folder / TOKENIZER_DIRNAME, context_length=config.context_length)
        if encoder.vocab_size > config.vocab_size:
            raise CheckpointError(
                f"the tokenizer in {folder / TOKENIZER_DIRNAME} has {encoder.vocab_size} tokens, the CLIP checkpoint "
                f"embeds {config.vocab_size}: they do not belong together"
            )
    else:  # the text tower's weights are dropped before anything is built
        state = {key: value for key, value in state.items() if key.startswith("visual.")}
    head = None
    if "aesthetic" in wanted:
        head_state, _ = load_with_cache(folder / AESTHETIC_NAME, read=read_torch_checkpoint, check=head_widths)
        head = build_head(head_state, config.embed_dim, device)
    clip = build_from_openai(
        state, config, with_text=with_text, device=device, dtype=dtype, what="OpenAI CLIP checkpoint"
    )
    del state
    model = OpenAIClipScorer(clip, head, wanted, config.image_size)
    return LoadedModel(model, encoder)


FAMILY = ModelFamily(
    key=FAMILY_KEY,
    outputs=OUTPUTS,
    files=FILES,
    load=load,
    backbone="OpenAI CLIP ViT-L/14 (+ LAION aesthetic MLP)",
    size_mb=938,
)


# ----------------------------------------------------------------------------------- random releases (tests, bench)

#: (vision width, vision layers, patch, text width, text layers, vocabulary, embedding) of each size.
_SIZES = {"full": (1024, 24, 14, 768, 12, VOCAB_SIZE, 768), "tiny": (64, 1, 14, 64, 1, None, 32)}
_TINY_HEAD = (32, 48, 24, 12, 6, 1)
_KEPT_FP32 = re.compile(r"embedding|(^|\.)ln_\w+\.|^logit_scale$")


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte-level alphabet, in CLIP's order: printable Latin-1 bytes stand for themselves, the other 68
    bytes are moved to U+0100 onwards (so that no piece is whitespace or a control character)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
    return [mapping[b] for b in [*printable, *others]]


def write_vocabulary(folder: Path, tokenizer_dir: Path | None = None) -> int:
    """A CLIP vocabulary into `folder` for a random release: `tokenizer_dir`'s vocab.json + merges.txt when given,
    else a byte-level one with no merges. Returns its size."""
    if tokenizer_dir is None:
        return write_byte_level_vocabulary(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((Path(tokenizer_dir) / name).read_bytes())
    return len(json.loads((folder / "vocab.json").read_text("utf-8")))


def write_byte_level_vocabulary(folder: Path) -> int:
    """A CLIP vocabulary with no merges (every byte a piece; 514 ids): vocab.json + merges.txt. Returns its size."""
    alphabet = _bytes_to_unicode()
    pieces = [*alphabet, *(c + "</w>" for c in alphabet), "<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}, ensure_ascii=False), "utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", "utf-8")
    return len(pieces)


def random_openai_state(size: str = "tiny", seed: int = 0, vocab_size: int | None = None) -> dict[str, torch.Tensor]:
    """Random weights with OpenAI's key names and the release's dtypes (fp16 but for embeddings, LayerNorms and the
    logit scale; the three size numbers as int64)."""
    vision_width, vision_layers, patch, text_width, text_layers, vocab, embed = _SIZES[size]
    vocab = vocab_size or vocab or 514
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float = 0.02) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * std).half()

    def tower(prefix: str, width: int, layers: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i in range(layers):
            block = f"{prefix}resblocks.{i}."
            out |= {
                block + "attn.in_proj_weight": normal(3 * width, width),
                block + "attn.in_proj_bias": normal(3 * width),
                block + "attn.out_proj.weight": normal(width, width),
                block + "attn.out_proj.bias": normal(width),
                block + "ln_1.weight": torch.ones(width).half(),
                block + "ln_1.bias": torch.zeros(width).half(),
                block + "mlp.c_fc.weight": normal(4 * width, width),
                block + "mlp.c_fc.bias": normal(4 * width),
                block + "mlp.c_proj.weight": normal(width, 4 * width),
                block + "mlp.c_proj.bias": normal(width),
                block + "ln_2.weight": torch.ones(width).half(),
                block + "ln_2.bias": torch.zeros(width).half(),
            }
        return out

    image_size = 224
    grid = image_size // patch
    state = {
        "positional_embedding": normal(CONTEXT_LENGTH, text_width, std=0.01),
        "text_projection": normal(text_width, embed, std=text_width**-0.5),
        "logit_scale": torch.tensor(math.log(100.0)).half(),
        "visual.class_embedding": normal(vision_width, std=vision_width**-0.5),
        "visual.positional_embedding": normal(grid * grid + 1, vision_width, std=vision_width**-0.5),
        "visual.proj": normal(vision_width, embed, std=vision_width**-0.5),
        "visual.conv1.weight": normal(vision_width, 3, patch, patch),
        "visual.ln_pre.weight": torch.ones(vision_width).half(),
        "visual.ln_pre.bias": torch.zeros(vision_width).half(),
        **tower("visual.transformer.", vision_width, vision_layers),
        "visual.ln_post.weight": torch.ones(vision_width).half(),
        "visual.ln_post.bias": torch.zeros(vision_width).half(),
        "token_embedding.weight": normal(vocab, text_width),
        **tower("transformer.", text_width, text_layers),
        "ln_final.weight": torch.ones(text_width).half(),
        "ln_final.bias": torch.zeros(text_width).half(),
        "input_resolution": torch.tensor(image_size),
        "context_length": torch.tensor(CONTEXT_LENGTH),
        "vocab_size": torch.tensor(vocab),
    }
    # As in OpenAI's release (its `convert_weights`): embeddings, LayerNorms and the logit scale stay fp32.
    return {key: value.float() if _KEPT_FP32.search(key) else value for key, value in state.items()}


def random_head_state(size: str = "tiny", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of the aesthetic MLP with the release's key names (fp32)."""
    widths = HEAD_WIDTHS if size == "full" else _TINY_HEAD
    generator = torch.Generator().manual_seed(seed + 1)
    state: dict[str, torch.Tensor] = {}
    for (a, b), index in zip(itertools.pairwise(widths), HEAD_INDICES, strict=True):
        state[f"layers.{index}.weight"] = torch.randn(b, a, generator=generator) * a**-0.5
        state[f"layers.{index}.bias"] = torch.randn(b, generator=generator) * 0.02
    return state


def write_random_release(folder: Path, *, size: str = "full", seed: int = 0, tokenizer_dir: Path | None = None) -> None:
    """Every file of the family, in the release's names and key names, with random weights.

    `ViT-L-14.pt` is written as a plain state dict (the form `clip.load(jit=False)` also reads), not as a
    TorchScript archive, which only the reference's own code can write (tests/reference/clip_worker.py does).
    The tokenizer is `tokenizer_dir`'s vocab.json + merges.txt when given, else a byte-level vocabulary with no
    merges (prompts become one token per character: longer than with the real vocabulary)."""
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}")
    folder = Path(folder)
    vocab = write_vocabulary(folder / TOKENIZER_DIRNAME, tokenizer_dir)
    state = random_openai_state(size, seed, vocab_size=VOCAB_SIZE if size == "full" else vocab)
    torch.save(state, folder / CLIP_NAME)
    torch.save(random_head_state(size, seed), folder / AESTHETIC_NAME)
