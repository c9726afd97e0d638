"""Broken model folders and networks: an empty or cut-off checkpoint counts as missing (kept aside, fetched again);
no network names every missing file in one run; dropped connections resume."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from imagereward.errors import DownloadError, HubUnreachableError, ModelFileMissingError
from imagereward.hub import BERT_REPO_ID, IMAGEREWARD_REPO_ID, resolve_model_files
from imagereward.scorer import ImageRewardScorer
from tests.checkpoints import VOCAB_DIR, med_config, official_state_dict, write_model_dir
from tests.fake_hub import FakeHub, isolate_hf_env, set_download_chunk_size
from tests.test_hub import needs_small_chunks


def _checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(official_state_dict(), buffer)
    return buffer.getvalue()


CHECKPOINT = _checkpoint_bytes()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as server:
        isolate_hf_env(monkeypatch, tmp_path / "hf-home", server.url)
        set_download_chunk_size(monkeypatch, 64 * 1024)
        server.add_file(IMAGEREWARD_REPO_ID, "ImageReward.pt", CHECKPOINT, lfs=True)
        server.add_file(IMAGEREWARD_REPO_ID, "med_config.json", json.dumps(med_config()).encode())
        server.add_file(BERT_REPO_ID, "vocab.txt", (VOCAB_DIR / "vocab.txt").read_bytes())
        yield server


@pytest.mark.parametrize("content", [b"", CHECKPOINT[: len(CHECKPOINT) // 2]], ids=["empty", "cut in half"])
def test_an_incomplete_checkpoint_is_fetched_again_and_kept_aside(hub: FakeHub, tmp_path: Path, content: bytes) -> None:
    """Issue 9.4: a zero-byte ImageReward.pt crashed the loader, and since the file existed nothing was fetched."""
    models = write_model_dir(tmp_path / "models")
    (models / "ImageReward.pt").write_bytes(content)
    scorer = ImageRewardScorer.load(models, device="cpu", progress=False)
    assert len(scorer.score("a cat", [torch.zeros(3, 32, 32)])) == 1
    assert (models / "ImageReward.pt").read_bytes() == CHECKPOINT
    assert (models / "ImageReward.pt.incomplete").read_bytes() == content  # nothing lost
    assert [r.path.rsplit("/", 1)[-1] for r in hub.requests if r.method == "GET"] == ["ImageReward.pt"]


def test_an_empty_checkpoint_offline_is_named_as_such(tmp_path: Path) -> None:
    models = write_model_dir(tmp_path / "models")
    (models / "ImageReward.pt").write_bytes(b"")
    with pytest.raises(ModelFileMissingError) as excinfo:
        ImageRewardScorer.load(models, device="cpu", offline=True, progress=False)
    message = str(excinfo.value)
    assert "ImageReward.pt (the file there is empty)" in message and "vocab.txt" not in message


def test_no_network_names_every_missing_file_in_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    isolate_hf_env(monkeypatch, tmp_path / "hf-home", f"http://127.0.0.1:{port}")
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(HubUnreachableError) as excinfo:
        resolve_model_files(models, progress=False)
    message = str(excinfo.value)
    for name in ("med_config.json", "vocab.txt", "ImageReward.pt"):
        assert f"{name}\n" in message or f"{name} " in message
    assert "Skipping optional file" not in message and list(models.iterdir()) == []


@needs_small_chunks
def test_a_connection_dropped_every_time_keeps_the_bytes(hub: FakeHub, tmp_path: Path) -> None:
    hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")].interrupt_after = 100_000
    hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")].status_after_interrupt = 500
    models = tmp_path / "models"
    with pytest.raises(DownloadError, match="running again resumes"):
        resolve_model_files(models, progress=False)
    assert not (models / "ImageReward.pt").exists()
    hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")].get_status = None
    files = resolve_model_files(models, progress=False)
    assert files.checkpoint.read_bytes() == CHECKPOINT
