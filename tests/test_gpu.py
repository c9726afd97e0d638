"""Checks that need a CUDA GPU (skipped elsewhere): fp16 accuracy, the GPU tensor path, offload memory.

Run on a GPU machine with `bash bench/gpu_check.sh` (builds a full-size random checkpoint first), or point
`IMAGEREWARD_FULL_CHECKPOINT_DIR` at a folder with a full-size ImageReward.pt + med_config.json.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagereward.scorer import ImageRewardScorer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

IMAGES = sorted((Path(__file__).parent / "fixtures" / "images").glob("*.png"))
VOCAB = Path(__file__).parent / "fixtures" / "bert-base-uncased"
PROMPT = "a painting of an ocean with clouds and birds, day time, low depth field effect"


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    existing = os.environ.get("IMAGEREWARD_FULL_CHECKPOINT_DIR")
    if existing:
        return Path(existing)
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from make_full_checkpoint import write_full

    return write_full(tmp_path_factory.mktemp("full"))


def load(folder: Path, **kwargs) -> ImageRewardScorer:
    return ImageRewardScorer.from_files(folder / "ImageReward.pt", folder / "med_config.json", VOCAB, **kwargs)


def test_fp16_default_is_close_to_fp32_with_the_same_order(full_dir: Path) -> None:
    fp32 = load(full_dir, device="cuda", dtype="fp32")
    reference = fp32.score(PROMPT, IMAGES)
    del fp32
    fp16 = load(full_dir, device="cuda")
    assert fp16.dtype == torch.float16 and fp16.model.head.layers[0].weight.dtype == torch.float32
    ours = fp16.score(PROMPT, IMAGES)
    assert np.max(np.abs(np.subtract(ours, reference))) < 5e-3
    assert list(np.argsort(ours)) == list(np.argsort(reference))


def test_gpu_tensors_score_like_pil(full_dir: Path) -> None:
    scorer = load(full_dir, device="cuda", dtype="fp32")
    pil = [Image.open(p).convert("RGB") for p in IMAGES[:4]]
    tensors = [torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).cuda() for im in pil]
    assert scorer.score(PROMPT, tensors) == pytest.approx(scorer.score(PROMPT, pil), abs=0.02)


def test_offload_gives_the_memory_back(full_dir: Path) -> None:
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    scorer = load(full_dir, device="cuda")
    scorer.score(PROMPT, IMAGES[:2])
    assert torch.cuda.memory_allocated() - before > 800 * 2**20  # ~1.06 GB of fp16 weights (head in fp32)
    scorer.to("cpu")
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() - before < 50 * 2**20
    scorer.to("cuda")
    assert scorer.score(PROMPT, IMAGES[:2])
