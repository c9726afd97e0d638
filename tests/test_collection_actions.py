"""Copying and moving by score range: nothing deleted, nothing overwritten, the store follows moved files."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

from imagereward.collection.actions import copy_selection, move_selection, row_bytes
from imagereward.collection.pipeline import score_collection
from imagereward.collection.query import Filters, query
from imagereward.collection.sources import FileSource, ShardSource
from imagereward.collection.store import ResultStore
from tests.collection_data import image_bytes, write_images, write_shard


@pytest.fixture()
def scored(tmp_path: Path, scorer) -> tuple[Path, Path, list[float]]:
    imgs = tmp_path / "imgs"
    write_images(imgs, 8)
    store = tmp_path / "store"
    score_collection(FileSource([str(imgs)]), store, scorer=scorer)
    scores = sorted(r["score"] for r in query(store, limit=None).rows)
    return imgs, store, scores


def test_copy_a_score_range_never_overwrites(scored: tuple[Path, Path, list[float]], tmp_path: Path) -> None:
    imgs, store, scores = scored
    cut = scores[4]  # the four best
    best = tmp_path / "best"
    best.mkdir()
    taken = best / next(Path(r["key"]).name for r in query(store, min_score=cut, limit=1).rows)
    taken.write_bytes(b"someone else's file")
    report = copy_selection(store, best, Filters(min_score=cut))
    assert (report.done, report.renamed, report.already_there, report.problems) == (4, 1, 0, [])
    assert taken.read_bytes() == b"someone else's file"
    copied = sorted(p.name for p in best.iterdir())
    assert len(copied) == 5 and f"{taken.stem}-1.png" in copied
    for name in copied:
        if name != taken.name:
            original = imgs / name.replace("-1.png", ".png")
            assert (best / name).read_bytes() == original.read_bytes()
    assert len(list(imgs.iterdir())) == 8  # originals untouched
    again = copy_selection(store, best, Filters(min_score=cut))
    assert (again.done, again.already_there) == (0, 4)
    assert not [p for p in best.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_move_records_the_new_place_and_a_rerun_scores_nothing(
    scored: tuple[Path, Path, list[float]], tmp_path: Path, scorer
) -> None:
    imgs, store, scores = scored
    low = tmp_path / "low"
    report = move_selection(store, low, Filters(max_score=scores[2]))  # the three worst
    assert (report.done, report.problems) == (3, [])
    assert len(list(imgs.iterdir())) == 5 and len(list(low.iterdir())) == 3
    page = query(store, limit=None)
    assert page.total == 8  # each image once, at its new place for the moved ones
    moved = [r for r in page.rows if r["key"].startswith(str(low))]
    assert sorted(r["score"] for r in moved) == pytest.approx(scores[:3])
    again = score_collection(FileSource([str(imgs), str(low)]), store, scorer=scorer)
    assert (again.scored, again.skipped) == (0, 8)


def test_move_skips_images_changed_since_scoring_and_shard_members(
    scored: tuple[Path, Path, list[float]], tmp_path: Path, scorer
) -> None:
    imgs, store, _ = scored
    changed = imgs / "00000.png"
    changed.write_bytes(image_bytes(1234, prompt="a new prompt"))
    report = move_selection(store, tmp_path / "out", Filters())
    assert report.done == 7 and len(report.problems) == 1 and "changed since" in report.problems[0]
    assert changed.exists()

    write_shard(tmp_path / "s.tar", 0, 2)
    score_collection(ShardSource([str(tmp_path / "s.tar")]), tmp_path / "shard-store", scorer=scorer)
    refused = move_selection(tmp_path / "shard-store", tmp_path / "out2", Filters())
    assert refused.done == 0 and all("copied, not moved" in p for p in refused.problems)
    copied = copy_selection(tmp_path / "shard-store", tmp_path / "out2", Filters())
    assert copied.done == 2
    assert (tmp_path / "out2" / "000000000.jpg").read_bytes() == image_bytes(0, fmt="JPEG")
    assert ResultStore(tmp_path / "shard-store").read().num_rows == 2
    member_rows = query(tmp_path / "shard-store", limit=None).rows
    assert sorted(row_bytes(r) for r in member_rows) == sorted(image_bytes(i, fmt="JPEG") for i in range(2))
    file_row = query(store, limit=1).rows[0]
    assert row_bytes(file_row) == Path(file_row["path"]).read_bytes()


def test_file_names_that_are_not_utf8(tmp_path: Path, scorer) -> None:
    import os

    imgs = tmp_path / "imgs"
    write_images(imgs, 1)
    odd = os.path.join(os.fsdecode(bytes(imgs)), os.fsdecode(b"caf\xe9-\xff.png"))
    try:
        os.rename(imgs / "00000.png", odd)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system does not take names that are not UTF-8")
    store = tmp_path / "store"
    summary = score_collection(FileSource([str(imgs)]), store, scorer=scorer)
    assert summary.scored == 1
    (row,) = query(store, limit=None).rows
    assert row["key"].endswith("caf\\xe9-\\xff.png") and row["path_bytes"] == os.fsencode(odd)
    assert row_bytes(row) == Path(odd).read_bytes()
    assert score_collection(FileSource([str(imgs)]), store, scorer=scorer).skipped == 1
    report = move_selection(store, tmp_path / "moved", Filters())
    assert report.done == 1 and not os.path.exists(odd)
    assert os.path.exists(os.path.join(os.fsdecode(bytes(tmp_path / "moved")), os.fsdecode(b"caf\xe9-\xff.png")))
    again = score_collection(FileSource([str(tmp_path / "moved")]), store, scorer=scorer)
    assert (again.scored, again.skipped) == (0, 1)
