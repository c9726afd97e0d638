"""A model family for tests of the shared machinery (registry, engine, ensemble, command line): two outputs from
one small network, one of which reads the prompt. Not a real scorer."""

from __future__ import annotations

from pathlib import Path

import torch

from imagereward.hub import HubFile
from imagereward.scorers.base import LoadedModel, ModelFamily, PixelSpec, ScoringModel, TokenBatch
from imagereward.weights import assign_weights, read_safetensors

WEIGHTS = "fake.safetensors"
LOADS: list[frozenset[str]] = []  # every load, with the outputs asked for
FORWARDS: list[int] = []  # batch size of every forward pass


class LengthEncoder:
    """Token ids = character codes (at most 16); enough to make the prompt matter."""

    max_length = 16

    def __call__(self, prompts):
        rows = [[ord(c) % 97 + 1 for c in p[: self.max_length]] or [1] for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return TokenBatch(ids, mask, tuple(len(p) > self.max_length for p in prompts))


class PairModel(ScoringModel):
    pixel_spec = PixelSpec(size=32)

    def __init__(self) -> None:
        super().__init__()
        self.colour = torch.nn.Linear(3, 1)
        self.words = torch.nn.Embedding(98, 1)

    def forward(self, pixels, input_ids, attention_mask):
        FORWARDS.append(len(pixels))
        image = self.colour(pixels.float().mean(dim=(2, 3))).squeeze(-1)
        result = {}
        if "fa" in self.outputs:
            words = (self.words(input_ids).squeeze(-1) * attention_mask).sum(-1) / attention_mask.sum(-1)
            result["fa"] = image + words
        if "fb" in self.outputs:
            result["fb"] = 10.0 + 2.0 * image
        return result


def write_release(folder: Path, seed: int = 0) -> None:
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "colour.weight": torch.randn(1, 3, generator=generator),
            "colour.bias": torch.zeros(1),
            "words.weight": torch.randn(98, 1, generator=generator) * 0.1,
        },
        str(folder / WEIGHTS),
    )


def load(folder: Path, outputs: frozenset[str], device: torch.device, dtype: torch.dtype) -> LoadedModel:
    LOADS.append(outputs)
    with torch.device("meta"):
        model = PairModel()
    tensors, _ = read_safetensors(folder / WEIGHTS)
    assign_weights(model, {k: v.to(device, dtype) for k, v in tensors.items()})
    model.outputs = tuple(name for name in ("fa", "fb") if name in outputs)
    model.needs_prompt = "fa" in outputs
    return LoadedModel(model.eval(), LengthEncoder() if model.needs_prompt else None)


FAMILY = ModelFamily(
    key="fake-pair",
    outputs=("fa", "fb"),
    files=(HubFile((), WEIGHTS, WEIGHTS, url="https://example.invalid/fake.safetensors"),),
    load=load,
)
