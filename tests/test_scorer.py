"""The scoring object: batching, prompts, inputs, devices and dtypes, out-of-memory fallback, thread safety."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagereward.engine import ScoringOutOfMemoryError
from imagereward.errors import ImageInputError, PromptError
from imagereward.scorer import ImageRewardScorer

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
        assert sizes[:3] == [6, 3, 1]  # halved until it fits
        assert scorer.batch_size == 6  # for that call only (issue 20.6): the library's setting is not changed
        sizes.clear()
        scorer.score(PROMPT, IMAGES[:6])
        assert sizes[0] == 6  # the next call tries the full batch again
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


def test_webui_prompt_syntax_is_cleaned_by_default_as_in_the_command_line(scorer: ImageRewardScorer) -> None:
    written = "(a cat:1.3) on a sofa <lora:style:0.8>"
    default = scorer.score(written, IMAGES[:2])
    assert default == pytest.approx(scorer.score(written, IMAGES[:2], clean_prompts=True), abs=1e-6)
    assert default == pytest.approx(scorer.score("a cat on a sofa", IMAGES[:2], clean_prompts=False), abs=1e-6)
    literal = scorer.score(written, IMAGES[:2], clean_prompts=False)  # the reference's way
    assert np.max(np.abs(np.subtract(default, literal))) > 1e-4
    assert scorer.truncated(["<lora:a_very_long_lora_name_that_takes_many_word_pieces_indeed:0.7> cat"]) == [False]


def test_a_16_bit_gradient_scores_like_its_8_bit_copy(scorer: ImageRewardScorer, tmp_path: Path) -> None:
    gradient = np.linspace(0, 65535, 320 * 240).reshape(240, 320).astype(np.uint16)
    path = tmp_path / "gradient16.png"
    Image.fromarray(gradient).save(path)
    copy8 = Image.fromarray(np.rint(gradient / 257).astype(np.uint8), "L")
    expected = scorer.score(PROMPT, [copy8])[0]
    clipped = scorer.score(PROMPT, [Image.fromarray(gradient).convert("RGB")])[0]  # what the reference scores
    from_file, from_pil, from_array = scorer.score(PROMPT, [path, Image.fromarray(gradient), gradient])
    assert from_file == pytest.approx(expected, abs=1e-5)
    assert from_pil == pytest.approx(expected, abs=1e-5)
    assert from_array == pytest.approx(expected, abs=0.02)  # the tensor path: rounding only
    assert abs(clipped - expected) > 0.05


def test_exif_orientation_is_applied_by_default(scorer: ImageRewardScorer, tmp_path: Path) -> None:
    upright = Image.open(IMAGES[0].parent / "rgb_wide.png").convert("RGB").resize((160, 96))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view": undoes ROTATE_90 (counter-clockwise)
    path = tmp_path / "phone.png"
    stored.save(path, exif=exif.tobytes())
    expected_upright = scorer.score(PROMPT, [upright])[0]
    expected_stored = scorer.score(PROMPT, [stored])[0]
    assert abs(expected_upright - expected_stored) > 1e-3
    assert scorer.score(PROMPT, path) == pytest.approx([expected_upright], abs=1e-5)
    assert scorer.score(PROMPT, path, exif_orientation=False) == pytest.approx([expected_stored], abs=1e-5)


def test_in_memory_images_with_alpha_score_as_their_files(scorer: ImageRewardScorer) -> None:
    for name in ("rgba_alpha.png", "la.png"):
        image = Image.open(IMAGES[0].parent / name)
        image.load()
        array = np.asarray(image)
        from_file, from_array = scorer.score(PROMPT, [image, array])
        assert from_array == pytest.approx(from_file, abs=5e-3)  # measured 2.3e-4 / 8.9e-5; alpha dropped: 0.28 / 0.21
    transparent = np.zeros((300, 200, 4), np.uint8)
    transparent[..., :3] = np.asarray(Image.open(IMAGES[0]).convert("RGB").resize((200, 300)))
    tensor = torch.from_numpy(transparent.copy()).permute(2, 0, 1)
    from_file = scorer.score(PROMPT, [Image.fromarray(transparent, "RGBA")])[0]
    assert scorer.score(PROMPT, [transparent, tensor]) == pytest.approx([from_file, from_file], abs=1e-5)


def test_out_of_range_floats_are_refused_with_what_to_do(scorer: ImageRewardScorer) -> None:
    unit = torch.from_numpy(np.asarray(Image.open(IMAGES[0]).convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    with pytest.raises(ImageInputError, match=r"0\.\.255: pass x / 255"):
        scorer.score(PROMPT, unit * 255)
    with pytest.raises(ImageInputError, match=r"-1\.\.1 \(what a VAE decoder returns\): pass \(x \+ 1\) / 2"):
        scorer.score(PROMPT, unit * 2 - 1)
    assert scorer.score(PROMPT, ((unit * 2 - 1) + 1) / 2) == pytest.approx(scorer.score(PROMPT, unit), abs=1e-5)


def test_shape_errors_name_the_shape_that_was_given(scorer: ImageRewardScorer) -> None:
    with pytest.raises(ImageInputError, match=r"tensor of shape \(512, 512, 3\); this looks channels-last"):
        scorer.score(PROMPT, torch.zeros(512, 512, 3))
    with pytest.raises(ImageInputError, match=r"numpy array .* got shape \(3, 64, 64\); this looks channels-first"):
        scorer.score(PROMPT, np.zeros((3, 64, 64), np.uint8))
    with pytest.raises(ImageInputError, match=r"batch of shape \(2, 64, 64, 3\)"):
        scorer.score(PROMPT, torch.zeros(2, 64, 64, 3))
    with pytest.raises(ImageInputError, match=r"batch of shape \(2, 64, 64, 3\)"):
        scorer.score(PROMPT, [torch.zeros(2, 64, 64, 3)])


def test_auto_device_prefers_cuda_then_apple_gpu_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagereward.engine import resolve_device, resolve_dtype

    def machine(cuda: bool, mps: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    machine(cuda=False, mps=True)
    device = resolve_device("auto")
    assert device == torch.device("mps") and resolve_device(None) == device
    assert resolve_dtype("auto", device) == torch.float16 and resolve_dtype(None, device) == torch.float16
    assert resolve_dtype("fp32", device) == torch.float32
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit choice is kept
    machine(cuda=True, mps=True)
    assert resolve_device("auto") == torch.device("cuda")
    machine(cuda=False, mps=False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.delattr(torch.backends, "mps")  # a torch build without the MPS backend
    assert resolve_device("auto") == torch.device("cpu")


def test_a_prompt_with_a_lone_surrogate_is_scored_not_a_traceback(scorer) -> None:
    from PIL import Image

    image = Image.new("RGB", (32, 32), (10, 200, 30))
    odd = scorer.score("a \ud800 cat", [image])[0]
    assert odd == pytest.approx(scorer.score("a ? cat", [image])[0], abs=1e-6)


def test_a_misspelt_option_is_a_type_error_as_with_a_written_out_signature(scorer) -> None:
    from PIL import Image

    image = Image.new("RGB", (32, 32), (10, 20, 30))
    with pytest.raises(TypeError, match="clean_prompt"):
        scorer.score("a red car", [image], clean_prompt=False)
    plain = scorer.score("a (red:1.4) car", [image])
    assert scorer.score("a (red:1.4) car", [image], clean_prompts=True) == plain  # the default, spelt out
