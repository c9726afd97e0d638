"""The shared scoring engine: any `ScoringModel` on one device, fed in batches.

What every scorer gets from here rather than writing its own: images of every accepted kind turned into the model's
pixels (PIL and paths in a thread pool, tensors of one shape resized together on their device); each distinct prompt
cleaned and tokenised once; batches halved and retried on an out-of-memory error; a lock so one scorer can serve
several threads; moving between devices (offload) with small heads kept in fp32.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import torch

from .errors import ImageInputError, ImageRewardError, PromptError
from .preprocess import ImageInput, as_chw, check_batch_shape, load_pil, pil_to_pixels, tensor_to_pixels
from .prompt_syntax import clean_prompt
from .scorers.base import PromptEncoder, ScoringModel
from .text import encodable

if TYPE_CHECKING:  # (typing.Unpack is 3.11+; the WebUI runs 3.10 too, and nothing here needs it at run time)
    from typing_extensions import Unpack

log = logging.getLogger("imagereward")

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}

_TOKEN_CACHE_LIMIT = 4096


class ScoringOutOfMemoryError(ImageRewardError):
    """Even a single image does not fit in the device's memory."""


def mps_available() -> bool:
    """Whether an Apple GPU can be used (torch's MPS backend, macOS 12.3+ on Apple silicon or AMD)."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`auto` (or None): CUDA when there is one, else an Apple GPU (MPS), else the CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    return torch.device(device)


def check_device(name: str) -> None:
    """Refuse a device that does not exist here, in one line, before a model loads (`auto` always passes)."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ImageRewardError(f"{name}: not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no usable NVIDIA GPU or driver"
            raise ImageRewardError(f"{name}: CUDA is not available here ({build}); use cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ImageRewardError(f"{name}: there are {count} CUDA device(s), numbered 0 to {count - 1}")
    elif device.type == "mps":
        if not mps_available():
            raise ImageRewardError(f"{name}: no Apple GPU (MPS) is available here; use cpu or auto")
    elif device.type != "cpu":
        raise ImageRewardError(f"{name}: only auto, cpu, cuda, cuda:N and mps are supported")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp16 on a GPU (CUDA or MPS, both run fp16 natively), fp32 on the CPU, unless asked otherwise."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ImageRewardError(f"unknown dtype {dtype!r}; use one of fp32, fp16, bf16") from None


def is_out_of_memory(exc: BaseException) -> bool:
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def keep_fp32(model: ScoringModel) -> None:
    """Put the model's `fp32_modules` back in float32 (after a move to fp16/bf16)."""
    for name in model.fp32_modules:
        model.get_submodule(name).float()


class ScoreOptions(TypedDict, total=False):
    """The keyword options of every `score` (`Scorer.score_outputs` lists them with their defaults): written once
    here, so that `Scorer.score` and `ScorerSet.score` do not repeat the signature."""

    clean_prompts: bool
    exif_orientation: bool
    progress: Callable[[int, int], None] | None


def read_options(options: dict[str, Any]) -> dict[str, Any]:
    """`options` checked against `ScoreOptions` (a misspelt keyword is a TypeError, as with a real signature), with
    the defaults filled in."""
    unknown = sorted(set(options) - set(ScoreOptions.__annotations__))
    if unknown:
        raise TypeError(f"score() got unexpected keyword argument(s) {', '.join(unknown)}")
    return {"clean_prompts": True, "exif_orientation": True, "progress": None, **options}


class Scorer:
    """A `ScoringModel` with its prompt encoder on one device. Thread-safe: calls are serialised by a lock."""

    def __init__(
        self,
        model: ScoringModel,
        encoder: PromptEncoder | None,
        *,
        batch_size: int = 16,
        preprocess_workers: int | None = None,
    ) -> None:
        self.model = model
        self.encoder = encoder
        self.batch_size = max(1, int(batch_size))
        self.preprocess_workers = preprocess_workers
        #: The files each output was loaded from (set by `registry.load_family`): what its weights record hashes.
        self.files: dict[str, tuple[Path, ...]] = {}
        self._lock = threading.RLock()
        self._token_cache: dict[tuple[str, bool], tuple[torch.Tensor, bool]] = {}

    # ----------------------------------------------------------------------------------------------- identity

    @property
    def outputs(self) -> tuple[str, ...]:
        """The scorer names this model computes, in order; `score` returns the first."""
        return tuple(self.model.outputs)

    @property
    def needs_prompt(self) -> bool:
        return bool(self.model.needs_prompt)

    # ----------------------------------------------------------------------------------------------- devices

    @property
    def device(self) -> torch.device:
        return self.model.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.weight.dtype

    def to(self, device: str | torch.device, dtype: str | torch.dtype | None = None) -> Scorer:
        """Move the weights (e.g. offload to the CPU and back) without reloading; fp32 heads stay fp32."""
        target = resolve_device(device)
        with self._lock, torch.inference_mode(False), torch.no_grad():
            if dtype is None:
                self.model.to(target)
            else:
                self.model.to(target, resolve_dtype(dtype, target))
                keep_fp32(self.model)
        return self

    # ------------------------------------------------------------------------------------------------ prompts

    def _tokens(self, prompts: Sequence[str], clean: bool) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        """Token ids (B, L) and mask for each image's prompt; each distinct prompt is tokenized once."""
        if self.encoder is None:
            raise PromptError(f"{'/'.join(self.outputs)} reads no prompt")
        new = [p for p in dict.fromkeys(prompts) if (p, clean) not in self._token_cache]
        if new:
            encoded = self.encoder([encodable(clean_prompt(p) if clean else p) for p in new])
            for i, prompt in enumerate(new):
                ids = encoded.input_ids[i][encoded.attention_mask[i].bool()]
                self._token_cache[(prompt, clean)] = (ids, bool(encoded.truncated[i]))
            if len(self._token_cache) > _TOKEN_CACHE_LIMIT:
                self._token_cache.clear()
        rows = [self._token_cache[(p, clean)] for p in prompts] if prompts else []
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, (ids, _) in enumerate(rows):
            input_ids[i, : len(ids)] = ids
            mask[i, : len(ids)] = 1
        return input_ids, mask, [t for _, t in rows]

    def truncated(self, prompts: Sequence[str], *, clean: bool = True) -> list[bool]:
        """For each prompt, whether it is longer than the model reads and was cut (always False without a prompt)."""
        if not prompts:
            return []
        if self.encoder is None:
            return [False] * len(prompts)
        with self._lock:
            return self._tokens(list(prompts), clean)[2]

    # ------------------------------------------------------------------------------------------------- images

    def _pixels(self, items: Sequence[ImageInput], exif_orientation: bool = True) -> torch.Tensor:
        """One normalised batch on the model's device.

        Tensors of one shape are resized together on their device; paths are decoded and PIL images take the
        reference-exact PIL path in a thread pool (PIL releases the GIL while decoding and resizing).
        """
        device = self.device
        spec = self.model.pixel_spec
        normalisation = (spec.mean, spec.std)
        items = decode_images(items, exif_orientation, self.preprocess_workers)
        parts: list[torch.Tensor | None] = [None] * len(items)
        same_shape: dict[tuple, list[int]] = {}
        pil_indices: list[int] = []
        for i, item in enumerate(items):
            if isinstance(item, torch.Tensor):
                same_shape.setdefault((tuple(item.shape), item.dtype, item.device), []).append(i)
            else:
                pil_indices.append(i)
        for indices in same_shape.values():
            batch = tensor_to_pixels(
                torch.stack([items[i] for i in indices]),  # type: ignore[misc]
                spec.size,
                device=device,
                normalisation=normalisation,
                rgb_first=spec.rgb_before_resize,
                crop_rounding=spec.crop_rounding,
                fit=spec.fit,
            )
            for row, i in enumerate(indices):
                parts[i] = batch[row : row + 1]
        if pil_indices:

            def work(index: int) -> torch.Tensor:
                pixels = pil_to_pixels(
                    items[index],  # type: ignore[arg-type]
                    spec.size,
                    normalisation=normalisation,
                    rgb_first=spec.rgb_before_resize,
                    crop_rounding=spec.crop_rounding,
                    fit=spec.fit,
                )
                return pixels.unsqueeze(0)

            for index, tensor in zip(pil_indices, _in_threads(work, pil_indices, self.preprocess_workers), strict=True):
                parts[index] = tensor.to(device, non_blocking=True)
        return torch.cat([p for p in parts if p is not None])

    # ------------------------------------------------------------------------------------------------ scoring

    def _forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor | None, mask: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        device = self.device
        ids = input_ids.to(device) if input_ids is not None else None
        attention = mask.to(device) if mask is not None else None
        return self.model(pixels.to(device), ids, attention)

    def score(
        self,
        prompts: str | Sequence[str] | None,
        images: ImageInput | Sequence[ImageInput],
        **options: Unpack[ScoreOptions],
    ) -> list[float]:
        """Scores of the first output (`outputs[0]`), one per image, in the order given.

        prompts: one prompt for every image, or a sequence with one prompt per image (None, or anything, for a
            scorer that reads no prompt, such as `aesthetic`).
        images: PIL images or file paths (the reference's exact preprocessing for 8-bit images; 16-bit and float
            images are scaled to 8 bits first); tensors, CHW or BCHW (a batch counts as B images), on any device;
            numpy arrays, HxW or HxWxC (or a list of them). Tensors and arrays have 1 (grey), 2 (grey + alpha),
            3 (RGB) or 4 (RGBA) channels and hold uint8 in 0..255, uint16 in 0..65535 or floats in 0..1; floats
            clearly outside 0..1 (0..255, or a VAE's -1..1) are refused with a message saying how to rescale.
            A 2-D array is read as grey levels: `np.asarray` of a palette ("P") image gives palette indices, so
            pass such an image itself (or `image.convert("RGB")`).
        clean_prompts: reduce WebUI prompt syntax (weights, LoRA tags, prompt editing, BREAK/AND) to the words it
            stands for before scoring, as the command line and the WebUI do (default). False tokenizes the prompt
            literally, as the reference implementations do.
        exif_orientation: turn PIL images and files as their EXIF orientation tag says, as image viewers show them
            (default). False reads the stored pixels as they are, as the reference implementations do.
        progress: called with (done, total) after each batch.
        """
        return self.score_outputs(prompts, images, **read_options(options))[self.outputs[0]]

    def score_outputs(
        self,
        prompts: str | Sequence[str] | None,
        images: ImageInput | Sequence[ImageInput],
        *,
        clean_prompts: bool = True,
        exif_orientation: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, list[float]]:
        """Every output's scores (`{name: [score per image]}`), from one pass over the images; see `score`."""
        items = flatten_images(images)
        prompt_list = expand_prompts(prompts, len(items)) if self.needs_prompt else [""] * len(items)
        if not items:
            return {name: [] for name in self.outputs}
        with self._lock, torch.inference_mode():
            pixels_of = lambda a, b: self._pixels(items[a:b], exif_orientation)  # noqa: E731
            results = self._score_all(len(items), pixels_of, prompt_list, clean_prompts, progress)
        return _table(results, self.outputs)

    def score_pixels(
        self, prompts: str | Sequence[str] | None, pixels: torch.Tensor, *, clean_prompts: bool = True
    ) -> dict[str, list[float]]:
        """Every output's scores for pixels already made for this model: (B, 3, S, S) floats, normalised, as
        `preprocess.pil_to_pixels` makes them with the model's `pixel_spec` (the collection pipeline decodes and
        resizes in worker processes, once for every scorer that shares a pixel layout). Batches as `score_outputs`."""
        count = len(pixels)
        prompt_list = expand_prompts(prompts, count) if self.needs_prompt else [""] * count
        if not count:
            return {name: [] for name in self.outputs}
        with self._lock, torch.inference_mode():
            results = self._score_all(count, lambda a, b: pixels[a:b], prompt_list, clean_prompts, None)
        return _table(results, self.outputs)

    def _score_all(
        self,
        count: int,
        pixels_of: Callable[[int, int], torch.Tensor],
        prompts: list[str],
        clean: bool,
        progress: Callable[[int, int], None] | None,
    ) -> list[dict[str, torch.Tensor]]:
        results: list[dict[str, torch.Tensor]] = []
        batch_size = self.batch_size  # halved on an out-of-memory error for the rest of this call only
        start = 0
        while start < count:
            stop = min(start + batch_size, count)
            try:
                pixels = pixels_of(start, stop)
                input_ids = mask = None
                if self.needs_prompt:
                    input_ids, mask, _ = self._tokens(prompts[start:stop], clean)
                results.append(self._forward(pixels, input_ids, mask))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                del exc
                empty_cache(self.device)
                if batch_size == 1:
                    raise ScoringOutOfMemoryError(
                        f"not enough memory on {self.device} to score even one image; free memory (close other "
                        "programs, offload models) or score on the CPU"
                    ) from None
                batch_size = max(1, batch_size // 2)
                log.warning("%s: out of memory, retrying with batches of %d", "/".join(self.outputs), batch_size)
                continue
            start = stop
            if progress is not None:
                progress(stop, count)
        return results


def _table(results: list[dict[str, torch.Tensor]], outputs: Sequence[str]) -> dict[str, list[float]]:
    return {name: torch.cat([r[name] for r in results]).float().cpu().tolist() if results else [] for name in outputs}


def decode_images(
    items: Sequence[ImageInput], exif_orientation: bool = True, workers: int | None = None
) -> list[ImageInput]:
    """Each image ready for any scorer's pixels, decoded once: paths opened and decoded, PIL images turned as their
    EXIF orientation says (unless off; the result carries no orientation tag, so turning again changes nothing),
    in a thread pool; numpy arrays and tensors as CHW tensors."""
    chw = [as_chw(item) if isinstance(item, (np.ndarray, torch.Tensor)) else item for item in items]
    to_decode = [i for i, item in enumerate(chw) if not isinstance(item, torch.Tensor)]
    decoded = _in_threads(lambda i: load_pil(chw[i], exif_orientation=exif_orientation), to_decode, workers)
    for index, image in zip(to_decode, decoded, strict=True):
        chw[index] = image
    return chw


def _in_threads(work: Callable[[int], Any], indices: list[int], workers: int | None) -> list[Any]:
    """`work` on each index, in a thread pool when there is more than one (PIL releases the GIL)."""
    count = workers or min(8, len(indices), torch.get_num_threads())
    if count > 1 and len(indices) > 1:
        with ThreadPoolExecutor(max_workers=count) as pool:
            return list(pool.map(work, indices))
    return [work(i) for i in indices]


def flatten_images(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """A list of single images: a BCHW tensor counts as B images; an HxWxC array, a CHW tensor as one."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 4:
            check_batch_shape(images)
            return list(images.unbind(0))
        return [images]
    if isinstance(images, (str, Path, np.ndarray)) or not isinstance(images, Sequence):
        return [images]  # type: ignore[list-item]
    items: list[ImageInput] = []
    for item in images:
        if isinstance(item, torch.Tensor) and item.ndim == 4:
            check_batch_shape(item)
            items.extend(item.unbind(0))
        elif item is None:
            raise ImageInputError("an image in the list is None")
        else:
            items.append(item)
    return items


def expand_prompts(prompts: str | Sequence[str] | None, count: int) -> list[str]:
    if isinstance(prompts, str):
        return [prompts] * count
    if prompts is None:
        raise PromptError("this scorer reads the prompt: give one prompt, or one per image")
    if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise PromptError("prompts must be a string or a list of strings")
    if len(prompts) != count:
        raise PromptError(f"got {len(prompts)} prompts for {count} images: give one prompt, or one per image")
    return list(prompts)
