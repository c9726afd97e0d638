"""Transient failures are tried again with growing waits, before the first byte as after it; and why the download
itself is not huggingface_hub's public ``hf_hub_download`` (fake hub on 127.0.0.1; the waits are recorded, not
slept: tests/conftest.py makes them milliseconds)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import imagereward.hub as hubmod
from imagereward.errors import DownloadError
from imagereward.hub import BERT_REPO_ID, IMAGEREWARD_REPO_ID, resolve_model_files
from tests.fake_hub import FakeHub, isolate_hf_env

CHECKPOINT = os.urandom(300_000)
MED_CONFIG = b'{"architectures": ["BertModel"], "hidden_size": 768}'
VOCAB = b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\ncat\n"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as server:
        isolate_hf_env(monkeypatch, tmp_path / "hf-home", server.url)
        monkeypatch.delenv("IMAGEREWARD_DOWNLOAD_STALL_S", raising=False)
        server.add_file(IMAGEREWARD_REPO_ID, "ImageReward.pt", CHECKPOINT, lfs=True)
        server.add_file(IMAGEREWARD_REPO_ID, "med_config.json", MED_CONFIG)
        server.add_file(BERT_REPO_ID, "vocab.txt", VOCAB)
        yield server


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits before each retry, in seconds, with a 1 s first wait (as shipped) and nothing actually slept."""
    recorded: list[float] = []
    monkeypatch.setattr(hubmod, "_BACKOFF_S", 1.0, raising=False)
    monkeypatch.setattr(hubmod, "_BACKOFF_MAX_S", 8.0, raising=False)
    monkeypatch.setattr(hubmod, "_sleep", recorded.append, raising=False)
    return recorded


def statuses(hub: FakeHub, filename: str, method: str) -> list[int]:
    return [r.status for r in hub.requests_for(filename, method)]


# ------------------------------------------------------------------------------------- before the first byte


def test_a_busy_server_at_the_start_of_a_download_is_tried_again(
    hub: FakeHub, tmp_path: Path, waits: list[float]
) -> None:
    """503, 502 and 429 before any byte of the checkpoint arrived: the old code gave up on the first."""
    hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")].get_errors = [503, 502, 429]
    files = resolve_model_files(tmp_path / "models", progress=False)
    assert files.checkpoint.read_bytes() == CHECKPOINT
    assert statuses(hub, "ImageReward.pt", "GET") == [503, 502, 429, 200]
    assert waits == [1.0, 2.0, 4.0]  # doubling


def test_a_busy_hub_at_the_first_question_is_asked_again(hub: FakeHub, tmp_path: Path, waits: list[float]) -> None:
    hub.files[(IMAGEREWARD_REPO_ID, "med_config.json")].head_errors = [503, 500]
    files = resolve_model_files(tmp_path / "models", progress=False)
    assert files.med_config.read_bytes() == MED_CONFIG
    assert statuses(hub, "med_config.json", "HEAD") == [503, 500, 200]
    assert waits == [1.0, 2.0]


