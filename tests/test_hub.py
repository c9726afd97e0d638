"""imagereward.hub against the loopback fake hub in tests/fake_hub.py (no other network)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import file_download as hf_file_download

from imagereward import hub as hubmod
from imagereward.errors import DownloadError, ModelFileMissingError
from imagereward.hub import (
    BERT_LEGACY_REPO_ID,
    BERT_REPO_ID,
    IMAGEREWARD_REPO_ID,
    default_models_dir,
    resolve_model_files,
)
from tests.fake_hub import FakeHub, isolate_hf_env, set_download_chunk_size

CHECKPOINT = os.urandom(3 * 1024 * 1024 + 123)  # stands in for the 1.79 GB ImageReward.pt
MED_CONFIG = json.dumps({"architectures": ["BertModel"], "hidden_size": 768, "add_cross_attention": True}).encode()
VOCAB = b"\n".join([b"[PAD]", b"[UNK]", b"[CLS]", b"[SEP]", b"[MASK]", b"a", b"cat"]) + b"\n"
TOKENIZER_CONFIG = b'{"do_lower_case": true, "model_max_length": 512}'
CUT = 1024 * 1024 + 7  # where interrupted downloads are cut
CHUNK = 64 * 1024  # huggingface_hub's write chunk in these tests (see set_download_chunk_size)
needs_small_chunks = pytest.mark.skipif(
    not (hasattr(hf_constants, "DOWNLOAD_CHUNK_SIZE") or hasattr(hf_file_download, "DOWNLOAD_CHUNK_SIZE")),
    reason="this huggingface_hub has a fixed 10 MB write chunk, so a cut in a few-MB file leaves nothing to resume",
)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The fake hub with all four files (checkpoint as LFS); huggingface_hub points at it."""
    with FakeHub() as server:
        isolate_hf_env(monkeypatch, tmp_path / "hf-home", server.url)
        set_download_chunk_size(monkeypatch, CHUNK)
        server.add_file(IMAGEREWARD_REPO_ID, "ImageReward.pt", CHECKPOINT, lfs=True)
        server.add_file(IMAGEREWARD_REPO_ID, "med_config.json", MED_CONFIG)
        server.add_file(BERT_REPO_ID, "vocab.txt", VOCAB)
        server.add_file(BERT_REPO_ID, "tokenizer_config.json", TOKENIZER_CONFIG)
        yield server


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models" / "ImageReward"


def place_all(models: Path, checkpoint: bytes = CHECKPOINT) -> None:
    """Put the files in place by hand, as a WebUI user would."""
    (models / "bert-base-uncased").mkdir(parents=True)
    (models / "ImageReward.pt").write_bytes(checkpoint)
    (models / "med_config.json").write_bytes(MED_CONFIG)
    (models / "bert-base-uncased" / "vocab.txt").write_bytes(VOCAB)


def resume_offset(range_header: str | None) -> int:
    assert range_header is not None and range_header.startswith("bytes=") and range_header.endswith("-")
    return int(range_header[len("bytes=") : -1])


def partials(models: Path) -> list[Path]:
    return sorted((models / ".imagereward-download").glob("*.part"))


def test_download_lands_in_documented_layout(hub: FakeHub, models: Path) -> None:
    files = resolve_model_files(models, progress=False)

    assert files.checkpoint == models / "ImageReward.pt"
    assert files.med_config == models / "med_config.json"
    assert files.tokenizer_dir == models / "bert-base-uncased"
    assert files.checkpoint.read_bytes() == CHECKPOINT
    assert files.med_config.read_bytes() == MED_CONFIG
    assert (files.tokenizer_dir / "vocab.txt").read_bytes() == VOCAB
    assert (files.tokenizer_dir / "tokenizer_config.json").read_bytes() == TOKENIZER_CONFIG
    for path in (files.checkpoint, files.med_config, files.tokenizer_dir / "vocab.txt"):
        assert path.is_file() and not path.is_symlink()
    assert partials(models) == []
    assert not (models / ".cache").exists()  # no huggingface_hub local-dir metadata among the user's files
    # The LFS file came from the "CDN" (the redirect target), in one piece.
    checkpoint_gets = hub.requests_for("ImageReward.pt", "GET")
    assert [(r.server, r.range, r.status) for r in checkpoint_gets] == [("cdn", None, 200)]
    assert sorted(p.name for p in models.iterdir()) == [
        ".imagereward-download",
        "ImageReward.pt",
        "bert-base-uncased",
        "med_config.json",
    ]  # no verification record or other bookkeeping among the user's files


