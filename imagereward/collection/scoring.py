"""The scorers of a collection run: which columns they fill, what records those columns carry, which pixel layouts
the decode workers make, and scoring a batch of prepared items into those columns.

Each image is decoded once (in `prepare`), and from that one decode each distinct pixel layout (`Geometry`) that the
run's models need is made: ImageReward, CLIP, Aesthetic and BLIP share the 224 centre crop, PickScore may place its
crop one pixel apart, HPSv2.1 letterboxes the whole image. The arrays travel to the model as uint8 (crops) or float32
(the letterbox, which the reference does not round to 8 bits), and are normalised here, so each model sees exactly
the pixels its file path would give it (`tests/test_collection_scorers.py` checks it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..scorers.specs import ENSEMBLE
from .columns import label

#: Bytes read from the start, middle and end of a large weights file for its record.
_SAMPLE = 1 << 20


@dataclass(frozen=True)
class Geometry:
    """One pixel layout a model reads (`scorers.base.PixelSpec` without the normalisation)."""

    size: int = 224
    fit: str = "crop"
    rgb_first: bool = False
    crop_rounding: str = "round"

    @classmethod
    def of(cls, spec: Any) -> Geometry:
        return cls(spec.size, spec.fit, spec.rgb_before_resize, spec.crop_rounding)

    def make(self, image: Any) -> np.ndarray:
        """(size, size, 3): uint8 for a crop (`preprocess.pil_to_uint8`), float32 for the letterbox."""
        from ..preprocess import pil_letterbox, pil_to_uint8

        if self.fit == "letterbox":
            return pil_letterbox(image, self.size).permute(1, 2, 0).contiguous().numpy()
        return pil_to_uint8(image, self.size, rgb_first=self.rgb_first, crop_rounding=self.crop_rounding)

    def blank(self) -> np.ndarray:
        """Zeros of `make`'s shape and type (a row whose image could not be used, where a batch needs one)."""
        return np.zeros((self.size, self.size, 3), np.float32 if self.fit == "letterbox" else np.uint8)


#: ImageReward's layout: what a run makes when nothing else is asked.
DEFAULT_GEOMETRIES = (Geometry(),)


def model_pixels(array: Any, spec: Any, device: Any = None, out: Any = None) -> Any:
    """A stack of `Geometry.make` arrays (B, S, S, 3) as the model's normalised (B, 3, S, S) float32 pixels on `device`
    (default: where the array is), written into `out` when given (a float32 tensor of that shape there).

    The stack travels to the device as it is (uint8 for the crops: a quarter of the float bytes) and is converted
    there, in place: no float copy of the batch is made on the host for a model on a GPU."""
    import torch

    from ..preprocess import _normalise

    source = _tensor(array)
    if device is not None:
        source = source.to(device)
    count, size = source.shape[0], source.shape[1]
    if out is None:
        out = torch.empty((count, 3, size, size), dtype=torch.float32, device=source.device)
    out.copy_(source.permute(0, 3, 1, 2))
    if source.dtype == torch.uint8:
        out.div_(255.0)
    return _normalise(out, (spec.mean, spec.std), in_place=True)


def _tensor(array: Any) -> Any:
    """A tensor view of a stack (a read-only numpy array, as Ray hands its batches over, is copied: torch only views
    writable ones)."""
    import torch

    if isinstance(array, np.ndarray) and not array.flags.writeable:
        array = array.copy()
    return torch.as_tensor(array)


# --------------------------------------------------------------------------------------------------- records


def model_id(scorer: Any) -> str:
    """ImageReward's record: a hash of the reward head (fp32 on every device), as the store's ``model`` column held
    it before each scorer had its own column (so those scores stay valid)."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(scorer.model.head.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def files_id(paths: Sequence[Path]) -> str:
    """A hash of weights files: each one's name and size, and its bytes (the first, middle and last MiB of a file
    larger than 3 MiB: enough to tell releases and fine-tunes apart without reading gigabytes on each run)."""
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted(paths, key=lambda p: p.name):
        size = os.path.getsize(path)
        digest.update(f"{path.name}\x1f{size}\x1f".encode("utf-8", "surrogateescape"))
        with open(path, "rb") as handle:
            if size <= 3 * _SAMPLE:
                digest.update(handle.read())
            else:
                for offset in (0, size // 2, size - _SAMPLE):
                    handle.seek(offset)
                    digest.update(handle.read(_SAMPLE))
    return digest.hexdigest()


def state_id(model: Any) -> str:
    """A loaded model's record when its files are unknown: names, shapes and fp16 values of its tensors."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        if tensor.is_floating_point():
            digest.update(tensor.detach().to("cpu", dtype=__import__("torch").float16).contiguous().numpy().tobytes())
    return digest.hexdigest()


def weights_id(scorer: Any, output: str) -> str:
    """The record of `output`'s scores from this loaded model (see `columns`)."""
    if output == "imagereward" and hasattr(getattr(scorer, "model", None), "head"):
        return model_id(scorer)
    files = getattr(scorer, "files", {}).get(output)
    return files_id(files) if files else state_id(scorer.model)


# --------------------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Layouts:
    """Which geometries an item needs for the columns it lacks; small and picklable, for the decode workers."""

    ensemble_members: tuple[str, ...]  # the ensemble's member columns ((): no ensemble in the run)
    models: tuple[tuple[frozenset[str], int], ...]  # per model: its columns and its geometry

    def computed(self, needs: frozenset[str]) -> frozenset[str]:
        """The columns scored for an image that needs `needs`: the ensemble brings its members."""
        return needs | frozenset(self.ensemble_members) if label(ENSEMBLE) in needs else needs

    def __call__(self, needs: frozenset[str]) -> frozenset[int]:
        wanted = self.computed(needs)
        return frozenset(g for columns, g in self.models if columns & wanted)


