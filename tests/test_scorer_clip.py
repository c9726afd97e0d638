"""The OpenAI CLIP ViT-L/14 family (CLIP score, Aesthetic score) against the reference (image-reward 1.5's
`load_score("CLIP")` / `load_score("Aesthetic")` on OpenAI's `clip` package).

Always: golden scores and tokens produced by the reference (tests/reference/clip_worker.py) from the small checkpoint
in tests/fixtures/scorers/clip/ (written by the reference's own code in the release's formats: a TorchScript archive
with fp16 weights, LAION's MLP state dict). When `IMAGEREWARD_CLIP_REFERENCE_PYTHON` names an interpreter with the
reference: live comparisons on a fresh checkpoint and on OpenAI's full vocabulary; with
`IMAGEREWARD_CLIP_FULL_CHECKPOINT_DIR` too (a folder from `clip_worker.py make-checkpoint --size full`), the full-size
model with every parameter random.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from imagereward.errors import CheckpointError, ModelFileMissingError
from imagereward.scorers import clip_backbone, openai_clip
from imagereward.scorers.clip_text import ClipPromptEncoder, clean_text
from imagereward.scorers.registry import load_family, load_scorers

FIXTURE = Path(__file__).parent / "fixtures" / "scorers" / "clip"
IMAGES = Path(__file__).parent / "fixtures" / "images"
WORKER = Path(__file__).parent / "reference" / "clip_worker.py"
REFERENCE_PYTHON = os.environ.get("IMAGEREWARD_CLIP_REFERENCE_PYTHON")
FULL_DIR = os.environ.get("IMAGEREWARD_CLIP_FULL_CHECKPOINT_DIR")
needs_reference = pytest.mark.skipif(not REFERENCE_PYTHON, reason="IMAGEREWARD_CLIP_REFERENCE_PYTHON is not set")
KEY = openai_clip.FAMILY_KEY
RELEASE_FILES = (openai_clip.CLIP_NAME, openai_clip.AESTHETIC_NAME, "clip-tokenizer")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def models_dir(tmp_path: Path, source: Path = FIXTURE) -> Path:
    """A models folder with the family's files placed as a download leaves them (a copy: conversions land there)."""
    folder = tmp_path / "models" / KEY
    folder.mkdir(parents=True)
    for name in RELEASE_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, folder / name)
        else:
            shutil.copy(source / name, folder / name)
    return tmp_path / "models"


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads((FIXTURE / "golden.json").read_text(encoding="utf-8"))


def golden_args(golden: dict, base: Path = FIXTURE) -> tuple[list[str], list[Path]]:
    items = golden["items"]
    return [i["prompt"] for i in items], [base / golden["images_dir"] / i["image"] for i in items]


# ------------------------------------------------------------------------------------------------ goldens


def test_the_goldens_come_from_the_committed_fixture(golden: dict) -> None:
    assert sha256(FIXTURE / openai_clip.CLIP_NAME) == golden["checkpoint_sha256"]
    assert sha256(FIXTURE / openai_clip.AESTHETIC_NAME) == golden["aesthetic_sha256"]
    assert openai_clip.is_torchscript_archive(FIXTURE / openai_clip.CLIP_NAME)  # OpenAI's release format


@pytest.mark.parametrize("batch_size", [1, 5, 40])
def test_both_scores_equal_the_reference_goldens(golden: dict, tmp_path: Path, batch_size: int) -> None:
    scorers = load_scorers(
        ["clip", "aesthetic"], models_dir(tmp_path), offline=True, progress=False, device="cpu", batch_size=batch_size
    )
    prompts, images = golden_args(golden)
    ours = scorers.score(prompts, images, clean_prompts=False)
    items = golden["items"]
    assert len(items) == 40 and {i["image"] for i in items} >= {"rgba_alpha.png", "palette.png", "la.png"}
    assert any(len(i["prompt"]) > 400 for i in items)  # a prompt cut at 77 tokens
    for name in ("clip", "aesthetic"):
        expected = np.array([i[name] for i in items])
        assert np.std(expected) > 0.01  # the scores tell the images and prompts apart
        assert np.max(np.abs(np.array(ours[name]) - expected)) < 1e-5, name