def test_progress_bar_on_by_default(hub: FakeHub, models: Path) -> None:
    files = resolve_model_files(models)  # progress=True must not break anything (output goes to captured stderr)
    assert files.checkpoint.read_bytes() == CHECKPOINT


def test_second_call_makes_no_request(hub: FakeHub, models: Path) -> None:
    first = resolve_model_files(models, progress=False)
    hub.clear_requests()

    assert resolve_model_files(models, progress=False) == first
    assert resolve_model_files(models, progress=False, offline=False) == first
    assert hub.requests == []


def test_files_placed_by_hand_are_used_without_network(hub: FakeHub, models: Path) -> None:
    place_all(models, checkpoint=b"not checked: used as it is")
    files = resolve_model_files(models, progress=False)
    assert files.checkpoint.read_bytes() == b"not checked: used as it is"
    assert hub.requests == []


def _safetensors_bytes() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0\0\0\0"


def test_safetensors_conversion_counts_as_checkpoint(hub: FakeHub, models: Path) -> None:
    place_all(models)
    (models / "ImageReward.pt").unlink()
    (models / "ImageReward.safetensors").write_bytes(_safetensors_bytes())

    files = resolve_model_files(models, progress=False)
    assert files.checkpoint == models / "ImageReward.safetensors"
    assert hub.requests == []


def test_broken_safetensors_is_ignored_and_pt_downloaded(hub: FakeHub, models: Path) -> None:
    place_all(models)
    (models / "ImageReward.pt").unlink()
    (models / "ImageReward.safetensors").write_bytes(b"\xff" * 16)  # e.g. an aborted conversion

    files = resolve_model_files(models, progress=False)
    assert files.checkpoint == models / "ImageReward.pt"
    assert files.checkpoint.read_bytes() == CHECKPOINT
    assert (models / "ImageReward.safetensors").read_bytes() == b"\xff" * 16  # not ours: left alone


@needs_small_chunks
def test_interrupted_download_resumes_with_range(hub: FakeHub, models: Path) -> None:
    hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")].interrupt_after = CUT

    files = resolve_model_files(models, progress=False)

    assert files.checkpoint.read_bytes() == CHECKPOINT
    gets = hub.requests_for("ImageReward.pt", "GET")
    assert [r.status for r in gets] == [200, 206]
    assert gets[0].range is None and gets[0].bytes_sent == CUT
    resumed_at = resume_offset(gets[1].range)
    assert CUT - CHUNK < resumed_at <= CUT  # what was written before the cut is not fetched again
    assert hub.bytes_sent("ImageReward.pt") < 2 * len(CHECKPOINT)
    assert hub.bytes_sent("ImageReward.pt") == CUT + len(CHECKPOINT) - resumed_at
    assert partials(models) == []


@needs_small_chunks
def test_partial_download_is_kept_and_resumed_by_next_call(hub: FakeHub, models: Path) -> None:
    # The connection drops after CUT bytes, then every GET fails: the hub is gone for the rest of this call.
    checkpoint = hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")]
    checkpoint.interrupt_after = CUT
    checkpoint.status_after_interrupt = 503

    with pytest.raises(DownloadError) as excinfo:
        resolve_model_files(models, progress=False)
    message = str(excinfo.value)
    assert "ImageReward.pt" in message and "503" in message
    assert "kept in" in message and "resumes" in message
    assert str(models / "ImageReward.pt") in message  # where to put it by hand
    assert not (models / "ImageReward.pt").exists()
    [partial] = partials(models)
    kept = partial.read_bytes()
    assert CUT - CHUNK < len(kept) <= CUT and kept == CHECKPOINT[: len(kept)]
    # The small files were installed before the checkpoint failed.
    assert (models / "med_config.json").read_bytes() == MED_CONFIG

    checkpoint.get_status = None  # the hub is back
    hub.clear_requests()
    files = resolve_model_files(models, progress=False)

    assert files.checkpoint.read_bytes() == CHECKPOINT
    gets = hub.requests_for("ImageReward.pt", "GET")
    assert [(r.range, r.status) for r in gets] == [(f"bytes={len(kept)}-", 206)]
    assert gets[0].bytes_sent == len(CHECKPOINT) - len(kept)
    assert partials(models) == []