class RunScorers:
    """A loaded `ScorerSet` (or one `engine.Scorer`, the WebUI's ImageReward) seen as store columns.

    `lock`: held around each batch's scoring (the WebUI's queue lock: no scoring in the middle of a generation)."""

    def __init__(self, loaded: Any, lock: Any = None) -> None:
        models = list(getattr(loaded, "scorers", None) or [loaded])
        self.ensemble = getattr(loaded, "ensemble", None)
        names = list(getattr(loaded, "names", None) or models[0].outputs[:1])
        self.lock = lock
        self.names = names
        self.columns = [label(n) for n in names]
        self.models = [(model, [o for o in model.outputs if o in names]) for model in models]
        self.models = [(model, outputs) for model, outputs in self.models if outputs]
        self.geometries: list[Geometry] = []
        self.geometry_of_model: list[int] = []
        for model, _ in self.models:
            geometry = Geometry.of(model.model.pixel_spec)
            if geometry not in self.geometries:
                self.geometries.append(geometry)
            self.geometry_of_model.append(self.geometries.index(geometry))
        self.weights: dict[str, str] = {}
        for model, outputs in self.models:
            for output in outputs:
                self.weights[label(output)] = weights_id(model, output)
        if self.ensemble is not None:
            pairs = zip(self.ensemble.members, self.ensemble.weights, strict=True)
            self.weights[label(ENSEMBLE)] = ",".join(f"{m}={w:g}@{self.weights[label(m)]}" for m, w in pairs)
        members = tuple(label(m) for m in self.ensemble.members) if self.ensemble is not None else ()
        self.layouts = Layouts(
            members,
            tuple(
                (frozenset(label(o) for o in outputs), g)
                for (_, outputs), g in zip(self.models, self.geometry_of_model, strict=True)
            ),
        )
        self.computed = self.layouts.computed
        self.needs_prompt = any(model.needs_prompt for model, _ in self.models)  # (the aesthetic score reads none)
        # (geometry, device) -> the float32 batch each step's pixels are written into, made once for the run: a new
        # one every step let glibc's heap in a process whose forward pass allocates nothing on the host between steps
        # (a GPU, the benchmark's stub) grow by one batch a step, to 2.5 GB on 10,000 images (BENCHMARKS.md)
        self.buffers: dict[tuple[int, str], Any] = {}

    def score(
        self,
        prompts: Sequence[str | None],
        needs: Sequence[frozenset[str]],
        pixels: Sequence[tuple[Any, list[int]] | None],
        clean: bool,
    ) -> list[dict[str, float]]:
        """Scores of a batch of good items: their prompts, the columns each needs, and for each geometry a stack of
        arrays with the batch positions they belong to. Returns one {column: score} per item."""
        import contextlib

        out: list[dict[str, float]] = [{} for _ in prompts]
        wanted = [self.computed(n) for n in needs]
        with self.lock if self.lock is not None else contextlib.nullcontext():
            for (model, outputs), g in zip(self.models, self.geometry_of_model, strict=True):
                columns = {o: label(o) for o in outputs}
                chosen = [i for i, w in enumerate(wanted) if any(c in w for c in columns.values())]
                if not chosen:
                    continue
                stack, positions = pixels[g]  # type: ignore[misc]
                batch = self.pixels(model, g, _chosen(stack, positions, chosen))
                texts = [prompts[i] or "" for i in chosen] if model.needs_prompt else None
                table = model.score_pixels(texts, batch, clean_prompts=clean)
                for output, column in columns.items():
                    for i, value in zip(chosen, table[output], strict=True):
                        if column in wanted[i]:
                            out[i][column] = value
        if self.ensemble is not None:
            column = label(ENSEMBLE)
            for i, w in enumerate(wanted):
                if column in w:
                    values = {m: [out[i][label(m)]] for m in self.ensemble.members}
                    out[i][column] = self.ensemble.combine(values)[0]
        return out

    def pixels(self, model: Any, geometry: int, stack: Any) -> Any:
        """`model`'s normalised pixels for a stack of `geometry`'s arrays, in the run's buffer for that geometry on the
        model's device (grown when a batch is larger; a view of its first rows when smaller)."""
        import torch

        device = getattr(model, "device", None)
        count, size = len(stack), stack.shape[1]
        key = (geometry, str(device))
        buffer = self.buffers.get(key)
        if buffer is None or buffer.shape[0] < count or buffer.shape[2] != size:
            buffer = torch.empty((count, 3, size, size), dtype=torch.float32, device=device)
            self.buffers[key] = buffer
        return model_pixels(stack, model.model.pixel_spec, device, out=buffer[:count])


def _chosen(stack: Any, positions: list[int], chosen: list[int]) -> Any:
    """The rows of `stack` (one per batch position in `positions`) that belong to the `chosen` positions: the stack
    itself when that is all of them (no copy), else a copy of those rows."""
    if chosen == positions:
        return stack
    import torch

    where = {p: row for row, p in enumerate(positions)}
    return _tensor(stack)[torch.tensor([where[i] for i in chosen], dtype=torch.int64)]


def load_run_scorers(
    names: Sequence[str],
    models_dir: str | None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 16,
    offline: bool | None = None,
    progress: bool = True,
    weights: str | None = None,
) -> RunScorers:
    from ..scorers.registry import load_scorers

    loaded = load_scorers(
        names, models_dir, device=device, dtype=dtype, batch_size=batch_size, offline=offline, progress=progress,
        weights=weights,
    )  # fmt: skip
    return RunScorers(loaded)
