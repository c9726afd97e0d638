"""What a collection run allocates for each batch's pixels: one float32 batch a run, on the model's device.

A new float32 batch every step (19 MB at 32 x 3 x 224 x 224) let glibc's heap grow by about one batch a step when
nothing else allocated on the host between steps (no forward pass there: 2.5 GB on 10,000 images; BENCHMARKS.md); a
model on a GPU also had its pixels converted on the host and copied over as floats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("pyarrow")

from imagereward.collection.pipeline import score_collection
from imagereward.collection.scoring import RunScorers
from imagereward.collection.sources import FileSource
from imagereward.scorers.base import PixelSpec
from tests.collection_data import write_images

SPEC = PixelSpec()


class FakeAesthetic:
    """Stands in for a loaded `engine.Scorer` (the aesthetic output: no prompt): keeps every pixels tensor it is
    given, and a copy of its values at that moment."""

    outputs = ("aesthetic",)
    needs_prompt = False

    def __init__(self, device: str = "cpu") -> None:
        self.model = torch.nn.Module()
        self.model.pixel_spec = SPEC
        self._device = torch.device(device)
        self.given: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    @property
    def device(self) -> torch.device:
        return self._device

    def score_pixels(self, prompts: Any, pixels: torch.Tensor, **options: Any) -> dict[str, list[float]]:
        self.given.append(pixels)  # (held: the memory of an earlier batch cannot be handed out again)
        if pixels.device.type == "cpu":
            self.values.append(pixels.clone())
        return {"aesthetic": [float(i) for i in range(len(pixels))]}


def reference(stack: np.ndarray) -> torch.Tensor:
    """The normalised pixels as the models' own preprocessing makes them from uint8 (B, S, S, 3)."""
    floats = torch.from_numpy(np.array(stack)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(SPEC.mean).view(3, 1, 1)
    std = torch.tensor(SPEC.std).view(3, 1, 1)
    return (floats - mean) / std


def stack(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SPEC.size, SPEC.size, 3), dtype=np.uint8)


def test_every_batch_of_a_run_is_written_into_one_float_buffer(tmp_path: Path):
    write_images(tmp_path / "images", 9)
    model = FakeAesthetic()
    summary = score_collection(FileSource([str(tmp_path / "images")]), tmp_path / "store", scorer=model, batch_size=4)
    assert summary.scored == 9
    assert [len(p) for p in model.given] == [4, 4, 1]
    # every step's pixels lie in the same memory, though the test holds each batch it was given
    assert len({p.untyped_storage().data_ptr() for p in model.given}) == 1
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.given)


def test_the_pixels_are_the_models_normalised_pixels_of_the_chosen_rows():
    run = RunScorers(FakeAesthetic())
    first, second = stack(4, 1), stack(3, 2)
    needs = frozenset({"Aesthetic"})
    scores = run.score([None] * 4, [needs] * 4, [(torch.from_numpy(first), [0, 1, 2, 3])], True)
    assert [s["Aesthetic"] for s in scores] == [0.0, 1.0, 2.0, 3.0]
    # positions 0, 2 and 3 of a batch hold images (1 failed), and only 0 and 3 need the column
    needs_of = [needs, frozenset(), frozenset(), needs]
    run.score([None] * 4, needs_of, [(torch.from_numpy(second), [0, 2, 3])], True)
    model = run.models[0][0]
    assert torch.allclose(model.values[0], reference(first), atol=1e-6)
    assert torch.allclose(model.values[1], reference(second[[0, 2]]), atol=1e-6)
    assert model.given[0].untyped_storage().data_ptr() == model.given[1].untyped_storage().data_ptr()
    assert torch.equal(torch.from_numpy(first), torch.from_numpy(stack(4, 1)))  # the batch itself is left as it was


def test_a_read_only_batch_is_converted():
    run = RunScorers(FakeAesthetic())
    pixels = stack(2, 3)
    pixels.flags.writeable = False  # (as Ray hands numpy batches over)
    run.score([None] * 2, [frozenset({"Aesthetic"})] * 2, [(pixels, [0, 1])], True)
    assert torch.allclose(run.models[0][0].values[0], reference(pixels), atol=1e-6)


def test_the_pixels_are_made_on_the_models_device():
    """The uint8 batch goes to the model's device and becomes floats there (no float batch on the host): the meta
    device stands in for a GPU."""
    run = RunScorers(FakeAesthetic("meta"))
    run.score([None] * 2, [frozenset({"Aesthetic"})] * 2, [(torch.from_numpy(stack(2, 4)), [0, 1])], True)
    (given,) = run.models[0][0].given
    assert given.device.type == "meta"
    assert given.dtype == torch.float32 and tuple(given.shape) == (2, 3, SPEC.size, SPEC.size)