def test_aesthetic_alone_reads_no_prompt_and_builds_no_text_tower(golden: dict, tmp_path: Path) -> None:
    scorer = load_family(KEY, ["aesthetic"], models_dir(tmp_path), offline=True, progress=False, device="cpu")
    assert not scorer.needs_prompt and scorer.encoder is None and scorer.outputs == ("aesthetic",)
    clip = scorer.model.clip
    assert not hasattr(clip, "text_model") and not any(n.startswith("text") for n, _ in clip.named_parameters())
    _, images = golden_args(golden)
    ours = scorer.score(None, images)
    expected = [i["aesthetic"] for i in golden["items"]]
    assert np.max(np.abs(np.subtract(ours, expected))) < 1e-5


def test_clip_alone_and_the_order_of_outputs(golden: dict, tmp_path: Path) -> None:
    root = models_dir(tmp_path)
    scorer = load_family(KEY, ["clip"], root, offline=True, progress=False, device="cpu")
    assert scorer.needs_prompt and scorer.outputs == ("clip",) and scorer.model.aesthetic_head is None
    both = load_family(KEY, ["aesthetic", "clip"], root, offline=True, progress=False, device="cpu")
    assert both.outputs == ("clip", "aesthetic")  # the family's order, whatever order they were asked in
    prompts, images = golden_args(golden)
    ours = scorer.score(prompts[:8], images[:8], clean_prompts=False)
    assert np.max(np.abs(np.subtract(ours, [i["clip"] for i in golden["items"][:8]]))) < 1e-5


def test_one_image_encoding_serves_both_scores(golden: dict, tmp_path: Path) -> None:
    scorers = load_scorers(["aesthetic", "clip"], models_dir(tmp_path), offline=True, progress=False, device="cpu")
    assert len(scorers.scorers) == 1
    calls = []
    scorers.scorers[0].model.clip.vision_model.register_forward_hook(lambda *args: calls.append(1))
    prompts, images = golden_args(golden)
    table = scorers.score(prompts[:6], images[:6], clean_prompts=False)
    assert list(table) == ["aesthetic", "clip"] and len(calls) == 1


def test_the_aesthetic_head_stays_fp32_when_the_rest_moves_to_bf16(golden: dict, tmp_path: Path) -> None:
    scorer = load_family(KEY, ["clip", "aesthetic"], models_dir(tmp_path), offline=True, progress=False, device="cpu")
    scorer.to("cpu", "bf16")
    assert scorer.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in scorer.model.aesthetic_head.parameters())
    prompts, images = golden_args(golden)
    table = scorer.score_outputs(prompts[:8], images[:8], clean_prompts=False)
    expected = [i["aesthetic"] for i in golden["items"][:8]]
    assert np.max(np.abs(np.subtract(table["aesthetic"], expected))) < 0.05  # bf16 image tower, fp32 head


def test_tokens_equal_the_reference_goldens() -> None:
    golden = json.loads((FIXTURE / "golden_tokens.json").read_text(encoding="utf-8"))["items"]
    encoder = ClipPromptEncoder(FIXTURE / "clip-tokenizer")
    batch = encoder([item["prompt"] for item in golden])
    assert len(golden) >= 40 and any(item["truncated"] for item in golden)
    for row, item in enumerate(golden):
        ids = batch.input_ids[row][batch.attention_mask[row].bool()].tolist()
        assert ids == item["input_ids"], item["prompt"]
        assert batch.truncated[row] == item["truncated"], item["prompt"]
        assert batch.input_ids[row][len(ids) :].eq(0).all()  # padded with 0, as the references pad
        assert encoder.count_tokens(item["prompt"]) >= len(ids)


def test_clean_text_does_what_ftfy_and_openai_do_for_ordinary_prompts() -> None:
    assert clean_text("  A  “Quoted”\u00a0Word ") == 'a "quoted" word'
    assert clean_text("ﬁne ＦＵＬＬ\u3000width") == "fine full width"
    assert clean_text("fish &amp;amp; chips") == "fish & chips"
    assert clean_text("bell\x07 and\ufeff bom") == "bell and bom"
    assert clean_text("<b> &lt;kept&gt; </b>") == "<b> <kept> </b>"  # html.unescape, after ftfy leaves it


def test_a_long_prompt_keeps_75_pieces_between_start_and_end() -> None:
    encoder = ClipPromptEncoder(FIXTURE / "clip-tokenizer")
    batch = encoder(["a cat", "cat " * 200])
    assert batch.input_ids.shape == (2, 77) and batch.truncated == (False, True)
    assert batch.input_ids[1, 0] == encoder.start_id and batch.input_ids[1, 76] == encoder.end_id
    assert batch.attention_mask[0].sum() == encoder.count_tokens("a cat") < 77 and batch.attention_mask[1].sum() == 77


