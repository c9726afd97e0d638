"""Resumes of tar shards that cost nothing when nothing changed (issue 21.4), and output that fits the ecosystem (21.6):
finished shards skipped unlisted, content (not file metadata) deciding, the shard log written only after the rows,
the `shard`/`__key__`/`width`/`height` columns, per-shard Parquet files, Ctrl-C said as such."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

from imagereward.collection import sources
from imagereward.collection.pipeline import score_collection
from imagereward.collection.sources import FileSource, ShardSource, shard_names
from imagereward.collection.store import ResultStore
from imagereward.errors import ImageRewardError
from tests.collection_data import PROMPTS, _add, image_bytes, write_images, write_shard

REPO = Path(__file__).resolve().parents[1]


def shards(folder: Path, count: int, per: int = 4) -> Path:
    for s in range(count):
        write_shard(folder / f"{s:05d}.tar", s * per, per)
    return folder


def scores(store: Path) -> dict[str, float | None]:
    table = ResultStore(store).read(["key", "ImageReward"])
    return dict(zip(table["key"].to_pylist(), table["ImageReward"].to_pylist(), strict=True))


def run(folder: Path, store: Path, scorer, **options):
    return score_collection(ShardSource([str(folder / "*.tar")]), store, scorer=scorer, batch_size=3, **options)


def test_a_finished_shard_is_not_listed_again(tmp_path: Path, scorer, monkeypatch: pytest.MonkeyPatch) -> None:
    data = shards(tmp_path / "data", 3)
    first = run(data, tmp_path / "store", scorer)
    assert (first.scored, first.skipped, first.total) == (12, 0, 12)
    opened: list[str] = []
    real_open = tarfile.open

    def counting(name, *args, **kwargs):
        opened.append(str(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(sources.tarfile, "open", counting)
    again = run(data, tmp_path / "store", scorer)
    assert (again.scored, again.failed, again.skipped, again.total) == (0, 0, 12, 12)
    assert opened == []  # no header of a finished shard is read
    write_shard(data / "00003.tar", 100, 4)  # a new shard: only it is listed
    more = run(data, tmp_path / "store", scorer)
    assert (more.scored, more.skipped, more.total) == (4, 12, 16)
    assert {Path(p).name for p in opened} == {"00003.tar"}


def test_a_copied_or_touched_shard_is_not_scored_again(tmp_path: Path, scorer) -> None:
    data = shards(tmp_path / "data", 2)
    run(data, tmp_path / "store", scorer)
    before = scores(tmp_path / "store")
    shutil.copytree(data, tmp_path / "elsewhere", copy_function=shutil.copy2)  # cp -p
    moved = run(tmp_path / "elsewhere", tmp_path / "store", scorer)
    assert (moved.scored, moved.skipped) == (0, 8)
    for tar in data.glob("*.tar"):
        os.utime(tar, ns=(time.time_ns(), time.time_ns() + 10**9))  # touch
    touched = run(data, tmp_path / "store", scorer)
    assert (touched.scored, touched.skipped) == (0, 8)
    # Without the shard log too (each member compared): a plain copy (new mtimes) keeps its members' fingerprints.
    shutil.rmtree(tmp_path / "store" / "_shards")
    shutil.copytree(data, tmp_path / "plain", copy_function=shutil.copy)
    relisted = run(tmp_path / "plain", tmp_path / "store", scorer)
    assert (relisted.scored, relisted.skipped) == (0, 8)
    assert scores(tmp_path / "store") == before
    assert sorted(before) == [f"0000{i // 4}.tar#{i:09d}" for i in range(8)]


def rewrite(path: Path, members: dict[int, tuple[bytes, str]]) -> None:
    with tarfile.open(path, "w") as archive:
        for i, (image, prompt) in sorted(members.items()):
            _add(archive, f"{i:09d}.jpg", image)
            _add(archive, f"{i:09d}.txt", prompt.encode())


def test_a_changed_shard_scores_exactly_the_changed_members(tmp_path: Path, scorer) -> None:
    members = {i: (image_bytes(i, fmt="JPEG"), PROMPTS[i % 3]) for i in range(5)}
    (tmp_path / "d").mkdir()
    rewrite(tmp_path / "d" / "00000.tar", members)
    run(tmp_path / "d", tmp_path / "store", scorer)
    old = {r["key"]: r["scored_at"] for r in ResultStore(tmp_path / "store").read(["key", "scored_at"]).to_pylist()}
    members[2] = (image_bytes(1002, fmt="JPEG"), members[2][1])  # a new image under key 2
    members[3] = (members[3][0], "another caption")  # a new caption of image 3
    members[5] = (image_bytes(5, fmt="JPEG"), PROMPTS[2])  # a member added
    rewrite(tmp_path / "d" / "00000.tar", members)
    changed = run(tmp_path / "d", tmp_path / "store", scorer)
    assert (changed.scored, changed.skipped, changed.total) == (3, 3, 6)
    table = ResultStore(tmp_path / "store").read(["key", "scored_at", "prompt"])
    new = {r["key"]: r for r in table.to_pylist()}
    rescored = {key for key, row in new.items() if old.get(key) != row["scored_at"]}
    assert rescored == {"00000.tar#000000002", "00000.tar#000000003", "00000.tar#000000005"}
    assert new["00000.tar#000000003"]["prompt"] == "another caption"
    assert run(tmp_path / "d", tmp_path / "store", scorer).scored == 0


def test_a_damaged_part_set_aside_makes_its_shards_listed_and_scored_again(tmp_path: Path, scorer) -> None:
    data = shards(tmp_path / "data", 2)
    run(data, tmp_path / "store", scorer, flush_rows=4)
    parts = ResultStore(tmp_path / "store").parts()
    assert len(parts) == 1  # (compacted after the run)
    parts[0].write_bytes(parts[0].read_bytes()[:100])  # cut short: set aside by the next reader
    again = run(data, tmp_path / "store", scorer)
    assert (again.scored, again.skipped) == (8, 0)
    assert len(scores(tmp_path / "store")) == 8


def test_the_new_columns(tmp_path: Path, scorer) -> None:
    write_shard(tmp_path / "a" / "00000.tar", 0, 2, size=48)
    write_shard(tmp_path / "b" / "00000.tar", 10, 1)  # the same base name: named by the path under the common folder
    run_source = ShardSource([str(tmp_path / "a" / "*.tar"), str(tmp_path / "b" / "*.tar")])
    score_collection(run_source, tmp_path / "s", scorer=scorer)
    rows = ResultStore(tmp_path / "s").read(["key", "shard", "__key__", "width", "height", "member"]).to_pylist()
    assert rows == [
        {"key": "a/00000.tar#000000000", "shard": "a/00000.tar", "__key__": "000000000", "width": 48, "height": 48,
         "member": "000000000.jpg"},
        {"key": "a/00000.tar#000000001", "shard": "a/00000.tar", "__key__": "000000001", "width": 48, "height": 48,
         "member": "000000001.jpg"},
        {"key": "b/00000.tar#000000010", "shard": "b/00000.tar", "__key__": "000000010", "width": 32, "height": 32,
         "member": "000000010.jpg"},
    ]  # fmt: skip
    write_images(tmp_path / "imgs", 1, size=40)
    score_collection(FileSource([str(tmp_path / "imgs")]), tmp_path / "f", scorer=scorer)
    (row,) = ResultStore(tmp_path / "f").read(["shard", "__key__", "width", "height"]).to_pylist()
    assert row == {"shard": None, "__key__": None, "width": 40, "height": 40}
    assert shard_names(["/x/a/00000.tar", "/x/b/00000.tar", "/x/b/00001.tar"]) == [
        "a/00000.tar",
        "b/00000.tar",
        "00001.tar",
    ]


def test_a_store_written_before_the_new_columns_still_reads_and_is_resumed(tmp_path: Path, scorer) -> None:
    import pyarrow.parquet as pq

    write_images(tmp_path / "imgs", 3)
    score_collection(FileSource([str(tmp_path / "imgs")]), tmp_path / "s", scorer=scorer)
    (part,) = ResultStore(tmp_path / "s").parts()
    table = pq.read_table(part)
    pq.write_table(table.drop_columns(["shard", "__key__", "width", "height"]), part)  # as an older version wrote it
    rows = ResultStore(tmp_path / "s").read(["key", "shard", "width"]).to_pylist()
    assert len(rows) == 3 and all(r["shard"] is None and r["width"] is None for r in rows)
    again = score_collection(FileSource([str(tmp_path / "imgs")]), tmp_path / "s", scorer=scorer)
    assert (again.scored, again.skipped) == (0, 3)  # files keep their keys and fingerprints


CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from imagereward.collection.pipeline import score_collection
from imagereward.collection.sources import ShardSource
from imagereward.scorer import ImageRewardScorer

scorer = ImageRewardScorer.load({models!r}, device="cpu", offline=True, progress=False, batch_size=2)
def slow(progress):
    print("batch", progress.done, flush=True)
    time.sleep(0.15)
score_collection(ShardSource([{data!r} + "/*.tar"]), {store!r}, scorer=scorer, batch_size=2, flush_rows=3,
                 progress=slow)
print("finished", flush=True)
"""


