"""The scorer's life inside the WebUI: loaded on first use, kept or offloaded between jobs, CPU fallback on OOM.

Plain Python: the script passes in the settings and a `free_memory` callable (A1111's `devices.torch_gc`, Forge's
memory manager), so tests can drive it with a stand-in scorer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..scorer import ImageRewardScorer, ScoringOutOfMemoryError, resolve_device

log = logging.getLogger("imagereward")


@dataclass(frozen=True)
class RuntimeSettings:
    models_dir: Path
    device: str = "auto"  # auto, cuda, cuda:1, cpu
    dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU), fp16, fp32, bf16
    batch_size: int = 16
    keep_on_device: bool = True  # False: offload to the CPU after each job
    offload_after_scoring: bool = False  # --lowvram/--medvram: hold VRAM only while a batch is scored

    @property
    def load_key(self) -> tuple[str, str, str]:
        return (str(self.models_dir), self.device, self.dtype)


Loader = Callable[[RuntimeSettings], ImageRewardScorer]


def default_loader(settings: RuntimeSettings) -> ImageRewardScorer:
    return ImageRewardScorer.load(
        settings.models_dir, device=settings.device, dtype=settings.dtype, batch_size=settings.batch_size
    )


class ScorerRuntime:
    """Holds at most one scorer; thread-safe."""

    def __init__(self, loader: Loader = default_loader, free_memory: Callable[[], None] | None = None) -> None:
        self._loader = loader
        self._free_memory = free_memory or (lambda: None)
        self._scorer: ImageRewardScorer | None = None
        self._key: tuple[str, str, str] | None = None
        self._home: torch.device | None = None
        self._lock = threading.Lock()

    def _get(self, settings: RuntimeSettings) -> ImageRewardScorer:
        if self._scorer is None or self._key != settings.load_key:
            self.unload()
            # Forge generates under torch.inference_mode(): weights made there would be inference tensors, which
            # cannot be moved (offloaded) afterwards. Load as ordinary tensors.
            with torch.inference_mode(False):
                self._scorer = self._loader(settings)
            self._key = settings.load_key
            self._home = self._scorer.device
        scorer = self._scorer
        scorer.batch_size = settings.batch_size
        if self._home is not None and scorer.device != self._home:
            scorer.to(self._home)  # back from an offload
        return scorer

    def score(
        self, settings: RuntimeSettings, prompts: Sequence[str], images: Sequence[Any], *, clean_prompts: bool
    ) -> list[float]:
        """Scores for a batch; falls back to the CPU when the GPU is out of memory even for one image."""
        with self._lock:
            scorer = self._get(settings)
            try:
                return scorer.score(list(prompts), list(images), clean_prompts=clean_prompts)
            except ScoringOutOfMemoryError:
                if scorer.device.type == "cpu":
                    raise
                log.warning("ImageReward: GPU out of memory; scoring this batch on the CPU (slower)")
                scorer.to("cpu", torch.float32)
                self._free_memory()
                try:
                    return scorer.score(list(prompts), [_to_cpu(i) for i in images], clean_prompts=clean_prompts)
                finally:
                    scorer.to(self._home or "cpu", resolve_dtype_name(settings.dtype, self._home))

    def scorer(self, settings: RuntimeSettings) -> ImageRewardScorer:
        """The loaded scorer (loaded now if needed), for callers that drive it themselves (the folder tab)."""
        with self._lock:
            return self._get(settings)

    def scoring_done(self, settings: RuntimeSettings) -> None:
        """After one scoring pass: with --lowvram/--medvram the diffusion model needs the VRAM back at once."""
        if settings.offload_after_scoring:
            with self._lock:
                self.offload()

    def job_done(self, settings: RuntimeSettings) -> None:
        """After a job (not after each batch: moving 1 GB per batch would cost more than it saves)."""
        if not settings.keep_on_device:
            with self._lock:
                self.offload()

    def offload(self) -> None:
        """Move the weights to the CPU (kept in RAM, no reload needed) and give the GPU memory back."""
        if self._scorer is not None and self._scorer.device.type != "cpu":
            self._scorer.to("cpu")
            self._free_memory()

    def unload(self) -> None:
        if self._scorer is not None:
            self._scorer = None
            self._key = None
            self._free_memory()

    @property
    def loaded(self) -> ImageRewardScorer | None:
        return self._scorer


class JobScoring:
    """A job's view of the runtime (the `Scoring` protocol of `job.py`): the settings as they are now, each pass
    followed by what the settings ask for (offload with --lowvram/--medvram)."""

    def __init__(self, runtime: ScorerRuntime, settings: Callable[[], RuntimeSettings], *, clean_prompts: bool) -> None:
        self.runtime = runtime
        self.settings = settings
        self.clean_prompts = clean_prompts

    def score(self, prompts: list[str], images: list[Any]) -> list[float]:
        settings = self.settings()
        try:
            return self.runtime.score(settings, prompts, images, clean_prompts=self.clean_prompts)
        finally:
            self.runtime.scoring_done(settings)

    def truncated(self, prompts: list[str]) -> list[bool]:
        scorer = self.runtime.loaded
        return scorer.truncated(prompts, clean=self.clean_prompts) if scorer is not None else [False] * len(prompts)


def resolve_dtype_name(dtype: str, device: torch.device | None) -> str:
    from ..scorer import resolve_dtype

    return str(resolve_dtype(dtype, resolve_device(device))).replace("torch.", "")


def _to_cpu(item: Any) -> Any:
    return item.cpu() if isinstance(item, torch.Tensor) else item