# ---------------------------------------------------------------------------------------- reading the release


def test_the_torchscript_archive_is_read_as_torch_jit_would_give_it() -> None:
    ours = openai_clip.read_clip_release(FIXTURE / openai_clip.CLIP_NAME)
    reference = torch.jit.load(str(FIXTURE / openai_clip.CLIP_NAME), map_location="cpu").state_dict()
    assert set(ours) == set(reference) and "input_resolution" in ours
    for key, value in reference.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
    assert ours["visual.conv1.weight"].dtype == torch.float16


def test_an_archive_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / openai_clip.CLIP_NAME
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ViT-L-14/data.pkl", pickle.dumps(Payload(), protocol=2))
        archive.writestr("ViT-L-14/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(CheckpointError, match="not a tensor or a module record"):
        openai_clip.read_clip_release(path)
    assert not marker.exists()


def test_a_plain_state_dict_is_accepted_as_clip_load_accepts_it(golden: dict, tmp_path: Path) -> None:
    root = models_dir(tmp_path)
    folder = root / KEY
    state = openai_clip.read_clip_release(folder / openai_clip.CLIP_NAME)
    torch.save(state, folder / openai_clip.CLIP_NAME)
    scorer = load_family(KEY, ["clip"], root, offline=True, progress=False, device="cpu")
    prompts, images = golden_args(golden)
    ours = scorer.score(prompts[:8], images[:8], clean_prompts=False)
    assert np.max(np.abs(np.subtract(ours, [i["clip"] for i in golden["items"][:8]]))) < 1e-5


def test_the_safetensors_conversions_stand_for_the_releases(golden: dict, tmp_path: Path) -> None:
    root = models_dir(tmp_path)
    folder = root / KEY
    prompts, images = golden_args(golden)
    first = load_scorers(["clip", "aesthetic"], root, offline=True, progress=False, device="cpu").score(
        prompts[:8], images[:8], clean_prompts=False
    )
    assert (folder / "ViT-L-14.safetensors").exists()
    assert (folder / "sac+logos+ava1-l14-linearMSE.safetensors").exists()
    (folder / openai_clip.CLIP_NAME).unlink()
    (folder / openai_clip.AESTHETIC_NAME).unlink()
    again = load_scorers(["clip", "aesthetic"], root, offline=True, progress=False, device="cpu").score(
        prompts[:8], images[:8], clean_prompts=False
    )
    for name in ("clip", "aesthetic"):
        assert again[name] == pytest.approx(first[name], abs=1e-7)


# ------------------------------------------------------------------------------------------------- bad files


def test_a_truncated_archive_is_refused_with_a_message(tmp_path: Path) -> None:
    root = models_dir(tmp_path)
    path = root / KEY / openai_clip.CLIP_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + data[-4096:])  # the end of the zip is there, the middle is not
    with pytest.raises(CheckpointError, match=r"ViT-L-14\.pt"):
        load_family(KEY, ["clip"], root, offline=True, progress=False, device="cpu")


def test_a_checkpoint_missing_a_tensor_is_refused_by_name(tmp_path: Path) -> None:
    root = models_dir(tmp_path)
    path = root / KEY / openai_clip.CLIP_NAME
    state = openai_clip.read_clip_release(path)
    del state["ln_final.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="final_layer_norm"):
        load_family(KEY, ["clip"], root, offline=True, progress=False, device="cpu")
    assert not (root / KEY / "ViT-L-14.safetensors").exists()  # a refused checkpoint is never converted


def test_an_aesthetic_head_of_another_shape_is_refused(tmp_path: Path) -> None:
    root = models_dir(tmp_path)
    path = root / KEY / openai_clip.AESTHETIC_NAME
    torch.save({"layers.0.weight": torch.zeros(4, 32), "layers.0.bias": torch.zeros(4)}, path)
    with pytest.raises(CheckpointError, match="aesthetic predictor"):
        load_family(KEY, ["aesthetic"], root, offline=True, progress=False, device="cpu")
    torch.save(openai_clip.random_head_state("full"), path)  # the release's head, for a 768-wide CLIP
    with pytest.raises(CheckpointError, match="768-wide"):
        load_family(KEY, ["aesthetic"], root, offline=True, progress=False, device="cpu")


def test_missing_files_are_named_when_downloads_are_off(tmp_path: Path) -> None:
    root = models_dir(tmp_path)
    (root / KEY / openai_clip.CLIP_NAME).unlink()
    with pytest.raises(ModelFileMissingError, match=r"ViT-L-14\.pt"):
        load_scorers(["aesthetic"], root, offline=True, progress=False, device="cpu")


def test_a_missing_or_foreign_vocabulary_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileMissingError, match=r"merges\.txt"):
        (tmp_path / "vocab.json").write_text("{}", encoding="utf-8")
        ClipPromptEncoder(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}), encoding="utf-8")
    with pytest.raises(ModelFileMissingError, match="not a CLIP vocabulary"):
        ClipPromptEncoder(tmp_path)