def marked(store: Path) -> dict[str, int]:
    return {name: mark.members for name, mark in ResultStore(store).shard_log().read().items()}


def test_a_run_killed_mid_shard_resumes_and_marks_follow_the_rows(tmp_path: Path, model_dir: Path, scorer) -> None:
    data = shards(tmp_path / "data", 3, per=5)
    store = tmp_path / "store"
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(CHILD).format(repo=str(REPO), models=str(model_dir), data=str(data), store=str(store))
    )
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # killed once the first shard is marked and the second begun
        if (store / "_shards").is_dir() and marked(store) and ResultStore(store).read(["key"]).num_rows > 6:
            break
        assert child.poll() is None, child.communicate()
        time.sleep(0.02)
    assert child.poll() is None, "the run finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    rows = ResultStore(store).read(["shard"])["shard"].to_pylist()
    done = marked(store)
    assert 0 < len(rows) < 15 and "00002.tar" not in done
    for name, members in done.items():  # every mark stands for rows on disk
        assert rows.count(name) == members == 5

    resumed = run(data, store, scorer)
    assert resumed.scored == 15 - len(rows) and resumed.skipped == len(rows)
    assert marked(store) == {"00000.tar": 5, "00001.tar": 5, "00002.tar": 5}
    run(data, tmp_path / "whole", scorer)
    whole, killed = scores(tmp_path / "whole"), scores(store)
    assert killed.keys() == whole.keys()
    assert [killed[k] for k in sorted(whole)] == pytest.approx([whole[k] for k in sorted(whole)], abs=1e-5)


