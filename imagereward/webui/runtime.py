"""The scorer's life inside the WebUI: loaded on first use, kept or offloaded between jobs, CPU fallback on OOM.

Plain Python: the script passes in the settings and a `free_memory` callable (A1111's `devices.torch_gc`, Forge's
memory manager), so tests can drive it with a stand-in scorer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..engine import ScoringOutOfMemoryError, resolve_device, resolve_dtype

log = logging.getLogger("imagereward")


@dataclass(frozen=True)
class RuntimeSettings:
    models_dir: Path
    device: str = "auto"  # auto, cuda, cuda:1, cpu
    dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU), fp16, fp32, bf16
    batch_size: int = 16
    keep_on_device: bool = True  # False: offload to the CPU after each job
    offload_after_scoring: bool = False  # --lowvram/--medvram: hold VRAM only while a batch is scored
    scorers: tuple[str, ...] = ("imagereward",)  # the job's choice: one scorer, or "ensemble" (+ its members)
    weights: str = ""  # ensemble weights, "name=w,..."
    keep_other_scorers: bool = False  # True: a scorer chosen earlier stays loaded when the job picks another

    @property
    def load_key(self) -> tuple[str, ...]:
        return (str(self.models_dir), self.device, self.dtype, *self.scorers, self.weights)


Loader = Callable[[RuntimeSettings], Any]


def default_loader(settings: RuntimeSettings) -> Any:
    """The chosen scorers as a `ScorerSet` (ImageReward alone too), whose `score` gives every scorer's column."""
    from ..scorers.registry import load_scorers

    return load_scorers(
        settings.scorers,
        settings.models_dir,
        device=settings.device,
        dtype=settings.dtype,
        batch_size=settings.batch_size,
        weights=settings.weights or None,
    )


def as_table(result: Any, names: Sequence[str]) -> dict[str, list[float]]:
    """A scorer's result as `{name: scores}`: a `ScorerSet` gives that already, a single scorer a list."""
    if isinstance(result, dict):
        return result
    return {names[0]: list(result)}


@dataclass
class _Loaded:
    scorer: Any
    home: torch.device


class ScorerRuntime:
    """Holds the loaded scorers, one choice at a time unless the settings keep the others; thread-safe."""

    def __init__(self, loader: Loader = default_loader, free_memory: Callable[[], None] | None = None) -> None:
        self._loader = loader
        self._free_memory = free_memory or (lambda: None)
        self._loaded: dict[tuple[str, ...], _Loaded] = {}
        self._current: tuple[str, ...] | None = None
        self._lock = threading.Lock()

    def _get(self, settings: RuntimeSettings) -> Any:
        key = settings.load_key
        entry = self._loaded.get(key)
        if entry is None:
            others = [k for k in self._loaded if k[:3] != key[:3] or not settings.keep_other_scorers]
            for other in others:  # another folder, device or precision, or not kept: only one model at a time
                del self._loaded[other]
            if others:
                self._free_memory()
            # Forge generates under torch.inference_mode(): weights made there would be inference tensors, which
            # cannot be moved (offloaded) afterwards. Load as ordinary tensors.
            with torch.inference_mode(False):
                scorer = self._loader(settings)
            entry = self._loaded[key] = _Loaded(scorer, scorer.device)
        self._current = key
        scorer = entry.scorer
        _set_batch_size(scorer, settings.batch_size)
        if scorer.device != entry.home:
            scorer.to(entry.home)  # back from an offload
        return scorer

    def score(
        self, settings: RuntimeSettings, prompts: Sequence[str], images: Sequence[Any], *, clean_prompts: bool
    ) -> list[float]:
        """The first chosen scorer's scores for a batch (see `score_table`)."""
        return self.score_table(settings, prompts, images, clean_prompts=clean_prompts)[settings.scorers[0]]

    def score_table(
        self, settings: RuntimeSettings, prompts: Sequence[str], images: Sequence[Any], *, clean_prompts: bool
    ) -> dict[str, list[float]]:
        """Every chosen scorer's scores for a batch; falls back to the CPU when the GPU is out of memory even for
        one image."""
        with self._lock:
            scorer = self._get(settings)
            home = self._loaded[settings.load_key].home
            try:
                result = scorer.score(list(prompts), list(images), clean_prompts=clean_prompts)
            except ScoringOutOfMemoryError:
                if scorer.device.type == "cpu":
                    raise
                log.warning("ImageReward: GPU out of memory; scoring this batch on the CPU (slower)")
                scorer.to("cpu", torch.float32)
                self._free_memory()
                try:
                    result = scorer.score(list(prompts), [_to_cpu(i) for i in images], clean_prompts=clean_prompts)
                finally:
                    scorer.to(home, resolve_dtype_name(settings.dtype, home))
            return as_table(result, settings.scorers)

    def scorer(self, settings: RuntimeSettings, names: Sequence[str] = ("imagereward",)) -> Any:
        """The loaded `ScorerSet` of `names` (loaded now if needed), for callers that drive it themselves (the folder
        tab: one column per scorer); the settings' ensemble weights apply when `names` holds the ensemble."""
        with self._lock:
            weights = settings.weights if "ensemble" in names else ""
            return self._get(replace(settings, scorers=tuple(names), weights=weights))

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
        moved = False
        for entry in self._loaded.values():
            if entry.scorer.device.type != "cpu":
                entry.scorer.to("cpu")
                moved = True
        if moved:
            self._free_memory()

    def unload(self) -> None:
        if self._loaded:
            self._loaded.clear()
            self._current = None
            self._free_memory()

    @property
    def loaded(self) -> Any:
        """The scorer used last (None before the first)."""
        entry = self._loaded.get(self._current) if self._current is not None else None
        return entry.scorer if entry is not None else None


def _set_batch_size(scorer: Any, batch_size: int) -> None:
    for part in getattr(scorer, "scorers", None) or [scorer]:
        part.batch_size = batch_size


class JobScoring:
    """A job's view of the runtime (the `Scoring` protocol of `job.py`): the settings as they are now, each pass
    followed by what the settings ask for (offload with --lowvram/--medvram)."""

    def __init__(
        self,
        runtime: ScorerRuntime,
        settings: Callable[[], RuntimeSettings],
        *,
        clean_prompts: bool,
        scorer: str = "imagereward",
        weights: str = "",
    ) -> None:
        self.runtime = runtime
        self._settings = settings
        self.clean_prompts = clean_prompts
        self.scorer = scorer
        self.weights = weights

    def settings(self) -> RuntimeSettings:
        """The WebUI's settings as they are now, with the job's scorer."""
        return replace(self._settings(), scorers=(self.scorer,), weights=self.weights)

    def score(self, prompts: list[str], images: list[Any]) -> dict[str, list[float]]:
        settings = self.settings()
        try:
            return self.runtime.score_table(settings, prompts, images, clean_prompts=self.clean_prompts)
        finally:
            self.runtime.scoring_done(settings)

    def truncated(self, prompts: list[str]) -> list[bool]:
        scorer = self.runtime.loaded
        return scorer.truncated(prompts, clean=self.clean_prompts) if scorer is not None else [False] * len(prompts)


def resolve_dtype_name(dtype: str, device: torch.device | None) -> str:
    return str(resolve_dtype(dtype, resolve_device(device))).replace("torch.", "")


def _to_cpu(item: Any) -> Any:
    return item.cpu() if isinstance(item, torch.Tensor) else item