def serve_release(fake_hub, monkeypatch: pytest.MonkeyPatch, *, clip_sha256: str | None = None) -> bytes:
    """The fixture's files on the fake hub: the vocabulary under openai/clip-vit-large-patch14, OpenAI's and LAION's
    files at addresses of their own (standing in for openaipublic.azureedge.net and github.com), pinned to the
    fixture's SHA-256 (or to `clip_sha256`)."""
    import dataclasses

    for name in ("vocab.json", "merges.txt"):
        fake_hub.add_file("openai/clip-vit-large-patch14", name, (FIXTURE / "clip-tokenizer" / name).read_bytes())
    release = (FIXTURE / openai_clip.CLIP_NAME).read_bytes()
    fake_hub.add_file("openai/clip", "ViT-L-14.pt", release)
    fake_hub.add_file("laion/aesthetic", "head.pth", (FIXTURE / openai_clip.AESTHETIC_NAME).read_bytes())
    base = f"{fake_hub.url}/{{}}/resolve/main/{{}}"
    addresses = {
        openai_clip.CLIP_NAME: (
            base.format("openai/clip", "ViT-L-14.pt"),
            clip_sha256 or sha256(FIXTURE / openai_clip.CLIP_NAME),
        ),
        openai_clip.AESTHETIC_NAME: (
            base.format("laion/aesthetic", "head.pth"),
            sha256(FIXTURE / openai_clip.AESTHETIC_NAME),
        ),
    }
    files = tuple(
        dataclasses.replace(f, url=addresses[f.relpath][0], sha256=addresses[f.relpath][1]) if f.url else f
        for f in openai_clip.FAMILY.files
    )
    assert len([f for f in files if f.url]) == 2
    monkeypatch.setattr(openai_clip, "FAMILY", dataclasses.replace(openai_clip.FAMILY, files=files))
    return release


def test_first_use_downloads_every_file_and_checks_the_pinned_hashes(
    golden: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_hub
) -> None:
    release = serve_release(fake_hub, monkeypatch)
    models = tmp_path / "models"
    scorers = load_scorers(["aesthetic", "clip"], models, device="cpu", offline=False, progress=False)
    folder = models / KEY
    assert (folder / openai_clip.CLIP_NAME).read_bytes() == release
    assert (folder / "clip-tokenizer" / "vocab.json").is_file() and (folder / openai_clip.AESTHETIC_NAME).is_file()
    prompts, images = golden_args(golden)
    table = scorers.score(prompts[:8], images[:8], clean_prompts=False)
    for name in ("clip", "aesthetic"):
        assert table[name] == pytest.approx([i[name] for i in golden["items"][:8]], abs=1e-5)
    fake_hub.clear_requests()
    load_scorers(["aesthetic", "clip"], models, device="cpu", offline=False, progress=False)
    assert fake_hub.requests == []


def test_a_download_that_does_not_match_its_pinned_hash_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_hub
) -> None:
    from imagereward.errors import DownloadError

    serve_release(fake_hub, monkeypatch, clip_sha256=openai_clip.CLIP_SHA256)  # OpenAI's hash, another file
    models = tmp_path / "models"
    with pytest.raises(DownloadError, match="sha256"):
        load_scorers(["clip"], models, device="cpu", offline=False, progress=False)
    assert not (models / KEY / openai_clip.CLIP_NAME).exists()


# ------------------------------------------------------------------------------------------ our random release


