"""The Ray Data job on a local Ray instance (2 CPUs): the same scores as the single-process path, and resumable."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pyarrow")
ray = pytest.importorskip("ray")

from imagereward.collection.pipeline import score_collection  # noqa: E402
from imagereward.collection.ray_job import run_ray  # noqa: E402
from imagereward.collection.sources import FileSource, ParquetSource, PathListSource, ShardSource  # noqa: E402
from imagereward.collection.store import ResultStore  # noqa: E402
from tests.collection_data import write_images, write_paths_parquet, write_shard  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def rows(store: Path) -> dict[str, dict]:
    columns = ["key", "member", "prompt", "ImageReward", "HPSv2.1", "status", "fingerprint", "size", "mtime_ns"]
    columns += ["model", "ImageReward weights", "HPSv2.1 weights"]
    return {r["key"]: r for r in ResultStore(store).read(columns).to_pylist()}


def same(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        ra, rb = dict(a[key]), dict(b[key])
        for column in ("ImageReward", "HPSv2.1"):
            assert ra.pop(column) == pytest.approx(rb.pop(column), abs=1e-5), key
        assert ra == rb


def test_ray_gives_the_single_process_scores(tmp_path: Path, local_ray, model_dir: Path, scorer) -> None:
    imgs = tmp_path / "imgs"
    images = write_images(imgs, 7)
    (imgs / "broken.png").write_bytes(b"not an image")
    write_shard(tmp_path / "shards" / "00000.tar", 0, 4, caption="txt")
    write_shard(tmp_path / "shards" / "00001.tar", 4, 3, caption="json")
    write_paths_parquet(tmp_path / "in.parquet", [Path("imgs") / p.name for p in images[:3]], ["a cat", None, "a dog"])
    sources = {
        "files": lambda: FileSource([str(imgs)]),
        "shards": lambda: ShardSource([str(tmp_path / "shards" / "*.tar")]),
        "parquet": lambda: ParquetSource(str(tmp_path / "in.parquet")),
        "list": lambda: PathListSource(str(tmp_path / "list.txt")),
    }
    (tmp_path / "list.txt").write_text("imgs/00001.png\nimgs/missing.png\nimgs/broken.png\n")
    for name, make in sources.items():
        local, distributed = tmp_path / f"{name}-local", tmp_path / f"{name}-ray"
        score_collection(make(), local, scorer=scorer, batch_size=4)
        summary = run_ray(make(), distributed, models_dir=str(model_dir), offline=True, device="cpu", batch_size=4)
        same(rows(distributed), rows(local))
        assert summary.scored + summary.failed == len(rows(local))
    assert rows(tmp_path / "files-ray")[str(imgs / "broken.png")]["status"] == "error"
    assert rows(tmp_path / "list-ray")[str(imgs / "missing.png")]["status"] == "error"

    # Resumable the same way: a second run scores nothing, and a local run over a Ray store finds it complete.
    again = run_ray(sources["shards"](), tmp_path / "shards-ray", models_dir=str(model_dir), offline=True, device="cpu")
    assert again.scored + again.failed == 0
    local_again = score_collection(sources["files"](), tmp_path / "files-ray", scorer=scorer)
    assert (local_again.scored, local_again.skipped) == (0, 8)
    assert ResultStore(tmp_path / "shards-ray").read(raw=True).num_rows == 7


def test_ray_adds_a_scorer_as_the_local_path_does(tmp_path: Path, local_ray, model_dir: Path, scorer) -> None:
    """The Ray job fills the same columns: HPSv2.1 added to an ImageReward store scores only its column, with the
    records and values of the single-process path (each layout made from one decode in the CPU stage)."""
    import shutil

    from imagereward.scorers import hpsv2

    models = tmp_path / "models"
    shutil.copytree(model_dir, models)
    hpsv2.write_random_release(models / "hpsv2.1", size="tiny", seed=3)
    write_shard(tmp_path / "shards" / "00000.tar", 0, 4, caption="txt")
    source = lambda: ShardSource([str(tmp_path / "shards" / "*.tar")])  # noqa: E731
    options = {"models_dir": str(models), "offline": True, "device": "cpu", "batch_size": 4}
    for store in ("local", "ray"):
        score_collection(source(), tmp_path / store, scorer=scorer, batch_size=4)
    score_collection(source(), tmp_path / "local", scorers=("imagereward", "hpsv2.1"), **options)
    summary = run_ray(source(), tmp_path / "ray", scorers=("imagereward", "hpsv2.1"), **options)
    assert summary.scored == 4
    same(rows(tmp_path / "ray"), rows(tmp_path / "local"))
    assert all(r["HPSv2.1"] is not None for r in rows(tmp_path / "ray").values())


def test_complete_files_of_a_killed_ray_run_are_kept(tmp_path: Path, local_ray, model_dir: Path, scorer) -> None:
    imgs = tmp_path / "imgs"
    write_images(imgs, 5)
    done = tmp_path / "done"
    score_collection(FileSource([str(imgs)]), done, scorer=scorer)
    # What a killed Ray run leaves: a staging folder with one complete file and one without its footer.
    store = ResultStore.create(tmp_path / "s")
    staging = store.folder / ".ray-0badf00d"
    staging.mkdir()
    complete = ResultStore(done).parts()[0]
    (staging / "a.parquet").write_bytes(complete.read_bytes())
    (staging / "b.parquet").write_bytes(complete.read_bytes()[:200])
    summary = run_ray(FileSource([str(imgs)]), store.folder, models_dir=str(model_dir), offline=True, device="cpu")
    assert summary.scored == 0  # all five were in the complete file
    assert not staging.exists()
    same(rows(store.folder), rows(done))
