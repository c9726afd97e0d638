"""Finished tar shards (issue 21.4) with a column per scorer (21.5): the shard log's identity is the run's scorers
and their weights, so adding a scorer lists a finished shard again and scores only the new column there; the
index of the listed shards knows which columns each of their images holds."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

from imagereward.collection import sources
from imagereward.collection.pipeline import score_collection
from imagereward.collection.sources import ShardSource
from imagereward.collection.store import ResultStore
from tests.collection_data import write_shard, write_two_scorer_models

IR, HPS = "ImageReward", "HPSv2.1"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_two_scorer_models(tmp_path_factory.mktemp("models"))


def run(data: Path, store: Path, models: Path, *names: str, **options):
    return score_collection(
        ShardSource([str(data / "*.tar")]), store, scorers=names, models_dir=str(models), device="cpu",
        offline=True, batch_size=3, **options,
    )  # fmt: skip


def test_adding_a_scorer_lists_finished_shards_again_and_scores_only_its_column(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagereward.engine import Scorer

    for s in range(2):
        write_shard(tmp_path / "data" / f"{s:05d}.tar", s * 4, 4)
    store = tmp_path / "store"
    first = run(tmp_path / "data", store, models, "imagereward", per_shard_dir=tmp_path / "out")
    assert (first.scored, first.skipped, first.total) == (8, 0, 8)
    before = {r["key"]: r[IR] for r in ResultStore(store).read(["key", IR]).to_pylist()}

    opened: list[str] = []
    real_open = tarfile.open

    def counting_open(name, *args, **kwargs):
        opened.append(Path(str(name)).name)
        return real_open(name, *args, **kwargs)

    passes: list[tuple[str, ...]] = []
    real_score = Scorer.score_pixels

    def counting_score(self, prompts, pixels, **options):
        passes.extend([self.outputs] * len(pixels))
        return real_score(self, prompts, pixels, **options)

    monkeypatch.setattr(sources.tarfile, "open", counting_open)
    monkeypatch.setattr(Scorer, "score_pixels", counting_score)
    same = run(tmp_path / "data", store, models, "imagereward")
    assert (same.scored, same.skipped, opened, passes) == (0, 8, [], [])  # the same scorer: skipped unlisted

    added = run(tmp_path / "data", store, models, "imagereward", "hpsv2.1", per_shard_dir=tmp_path / "out")
    assert (added.scored, added.skipped, added.total) == (8, 0, 8)
    assert sorted(set(opened)) == ["00000.tar", "00001.tar"]  # listed again, as the run's identity changed
    assert passes == [("hpsv2.1",)] * 8  # only the new column scored
    table = ResultStore(store).read(["key", IR, HPS, "shard", "__key__", "width"]).to_pylist()
    assert {r["key"]: r[IR] for r in table} == pytest.approx(before)
    assert all(r[HPS] is not None and r["shard"] and r["__key__"] and r["width"] for r in table)
    # The per-shard files hold both columns (the rows of the second run held only the new one).
    pq = pytest.importorskip("pyarrow.parquet")
    for s in range(2):
        part = pq.read_table(tmp_path / "out" / f"{s:05d}.parquet").to_pylist()
        assert len(part) == 4 and all(r[IR] is not None and r[HPS] is not None for r in part)

    opened.clear()
    passes.clear()
    both = run(tmp_path / "data", store, models, "imagereward", "hpsv2.1")
    assert (both.scored, both.skipped, opened, passes) == (0, 8, [], [])  # marked for the two scorers now


def test_index_of_listed_shards_knows_each_column(tmp_path: Path, models: Path) -> None:
    for s in range(2):
        write_shard(tmp_path / "data" / f"{s:05d}.tar", s * 4, 4)
    store = tmp_path / "store"
    run(tmp_path / "data", store, models, "imagereward")
    results = ResultStore(store)
    record = results.read([f"{IR} weights"]).column(0).to_pylist()[0]
    assert record
    index = results.index({"00001.tar"}, {IR: record, HPS: "some weights"})
    assert len(index) == 4  # only the listed shard's rows
    entries = [index.get(f"00001.tar#{i:09d}") for i in range(4, 8)]
    assert all(e is not None and e.valid == frozenset({IR}) for e in entries)
    assert index.get("00000.tar#000000000") is None
    assert len(results.index({"00001.tar"}, {IR: "other weights"}).get("00001.tar#000000004").valid) == 0
    assert len(results.index(set(), {IR: record})) == 0


def test_index_of_listed_shards_reads_stores_of_the_single_score_layout(tmp_path: Path) -> None:
    """Parts written with a `shard` column but the earlier ``score``/``model`` columns: ImageReward's, as in `read`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    results = ResultStore.create(tmp_path / "s")
    table = pa.table(
        {
            "key": ["a.tar#1", "a.tar#2", "b.tar#3"],
            "score": [1.0, None, 3.0],
            "model": ["m", "m", "m"],
            "status": ["scored", "error", "scored"],
            "fingerprint": pa.array([1, 2, 3], pa.int64()),
            "shard": ["a.tar", "a.tar", "b.tar"],
        }
    )
    pq.write_table(table, tmp_path / "s" / "part-00000000-0000abcd.parquet")
    index = results.index({"a.tar"}, {IR: "m", HPS: "h"})
    assert len(index) == 2 and index.get("b.tar#3") is None
    first, second = index.get("a.tar#1"), index.get("a.tar#2")
    assert (first.fingerprint, first.model, first.failed, first.valid) == (1, "m", False, frozenset({IR}))
    assert (second.failed, second.valid) == (True, frozenset())