def test_write_random_release_gives_a_loadable_family(tmp_path: Path) -> None:
    folder = tmp_path / "models" / KEY
    openai_clip.write_random_release(folder, size="tiny", seed=3)
    scorers = load_scorers(["clip", "aesthetic"], tmp_path / "models", offline=True, progress=False, device="cpu")
    table = scorers.score(["a cat", "a dog"], [IMAGES / "rgb_512.png", IMAGES / "gray.png"])
    assert all(np.isfinite(table["clip"])) and all(np.isfinite(table["aesthetic"]))
    assert table["clip"][0] != table["clip"][1] and table["aesthetic"][0] != table["aesthetic"][1]


def test_the_backbone_also_takes_a_transformers_release() -> None:
    """`build_from_hf` (PickScore's format) gives the same embeddings as the OpenAI key map it is checked against."""
    state = openai_clip.read_clip_release(FIXTURE / openai_clip.CLIP_NAME)
    config = clip_backbone.openai_config(state, activation="quick_gelu")
    model = clip_backbone.build_from_openai(state, config)
    hf = clip_backbone.build_from_hf(model.config.to_dict(), model.state_dict(), with_text=False)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = clip_backbone.image_embeddings(model, pixels), clip_backbone.image_embeddings(hf, pixels)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-5)


# -------------------------------------------------------------------------------------------- live reference


def run_worker(*args: str) -> None:
    assert REFERENCE_PYTHON is not None
    subprocess.run([REFERENCE_PYTHON, str(WORKER), *args], check=True, capture_output=True, timeout=3600)


@needs_reference
def test_live_a_fresh_checkpoint_scores_as_the_reference(tmp_path: Path) -> None:
    source = tmp_path / "release"
    run_worker("make-checkpoint", "--size", "tiny", "--seed", "7", "--out", str(source), "--tokenizer",
               str(FIXTURE / "clip-tokenizer"))  # fmt: skip
    long_prompt = "a watercolour of a lighthouse in a storm, " * 12
    out = tmp_path / "scores.json"
    run_worker("score", "--checkpoint-dir", str(source), "--images-dir", str(IMAGES), "--prompt", "a cat",
               "--prompt", long_prompt, "--no-rank", "--out", str(out))  # fmt: skip
    reference = json.loads(out.read_text(encoding="utf-8"))
    scorers = load_scorers(["clip", "aesthetic"], models_dir(tmp_path, source), offline=True, progress=False)
    ours = scorers.score(*golden_args(reference, tmp_path), clean_prompts=False)
    for name in ("clip", "aesthetic"):
        assert np.max(np.abs(np.subtract(ours[name], [i[name] for i in reference["items"]]))) < 1e-5


@needs_reference
def test_live_openai_vocabulary_tokenizes_as_the_reference(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab"
    run_worker("make-tokenizer", "--out", str(vocab))
    prompts = json.loads((FIXTURE / "golden_tokens.json").read_text(encoding="utf-8"))["items"]
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps([p["prompt"] for p in prompts]), encoding="utf-8")
    out = tmp_path / "tokens.json"
    run_worker("tokenize", "--prompts", str(prompts_file), "--out", str(out))
    reference = json.loads(out.read_text(encoding="utf-8"))["items"]
    batch = ClipPromptEncoder(vocab)([item["prompt"] for item in reference])
    for row, item in enumerate(reference):
        assert batch.input_ids[row][batch.attention_mask[row].bool()].tolist() == item["input_ids"], item["prompt"]
        assert batch.truncated[row] == item["truncated"]


@needs_reference
@pytest.mark.skipif(not FULL_DIR, reason="IMAGEREWARD_CLIP_FULL_CHECKPOINT_DIR is not set")
@pytest.mark.slow
def test_live_full_size_scores_as_the_reference(tmp_path: Path) -> None:
    """ViT-L/14 with every parameter random, fp32, within 1e-4 (run alone: two reference models take 4 GB)."""
    source = Path(str(FULL_DIR))
    long_prompt = "an oil painting of a harbour at dawn with fishing boats and gulls, " * 8
    out = tmp_path / "scores.json"
    run_worker("score", "--checkpoint-dir", str(source), "--images-dir", str(IMAGES), "--prompt", "a cat",
               "--prompt", long_prompt, "--no-rank", "--out", str(out))  # fmt: skip
    reference = json.loads(out.read_text(encoding="utf-8"))
    scorers = load_scorers(["clip", "aesthetic"], models_dir(tmp_path, source), offline=True, progress=False)
    ours = scorers.score(*golden_args(reference, tmp_path), clean_prompts=False)
    for name in ("clip", "aesthetic"):
        assert np.max(np.abs(np.subtract(ours[name], [i[name] for i in reference["items"]]))) < 1e-4
