"""Downloads that stall, crawl, break off or arrive corrupt: a clear message, nothing left that can never be used,
and a partial download that can be resumed kept (fake hub on 127.0.0.1; no timing assertions: each fault is small
enough to end in seconds on the old code too, so a test that fails does so by its assertions)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import imagereward.hub as hubmod
from imagereward.errors import DownloadError
from imagereward.hub import BERT_REPO_ID, IMAGEREWARD_REPO_ID, resolve_model_files
from tests.fake_hub import FakeHub, isolate_hf_env

CHECKPOINT = os.urandom(40 * 1024 + 17)
MED_CONFIG = b'{"architectures": ["BertModel"], "hidden_size": 768}'
VOCAB = b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\ncat\n"
STALL = "IMAGEREWARD_DOWNLOAD_STALL_S"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as server:
        isolate_hf_env(monkeypatch, tmp_path / "hf-home", server.url)
        monkeypatch.delenv(STALL, raising=False)
        server.add_file(IMAGEREWARD_REPO_ID, "ImageReward.pt", CHECKPOINT, lfs=True)
        server.add_file(IMAGEREWARD_REPO_ID, "med_config.json", MED_CONFIG)
        server.add_file(BERT_REPO_ID, "vocab.txt", VOCAB)
        yield server


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"


def download_dir(models: Path) -> list[str]:
    folder = models / ".imagereward-download"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def small_stall(monkeypatch: pytest.MonkeyPatch, seconds: str, min_bytes: int) -> None:
    """A stall period of `seconds` in which at least `min_bytes` must arrive (the default: 1 MB in 60 s)."""
    monkeypatch.setenv(STALL, seconds)
    monkeypatch.setattr(hubmod, "_STALL_MIN_BYTES", min_bytes, raising=False)


# ------------------------------------------------------------------------------------------------------ stalls


def test_a_crawling_download_ends_with_a_message_and_resumes_later(
    hub: FakeHub, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 bytes every 50 ms (4 KB/s: 40 KB would take 10 s) against "at least 16 KB per 0.5 s"."""
    checkpoint = hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")]
    checkpoint.trickle = (200, 0.05)
    small_stall(monkeypatch, "0.5", 16 * 1024)

    with pytest.raises(DownloadError) as excinfo:
        resolve_model_files(models, progress=False)
    message = str(excinfo.value)
    assert "ImageReward.pt" in message and "stalled" in message
    assert STALL in message and "resumes" in message
    [partial] = (models / ".imagereward-download").glob("*.part")
    assert str(partial) in message
    kept = partial.read_bytes()
    assert 0 < len(kept) < len(CHECKPOINT) and kept == CHECKPOINT[: len(kept)]
    assert len(hub.requests_for("ImageReward.pt", "GET")) == 1  # a stall is not retried at once
    assert not (models / "ImageReward.pt").exists()

    checkpoint.trickle = None  # the server is fast again: the next run resumes where the stall left off
    hub.clear_requests()
    files = resolve_model_files(models, progress=False)
    assert files.checkpoint.read_bytes() == CHECKPOINT
    [get] = hub.requests_for("ImageReward.pt", "GET")
    assert get.range == f"bytes={len(kept)}-" and get.bytes_sent == len(CHECKPOINT) - len(kept)
    assert download_dir(models) == []