def test_a_failed_name_lookup_is_tried_again(
    hub: FakeHub, tmp_path: Path, waits: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS fails twice for the hub (the first question) and twice for the CDN (the checkpoint's GET)."""
    real = socket.getaddrinfo
    failures = {port: 2 for port in (int(hub.url.rsplit(":", 1)[1]), int(hub.cdn_url.rsplit(":", 1)[1]))}

    def flaky(host, port, *args, **kwargs):
        if failures.get(port):
            failures[port] -= 1
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", flaky)
    files = resolve_model_files(tmp_path / "models", progress=False)
    assert files.checkpoint.read_bytes() == CHECKPOINT
    assert failures == dict.fromkeys(failures, 0)
    assert waits == [1.0, 2.0, 1.0, 2.0]  # each request's retries start from the first wait


def test_retries_are_bounded_and_the_last_error_is_said(hub: FakeHub, tmp_path: Path, waits: list[float]) -> None:
    hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")].get_status = 503
    with pytest.raises(DownloadError, match="HTTP 503"):
        resolve_model_files(tmp_path / "models", progress=False)
    assert statuses(hub, "ImageReward.pt", "GET") == [503] * (hubmod._RETRIES + 1)
    assert waits == [1.0, 2.0, 4.0, 8.0][: hubmod._RETRIES]


def test_waits_stop_growing_at_the_cap(hub: FakeHub, tmp_path: Path, waits: list[float], monkeypatch) -> None:
    monkeypatch.setattr(hubmod, "_RETRIES", 6)
    hub.fail_all = 502
    with pytest.raises(DownloadError, match="HTTP 502"):
        resolve_model_files(tmp_path / "models", progress=False)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


@pytest.mark.parametrize("status", [403, 404])
def test_an_answer_that_will_not_change_is_not_retried(
    hub: FakeHub, tmp_path: Path, waits: list[float], status: int
) -> None:
    hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")].get_status = status
    with pytest.raises(DownloadError, match=f"HTTP {status}"):
        resolve_model_files(tmp_path / "models", progress=False)
    assert len(hub.requests_for("ImageReward.pt", "GET")) == 1 and waits == []


def test_a_connection_dropped_again_and_again_resumes_each_time(
    hub: FakeHub, tmp_path: Path, waits: list[float]
) -> None:
    """Dropped after 100 KB, then a 503 before the next byte, then the rest: progress resets the waits."""
    checkpoint = hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")]
    checkpoint.interrupt_after = 100_000
    checkpoint.status_after_interrupt = None
    files = resolve_model_files(tmp_path / "models", progress=False)
    assert files.checkpoint.read_bytes() == CHECKPOINT
    gets = hub.requests_for("ImageReward.pt", "GET")
    assert [g.range for g in gets] == [None, "bytes=100000-"] and waits == [1.0]


# ------------------------------------------------------------------------- why not hf_hub_download itself


def test_hf_hub_download_throws_away_the_bytes_of_a_broken_download(hub: FakeHub, tmp_path: Path) -> None:
    """The installed huggingface_hub: a download broken at a third leaves nothing to resume, so the next try
    fetches the whole file again (for the 1.8 GB checkpoint, on a connection that breaks, it may never finish).
    Ours keeps the bytes and the next run asks only for the rest."""
    from huggingface_hub import hf_hub_download

    checkpoint = hub.files[(IMAGEREWARD_REPO_ID, "ImageReward.pt")]
    checkpoint.interrupt_after, checkpoint.status_after_interrupt = 100_000, 404
    local = tmp_path / "hf-local"
    with pytest.raises(Exception):  # noqa: B017 - whichever HTTP error type this version raises
        hf_hub_download(IMAGEREWARD_REPO_ID, "ImageReward.pt", local_dir=local)
    kept = [p for p in [*local.rglob("*"), *(tmp_path / "hf-home").rglob("*")] if p.is_file() and p.stat().st_size]
    assert not [p for p in kept if p.stat().st_size >= 100_000], kept  # the 100 KB that arrived are gone
    checkpoint.get_status = None
    hub.clear_requests()
    assert Path(hf_hub_download(IMAGEREWARD_REPO_ID, "ImageReward.pt", local_dir=local)).read_bytes() == CHECKPOINT
    assert [(g.range, g.bytes_sent) for g in hub.requests_for("ImageReward.pt", "GET")] == [(None, len(CHECKPOINT))]

    checkpoint.interrupt_after, checkpoint.status_after_interrupt = 100_000, 404
    models = tmp_path / "models"
    with pytest.raises(DownloadError, match="resumes"):
        resolve_model_files(models, progress=False)
    checkpoint.get_status = None
    hub.clear_requests()
    assert resolve_model_files(models, progress=False).checkpoint.read_bytes() == CHECKPOINT
    assert [g.range for g in hub.requests_for("ImageReward.pt", "GET")] == ["bytes=100000-"]


def test_hf_hub_download_has_no_bound_on_a_crawling_download(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 KB/s (200 bytes every 50 ms): hf_hub_download takes it, however long the file (its timeout bounds only
    silence); ours stops it with a message once less than the minimum arrived in a stall period."""
    from huggingface_hub import hf_hub_download

    content = os.urandom(4000)
    hub.add_file(IMAGEREWARD_REPO_ID, "ImageReward.pt", content, lfs=True).trickle = (200, 0.05)
    path = hf_hub_download(IMAGEREWARD_REPO_ID, "ImageReward.pt", local_dir=tmp_path / "hf-local")
    assert Path(path).read_bytes() == content  # no error, no way to ask for one

    monkeypatch.setenv("IMAGEREWARD_DOWNLOAD_STALL_S", "0.3")
    monkeypatch.setattr(hubmod, "_STALL_MIN_BYTES", 16 * 1024)
    with pytest.raises(DownloadError, match="stalled"):
        resolve_model_files(tmp_path / "models", progress=False)
