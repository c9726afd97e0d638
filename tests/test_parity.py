"""Parity with the reference implementation (PyPI image-reward 1.5).

Always: committed golden scores and tokens, produced by the reference (tests/fixtures/README.md says how), for a
small checkpoint in the release's format. When `IMAGEREWARD_REFERENCE_PYTHON` names an interpreter that has the
reference installed (tests/reference/README.md): live comparisons, including the full-size 446.7 M-parameter model
with every parameter random. `IMAGEREWARD_FULL_CHECKPOINT_DIR` may name an existing full-size random checkpoint
folder (ImageReward.pt + med_config.json, written by the reference worker) to skip regenerating it.
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

from imagereward.scorer import ImageRewardScorer
from imagereward.text import PromptTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
IMAGES = FIXTURES / "images"
VOCAB_DIR = FIXTURES / "bert-base-uncased"
WORKER = Path(__file__).parent / "reference" / "reference_worker.py"
REFERENCE_PYTHON = os.environ.get("IMAGEREWARD_REFERENCE_PYTHON")
needs_reference = pytest.mark.skipif(not REFERENCE_PYTHON, reason="IMAGEREWARD_REFERENCE_PYTHON is not set")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_copy(source: Path, target: Path, **kwargs) -> ImageRewardScorer:
    """Load from a copy, so the safetensors conversion never lands in the repository's fixtures."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("ImageReward.pt", "med_config.json"):
        shutil.copy(source / name, target / name)
    return ImageRewardScorer.from_files(target / "ImageReward.pt", target / "med_config.json", VOCAB_DIR, **kwargs)


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads((FIXTURES / "golden_tiny.json").read_text(encoding="utf-8"))


def test_golden_fixture_is_the_one_the_scores_came_from(golden: dict) -> None:
    assert sha256(FIXTURES / "tiny" / "ImageReward.pt") == golden["checkpoint_sha256"]
    assert sha256(FIXTURES / "tiny" / "med_config.json") == golden["med_config_sha256"]


@pytest.mark.parametrize("batch_size", [1, 5, 32])
def test_scores_equal_the_reference_goldens(golden: dict, tmp_path: Path, batch_size: int) -> None:
    scorer = load_copy(FIXTURES / "tiny", tmp_path, batch_size=batch_size, device="cpu")
    items = golden["items"]
    ours = scorer.score([i["prompt"] for i in items], [IMAGES / i["image"] for i in items], clean_prompts=False)
    expected = [i["score"] for i in items]
    assert len(items) >= 32 and {i["image"] for i in items} >= {"rgba_alpha.png", "palette.png", "gray.png"}
    assert np.max(np.abs(np.subtract(ours, expected))) < 1e-5


def test_loading_the_converted_safetensors_gives_the_same_scores(golden: dict, tmp_path: Path) -> None:
    first = load_copy(FIXTURES / "tiny", tmp_path)
    assert (tmp_path / "ImageReward.safetensors").exists()
    second = ImageRewardScorer.from_files(tmp_path / "ImageReward.pt", tmp_path / "med_config.json", VOCAB_DIR)
    items = golden["items"][:8]
    args = ([i["prompt"] for i in items], [IMAGES / i["image"] for i in items])
    assert first.score(*args, clean_prompts=False) == pytest.approx(second.score(*args, clean_prompts=False), abs=1e-7)


def test_tokens_equal_the_reference_goldens() -> None:
    golden = json.loads((FIXTURES / "golden_tokens.json").read_text(encoding="utf-8"))
    tokenizer = PromptTokenizer(VOCAB_DIR)
    prompts = [item["prompt"] for item in golden["items"]]
    encoded = tokenizer(prompts)
    assert len(prompts) >= 15
    for row, item in enumerate(golden["items"]):
        length = sum(item["attention_mask"])
        ours = encoded.input_ids[row][encoded.attention_mask[row].bool()].tolist()
        assert ours == item["input_ids"][:length], item["prompt"]
        assert ours[0] == 101  # [CLS] stays in front
        assert encoded.truncated[row] == (length == 35 and tokenizer.count_tokens(item["prompt"]) > 35)


# ------------------------------------------------------------------------------------------ live reference


def run_worker(*args: str) -> None:
    subprocess.run([REFERENCE_PYTHON, str(WORKER), *args], check=True, capture_output=True, timeout=3600)


def reference_scores(checkpoint_dir: Path, prompts: list[str], tmp_path: Path) -> list[dict]:
    out = tmp_path / "reference.json"
    args = ["score", "--checkpoint-dir", str(checkpoint_dir), "--vocab", str(VOCAB_DIR), "--images-dir", str(IMAGES)]
    for prompt in prompts:
        args += ["--prompt", prompt]
    run_worker(*args, "--no-rank", "--out", str(out))
    return json.loads(out.read_text(encoding="utf-8"))["items"]


@needs_reference
@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_live_reference_on_fresh_tiny_checkpoints(seed: int, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    run_worker("make-checkpoint", "--size", "tiny", "--seed", str(seed), "--out", str(ckpt), "--vocab", str(VOCAB_DIR))
    items = reference_scores(ckpt, ["a red car", "(masterpiece:1.2), <lora:foo:0.8> a cat"], tmp_path)
    scorer = load_copy(ckpt, tmp_path / "ours")
    ours = scorer.score([i["prompt"] for i in items], [IMAGES / i["image"] for i in items], clean_prompts=False)
    assert np.max(np.abs(np.subtract(ours, [i["score"] for i in items]))) < 1e-5


@needs_reference
@pytest.mark.slow
def test_live_reference_full_size_every_parameter_random(tmp_path: Path) -> None:
    """The acceptance check: the release's full architecture, every parameter random, all image kinds."""
    existing = os.environ.get("IMAGEREWARD_FULL_CHECKPOINT_DIR")
    ckpt = Path(existing) if existing else tmp_path / "full"
    if not existing:
        run_worker("make-checkpoint", "--size", "full", "--seed", "0", "--out", str(ckpt), "--vocab", str(VOCAB_DIR))
    prompt = "a painting of an ocean with clouds and birds, day time, low depth field effect"
    items = reference_scores(ckpt, [prompt], tmp_path)
    scorer = load_copy(ckpt, tmp_path / "ours", device="cpu", dtype="fp32", batch_size=8)
    ours = scorer.score([i["prompt"] for i in items], [IMAGES / i["image"] for i in items], clean_prompts=False)
    expected = [i["score"] for i in items]
    assert np.max(np.abs(np.subtract(ours, expected))) < 1e-4
    assert list(np.argsort(ours)) == list(np.argsort(expected))