def test_partial_left_by_a_killed_process_is_resumed(hub: FakeHub, models: Path) -> None:
    partial = hubmod._partial_path(models, hubmod.CHECKPOINT_FILE, hashlib.sha256(CHECKPOINT).hexdigest())
    partial.parent.mkdir(parents=True)
    partial.write_bytes(CHECKPOINT[:CUT])

    files = resolve_model_files(models, progress=False)

    assert files.checkpoint.read_bytes() == CHECKPOINT
    gets = hub.requests_for("ImageReward.pt", "GET")
    assert [(r.range, r.status) for r in gets] == [(f"bytes={CUT}-", 206)]
    assert hub.bytes_sent("ImageReward.pt") == len(CHECKPOINT) - CUT
    assert partials(models) == []


@pytest.mark.parametrize("name", ["ImageReward.pt", "med_config.json"])  # LFS (sha256) and git (blob sha1)
def test_corrupt_download_is_moved_aside(hub: FakeHub, models: Path, name: str) -> None:
    file = hub.files[(IMAGEREWARD_REPO_ID, name)]
    bad = bytearray(file.content)
    bad[len(bad) // 2] ^= 0xFF  # same size, different content
    file.served = bytes(bad)

    with pytest.raises(DownloadError) as excinfo:
        resolve_model_files(models, progress=False)
    message = str(excinfo.value)
    corrupt = models / f"{name}.corrupt"
    assert "corrupt" in message and str(corrupt) in message and name in message
    assert ("sha256" if file.lfs else "sha1") in message
    assert not (models / name).exists()
    assert corrupt.read_bytes() == bytes(bad)
    assert partials(models) == []

    file.served = None  # the next run downloads it anew
    files = resolve_model_files(models, progress=False)
    assert (models / name).read_bytes() == file.content
    assert files.checkpoint.read_bytes() == CHECKPOINT


@pytest.mark.parametrize(
    ("env", "reason"),
    [(None, "offline=True"), ("HF_HUB_OFFLINE", "HF_HUB_OFFLINE=1"), ("IMAGEREWARD_OFFLINE", "IMAGEREWARD_OFFLINE=1")],
)
def test_offline_names_missing_files(
    hub: FakeHub, models: Path, monkeypatch: pytest.MonkeyPatch, env: str | None, reason: str
) -> None:
    models.mkdir(parents=True)
    (models / "med_config.json").write_bytes(MED_CONFIG)  # present: must not be listed
    if env:
        monkeypatch.setenv(env, "1")

    with pytest.raises(ModelFileMissingError) as excinfo:
        resolve_model_files(models, offline=True if env is None else None, progress=False)
    message = str(excinfo.value)
    assert reason in message
    assert str((models / "ImageReward.pt").resolve()) in message
    assert str((models / "bert-base-uncased" / "vocab.txt").resolve()) in message
    assert f"{hub.url}/{IMAGEREWARD_REPO_ID}/resolve/main/ImageReward.pt" in message
    assert f"{hub.url}/{BERT_REPO_ID}/resolve/main/vocab.txt" in message
    assert "med_config.json" not in message
    assert "tokenizer_config.json" not in message  # optional
    assert hub.requests == []


def test_offline_with_files_present(hub: FakeHub, models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    place_all(models)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = resolve_model_files(models, progress=False)
    assert files.checkpoint == models / "ImageReward.pt"
    assert resolve_model_files(models, offline=True).tokenizer_dir == models / "bert-base-uncased"
    assert hub.requests == []


def test_server_error_is_a_readable_download_error(hub: FakeHub, models: Path) -> None:
    hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")].status = 500

    with pytest.raises(DownloadError) as excinfo:
        resolve_model_files(models, progress=False)
    message = str(excinfo.value)
    assert "HTTP 500" in message
    assert f"{hub.url}/{IMAGEREWARD_REPO_ID}/resolve/main/ImageReward.pt" in message
    assert str(models / "ImageReward.pt") in message
    assert not (models / "ImageReward.pt").exists()


def test_whole_hub_down(hub: FakeHub, models: Path) -> None:
    hub.fail_all = 503
    with pytest.raises(DownloadError, match="HTTP 503"):
        resolve_model_files(models, progress=False)


def test_unreachable_hub_is_a_download_error(models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    isolate_hf_env(monkeypatch, tmp_path / "hf-home", endpoint)

    with pytest.raises(DownloadError) as excinfo:
        resolve_model_files(models, progress=False)
    assert isinstance(excinfo.value, ModelFileMissingError)  # the same complete message as offline mode, in one run
    message = str(excinfo.value)
    assert "the hub could not be reached" in message and endpoint in message
    for relpath in ("med_config.json", "bert-base-uncased/vocab.txt", "ImageReward.pt"):
        assert str((models / relpath).resolve()) in message
    assert f"{endpoint}/{IMAGEREWARD_REPO_ID}/resolve/main/ImageReward.pt" in message
    assert "--offline" in message and "offline=False" not in message
    assert not models.exists()  # nothing created on disk when the hub never answered
    assert "save it under exactly that path" in message


def test_endpoint_argument_overrides_hf_endpoint(hub: FakeHub, models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # would fail
    files = resolve_model_files(models, progress=False, endpoint=hub.url)
    assert files.checkpoint.read_bytes() == CHECKPOINT


def test_optional_tokenizer_config_may_be_absent(hub: FakeHub, models: Path) -> None:
    del hub.files[(BERT_REPO_ID, "tokenizer_config.json")]

    files = resolve_model_files(models, progress=False)
    assert (files.tokenizer_dir / "vocab.txt").read_bytes() == VOCAB
    assert not (files.tokenizer_dir / "tokenizer_config.json").exists()
    [head] = [r for r in hub.requests if r.path.endswith("/tokenizer_config.json")]
    assert (head.method, head.status) == ("HEAD", 404)

    hub.clear_requests()
    resolve_model_files(models, progress=False)
    assert hub.requests == []  # the absent optional file does not make later starts go online


def test_missing_required_file_on_hub(hub: FakeHub, models: Path) -> None:
    del hub.files[(BERT_REPO_ID, "vocab.txt")]
    with pytest.raises(DownloadError, match=r"has no file at .*vocab\.txt"):
        resolve_model_files(models, progress=False)


def test_legacy_bert_repo_name_is_tried(hub: FakeHub, models: Path) -> None:
    for name in ("vocab.txt", "tokenizer_config.json"):
        file = hub.files.pop((BERT_REPO_ID, name))
        hub.add_file(BERT_LEGACY_REPO_ID, name, file.content)

    files = resolve_model_files(models, progress=False)
    assert (files.tokenizer_dir / "vocab.txt").read_bytes() == VOCAB


def test_outdated_partial_is_discarded(hub: FakeHub, models: Path) -> None:
    stale = models / ".imagereward-download" / f"ImageReward.pt.{'0' * 64}.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 1000)

    files = resolve_model_files(models, progress=False)
    assert files.checkpoint.read_bytes() == CHECKPOINT
    assert not stale.exists()
    assert [r.range for r in hub.requests_for("ImageReward.pt", "GET")] == [None]


def test_default_models_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGEREWARD_HOME", str(tmp_path / "ir"))
    assert default_models_dir() == tmp_path / "ir"
    monkeypatch.delenv("IMAGEREWARD_HOME")
    assert default_models_dir() == Path.home() / ".cache" / "imagereward"


def test_default_models_dir_is_used(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGEREWARD_HOME", str(tmp_path / "home-ir"))
    files = resolve_model_files(progress=False)
    assert files.models_dir == tmp_path / "home-ir"
    assert files.checkpoint.read_bytes() == CHECKPOINT
