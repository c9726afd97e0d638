"""Scoring collections into a store: same scores as the library, incremental re-runs, every input kind, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

from imagereward.collection.pipeline import Progress, score_collection
from imagereward.collection.sources import (
    FileSource,
    ParquetSource,
    PathListSource,
    ShardSource,
    SourceError,
    split_member,
)
from imagereward.collection.store import ResultStore
from tests.collection_data import PROMPTS, image_bytes, write_images, write_paths_parquet, write_shard

REPO = Path(__file__).resolve().parents[1]


def scores_by_key(store: Path) -> dict[str, float | None]:
    table = ResultStore(store).read(["key", "ImageReward"])
    return dict(zip(table["key"].to_pylist(), table["ImageReward"].to_pylist(), strict=True))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("collection")
    write_images(root / "imgs", 10)
    write_images(root / "imgs" / "sub", 3, start=100)
    return root / "imgs"


def test_scores_equal_the_librarys_and_decode_workers_change_nothing(tmp_path: Path, folder: Path, scorer) -> None:
    seen: list[Progress] = []
    summary = score_collection(
        FileSource([str(folder)], recursive=True), tmp_path / "a", scorer=scorer, batch_size=4, progress=seen.append
    )
    assert (summary.scored, summary.failed, summary.skipped, summary.total) == (13, 0, 0, 13)
    got = scores_by_key(tmp_path / "a")
    paths = sorted(got)
    prompts = [PROMPTS[int(Path(p).stem) % 3] for p in paths]
    expected = scorer.score(prompts, paths)
    assert [got[p] for p in paths] == pytest.approx(expected, abs=1e-5)
    assert seen[-1].done == seen[-1].total == 13 and seen[-1].images_per_s >= 0
    assert len({round(s, 6) for s in expected}) > 5  # the images really differ

    score_collection(FileSource([str(folder)], recursive=True), tmp_path / "b", scorer=scorer, batch_size=4, workers=2)
    other = scores_by_key(tmp_path / "b")
    assert other.keys() == got.keys()
    # Decode workers may group other images into a batch, so prompts pad to other lengths: float32 rounding (a few
    # ulps, seen at 1.01e-6 on one CI machine), never a different score.
    assert [other[k] for k in paths] == pytest.approx([got[k] for k in paths], abs=1e-5)


def test_not_recursive_lists_only_the_top_folder(tmp_path: Path, folder: Path, scorer) -> None:
    summary = score_collection(FileSource([str(folder)]), tmp_path / "s", scorer=scorer)
    assert summary.scored == 10


def test_rerun_scores_only_new_and_changed_images(tmp_path: Path, scorer) -> None:
    imgs = tmp_path / "imgs"
    write_images(imgs, 6)
    store = tmp_path / "store"
    first = score_collection(FileSource([str(imgs)]), store, scorer=scorer)
    assert (first.scored, first.skipped) == (6, 0)
    before = scores_by_key(store)

    again = score_collection(FileSource([str(imgs)]), store, scorer=scorer)
    assert (again.scored, again.skipped, again.total) == (0, 6, 6)
    assert scores_by_key(store) == before

    write_images(imgs, 2, start=6)  # two new images
    changed = imgs / "00001.png"
    changed.write_bytes(image_bytes(999, prompt="a bowl of ramen"))  # new content and prompt
    third = score_collection(FileSource([str(imgs)]), store, scorer=scorer)
    assert (third.scored, third.skipped, third.total) == (3, 5, 8)
    after = scores_by_key(store)
    assert len(after) == 8
    assert after[str(changed)] == pytest.approx(scorer.score("a bowl of ramen", [changed])[0], abs=1e-5)
    assert after[str(changed)] != pytest.approx(before[str(changed)], abs=1e-4)
    assert ResultStore(store).read(raw=True).num_rows == 8  # compacted: every key once

    forced = score_collection(FileSource([str(imgs)]), store, scorer=scorer, rescore=True)
    assert (forced.scored, forced.skipped) == (8, 0)
    assert scores_by_key(store) == pytest.approx(after, abs=1e-5)  # other batches than the partial runs: rounding

    fixed = score_collection(FileSource([str(imgs)]), store, scorer=scorer, prompt="a cat")
    assert fixed.scored == 8  # another prompt is another score


def test_unreadable_images_and_missing_prompts_become_rows_not_crashes(tmp_path: Path, scorer) -> None:
    imgs = tmp_path / "imgs"
    write_images(imgs, 2)
    (imgs / "broken.png").write_bytes(b"not an image")
    (imgs / "plain.png").write_bytes(image_bytes(5))  # no infotext
    summary = score_collection(FileSource([str(imgs)]), tmp_path / "s", scorer=scorer)
    assert (summary.scored, summary.failed) == (2, 2)
    table = ResultStore(tmp_path / "s").read()
    errors = {Path(k).name: e for k, e in zip(table["key"].to_pylist(), table["error"].to_pylist(), strict=True)}
    assert "not a readable image" in errors["broken.png"]
    assert "no prompt" in errors["plain.png"]
    assert errors["00000.png"] is None
    again = score_collection(FileSource([str(imgs)]), tmp_path / "s", scorer=scorer)
    assert again.scored + again.failed == 0  # unchanged failures are not retried


def test_a_failed_image_first_in_a_batch_leaves_every_other_score_on_its_own_row(tmp_path: Path, scorer) -> None:
    """The batch's scores are for its readable images only: each must land on its own image's row, not shifted by the
    failed one before it."""
    imgs = tmp_path / "imgs"
    good = write_images(imgs, 5, start=1)
    (imgs / "00000.png").write_bytes(b"not an image")
    listed = tmp_path / "list.txt"  # a list keeps its order: the broken image is the first item of the first batch
    listed.write_text("\n".join(str(p) for p in [imgs / "00000.png", *good]), encoding="utf-8")
    summary = score_collection(PathListSource(str(listed)), tmp_path / "s", scorer=scorer, batch_size=4)
    assert (summary.scored, summary.failed) == (5, 1)
    got = scores_by_key(tmp_path / "s")
    assert got[str(imgs / "00000.png")] is None
    for path in good:
        alone = scorer.score(PROMPTS[int(path.stem) % 3], [path])[0]
        assert got[str(path)] == pytest.approx(alone, abs=1e-5), path.name
    assert len({round(got[str(p)], 5) for p in good}) == len(good)  # distinct, so a shift would show


def test_tar_shards_with_txt_and_json_captions(tmp_path: Path, scorer) -> None:
    pairs = write_shard(tmp_path / "shards" / "00000.tar", 0, 5, caption="txt")
    pairs += write_shard(tmp_path / "shards" / "00001.tar", 5, 4, caption="json")
    pairs += write_shard(tmp_path / "shards" / "00002.tar", 9, 3, caption="both")
    store = tmp_path / "store"
    summary = score_collection(
        ShardSource([str(tmp_path / "shards" / "*.tar")]), store, scorer=scorer, workers=2, batch_size=4
    )
    assert (summary.scored, summary.failed, summary.total) == (12, 0, 12)
    table = ResultStore(store).read()
    rows = {r["key"].rsplit("#", 1)[1]: r for r in table.to_pylist()}
    assert sorted(rows) == sorted(k for k, _ in pairs)
    import io

    from PIL import Image

    for key, prompt in pairs:
        assert rows[key]["prompt"] == prompt  # .txt wins over .json
        assert rows[key]["member"] == f"{key}.jpg"
        image = Image.open(io.BytesIO(image_bytes(int(key), fmt="JPEG")))
        assert rows[key]["ImageReward"] == pytest.approx(scorer.score(prompt, [image])[0], abs=1e-5)
    again = score_collection(ShardSource([str(tmp_path / "shards") + "/*.tar"]), store, scorer=scorer)
    assert (again.scored, again.skipped) == (0, 12)


def test_a_broken_shard_is_reported_and_the_others_are_scored(tmp_path: Path, scorer) -> None:
    write_shard(tmp_path / "a.tar", 0, 3)
    (tmp_path / "b.tar").write_bytes(b"\x00garbage" * 100)
    summary = score_collection(ShardSource([str(tmp_path / "*.tar")]), tmp_path / "s", scorer=scorer)
    assert summary.scored == 3
    assert len(summary.problems) == 1 and "b.tar" in summary.problems[0]


def test_paths_file_and_parquet_input(tmp_path: Path, scorer) -> None:
    images = write_images(tmp_path / "imgs", 4)
    (tmp_path / "list.txt").write_text("# my picks\nimgs/00000.png\n\n" + f"{images[2]}\nimgs/missing.png\n")
    summary = score_collection(PathListSource(str(tmp_path / "list.txt")), tmp_path / "s1", scorer=scorer)
    assert (summary.scored, summary.failed) == (2, 1)
    listed = scores_by_key(tmp_path / "s1")
    assert listed[str(tmp_path / "imgs" / "missing.png")] is None

    write_paths_parquet(
        tmp_path / "in.parquet", [Path("imgs") / p.name for p in images], ["a cat", None, "a dog", None]
    )
    summary = score_collection(ParquetSource(str(tmp_path / "in.parquet")), tmp_path / "s2", scorer=scorer)
    assert summary.scored == 4
    got = scores_by_key(tmp_path / "s2")
    assert got[str(images[0])] == pytest.approx(scorer.score("a cat", [images[0]])[0], abs=1e-5)
    assert got[str(images[1])] == pytest.approx(scorer.score(PROMPTS[1], [images[1]])[0], abs=1e-5)  # infotext
    assert got[str(images[0])] != pytest.approx(listed[str(images[0])], abs=1e-4)  # its own prompt, not infotext's


def test_sources_refuse_what_they_cannot_list(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or folder"):
        FileSource([str(tmp_path / "nope")])
    with pytest.raises(SourceError, match="no tar shard matches"):
        ShardSource([str(tmp_path / "*.tar")])
    (tmp_path / "x.parquet").write_bytes(b"nope")
    with pytest.raises(SourceError, match="not a readable Parquet"):
        ParquetSource(str(tmp_path / "x.parquet"))
    assert split_member("dir/000123.seg.png") == ("dir/000123", ".seg.png")


def test_partitions_cover_every_item_once(tmp_path: Path, folder: Path) -> None:
    source = FileSource([str(folder)], recursive=True)
    whole = sorted(i.key for i in source.items())
    parts = [i.key for part in range(3) for i in source.items(part, 3)]
    assert sorted(parts) == whole and len(whole) == 13


CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from imagereward.collection.pipeline import score_collection
from imagereward.collection.sources import FileSource
from imagereward.scorer import ImageRewardScorer

scorer = ImageRewardScorer.load({models!r}, device="cpu", offline=True, progress=False, batch_size=2)
def slow(progress):
    print("batch", progress.done, flush=True)
    time.sleep({delay})
score_collection(FileSource([{imgs!r}]), {store!r}, scorer=scorer, batch_size=2, flush_rows=4, progress=slow)
print("finished", flush=True)
"""


