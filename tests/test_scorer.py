"""The scoring object: batching, prompts, inputs, devices and dtypes, out-of-memory fallback, thread safety."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagereward.errors import ImageInputError, PromptError
from imagereward.scorer import ImageRewardScorer, ScoringOutOfMemoryError

IMAGES = sorted((Path(__file__).parent / "fixtures" / "images").glob("*.png"))
PROMPT = "a painting of an ocean with clouds and birds, day time, low depth field effect"


def test_scores_spread_and_do_not_depend_on_batch_size(scorer: ImageRewardScorer) -> None:
    one_by_one = []
    scorer.batch_size = 1
    for path in IMAGES:
        one_by_one += scorer.score(PROMPT, [path])
    scorer.batch_size = 3
    batched = scorer.score(PROMPT, IMAGES)
    scorer.batch_size = 4
    assert np.allclose(batched, one_by_one, atol=1e-5)
    assert np.ptp(batched) > 0.05  # random weights still tell the images apart


def test_one_prompt_or_one_per_image(scorer: ImageRewardScorer) -> None:
    images = IMAGES[:3]
    assert scorer.score(PROMPT, images) == pytest.approx(scorer.score([PROMPT] * 3, images), abs=1e-6)
    mixed = scorer.score(["a cat", PROMPT, "a dog"], images)
    assert mixed[1] == pytest.approx(scorer.score(PROMPT, images[1:2])[0], abs=1e-5)
    assert mixed[0] == pytest.approx(scorer.score("a cat", images[:1])[0], abs=1e-5)


def test_padding_does_not_change_a_score(scorer: ImageRewardScorer) -> None:
    """A short prompt batched with a long one is padded; its score must equal the unpadded one."""
    short = scorer.score("cat", IMAGES[:1])[0]
    padded = scorer.score(["cat", "a very detailed painting of a cat on a red sofa, oil on canvas"], IMAGES[:1] * 2)
    assert padded[0] == pytest.approx(short, abs=1e-5)


def test_inputs_of_every_kind(scorer: ImageRewardScorer) -> None:
    path = IMAGES[0]
    pil = Image.open(path).convert("RGB")
    array = np.asarray(pil)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    by_path, by_pil = scorer.score("x", [path, pil])
    assert by_path == pytest.approx(by_pil, abs=1e-6)
    by_tensor = scorer.score("x", tensor)[0]
    by_batch = scorer.score("x", torch.stack([tensor, tensor]).float() / 255)
    assert by_batch == pytest.approx([by_tensor, by_tensor], abs=1e-5)
    assert scorer.score("x", str(path)) == pytest.approx([by_path], abs=1e-6)
    assert scorer.score("x", [array]) == pytest.approx([by_tensor], abs=1e-6)  # numpy HWC, as PIL gives it
    # the tensor path's resize differs from PIL's by rounding only; on scores that stays small
    assert by_tensor == pytest.approx(by_pil, abs=0.02)


def test_empty_and_odd_prompts_score(scorer: ImageRewardScorer) -> None:
    scores = scorer.score(["", "   ", "日本の猫 🐱", "(masterpiece:1.2) <lora:x:1> cat " * 20], IMAGES[:1] * 4)
    assert all(np.isfinite(scores))


def test_prompt_and_input_errors(scorer: ImageRewardScorer) -> None:
    with pytest.raises(PromptError, match="2 prompts for 3 images"):
        scorer.score(["a", "b"], IMAGES[:3])
    with pytest.raises(PromptError, match="string or a list of strings"):
        scorer.score([1, 2], IMAGES[:2])
    with pytest.raises(ImageInputError, match="None"):
        scorer.score("a", [IMAGES[0], None])
    assert scorer.score("a", []) == []


def test_truncation_is_reported(scorer: ImageRewardScorer) -> None:
    long = "a cat sitting on a red sofa in a sunny room " * 5
    assert scorer.truncated(["a cat", long]) == [False, True]
    assert scorer.truncated(["<lora:very_long_name_of_a_lora_file:0.7> (a cat:1.3)"], clean=True) == [False]


def test_out_of_memory_halves_the_batch_and_keeps_results(scorer: ImageRewardScorer, monkeypatch) -> None:
    reference = scorer.score(PROMPT, IMAGES[:6])
    forward = scorer._forward
    sizes = []

    def limited(pixels, input_ids, mask):
        sizes.append(len(pixels))
        if len(pixels) > 2:  # simulate the allocator failing above two images
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(pixels, input_ids, mask)

    monkeypatch.setattr(scorer, "_forward", limited)
    scorer.batch_size = 6
    try:
        assert scorer.score(PROMPT, IMAGES[:6]) == pytest.approx(reference, abs=1e-5)
        assert sizes[:3] == [6, 3, 1] and scorer.batch_size == 1  # halved until it fits
    finally:
        scorer.batch_size = 4


def test_out_of_memory_at_one_image_is_a_clear_error(scorer: ImageRewardScorer, monkeypatch) -> None:
    def always(*args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes. out of memory")

    monkeypatch.setattr(scorer, "_forward", always)
    try:
        with pytest.raises(ScoringOutOfMemoryError, match="not enough memory"):
            scorer.score(PROMPT, IMAGES[:2])
    finally:
        scorer.batch_size = 4


def test_other_errors_are_not_mistaken_for_memory(scorer: ImageRewardScorer, monkeypatch) -> None:
    monkeypatch.setattr(scorer, "_forward", lambda *a: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        scorer.score(PROMPT, IMAGES[:2])
    assert scorer.batch_size == 4


def test_threads_share_one_scorer(scorer: ImageRewardScorer) -> None:
    expected = scorer.score(PROMPT, IMAGES[:4])
    results: list[list[float]] = []
    threads = [threading.Thread(target=lambda: results.append(scorer.score(PROMPT, IMAGES[:4]))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(r == pytest.approx(expected, abs=1e-6) for r in results)


def test_half_precision_stays_close_and_head_stays_fp32(model_dir: Path) -> None:
    fp32 = ImageRewardScorer.load(model_dir, device="cpu", dtype="fp32", offline=True, progress=False)
    bf16 = ImageRewardScorer.load(model_dir, device="cpu", dtype="bf16", offline=True, progress=False)
    assert bf16.dtype == torch.bfloat16 and bf16.model.head.layers[0].weight.dtype == torch.float32
    a, b = fp32.score(PROMPT, IMAGES), bf16.score(PROMPT, IMAGES)
    assert np.max(np.abs(np.subtract(a, b))) < 0.1


def test_loading_under_inference_mode_and_moving_devices(model_dir: Path) -> None:
    """The WebUI (Forge) generates under torch.inference_mode(); a model loaded there must still move later."""
    with torch.inference_mode():
        loaded = ImageRewardScorer.load(model_dir, device="cpu", offline=True, progress=False)
    before = loaded.score("a", IMAGES[:2])
    loaded.to("cpu", "bf16").to("cpu", "fp32")
    assert loaded.dtype == torch.float32
    assert loaded.score("a", IMAGES[:2]) == pytest.approx(before, abs=0.05)


def test_unknown_dtype(model_dir: Path) -> None:
    from imagereward.errors import ImageRewardError

    with pytest.raises(ImageRewardError, match="unknown dtype"):
        ImageRewardScorer.load(model_dir, device="cpu", dtype="int8", offline=True, progress=False)
