"""From scorer names to loaded models: which family computes which scorer, where its files live, and loading
several scorers so that each family's model is loaded (and each image encoded by it) once.

    scorers = load_scorers(["pickscore", "aesthetic"], "models/ImageReward")
    table = scorers.score("a cat", ["a.png", "b.png"])      # {"pickscore": [...], "aesthetic": [...]}
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..engine import (
    ScoreOptions,
    Scorer,
    decode_images,
    expand_prompts,
    flatten_images,
    read_options,
    resolve_device,
    resolve_dtype,
)
from ..ensemble import Ensemble, make_ensemble
from ..errors import ImageRewardError
from ..hub import HubFile
from ..preprocess import ImageInput
from .base import LoadedModel, ModelFamily
from .specs import ENSEMBLE, SCORERS, canonical_name

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger("imagereward")

#: Family key -> module defining `FAMILY`. Imported on first use: a family's code is only loaded when asked for.
FAMILY_MODULES: dict[str, str] = {
    "": "imagereward.scorers.imagereward_family",
    "openai-clip-vit-l-14": "imagereward.scorers.openai_clip",  # clip, aesthetic
    "blip-large": "imagereward.scorers.blip_score",
    "pickscore-v1": "imagereward.scorers.pickscore",
    "hpsv2.1": "imagereward.scorers.hpsv2",
}


class UnknownScorerError(ImageRewardError):
    """A scorer name that is not in the table."""


def resolve_names(names: Sequence[str]) -> list[str]:
    """Canonical names, in the order given, without repeats; unknown names are refused with the list of known ones."""
    result: list[str] = []
    for name in names:
        canonical = canonical_name(name)
        if canonical is None:
            known = ", ".join([*SCORERS, ENSEMBLE])
            raise UnknownScorerError(f"unknown scorer {name!r}; choose from {known}")
        if canonical not in result:
            result.append(canonical)
    return result


def get_family(key: str) -> ModelFamily:
    try:
        module = FAMILY_MODULES[key]
    except KeyError:
        raise UnknownScorerError(f"no model family {key!r}") from None
    return importlib.import_module(module).FAMILY


def family_files(key: str, outputs: Sequence[str]) -> tuple[HubFile, ...]:
    """The files of family `key` that `outputs` need: a family module may define `files_for(files, outputs)` (CLIP:
    the aesthetic score needs no tokenizer); otherwise every file of the family."""
    family = get_family(key)
    select = getattr(importlib.import_module(FAMILY_MODULES[key]), "files_for", None)
    return tuple(select(family.files, frozenset(outputs))) if select is not None else family.files


def family_folder(models_dir: Path, family: ModelFamily) -> Path:
    """ImageReward's own files sit at the root of the models folder; every other family in a subfolder."""
    return models_dir / family.key if family.key else models_dir


@dataclass(frozen=True)
class LoadOptions:
    """Where and how a model is loaded; the keyword arguments of `load_scorers` (and `ImageRewardScorer.load`)."""

    device: str | torch.device | None = None  # None or "auto": CUDA, else MPS, else the CPU
    dtype: str | torch.dtype | None = None  # None or "auto": fp16 on a GPU, fp32 on the CPU
    batch_size: int = 16
    offline: bool | None = None  # None: as the environment says (IMAGEREWARD_OFFLINE, HF_HUB_OFFLINE, ...)
    progress: bool = True  # download progress bars


def load_family(
    key: str,
    outputs: Sequence[str],
    models_dir: str | Path | None = None,
    options: LoadOptions | None = None,
    **keywords: Any,
) -> Scorer:
    """One family's model with the outputs asked for, its files downloaded on first use, as the family's
    `scorer_class` (`ImageRewardScorer` for ImageReward, else the engine's `Scorer`). `options`, or the same as
    keywords (`device="cpu"`, ...): `LoadOptions`."""
    options = options if options is not None else LoadOptions(**keywords)
    from ..hub import default_models_dir, resolve_files

    family = get_family(key)
    root = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    folder = family_folder(root, family)
    labels = "/".join(SCORERS[name].label for name in outputs)
    files = family_files(key, outputs)
    resolve_files(folder, files, offline=options.offline, progress=options.progress, what=f"{labels} model files")

    def build(target: torch.device, weight_dtype: torch.dtype) -> LoadedModel:
        return family.load(folder, frozenset(outputs), target, weight_dtype)

    cls = family.scorer_class or Scorer
    scorer = load_on_device(build, labels, folder, options.device, options.dtype, options.batch_size, scorer_class=cls)
    scorer.files = {name: _files_on_disk(folder, family_files(key, (name,))) for name in outputs}
    return scorer


def _files_on_disk(folder: Path, files: Sequence[HubFile]) -> tuple[Path, ...]:
    """The files standing for `files` in `folder`: the release's own where it is there, else its conversion."""
    from ..hub import present_path

    found = []
    for file in files:
        path = folder / file.relpath
        if not path.is_file():
            path = present_path(folder, file)  # type: ignore[assignment]
        if path is not None:
            found.append(path)
    return tuple(found)