def run_child(tmp_path: Path, model_dir: Path, imgs: Path, store: Path, delay: float) -> subprocess.Popen:
    script = tmp_path / f"child-{delay}.py"
    script.write_text(
        textwrap.dedent(CHILD).format(
            repo=str(REPO), models=str(model_dir), imgs=str(imgs), store=str(store), delay=delay
        )
    )
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("kill_after_parts", [1, 3])
def test_killed_run_then_rerun_equals_an_uninterrupted_run(
    tmp_path: Path, model_dir: Path, scorer, kill_after_parts: int
) -> None:
    imgs = tmp_path / "imgs"
    write_images(imgs, 24)
    store = tmp_path / "killed"
    child = run_child(tmp_path, model_dir, imgs, store, delay=0.15)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (store / ".imagereward-store").exists() and len(ResultStore(store).parts()) >= kill_after_parts:
            break
        assert child.poll() is None, child.communicate()
        time.sleep(0.02)
    assert child.poll() is None, "the run finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    partial = ResultStore(store).read()
    assert 0 < partial.num_rows < 24  # killed midway, some rows on disk

    resumed = score_collection(FileSource([str(imgs)]), store, scorer=scorer, batch_size=2)
    assert resumed.skipped == partial.num_rows and resumed.scored == 24 - partial.num_rows
    score_collection(FileSource([str(imgs)]), tmp_path / "whole", scorer=scorer, batch_size=2)

    raw = ResultStore(store).read(raw=True)
    keys = raw["key"].to_pylist()
    assert len(keys) == len(set(keys)) == 24  # none lost, none twice
    whole, killed = scores_by_key(tmp_path / "whole"), scores_by_key(store)
    assert killed.keys() == whole.keys()
    # (resumed batches group other images: float32 rounding only, as above)
    assert [killed[k] for k in sorted(whole)] == pytest.approx([whole[k] for k in sorted(whole)], abs=1e-5)
    columns = ["key", "path", "size", "mtime_ns", "prompt", "status", "fingerprint", "model"]
    assert ResultStore(store).read(columns).to_pylist() == ResultStore(tmp_path / "whole").read(columns).to_pylist()


def test_should_stop_keeps_what_was_scored_and_hash_is_recorded(tmp_path: Path, scorer) -> None:
    import hashlib

    imgs = tmp_path / "imgs"
    paths = write_images(imgs, 10)
    calls: list[int] = []

    def stop_after_two(progress: Progress) -> None:
        calls.append(progress.done)

    summary = score_collection(
        FileSource([str(imgs)]),
        tmp_path / "s",
        scorer=scorer,
        batch_size=3,
        hash_files=True,
        progress=stop_after_two,
        should_stop=lambda: len(calls) >= 2,
    )
    assert summary.interrupted and summary.scored == 6 and calls == [3, 6]
    table = ResultStore(tmp_path / "s").read(["key", "sha256"])
    assert table.num_rows == 6
    for key, digest in zip(table["key"].to_pylist(), table["sha256"].to_pylist(), strict=True):
        assert digest == hashlib.sha256(Path(key).read_bytes()).hexdigest()
    rest = score_collection(FileSource([str(imgs)]), tmp_path / "s", scorer=scorer, batch_size=3)
    assert (rest.scored, rest.skipped, rest.interrupted) == (4, 6, False)
    assert sorted(scores_by_key(tmp_path / "s")) == sorted(str(p) for p in paths)
