"""The results store (atomic parts, newest row per key, compaction, locking) and queries over it."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from imagereward.collection.query import Filters, export, query, selected  # noqa: E402
from imagereward.collection.store import ResultStore, StoreError  # noqa: E402


def row(key: str, score: float | None, prompt: str = "a cat", status: str = "scored", fp: int = 1) -> dict:
    return {
        "key": key,
        "path": key,
        "size": 10,
        "mtime_ns": 5,
        "prompt": prompt,
        "score": score,
        "status": status,
        "error": None if status != "error" else "not a readable image",
        "model": "m",
        "scorer": "imagereward test",
        "clean_prompt": True,
        "fingerprint": fp,
        "scored_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
    }


def test_parts_are_read_as_one_table_newest_row_wins(tmp_path: Path) -> None:
    store = ResultStore.create(tmp_path / "s")
    with store.writer() as writer:
        writer.append([row("/a.png", 1.0), row("/b.png", 2.0)])
        writer.append([row("/a.png", 3.0, fp=2)])
    assert len(store.parts()) == 2
    table = store.read()
    assert table.column("key").to_pylist() == ["/a.png", "/b.png"]
    assert table.column("ImageReward").to_pylist() == pytest.approx([3.0, 2.0])
    assert store.read(raw=True).num_rows == 3
    # The folder is an ordinary Parquet dataset.
    assert pq.read_table(store.folder).num_rows == 3


def test_compaction_keeps_the_table_and_leaves_one_part(tmp_path: Path) -> None:
    store = ResultStore.create(tmp_path / "s")
    with store.writer() as writer:
        for i in range(5):
            writer.append([row(f"/{i % 3}.png", float(i))])
        before = store.read().to_pylist()
        writer.compact()
    assert len(store.parts()) == 1
    assert store.read().to_pylist() == before
    assert store.read(raw=True).num_rows == 3  # no key twice
    assert [r["ImageReward"] for r in before] == pytest.approx([3.0, 4.0, 2.0])


def test_a_killed_writes_temporary_file_is_ignored_then_cleared(tmp_path: Path) -> None:
    store = ResultStore.create(tmp_path / "s")
    with store.writer() as writer:
        writer.append([row("/a.png", 1.0)])
    (store.folder / ".tmp-deadbeef.parquet").write_bytes(b"PAR1 half a file")
    assert store.read().num_rows == 1
    with store.writer():
        pass
    assert not (store.folder / ".tmp-deadbeef.parquet").exists()


def test_index_knows_keys_and_fingerprints(tmp_path: Path) -> None:
    store = ResultStore.create(tmp_path / "s")
    with store.writer() as writer:
        writer.append([row("/a.png", 1.0, fp=7), row("/b.png", None, status="error", fp=8)])
    index = store.index()
    assert len(index) == 2
    assert index.is_done("/a.png", 7)
    assert not index.is_done("/a.png", 6)
    assert index.is_done("/b.png", 8)  # an unreadable, unchanged image is not tried again
    assert not index.is_done("/c.png", 7)


def test_second_writer_is_refused_while_the_first_holds_the_store(tmp_path: Path) -> None:
    store = ResultStore.create(tmp_path / "s")
    with store.writer(), pytest.raises(StoreError, match="another run"), ResultStore(store.folder).writer():
        pass


def test_store_is_never_made_in_a_folder_of_other_files(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"x")
    with pytest.raises(StoreError, match="holds other files"):
        ResultStore.create(tmp_path / "photos")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        ResultStore.create(tmp_path / "file")
    with pytest.raises(StoreError, match="does not exist"):
        ResultStore.open_existing(tmp_path / "missing")
    assert (tmp_path / "photos" / "a.png").read_bytes() == b"x"


def filled(tmp_path: Path) -> ResultStore:
    store = ResultStore.create(tmp_path / "s")
    rows = [row(f"/img/{i:02d}.png", i / 8 - 1, "a red fox" if i % 2 else "A Lighthouse") for i in range(20)]
    rows.append(row("/img/bad.png", None, status="error"))
    with store.writer() as writer:
        writer.append(rows)
    return store


def test_query_filters_sorts_and_pages(tmp_path: Path) -> None:
    store = filled(tmp_path)
    page = query(store.folder, min_score=-0.5, max_score=0.5, offset=0, limit=4)
    assert page.total == 9  # scores i/8 - 1: -0.5 .. 0.5 inclusive is i = 4 .. 12
    scores = [r["score"] for r in page.rows]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(0.5)
    rest = query(store.folder, min_score=-0.5, max_score=0.5, offset=4, limit=100)
    assert len(rest.rows) == page.total - 4
    assert not {r["key"] for r in rest.rows} & {r["key"] for r in page.rows}
    lighthouse = query(store.folder, prompt_contains="lighthouse", limit=None)
    assert lighthouse.total == 10 and all(r["prompt"] == "A Lighthouse" for r in lighthouse.rows)
    ascending = query(store.folder, descending=False, limit=1)
    assert ascending.rows[0]["score"] == pytest.approx(-1.0)
    assert query(store.folder, limit=None).total == 20  # errors only on request
    assert query(store.folder, include_errors=True, limit=None).total == 21


def test_exports_read_back(tmp_path: Path) -> None:
    store = filled(tmp_path)
    table = selected(store.folder, Filters(min_score=0.0))
    export(table, tmp_path / "out.csv", "csv")
    export(table, tmp_path / "out.json", "json")
    with open(tmp_path / "out.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    data = json.loads((tmp_path / "out.json").read_text())
    assert len(records) == len(data) == table.num_rows == 12
    assert sorted(float(r["ImageReward"]) for r in records) == pytest.approx(sorted(r["ImageReward"] for r in data))
    assert {r["key"] for r in data} == set(table.column("key").to_pylist())