def test_per_shard_results(tmp_path: Path, scorer) -> None:
    import pyarrow.parquet as pq

    data = shards(tmp_path / "data", 2, per=3)
    out = tmp_path / "out"
    stopped = run(data, tmp_path / "store", scorer, per_shard_dir=out, should_stop=lambda: True)  # one batch
    assert stopped.interrupted and not (out / "00000.parquet").exists()  # its shard did not finish
    run(data, tmp_path / "store", scorer, per_shard_dir=out)  # resumed: the shard's file holds all its rows
    for s in range(2):
        table = pq.read_table(out / f"{s:05d}.parquet")
        assert table["__key__"].to_pylist() == [f"{i:09d}" for i in range(s * 3, s * 3 + 3)]
        assert set(table["shard"].to_pylist()) == {f"{s:05d}.tar"} and None not in table["ImageReward"].to_pylist()
    assert sorted(p.name for p in out.iterdir()) == ["00000.parquet", "00001.parquet"]

    write_shard(data / "00002.tar", 50, 2)
    (out / "00002.parquet").write_bytes(b"a user's file")
    with pytest.raises(ImageRewardError, match=r"00002\.parquet exists and was not written by imagereward"):
        run(data, tmp_path / "store", scorer, per_shard_dir=out)
    assert (out / "00002.parquet").read_bytes() == b"a user's file"