def load_on_device(
    build: Callable[[torch.device, torch.dtype], LoadedModel],
    label: str,
    source: str | Path,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    batch_size: int,
    *,
    scorer_class: type[Scorer] = Scorer,
) -> Scorer:
    """`build(device, dtype)` with the device and dtype resolved (`engine.resolve_device`/`resolve_dtype`), outside
    any inference-mode context, wrapped as `scorer_class`; the one place every model is loaded."""
    target = resolve_device(device)
    weight_dtype = resolve_dtype(dtype, target)
    # Loading must not happen under an inference-mode context (the WebUI generates under one): parameters made
    # there could not be moved between devices later.
    with torch.inference_mode(False), torch.no_grad():
        loaded = build(target, weight_dtype)
    log.info("%s loaded from %s on %s (%s)", label, source, target, str(weight_dtype).replace("torch.", ""))
    return scorer_class(loaded.model, loaded.encoder, batch_size=batch_size)


class ScorerSet:
    """Several scorers over the same images: one model per family, every output from one pass of that model."""

    def __init__(self, names: Sequence[str], scorers: Sequence[Scorer], ensemble: Ensemble | None = None) -> None:
        self.names = list(names)
        self.scorers = list(scorers)
        self.ensemble = ensemble

    @property
    def needs_prompt(self) -> bool:
        return any(s.needs_prompt for s in self.scorers)

    @property
    def batch_size(self) -> int:
        return min((s.batch_size for s in self.scorers), default=1)

    @property
    def device(self) -> torch.device:
        return self.scorers[0].device

    def truncated(self, prompts: Sequence[str], *, clean: bool = True) -> list[bool]:
        """Whether each prompt is longer than some scorer of the set reads (each model has its own limit)."""
        flags = [False] * len(prompts)
        for scorer in self.scorers:
            flags = [a or b for a, b in zip(flags, scorer.truncated(prompts, clean=clean), strict=True)]
        return flags

    def score(
        self,
        prompts: str | Sequence[str] | None,
        images: ImageInput | Sequence[ImageInput],
        **options: Unpack[ScoreOptions],
    ) -> dict[str, list[float]]:
        """`{name: [score per image]}` for every name asked for, in that order (arguments as `Scorer.score`).

        Batch by batch, each image is read and decoded once (`engine.decode_images`) and then scored by every model;
        `progress(done, total)` counts images, once per batch."""
        chosen = read_options(options)
        clean_prompts, exif_orientation, progress = (
            chosen["clean_prompts"], chosen["exif_orientation"], chosen["progress"]
        )  # fmt: skip
        items = flatten_images(images)
        if self.needs_prompt:
            prompts = expand_prompts(prompts, len(items))
        table: dict[str, list[float]] = {name: [] for scorer in self.scorers for name in scorer.outputs}
        step = self.batch_size
        for start in range(0, len(items), step):
            stop = min(start + step, len(items))
            decoded = decode_images(items[start:stop], exif_orientation, self.scorers[0].preprocess_workers)
            batch_prompts = prompts[start:stop] if isinstance(prompts, list) else prompts
            for scorer in self.scorers:
                # (decoded and turned already: not again)
                outputs = scorer.score_outputs(
                    batch_prompts, decoded, clean_prompts=clean_prompts, exif_orientation=False
                )
                for name, scores in outputs.items():
                    table[name] += scores
            if progress is not None:
                progress(stop, len(items))
        if self.ensemble is not None:
            table[ENSEMBLE] = self.ensemble.combine(table)
        return {name: table[name] for name in self.names if name in table}

    def to(self, device: str | torch.device, dtype: str | torch.dtype | None = None) -> ScorerSet:
        for scorer in self.scorers:
            scorer.to(device, dtype)
        return self


def load_scorers(
    names: Sequence[str],
    models_dir: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    batch_size: int = 16,
    offline: bool | None = None,
    progress: bool = True,
    weights: str | Mapping[str, float] | None = None,
) -> ScorerSet:
    """The scorers named (canonical names or aliases), grouped by family so each model loads once. With `ensemble`
    among them, its members (the other names, or those in `weights`, or `ensemble.DEFAULT_MEMBERS`) are loaded too,
    and the set's table has an `ensemble` column."""
    wanted = resolve_names(names)
    ensemble = make_ensemble(wanted, weights) if ENSEMBLE in wanted else None
    to_load = [n for n in wanted if n != ENSEMBLE]
    if ensemble is not None:
        to_load += [m for m in ensemble.members if m not in to_load]
        wanted += [m for m in ensemble.members if m not in wanted]
    by_family: dict[str, list[str]] = {}
    for name in to_load:
        by_family.setdefault(SCORERS[name].family, []).append(name)
    options = LoadOptions(device, dtype, batch_size, offline, progress)
    scorers = [load_family(key, outputs, models_dir, options) for key, outputs in by_family.items()]
    return ScorerSet(wanted, scorers, ensemble)
