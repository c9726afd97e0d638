from __future__ import annotations

from pathlib import Path

import pytest

from tests.checkpoints import write_model_dir
from tests.fake_hub import fake_hub  # noqa: F401  (a fixture, shared by the hub and CLI tests)
from tests.s3_server import s3, s3_auth_endpoint, s3_endpoint  # noqa: F401  (local S3 servers, a fresh bucket)


@pytest.fixture(autouse=True)
def _quick_download_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads wait 1 s, doubling up to 8 s, before trying a transient failure again (`hub._RETRIES` times);
    tests keep the retries and their doubling but wait milliseconds."""
    import imagereward.hub as hub

    monkeypatch.setattr(hub, "_BACKOFF_S", 0.001, raising=False)
    monkeypatch.setattr(hub, "_BACKOFF_MAX_S", 0.008, raising=False)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with a small random checkpoint in the release's format, as a download leaves it."""
    return write_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def scorer(model_dir: Path):
    from imagereward.scorer import ImageRewardScorer

    return ImageRewardScorer.load(model_dir, device="cpu", offline=True, progress=False, batch_size=4)