def test_per_shard_dir_on_the_command_line_refuses_in_one_line(tmp_path: Path, model_dir: Path, capsys) -> None:
    from imagereward.collection.cli import main

    write_shard(tmp_path / "00000.tar", 0, 2)
    (tmp_path / "00000.parquet").write_bytes(b"img2dataset's metadata")  # beside the shard, as img2dataset writes it
    base = ["--store", str(tmp_path / "s"), "--models-dir", str(model_dir), "--offline", "--device", "cpu", "-q"]
    argv = ["--shards", str(tmp_path / "*.tar"), "--per-shard-dir", str(tmp_path), "--workers", "0", *base]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "00000.parquet exists and was not written by imagereward" in err
    assert main([str(tmp_path), "--per-shard-dir", str(tmp_path / "o"), *base]) == 2  # shards only


INTERRUPTED = """
import sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from imagereward.scorer import ImageRewardScorer
from imagereward.collection.cli import main

real = ImageRewardScorer.score_pixels
calls = []
def slow(self, *args, **kwargs):
    calls.append(1)
    Path({flag!r}).write_text(str(len(calls)))  # (the batch before this one is in the run's rows)
    time.sleep(0.2)
    return real(self, *args, **kwargs)
ImageRewardScorer.score_pixels = slow
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("workers", [0, 1])
def test_ctrl_c_says_the_run_was_interrupted(tmp_path: Path, model_dir: Path, workers: int) -> None:
    write_images(tmp_path / "imgs", 40)
    flag = tmp_path / "scoring"
    argv = [str(tmp_path / "imgs"), "--store", str(tmp_path / "s"), "--models-dir", str(model_dir), "--offline"]
    argv += ["--device", "cpu", "--batch-size", "2", "--workers", str(workers), "-q"]
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(INTERRUPTED).format(repo=str(REPO), flag=str(flag), argv=argv))
    child = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not (flag.exists() and flag.read_text() not in ("", "1")) and time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()
        time.sleep(0.02)
    os.killpg(child.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "interrupted: " in err and "the next run goes on from there" in err, err
    assert "Traceback" not in err
    kept = ResultStore(tmp_path / "s").read(["key"]).num_rows
    assert 0 < kept < 40 and f"{kept} scored" in err, err


def test_the_index_holds_only_the_rows_of_the_shards_to_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagereward.collection import store as store_module

    results = ResultStore.create(tmp_path / "s")
    rows = [
        {"key": f"{s}#{i}", "shard": s, "fingerprint": i, "status": "scored"}
        for s in ("a.tar", "b.tar")
        for i in range(3)
    ]
    rows += [{"key": "/imgs/x.png", "fingerprint": 7, "status": "scored"}]  # a file: no shard
    with results.writer() as writer:
        writer.append(rows)
        writer.append([{"key": "b.tar#0", "shard": "b.tar", "fingerprint": 99, "status": "scored"}])  # newer
    hashed: list[str] = []
    real = store_module.key_hash
    monkeypatch.setattr(store_module, "key_hash", lambda key: hashed.append(key) or real(key))
    assert len(results.index(set())) == 0 and hashed == []  # every shard finished: nothing read
    only_b = results.index({"b.tar"})
    assert sorted(hashed) == ["b.tar#0", "b.tar#0", "b.tar#1", "b.tar#2"]  # a's rows and the file's are not hashed
    assert len(only_b) == 3 and only_b.is_done("b.tar#0", 99) and not only_b.is_done("b.tar#0", 0)
    assert not only_b.is_done("a.tar#1", 1)
    assert len(results.index()) == 7  # (files: every row, as before)
