"""Every scorer on a CUDA GPU (skipped elsewhere): fp16 close to fp32 with the same ranking, GPU tensors scored like
the same images as files, and the GPU memory given back when the WebUI's runtime switches scorers.

Full-size random releases (each family's `write_random_release`, our code) so that fp16 rounding meets the real
network depth; 4 GB for the largest, written once per module.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagereward.scorers import registry
from imagereward.scorers.specs import SCORERS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

IMAGES = sorted((Path(__file__).parent / "fixtures" / "images").glob("*.png"))
PROMPT = "a painting of an ocean with clouds and birds, day time, low depth field effect"
FAMILIES = sorted({spec.family for spec in SCORERS.values()} - {""})  # ImageReward's own: tests/test_gpu.py
#: fp16's allowed difference on each scorer's own scale: 5e-3, times 100 for PickScore (100 x a cosine).
TOLERANCE = {name: 5e-3 * (100 if name == "pickscore" else 1) for name in SCORERS}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp(request.param.replace(".", "-"))
    folder = registry.family_folder(root, registry.get_family(request.param))
    importlib.import_module(registry.FAMILY_MODULES[request.param]).write_random_release(folder, size="full", seed=0)
    return request.param, root


def _outputs(key: str) -> list[str]:
    return [name for name, spec in SCORERS.items() if spec.family == key]


def test_fp16_is_close_to_fp32_with_the_same_ranking(family: tuple[str, Path]) -> None:
    key, root = family
    tables = {}
    for dtype in ("fp32", "fp16"):
        scorer = registry.load_family(key, _outputs(key), root, device="cuda", dtype=dtype, progress=False)
        tables[dtype] = scorer.score_outputs(PROMPT, [Image.open(p) for p in IMAGES])
        del scorer
        torch.cuda.empty_cache()
    for name in _outputs(key):
        full, half = np.array(tables["fp32"][name]), np.array(tables["fp16"][name])
        assert np.max(np.abs(full - half)) < TOLERANCE[name], name
        assert list(np.argsort(-full)) == list(np.argsort(-half)), name


def test_gpu_tensors_score_like_the_files(family: tuple[str, Path]) -> None:
    key, root = family
    scorer = registry.load_family(key, _outputs(key), root, device="cuda", dtype="fp32", progress=False)
    pictures = [Image.open(p).convert("RGB") for p in IMAGES[:4]]
    tensors = [torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).cuda() for im in pictures]
    on_gpu, from_files = scorer.score_outputs(PROMPT, tensors), scorer.score_outputs(PROMPT, pictures)
    for name in _outputs(key):
        assert on_gpu[name] == pytest.approx(from_files[name], abs=4 * TOLERANCE[name]), name


def test_switching_scorers_gives_the_gpu_memory_back(family: tuple[str, Path]) -> None:
    from imagereward.webui.runtime import RuntimeSettings, ScorerRuntime

    key, root = family
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()
    import gc

    def free_memory() -> None:  # what the WebUI's torch_gc does
        gc.collect()
        torch.cuda.empty_cache()

    runtime = ScorerRuntime(free_memory=free_memory)
    first = RuntimeSettings(models_dir=root, device="cuda", scorers=(_outputs(key)[0],))
    runtime.score_table(first, [PROMPT], [Image.open(IMAGES[0])], clean_prompts=True)
    assert torch.cuda.memory_allocated() > baseline + 100 * 2**20  # the model is on the GPU
    runtime.unload()  # what choosing another scorer does first (keep_other_scorers off)
    assert torch.cuda.memory_allocated() <= baseline + 50 * 2**20
