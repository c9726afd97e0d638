"""The WebUI's folder tab, through its plain functions: incremental scoring, paging best first, badges' info, copy and
move (never overwriting, never deleting), the queue lock around each batch."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from imagereward.errors import ImageRewardError
from imagereward.infotext import read_score
from imagereward.webui import collection_tab as tab
from imagereward.webui.folders import FolderPolicy
from tests.collection_data import write_images

pytest.importorskip("pyarrow")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "outputs"
    write_images(out / "txt2img-images", 5)
    write_images(out / "img2img-images", 3, start=5)
    return out


@pytest.fixture
def policy(folder: Path, tmp_path: Path) -> FolderPolicy:
    """A local WebUI whose output folder is `folder`."""
    return FolderPolicy.make(restricted=False, output_folders=[folder], stores_dir=tmp_path / "stores", base=tmp_path)


class CountingLock:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entered = 0

    def __enter__(self) -> None:
        self.lock.acquire()
        self.entered += 1

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_score_browse_copy_move(folder: Path, scorer, tmp_path: Path, policy: FolderPolicy) -> None:
    lock = CountingLock()
    seen: list[tuple[int, int]] = []
    locked = tab.LockedScorer(scorer, lock)
    text = tab.score_folder(folder, locked, policy=policy, progress=lambda d, t, r: seen.append((d, t)))
    assert "8 images, 8 scored, 0 already in the store" in text
    assert lock.entered >= 1 and seen[-1] == (8, 8)  # every batch went through the WebUI's queue lock
    assert "0 scored, 8 already in the store" in tab.score_folder(folder, scorer, policy=policy)  # incremental
    assert (folder / ".imagereward-scores").is_dir()  # an output folder keeps its store with it

    items, info, status, _ = tab.browse(folder, tab.View.of(None, None, "", 1), policy, page_size=5)
    assert len(items) == 5 and "8 image(s) match; page 1 of 2" in status
    scores = [read_score(t) for t in json.loads(info)["infotexts"]]
    assert scores == sorted(scores, reverse=True)  # best first; each badge's infotext carries the score
    assert all(
        caption.startswith(f"{s:.3f}".replace("-0.000", "0.000")) for (_, caption), s in zip(items, scores, strict=True)
    )
    second, _, status, _ = tab.browse(folder, tab.View.of(None, None, "", 2), policy, page_size=5)
    assert len(second) == 3 and "page 2 of 2" in status

    view = tab.View.of((scores[1] + scores[2]) / 2, None, "", 1)  # the 2 best
    assert "2 copied" in tab.copy_or_move(folder, view, tmp_path / "best", move=False, policy=policy)
    assert "0 copied, 2 already there" in tab.copy_or_move(folder, view, tmp_path / "best", move=False, policy=policy)
    before = sorted(p.name for p in folder.rglob("*.png"))
    assert "2 moved" in tab.copy_or_move(folder, view, tmp_path / "keep", move=True, policy=policy)
    assert len(list(folder.rglob("*.png"))) == len(before) - 2 and len(list((tmp_path / "keep").iterdir())) == 2


def test_stop_keeps_what_was_scored(folder: Path, scorer, policy: FolderPolicy) -> None:
    scan = tab.Scan.new()
    scorer.batch_size = 2

    def progress(done: int, total: int, rate: float) -> None:
        scan.stop.set()

    text = tab.score_folder(folder, scorer, policy=policy, progress=progress, scan=scan)
    assert "Stopped" in text
    assert "already in the store" in tab.score_folder(folder, scorer, policy=policy)


def test_clear_messages(tmp_path: Path) -> None:
    policy = FolderPolicy.make(restricted=False, output_folders=[tmp_path], stores_dir=tmp_path / "s", base=tmp_path)
    with pytest.raises(ImageRewardError, match="give a folder"):
        policy.folder("  ")
    with pytest.raises(ImageRewardError, match="is not a folder"):
        policy.folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    items, _, status, page = tab.browse(tmp_path / "empty", tab.View.of("x", None, None, "0"), policy)
    assert items == [] and "has not been scored yet" in status and page == 1
    with pytest.raises(ImageRewardError, match="has not been scored yet"):
        tab.copy_or_move(tmp_path / "empty", tab.View(), tmp_path / "t", move=False, policy=policy)
    with pytest.raises(ImageRewardError, match="give a folder to copy or move"):
        tab.copy_or_move(tmp_path / "empty", tab.View(), " ", move=False, policy=policy)


def test_a_page_past_the_end_shows_the_last_page_and_says_which(folder: Path, scorer, policy: FolderPolicy) -> None:
    """Issue 22.2: *Next page* on a one-page result left Page at 2 with an empty gallery, also after a new Show."""
    tab.score_folder(folder, scorer, policy=policy)
    items, _, status, page = tab.browse(folder, tab.View.of(None, None, "", 2), policy)
    assert len(items) == 8 and page == 1 and "page 1 of 1" in status
    items, _, status, page = tab.browse(folder, tab.View.of(None, None, "", 9), policy, page_size=5)
    assert len(items) == 3 and page == 2 and "page 2 of 2" in status


def test_missing_pyarrow_is_a_sentence(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow":
            raise ImportError("no pyarrow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    import numpy

    monkeypatch.setattr(numpy, "__version__", "2.1.0")
    assert "pip install pyarrow" in tab.needs_pyarrow()
    monkeypatch.setattr(numpy, "__version__", "1.26.2")  # A1111 1.10's NumPy: a pyarrow that still supports it
    assert 'pip install "pyarrow<19"' in tab.needs_pyarrow()
