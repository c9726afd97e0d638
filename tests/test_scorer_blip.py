"""The BLIP score (`blip`, family `blip-large`): parity with the reference package's `ImageReward.load_score("BLIP")`.

Always: committed golden scores produced by the reference (`tests/reference/blip_worker.py`) for a tiny random
checkpoint in the release's format, also written by the reference's own classes (`tests/fixtures/scorers/blip/`);
loading through the registry with the files placed; what the loader reads, ignores and refuses. When
`IMAGEREWARD_BLIP_REFERENCE_PYTHON` names an interpreter that has the reference installed: live comparisons, the
full-size model included (`IMAGEREWARD_BLIP_FULL_CHECKPOINT_DIR` may name an existing full-size folder written by
the worker, to skip writing a new one).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from imagereward.config import TextConfig
from imagereward.errors import CheckpointError, ImageRewardError, ModelFileMissingError
from imagereward.model import TextEncoder
from imagereward.scorers import blip_score
from imagereward.scorers.registry import FAMILY_MODULES, load_scorers
from imagereward.scorers.specs import SCORERS
from imagereward.text import PromptTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
BLIP_FIXTURES = FIXTURES / "scorers" / "blip"
IMAGES = FIXTURES / "images"
VOCAB_DIR = FIXTURES / "bert-base-uncased"
WORKER = Path(__file__).parent / "reference" / "blip_worker.py"
REFERENCE_PYTHON = os.environ.get("IMAGEREWARD_BLIP_REFERENCE_PYTHON")
needs_reference = pytest.mark.skipif(not REFERENCE_PYTHON, reason="IMAGEREWARD_BLIP_REFERENCE_PYTHON is not set")

#: Entries of the tiny fixture the score reads: 18 + 2 * 12 ViT, 4 embeddings + 2 * 12 BERT, 4 projections.
USED_TENSORS = 70


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def place_files(models_dir: Path, source: Path = BLIP_FIXTURES, *, vocab: bool = True, link: bool = False) -> Path:
    """The family's folder as a download leaves it: model_large.pth, med_config.json, bert-base-uncased/vocab.txt
    (the checkpoint copied, or linked when it is large)."""
    folder = models_dir / blip_score.FAMILY.key
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "med_config.json", folder / "med_config.json")
    if link:
        (folder / blip_score.CHECKPOINT_NAME).symlink_to((source / blip_score.CHECKPOINT_NAME).resolve())
    else:
        shutil.copy(source / blip_score.CHECKPOINT_NAME, folder / blip_score.CHECKPOINT_NAME)
    if vocab:
        (folder / "bert-base-uncased").mkdir(exist_ok=True)
        shutil.copy(VOCAB_DIR / "vocab.txt", folder / "bert-base-uncased" / "vocab.txt")
    return folder


def release_state(path: Path = BLIP_FIXTURES / blip_score.CHECKPOINT_NAME) -> dict[str, torch.Tensor]:
    return dict(torch.load(path, map_location="cpu", weights_only=True)["model"])


def with_state(models_dir: Path, state: dict[str, torch.Tensor]) -> Path:
    folder = place_files(models_dir)
    torch.save({"model": state}, folder / blip_score.CHECKPOINT_NAME)
    return folder


def score_items(scorers, items: list[dict]) -> list[float]:
    return scorers.score([i["prompt"] for i in items], [IMAGES / i["image"] for i in items], clean_prompts=False)[
        "blip"
    ]


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads((BLIP_FIXTURES / "golden.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- goldens


def test_the_family_and_its_scorer_are_registered() -> None:
    assert FAMILY_MODULES["blip-large"] == "imagereward.scorers.blip_score"
    assert blip_score.FAMILY.key == SCORERS["blip"].family == "blip-large"
    assert blip_score.FAMILY.outputs == ("blip",)
    assert blip_score.CHECKPOINT_FILE.url == (
        "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/model_large.pth"
    )


def test_golden_fixture_is_the_one_the_scores_came_from(golden: dict) -> None:
    assert sha256(BLIP_FIXTURES / blip_score.CHECKPOINT_NAME) == golden["checkpoint_sha256"]
    assert sha256(BLIP_FIXTURES / "med_config.json") == golden["med_config_sha256"]
    assert golden["tensors_loaded_and_checked"] == 91  # the reference model's every tensor came from the file


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_scores_equal_the_reference_goldens(golden: dict, tmp_path: Path, batch_size: int) -> None:
    place_files(tmp_path)
    scorers = load_scorers(["blip"], tmp_path, device="cpu", offline=True, progress=False, batch_size=batch_size)
    items = golden["items"]
    ours = score_items(scorers, items)
    expected = [i["score"] for i in items]
    assert len(items) == 40 and len({i["image"] for i in items}) == 8 and len({i["prompt"] for i in items}) == 5
    assert max(len(t["input_ids"]) for t in golden["tokens"]) == 35 and np.ptp(expected) > 0.05
    assert np.max(np.abs(np.subtract(ours, expected))) < 1e-6


def test_ranks_equal_the_reference_inference_rank(golden: dict, tmp_path: Path) -> None:
    place_files(tmp_path)
    scorers = load_scorers(["blip"], tmp_path, device="cpu", offline=True, progress=False)
    for group in golden["inference_rank"]:
        items = [golden["items"][i] for i in group["indices"]]
        ours = score_items(scorers, items)
        assert np.max(np.abs(np.subtract(ours, group["scores"]))) < 1e-6
        ranks = (np.argsort(np.argsort(-np.asarray(ours))) + 1).tolist()
        assert ranks == group["rank"]


def test_the_prompt_encoder_is_the_references_tokenizer(golden: dict, tmp_path: Path) -> None:
    """BLIPScore tokenizes with BLIP's tokenizer (padding and truncation to 35, [CLS] first, no [ENC]): the same as
    ImageReward's, so the family uses `PromptTokenizer`; checked on the score's prompts and ImageReward's 21 awkward
    ones (the same reference function, `init_tokenizer`, made both goldens)."""
    loaded = blip_score.load(place_files(tmp_path), frozenset({"blip"}), torch.device("cpu"), torch.float32)
    assert isinstance(loaded.encoder, PromptTokenizer) and loaded.encoder.max_length == 35
    awkward = json.loads((FIXTURES / "golden_tokens.json").read_text(encoding="utf-8"))["items"]
    for item in [*golden["tokens"], *awkward]:
        encoded = loaded.encoder([item["prompt"]])
        length = sum(item["attention_mask"])
        assert encoded.input_ids[0][encoded.attention_mask[0].bool()].tolist() == item["input_ids"][:length]
        assert encoded.input_ids[0, 0].item() == 101  # [CLS], as BLIP's text mode reads it


# ---------------------------------------------------------------------------------------------- loading


def test_only_the_used_tensors_are_converted_and_the_conversion_gives_the_same_scores(
    golden: dict, tmp_path: Path
) -> None:
    folder = place_files(tmp_path)
    items = golden["items"][:16]
    first = score_items(load_scorers(["blip"], tmp_path, device="cpu", offline=True, progress=False), items)
    cache = folder / blip_score.SAFETENSORS_NAME
    from safetensors import safe_open

    with safe_open(str(cache), framework="pt") as handle:
        keys = [k for k in handle.keys() if not k.startswith("__")]  # noqa: SIM118
    assert len(keys) == USED_TENSORS and not any("crossattention" in k or "position_ids" in k for k in keys)
    state, read = blip_score.load_state(folder, TextConfig.from_file(folder / "med_config.json"))
    assert read == cache and len(state) == USED_TENSORS
    (folder / blip_score.CHECKPOINT_NAME).unlink()  # the conversion alone stands for the release
    second = score_items(load_scorers(["blip"], tmp_path, device="cpu", offline=True, progress=False), items)
    assert second == pytest.approx(first, abs=1e-7)
    assert second == pytest.approx([i["score"] for i in items], abs=1e-6)


def test_the_releases_training_entries_are_read_past(golden: dict, tmp_path: Path) -> None:
    """The release also holds momentum encoders, a decoder, queues...: a loader reading them would change scores."""
    state = release_state()
    for key in [k for k in state if k.startswith(("visual_encoder.", "text_encoder.", "vision_proj.", "text_proj."))]:
        head, _, rest = key.partition(".")
        twin = {"text_encoder": ["text_encoder_m", "text_decoder.bert"]}.get(head, [f"{head}_m"])
        for name in twin:
            state[f"{name}.{rest}"] = -state[key] if state[key].is_floating_point() else state[key]
    state.update(
        {
            "itm_head.weight": torch.randn(2, 4),
            "itm_head.bias": torch.randn(2),
            "text_decoder.cls.predictions.bias": torch.randn(30524),
            "image_queue": torch.randn(256, 8),
            "text_queue": torch.randn(256, 8),
            "queue_ptr": torch.zeros(1, dtype=torch.long),
            "temp": torch.tensor(0.07),
        }
    )
    with_state(tmp_path, state)
    items = golden["items"][::5]
    ours = score_items(load_scorers(["blip"], tmp_path, device="cpu", offline=True, progress=False), items)
    assert np.max(np.abs(np.subtract(ours, [i["score"] for i in items]))) < 1e-6


def test_our_random_release_has_the_references_layout_and_loads(tmp_path: Path) -> None:
    reference = release_state()
    vision = blip_score.TINY_VIT
    text = TextConfig.from_med_config(blip_score.TINY_MED_CONFIG)
    layout = blip_score.release_layout(vision, text, training=False)
    assert {k: shape for k, (shape, _) in layout.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    full = blip_score.release_layout(blip_score.VIT_L16, TextConfig.from_med_config(blip_score.RELEASE_MED_CONFIG))
    assert len(full) == 1560 and sum(int(np.prod(s)) for s, _ in full.values()) == 1_087_042_940

    folder = tmp_path / "blip-large"
    blip_score.write_random_release(folder, size="tiny", seed=3)
    assert len(release_state(folder / blip_score.CHECKPOINT_NAME)) == len(blip_score.release_layout(vision, text))
    loaded = blip_score.FAMILY.load(folder, frozenset({"blip"}), torch.device("cpu"), torch.float32)
    from imagereward.engine import Scorer

    scores = Scorer(loaded.model, loaded.encoder).score("a red car, 4k", sorted(IMAGES.iterdir()))
    assert len(scores) == 8 and all(-1.0 <= s <= 1.0 for s in scores) and np.ptp(scores) > 0


def test_reduced_precision_keeps_the_projections_in_fp32(golden: dict, tmp_path: Path) -> None:
    place_files(tmp_path)
    scorers = load_scorers(["blip"], tmp_path, device="cpu", dtype="bf16", offline=True, progress=False)
    model = scorers.scorers[0].model
    assert model.vision.patch_embed.weight.dtype == torch.bfloat16 and model.text_proj.weight.dtype == torch.float32
    items = golden["items"][:8]
    assert score_items(scorers, items) == pytest.approx([i["score"] for i in items], abs=0.02)


def test_a_text_encoder_with_cross_attention_still_needs_the_image() -> None:
    config = TextConfig(vocab_size=10, hidden_size=4, num_layers=1, num_heads=2, intermediate_size=8)
    ids, mask = torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long)
    assert TextEncoder(config, image_width=None)(ids, mask).shape == (1, 2, 4)
    with pytest.raises(ValueError, match="image tokens"):
        TextEncoder(config, image_width=8)(ids, mask)


# ---------------------------------------------------------------------------------------------- bad files


def test_an_entry_no_release_has_is_refused_by_name(tmp_path: Path) -> None:
    state = release_state()
    state["visual_encoder.extra_adapter.weight"] = torch.zeros(3)
    with_state(tmp_path, state)
    with pytest.raises(CheckpointError, match=r"not Salesforce's BLIP model_large\.pth.*extra_adapter"):
        load_scorers(["blip"], tmp_path, device="cpu", offline=True, progress=False)
    assert not (tmp_path / "blip-large" / blip_score.SAFETENSORS_NAME).exists()  # a refused file is never converted


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("visual_encoder.blocks.1.mlp.fc2.weight"), r"missing 1 of .*vision\.blocks\.1\.mlp\.fc2"),
        (lambda s: s.pop("text_proj.bias"), r"missing 1 of .*text_proj\.bias"),
        (lambda s: s.update({"text_proj.weight": torch.zeros(256, 5)}), r"wrong shapes: text_proj\.weight"),
        (lambda s: s.update({"vision_proj.bias": torch.zeros(256, dtype=torch.long)}), "not floating point"),
        (lambda s: s.update({"visual_encoder.blocks.7.norm1.weight": torch.ones(64)}), r"numbered \[0, 1, 7\]"),
        (lambda s: s.pop("text_encoder.encoder.layer.1.output.dense.weight"), r"missing 1 of .*layers\.1\.ffn_out"),
    ],
)
def test_an_incomplete_or_misshapen_checkpoint_is_refused(tmp_path: Path, change, message: str) -> None:
    state = release_state()
    change(state)
    with_state(tmp_path, state)
    with pytest.raises(CheckpointError, match=message):
        load_scorers(["blip"], tmp_path, device="cpu", offline=True, progress=False)


def test_a_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    folder = place_files(tmp_path)
    torch.save(release_state(), folder / blip_score.CHECKPOINT_NAME)  # a bare state dict, not {"model": ...}
    with pytest.raises(CheckpointError, match=r"holds \{'model': state dict\}, this one has the entries"):
        load_scorers(["blip"], tmp_path, device="cpu", offline=True, progress=False)
    shutil.copy(FIXTURES / "tiny" / "ImageReward.pt", folder / blip_score.CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match=r"model_large\.pth"):
        load_scorers(["blip"], tmp_path, device="cpu", offline=True, progress=False)


def test_a_corrupt_checkpoint_gets_a_message_not_a_traceback(tmp_path: Path) -> None:
    folder = place_files(tmp_path)
    path = folder / blip_score.CHECKPOINT_NAME
    path.write_bytes(b"<html>Access denied</html>")  # what a proxy may save instead
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_scorers(["blip"], tmp_path, device="cpu", offline=True, progress=False)

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled",))

    torch.save({"model": {"x": Evil()}}, path)
    with pytest.raises(CheckpointError, match="refused for safety"):
        load_scorers(["blip"], tmp_path, device="cpu", offline=True, progress=False)


def test_a_truncated_download_counts_as_missing_and_names_the_url(tmp_path: Path) -> None:
    folder = place_files(tmp_path)
    data = (BLIP_FIXTURES / blip_score.CHECKPOINT_NAME).read_bytes()
    (folder / blip_score.CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileMissingError) as caught:
        load_scorers(["blip"], tmp_path, device="cpu", offline=True, progress=False)
    message = str(caught.value)
    assert "truncated" in message and blip_score.CHECKPOINT_URL in message and "model_large.safetensors" in message


def test_missing_files_are_named_with_where_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(ModelFileMissingError) as caught:
        load_scorers(["blip"], tmp_path, device="cpu", offline=True, progress=False)
    message = str(caught.value)
    for text in (
        str((tmp_path / "blip-large" / "model_large.pth").resolve()),
        blip_score.CHECKPOINT_URL,
        "https://huggingface.co/THUDM/ImageReward/resolve/main/med_config.json",
        "bert-base-uncased/vocab.txt",
    ):
        assert text in message
    folder = tmp_path / "direct"
    shutil.copytree(BLIP_FIXTURES, folder)  # FAMILY.load without the registry's check: still a message
    with pytest.raises(ModelFileMissingError, match=r"vocab\.txt"):
        blip_score.load(folder, frozenset({"blip"}), torch.device("cpu"), torch.float32)
    with pytest.raises(ImageRewardError, match="computes blip, not clip"):
        blip_score.load(folder, frozenset({"clip"}), torch.device("cpu"), torch.float32)


def test_first_use_downloads_the_hub_files_and_salesforces_checkpoint(
    golden: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_hub
) -> None:
    """med_config.json and the vocabulary from the hub, model_large.pth from its own address (here the fake hub's,
    standing in for storage.googleapis.com), then a load that gives the golden scores; a second load asks nothing."""
    import dataclasses

    fake_hub.add_file("THUDM/ImageReward", "med_config.json", (BLIP_FIXTURES / "med_config.json").read_bytes())
    fake_hub.add_file("google-bert/bert-base-uncased", "vocab.txt", (VOCAB_DIR / "vocab.txt").read_bytes())
    release = (BLIP_FIXTURES / blip_score.CHECKPOINT_NAME).read_bytes()
    fake_hub.add_file("sfr-vision-language-research/BLIP", "models/model_large.pth", release)
    url = f"{fake_hub.url}/sfr-vision-language-research/BLIP/resolve/main/models/model_large.pth"
    files = tuple(dataclasses.replace(f, url=url) if f.url else f for f in blip_score.FAMILY.files)
    monkeypatch.setattr(blip_score, "FAMILY", dataclasses.replace(blip_score.FAMILY, files=files))
    models = tmp_path / "models"
    scorers = load_scorers(["blip"], models, device="cpu", offline=False, progress=False)
    folder = models / "blip-large"
    assert (folder / blip_score.CHECKPOINT_NAME).read_bytes() == release
    assert (folder / "bert-base-uncased" / "vocab.txt").is_file() and (folder / "med_config.json").is_file()
    items = golden["items"][:8]
    assert score_items(scorers, items) == pytest.approx([i["score"] for i in items], abs=1e-6)
    assert fake_hub.bytes_sent("models/model_large.pth") == len(release)
    fake_hub.clear_requests()
    load_scorers(["blip"], models, device="cpu", offline=False, progress=False)
    assert fake_hub.requests == []


# ------------------------------------------------------------------------------------------ live reference


def run_worker(*args: str) -> None:
    subprocess.run([REFERENCE_PYTHON, str(WORKER), *args], check=True, capture_output=True, timeout=3600)


def reference_items(checkpoint_dir: Path, prompts: list[str], tmp_path: Path) -> list[dict]:
    out = tmp_path / "reference.json"
    args = ["score", "--checkpoint-dir", str(checkpoint_dir), "--vocab", str(VOCAB_DIR), "--images-dir", str(IMAGES)]
    for prompt in prompts:
        args += ["--prompt", prompt]
    run_worker(*args, "--no-rank", "--out", str(out))
    return json.loads(out.read_text(encoding="utf-8"))["items"]


LONG_PROMPT = (
    "an intricate oil painting of a bustling medieval harbour town at dusk, with wooden ships unloading spices and "
    "silk, merchants haggling under striped awnings, children chasing seagulls along the cobblestone quay, lanterns "
    "glowing in narrow alleys, a cathedral spire rising behind tiled roofs, in the style of the dutch golden age"
)


@needs_reference
@pytest.mark.slow
def test_live_reference_on_a_fresh_tiny_release_with_training_entries(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    run_worker(
        "make-checkpoint", "--size", "tiny", "--seed", "1", "--training-entries", "--out", str(ckpt),
        "--vocab", str(VOCAB_DIR),
    )  # fmt: skip
    items = reference_items(ckpt, ["a red car", "(masterpiece:1.2), <lora:foo:0.8> a cat", LONG_PROMPT], tmp_path)
    place_files(tmp_path / "ours", ckpt)
    scorers = load_scorers(["blip"], tmp_path / "ours", device="cpu", offline=True, progress=False)
    assert np.max(np.abs(np.subtract(score_items(scorers, items), [i["score"] for i in items]))) < 1e-6


@needs_reference
@pytest.mark.slow
def test_live_reference_full_size_every_parameter_random(tmp_path: Path) -> None:
    """The acceptance check: the release's architecture and layout (training entries too), every tensor random."""
    existing = os.environ.get("IMAGEREWARD_BLIP_FULL_CHECKPOINT_DIR")
    ckpt = Path(existing) if existing else tmp_path / "full"
    if not existing:
        run_worker(
            "make-checkpoint", "--size", "full", "--seed", "0", "--training-entries", "--out", str(ckpt),
            "--vocab", str(VOCAB_DIR),
        )  # fmt: skip
    prompts = ["a painting of an ocean with clouds and birds, day time, low depth field effect", "", LONG_PROMPT]
    items = reference_items(ckpt, prompts, tmp_path)
    place_files(tmp_path / "ours", ckpt, link=True)
    scorers = load_scorers(["blip"], tmp_path / "ours", device="cpu", dtype="fp32", offline=True, progress=False)
    ours = score_items(scorers, items)
    expected = [i["score"] for i in items]
    assert np.max(np.abs(np.subtract(ours, expected))) < 1e-4
    for start in range(0, len(items), 8):  # same order of the 8 images for each prompt
        assert list(np.argsort(ours[start : start + 8])) == list(np.argsort(expected[start : start + 8]))
