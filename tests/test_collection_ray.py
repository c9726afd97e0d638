"""The Ray Data job on a local Ray instance (2 CPUs): the same scores as the single-process path, and resumable."""

from __future__ import annotations

import json
import tarfile
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
            if column in ra:
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


def _odd_shards(folder: Path) -> ShardSource:
    """Shards as a real webdataset has them: .jpg and .png keys mixed, keys without a caption, a caption without an
    image, a key with two images, and a .json caption."""
    from tests.collection_data import _add, image_bytes

    def shard(name: str, members: list[tuple[str, bytes]]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(folder / name, "w") as archive:
            for member, data in members:
                _add(archive, member, data)

    shard(
        "00000.tar",
        [
            ("a.jpg", image_bytes(1, fmt="JPEG")),
            ("a.txt", b"a red fox in snow"),
            ("b.png", image_bytes(2, prompt="a lighthouse at dusk")),  # no caption: the PNG's infotext is not read
            ("c.png", image_bytes(3)),
            ("c.txt", b"a bowl of ramen"),
            ("d.txt", b"a caption without an image"),
            ("e.jpg", image_bytes(5, fmt="JPEG")),
            ("e.png", image_bytes(6)),
            ("e.txt", b"two images under one key"),
        ],
    )
    shard(
        "00001.tar",
        [
            ("f.webp", b"not really a webp"),
            ("f.json", json.dumps({"caption": "a broken image"}).encode()),
            ("g.png", image_bytes(7)),
            ("g.json", json.dumps({"caption": "a green field"}).encode()),
            ("h.jpg", image_bytes(8, fmt="JPEG")),
        ],
    )
    return ShardSource([str(folder / "*.tar")])


def store_files_only(store: Path) -> None:
    """Nothing in the store folder but what the store defines: its marker, its lock and parts."""
    names = {p.name for p in store.iterdir()}
    assert names - {".imagereward-store", ".lock"} == {n for n in names if n.startswith("part-")}, names


def test_ray_scores_mixed_shards_as_the_single_process_path(tmp_path: Path, local_ray, model_dir: Path, scorer):
    local, distributed = tmp_path / "local", tmp_path / "ray"
    shards = _odd_shards(tmp_path / "shards")
    score_collection(shards, local, scorer=scorer, batch_size=4)
    summary = run_ray(shards, distributed, models_dir=str(model_dir), offline=True, device="cpu")
    columns = ["key", "member", "prompt", "ImageReward", "status", "error", "fingerprint"]
    got = {r["key"]: r for r in ResultStore(distributed).read(columns).to_pylist()}
    want = {r["key"]: r for r in ResultStore(local).read(columns).to_pylist()}
    same(got, want)
    statuses = {key.rsplit("#", 1)[1]: row["status"] for key, row in got.items()}
    assert statuses["a"] == statuses["c"] == statuses["g"] == "scored"
    assert statuses["b"] == statuses["h"] == statuses["f"] == "error"  # no caption / not an image
    assert "d" not in statuses and len(got) == 8  # a..h without d, and e's second image under a key of its own
    assert (summary.total, summary.skipped, summary.scored + summary.failed) == (8, 0, 8)
    store_files_only(distributed)


def test_rows_that_do_not_come_back_are_one_clear_error(
    tmp_path: Path, local_ray, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagereward.collection import ray_job

    write_images(tmp_path / "imgs", 4)
    real_stream = ray_job._stream

    def losing(ds):  # the driver receives every row but one
        tables = list(real_stream(ds))
        yield from tables[:-1]
        yield tables[-1].slice(0, tables[-1].num_rows - 1)

    monkeypatch.setattr(ray_job, "_stream", losing)
    with pytest.raises(ray_job.RayRunError, match=r"3 row\(s\) came back for 4 image\(s\) to score"):
        run_ray(FileSource([str(tmp_path / "imgs")]), tmp_path / "s", models_dir=str(model_dir), offline=True)
    assert len(rows(tmp_path / "s")) == 3  # what came back is kept
    store_files_only(tmp_path / "s")
    monkeypatch.setattr(ray_job, "_stream", real_stream)
    again = run_ray(FileSource([str(tmp_path / "imgs")]), tmp_path / "s", models_dir=str(model_dir), offline=True)
    assert (again.scored, again.skipped, again.total) == (1, 3, 4)


@pytest.mark.parametrize("how", ["should_stop", "ctrl-c"])
def test_a_stopped_ray_run_keeps_what_came_back(
    tmp_path: Path, local_ray, model_dir: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagereward.collection import ray_job

    write_images(tmp_path / "imgs", 6)
    real_stream = ray_job._stream

    def row_by_row(ds):  # (Ray hands these few rows over in one block)
        for table in real_stream(ds):
            for i in range(table.num_rows):
                yield table.slice(i, 1)

    monkeypatch.setattr(ray_job, "_stream", row_by_row)
    blocks = 0

    def stop() -> bool:
        nonlocal blocks
        blocks += 1
        if how == "ctrl-c":
            raise KeyboardInterrupt
        return True

    source = FileSource([str(tmp_path / "imgs")])
    summary = run_ray(
        source, tmp_path / "s", models_dir=str(model_dir), offline=True, batch_size=2, flush_rows=10**6,
        should_stop=stop,
    )  # fmt: skip
    assert summary.interrupted and blocks == 1
    kept = len(rows(tmp_path / "s"))
    assert kept == summary.scored + summary.failed == 1
    store_files_only(tmp_path / "s")
    monkeypatch.setattr(ray_job, "_stream", real_stream)
    rest = run_ray(FileSource([str(tmp_path / "imgs")]), tmp_path / "s", models_dir=str(model_dir), offline=True)
    assert not rest.interrupted
    assert (rest.scored + rest.failed, rest.skipped, rest.total) == (6 - kept, kept, 6)
    assert len(rows(tmp_path / "s")) == 6


def test_a_failed_ray_run_leaves_only_the_store(tmp_path: Path, local_ray, model_dir: Path) -> None:
    write_images(tmp_path / "imgs", 2)
    from imagereward.collection.ray_job import RayRunError

    # The actors cannot load the model on a GPU this machine lacks: one line, with the cause.
    with pytest.raises(RayRunError, match=r"^Ray run failed: .*CUDA.*; the 0 row\(s\) that came back are in") as failed:
        run_ray(FileSource([str(tmp_path / "imgs")]), tmp_path / "s", models_dir=str(model_dir), device="cuda")
    assert "\n" not in str(failed.value)
    store_files_only(tmp_path / "s")
    assert ResultStore(tmp_path / "s").parts() == []


def test_the_command_line_says_what_a_ray_run_skipped(tmp_path: Path, local_ray, model_dir: Path, capsys) -> None:
    from imagereward.collection.cli import main

    write_images(tmp_path / "imgs", 3)
    args = [str(tmp_path / "imgs"), "--store", str(tmp_path / "s"), "--models-dir", str(model_dir), "--offline"]
    assert main([*args, "--ray", "--device", "cpu", "--limit", "0"]) == 0
    assert "3 scored, 0 failed, 0 already in the store (3 found)" in capsys.readouterr().err
    write_images(tmp_path / "imgs", 1, start=3)
    assert main([*args, "--ray", "--device", "cpu", "--limit", "0"]) == 0
    assert "1 scored, 0 failed, 3 already in the store (4 found)" in capsys.readouterr().err


def test_the_store_may_be_anywhere_the_driver_writes(tmp_path: Path, local_ray, model_dir: Path, scorer) -> None:
    """No worker writes: a store the workers cannot reach at all (the driver's memory) gets every row."""
    pytest.importorskip("fsspec")
    import os

    write_shard(tmp_path / "shards" / "00000.tar", 0, 3)
    write_shard(tmp_path / "shards" / "00001.tar", 3, 2, caption="json")
    url = "memory://bucket/store-" + os.urandom(4).hex()
    summary = run_ray(ShardSource([str(tmp_path / "shards" / "*.tar")]), url, models_dir=str(model_dir), offline=True)
    score_collection(ShardSource([str(tmp_path / "shards" / "*.tar")]), tmp_path / "local", scorer=scorer)
    columns = ["key", "prompt", "ImageReward", "status", "fingerprint"]
    got = {r["key"]: r for r in ResultStore.open_existing(url).read(columns).to_pylist()}
    same(got, {r["key"]: r for r in ResultStore(tmp_path / "local").read(columns).to_pylist()})
    assert (summary.scored, summary.total) == (5, 5)


def test_a_ray_run_scores_into_a_store_on_s3(tmp_path: Path, local_ray, model_dir: Path, s3, capsys) -> None:
    """The command line takes --ray with a store on object storage: the driver writes it, the workers never do."""
    from imagereward.collection.cli import main

    write_shard(tmp_path / "shards" / "00000.tar", 0, 4)
    args = ["--shards", str(tmp_path / "shards" / "*.tar"), "--store", s3.url("store"), "--models-dir", str(model_dir)]
    args += ["--offline", "--device", "cpu", "--ray", "--limit", "0"]
    assert main(args) == 0
    assert "4 scored, 0 failed, 0 already in the store (4 found)" in capsys.readouterr().err
    assert main(args) == 0
    assert "0 scored, 0 failed, 4 already in the store (4 found)" in capsys.readouterr().err
    assert ResultStore.open_existing(s3.url("store")).read(["key"]).num_rows == 4
    assert not [key for key in s3.keys("store/") if ".ray-" in key]