def test_a_server_that_goes_silent_is_a_stall(hub: FakeHub, models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1 KB, then nothing for 3 s, three times: no bytes for longer than the 0.5 s stall setting."""
    hub.add_file(IMAGEREWARD_REPO_ID, "ImageReward.pt", CHECKPOINT[:3000], lfs=True).trickle = (1000, 3.0)
    small_stall(monkeypatch, "0.5", 1)

    with pytest.raises(DownloadError, match=r"stalled: nothing arrived for 0\.5 s") as excinfo:
        resolve_model_files(models, progress=False)
    assert "ImageReward.pt" in str(excinfo.value) and STALL in str(excinfo.value)


def test_a_slow_but_steady_download_is_not_stopped(hub: FakeHub, models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 KB every 20 ms against "at least 8 KB per second": slow, but never stalled."""
    content = os.urandom(200 * 1024)
    hub.add_file(IMAGEREWARD_REPO_ID, "ImageReward.pt", content, lfs=True).trickle = (8 * 1024, 0.02)
    small_stall(monkeypatch, "1", 8 * 1024)

    files = resolve_model_files(models, progress=False)
    assert files.checkpoint.read_bytes() == content
    assert len(hub.requests_for("ImageReward.pt", "GET")) == 1


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan"])
def test_a_stall_setting_that_is_not_a_number_is_refused(
    hub: FakeHub, models: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(STALL, value)
    with pytest.raises(DownloadError) as excinfo:
        resolve_model_files(models, progress=False)
    assert f"{STALL}={value!r}" in str(excinfo.value) and "positive number of seconds" in str(excinfo.value)
    assert not (models / "ImageReward.pt").exists()


# ------------------------------------------------------------------------------------- what a failure leaves


def test_a_download_cut_before_its_first_byte_leaves_no_empty_part_or_lock(hub: FakeHub, models: Path) -> None:
    checkpoint = hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")]
    checkpoint.interrupt_after = 0  # headers, then the connection drops; later GETs fail
    checkpoint.status_after_interrupt = 503

    with pytest.raises(DownloadError) as excinfo:
        resolve_model_files(models, progress=False)
    assert "ImageReward.pt" in str(excinfo.value) and "kept in" not in str(excinfo.value)  # nothing to resume
    assert download_dir(models) == []  # no 0-byte .part, no download.lock
    assert (models / "med_config.json").read_bytes() == MED_CONFIG  # the small files are installed


def test_a_resumable_part_is_kept_and_leftovers_of_a_killed_run_are_tidied(hub: FakeHub, models: Path) -> None:
    folder = models / ".imagereward-download"
    folder.mkdir(parents=True)
    (folder / "download.lock").write_bytes(b"")  # a killed run's leftovers
    (folder / "med_config.json.noetag.part").write_bytes(b"")
    checkpoint = hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")]
    checkpoint.interrupt_after = 10_000
    checkpoint.status_after_interrupt = 503

    with pytest.raises(DownloadError, match="resumes"):
        resolve_model_files(models, progress=False)
    [part] = [name for name in download_dir(models) if name.endswith(".part")]
    assert part.startswith("ImageReward.pt.") and (folder / part).stat().st_size == 10_000  # kept, to resume

    checkpoint.get_status = None
    resolve_model_files(models, progress=False)
    assert (models / "ImageReward.pt").read_bytes() == CHECKPOINT
    assert download_dir(models) == []  # everything installed: no part, no lock


# ------------------------------------------------------------------------------------------------- corrupt


def test_a_corrupt_download_is_kept_once_said_to_be_ours_and_deleted_after_a_good_one(
    hub: FakeHub, models: Path
) -> None:
    checkpoint = hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")]
    corrupt = models / "ImageReward.pt.corrupt"
    for flip in (1, 2):  # two corrupt downloads in a row: one file, the latest
        bad = bytearray(CHECKPOINT)
        bad[100] ^= flip
        checkpoint.served = bytes(bad)
        with pytest.raises(DownloadError) as excinfo:
            resolve_model_files(models, progress=False)
        message = str(excinfo.value)
        assert str(corrupt) in message and "our own download" in message and "delete it" in message
        assert hashlib.sha256(corrupt.read_bytes()).hexdigest() == hashlib.sha256(bytes(bad)).hexdigest()
        assert [p.name for p in models.glob("*.corrupt*")] == ["ImageReward.pt.corrupt"]

    checkpoint.served = None
    resolve_model_files(models, progress=False)
    assert (models / "ImageReward.pt").read_bytes() == CHECKPOINT
    assert not corrupt.exists()  # our corrupt download is not needed any more
