"""The public scoring object: load once, score many images in batches.

    scorer = ImageRewardScorer.load("models/ImageReward")        # downloads on first use
    scores = scorer.score("a cat on a sofa", ["a.png", "b.png"])   # one prompt for all, or one per image

Defaults: the device is CUDA when there is one, else an Apple GPU (MPS), else the CPU; fp16 on a GPU with the reward
head in fp32, fp32 on the CPU. bf16 only on request (measurably less accurate). On an out-of-memory error the batch is
halved and retried, down to one image.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .config import TextConfig
from .errors import ImageInputError, ImageRewardError, PromptError
from .model import ImageRewardModel
from .preprocess import ImageInput, as_chw, check_batch_shape, load_pil, pil_to_pixels, tensor_to_pixels
from .text import PromptTokenizer
from .weights import build_model, load_state

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


class ImageRewardScorer:
    """ImageReward v1.0 on one device. Thread-safe: calls are serialised by a lock."""

    def __init__(
        self,
        model: ImageRewardModel,
        tokenizer: PromptTokenizer,
        *,
        batch_size: int = 16,
        preprocess_workers: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.preprocess_workers = preprocess_workers
        self._lock = threading.RLock()
        self._token_cache: dict[tuple[str, bool], tuple[torch.Tensor, bool]] = {}

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_files(
        cls,
        checkpoint: str | Path,
        med_config: str | Path,
        tokenizer_dir: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        convert: bool = True,
    ) -> ImageRewardScorer:
        """Load from explicit local files (no network)."""
        target = resolve_device(device)
        weight_dtype = resolve_dtype(dtype, target)
        text_config = TextConfig.from_file(med_config)
        tokenizer = PromptTokenizer(tokenizer_dir)
        # Loading must not happen under an inference-mode context (the WebUI generates under one): parameters made
        # there could not be moved between devices later.
        with torch.inference_mode(False), torch.no_grad():
            state, source = load_state(checkpoint, convert=convert, text_config=text_config)
            model = build_model(state, text_config, device=target, dtype=weight_dtype)
        del state
        log.info("ImageReward loaded from %s on %s (%s)", source, target, str(weight_dtype).replace("torch.", ""))
        return cls(model, tokenizer, batch_size=batch_size)

    @classmethod
    def load(
        cls,
        models_dir: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        offline: bool | None = None,
        progress: bool = True,
    ) -> ImageRewardScorer:
        """Load from `models_dir`, downloading the checkpoint and tokenizer there on first use."""
        from .hub import CHECKPOINT_NAME, resolve_model_files

        files = resolve_model_files(models_dir, offline=offline, progress=progress)
        # Given the .pt, loading checks that a conversion beside it is up to date (the .pt may have been replaced).
        checkpoint = files.checkpoint.with_name(CHECKPOINT_NAME)
        if not checkpoint.exists():
            checkpoint = files.checkpoint
        return cls.from_files(
            checkpoint, files.med_config, files.tokenizer_dir, device=device, dtype=dtype, batch_size=batch_size
        )

    # ----------------------------------------------------------------------------------------------- devices

    @property
    def device(self) -> torch.device:
        return self.model.vision.patch_embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.vision.patch_embed.weight.dtype

    def to(self, device: str | torch.device, dtype: str | torch.dtype | None = None) -> ImageRewardScorer:
        """Move the weights (e.g. offload to the CPU and back) without reloading. The head stays in fp32."""
        target = resolve_device(device)
        with self._lock, torch.inference_mode(False), torch.no_grad():
            if dtype is None:
                self.model.to(target)
            else:
                self.model.to(target, resolve_dtype(dtype, target))
                self.model.head.float()
        return self

    # ------------------------------------------------------------------------------------------------ scoring

    def _tokens(self, prompts: Sequence[str], clean: bool) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        """Token ids (B, L) and mask for each image's prompt; each distinct prompt is tokenized once."""
        new = [p for p in dict.fromkeys(prompts) if (p, clean) not in self._token_cache]
        if new:
            encoded = self.tokenizer(new, clean=clean)
            for i, prompt in enumerate(new):
                ids = encoded.input_ids[i][encoded.attention_mask[i].bool()]
                self._token_cache[(prompt, clean)] = (ids, encoded.truncated[i])
            if len(self._token_cache) > 4096:
                self._token_cache.clear()
        rows = [self._token_cache[(p, clean)] for p in prompts] if prompts else []
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, (ids, _) in enumerate(rows):
            input_ids[i, : len(ids)] = ids
            mask[i, : len(ids)] = 1
        return input_ids, mask, [t for _, t in rows]

    def _pixels(self, items: Sequence[ImageInput], exif_orientation: bool = True) -> torch.Tensor:
        """One normalised batch on the model's device.

        Tensors of one shape are resized together on their device; PIL images and paths take the reference-exact PIL
        path in a thread pool (PIL releases the GIL while resizing).
        """
        device = self.device
        parts: list[torch.Tensor | None] = [None] * len(items)
        same_shape: dict[tuple, list[int]] = {}
        pil_indices: list[int] = []
        items = [as_chw(item) if isinstance(item, (np.ndarray, torch.Tensor)) else item for item in items]
        for i, item in enumerate(items):
            if isinstance(item, torch.Tensor):
                same_shape.setdefault((tuple(item.shape), item.dtype, item.device), []).append(i)
            else:
                pil_indices.append(i)
        for indices in same_shape.values():
            batch = tensor_to_pixels(torch.stack([items[i] for i in indices]), device=device)  # type: ignore[misc]
            for row, i in enumerate(indices):
                parts[i] = batch[row : row + 1]
        if pil_indices:

            def work(index: int) -> torch.Tensor:
                return pil_to_pixels(load_pil(items[index], exif_orientation=exif_orientation)).unsqueeze(0)

            workers = self.preprocess_workers or min(8, len(pil_indices), torch.get_num_threads())
            if workers > 1:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    done = list(pool.map(work, pil_indices))
            else:
                done = [work(i) for i in pil_indices]
            for index, tensor in zip(pil_indices, done, strict=True):
                parts[index] = tensor.to(device, non_blocking=True)
        return torch.cat([p for p in parts if p is not None])

    def _forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        device = self.device
        return self.model(pixels.to(device), input_ids.to(device), mask.to(device))

    def score(
        self,
        prompts: str | Sequence[str],
        images: ImageInput | Sequence[ImageInput],
        *,
        clean_prompts: bool = True,
        exif_orientation: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[float]:
        """Scores, one per image, in the order given.

        prompts: one prompt for every image, or a sequence with one prompt per image.
        images: PIL images or file paths (the reference's exact preprocessing for 8-bit images; 16-bit and float
            images are scaled to 8 bits first); tensors, CHW or BCHW (a batch counts as B images), on any device;
            numpy arrays, HxW or HxWxC (or a list of them). Tensors and arrays have 1 (grey), 2 (grey + alpha),
            3 (RGB) or 4 (RGBA) channels and hold uint8 in 0..255, uint16 in 0..65535 or floats in 0..1; floats
            clearly outside 0..1 (0..255, or a VAE's -1..1) are refused with a message saying how to rescale.
            A 2-D array is read as grey levels: `np.asarray` of a palette ("P") image gives palette indices, so
            pass such an image itself (or `image.convert("RGB")`).
        clean_prompts: reduce WebUI prompt syntax (weights, LoRA tags, prompt editing, BREAK/AND) to the words it
            stands for before scoring, as the command line and the WebUI do (default). False tokenizes the prompt
            literally, as the reference implementation does.
        exif_orientation: turn PIL images and files as their EXIF orientation tag says, as image viewers show them
            (default). False reads the stored pixels as they are, as the reference implementation does.
        progress: called with (done, total) after each batch.
        """
        items = _flatten_images(images)
        prompt_list = _expand_prompts(prompts, len(items))
        if not items:
            return []
        with self._lock, torch.inference_mode():
            results = self._score_all(items, prompt_list, clean_prompts, exif_orientation, progress)
        return torch.cat(results).float().cpu().tolist()

    def _score_all(
        self,
        items: list[ImageInput],
        prompts: list[str],
        clean: bool,
        exif_orientation: bool,
        progress: Callable[[int, int], None] | None,
    ) -> list[torch.Tensor]:
        results: list[torch.Tensor] = []
        start = 0
        while start < len(items):
            stop = min(start + self.batch_size, len(items))
            try:
                pixels = self._pixels(items[start:stop], exif_orientation)
                input_ids, mask, _ = self._tokens(prompts[start:stop], clean)
                results.append(self._forward(pixels, input_ids, mask))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                del exc
                _empty_cache(self.device)
                if self.batch_size == 1:
                    raise ScoringOutOfMemoryError(
                        f"not enough memory on {self.device} to score even one image; free memory (close other "
                        "programs, offload models) or score on the CPU"
                    ) from None
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("ImageReward: out of memory, retrying with batches of %d", self.batch_size)
                continue
            start = stop
            if progress is not None:
                progress(stop, len(items))
        return results

    def truncated(self, prompts: Sequence[str], *, clean: bool = True) -> list[bool]:
        """For each prompt, whether it is longer than the model reads (35 tokens) and was cut."""
        if not prompts:
            return []
        with self._lock:
            return self._tokens(list(prompts), clean)[2]


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def _flatten_images(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
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


def _expand_prompts(prompts: str | Sequence[str], count: int) -> list[str]:
    if isinstance(prompts, str):
        return [prompts] * count
    if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise PromptError("prompts must be a string or a list of strings")
    if len(prompts) != count:
        raise PromptError(f"got {len(prompts)} prompts for {count} images: give one prompt, or one per image")
    return list(prompts)
