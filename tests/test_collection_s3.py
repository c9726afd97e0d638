"""Collections on object storage, against a local S3 server (moto, on 127.0.0.1): shards, Parquet lists and the
store on ``s3://``; kill -9 and resume; the lock; damaged parts; credentials never stored or shown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

from imagereward.collection import sources, storage, store_files
from imagereward.collection.cli import main
from imagereward.collection.pipeline import score_collection
from imagereward.collection.prepare import ItemReader, ReadOptions
from imagereward.collection.store import ResultStore, StoreBusyError, rows_to_table
from tests.collection_data import write_images, write_paths_parquet, write_shard
from tests.s3_server import S3, SECRET, s3_environment

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["key", "ImageReward", "status", "prompt"]


@pytest.fixture(autouse=True)
def _quick_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking an object-store lock waits SETTLE_S (1 s) before it reads the lock back; tests wait less in-process."""
    monkeypatch.setattr(store_files.Lease, "SETTLE_S", 0.05)


def base_args(model_dir: Path) -> list[str]:
    return ["--models-dir", str(model_dir), "--offline", "--device", "cpu", "--batch-size", "2"]


def current(store: str | Path) -> dict[str, dict]:
    return {row["key"]: row for row in ResultStore.open_existing(store).read(COLUMNS).to_pylist()}


def same_rows(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert got.keys() == want.keys() and want
    for key, row in want.items():
        other = dict(got[key])
        assert other.pop("ImageReward") == pytest.approx(row["ImageReward"], abs=1e-5), key
        assert other == {k: v for k, v in row.items() if k != "ImageReward"}, key


def shards(tmp_path: Path, s3: S3, counts: tuple[int, ...] = (12, 12)) -> int:
    first = 0
    for n, count in enumerate(counts):
        local = tmp_path / "shards" / f"{n:05d}.tar"
        write_shard(local, first, count, caption="json" if n % 2 else "txt")
        s3.upload(local, f"shards/{n:05d}.tar")
        first += count
    return first


# --------------------------------------------------------------------------------------------------- storage


def test_redact_hides_credentials_and_query_values() -> None:
    url = "s3://AKIAEXAMPLE:hunter2secret@bucket/store?endpoint_override=http%3A%2F%2Fx&session_token=tok123"
    shown = storage.redact(url)
    assert shown == "s3://***@bucket/store?endpoint_override=***&session_token=***"
    assert storage.redact("/local/path?x") == "/local/path?x" and storage.redact("C://x") == "C://x"
    storage.locate("memory://bucket/x?token=tok1234")  # (remembered: scrubbed from texts that quote it)
    assert storage.scrub("denied for tok1234") == "denied for ***"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AWS Error NO_SUCH_BUCKET during ListObjectsV2 operation: The specified bucket does not exist", "bucket"),
        ("AWS Error ACCESS_DENIED during HeadObject operation: No response body.", "access denied"),
        ("AWS Error INVALID_ACCESS_KEY_ID during GetObject operation", "access denied"),
        ("AWS Error NETWORK_CONNECTION during HeadObject: curlCode: 7, Could not connect to server", "cannot reach"),
        ("AWS Error UNKNOWN during ...: Unable to locate credentials", "no credentials"),
    ],
)
def test_storage_errors_are_one_line_saying_what_is_wrong(
    text: str, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")  # (credentials configured: a 403 is "access denied")
    message = str(storage.explain(OSError(text), "s3://bucket/store"))
    assert message.startswith("s3://bucket/store: ") and expected in message and "\n" not in message
    # Without any credentials configured, a refusal says so.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    denied = str(storage.explain(OSError("AWS Error ACCESS_DENIED during HeadObject"), "s3://bucket/store"))
    assert "no credentials found" in denied and "AWS_ACCESS_KEY_ID" in denied


def test_shard_items_on_s3_are_those_of_the_local_shard(
    tmp_path: Path, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards(tmp_path, s3, (7, 5))
    remote = sources.ShardSource([s3.url("shards/*.tar")])
    local = sources.ShardSource([str(tmp_path / "shards" / "*.tar")])
    assert remote.shards == [s3.url("shards/00000.tar"), s3.url("shards/00001.tar")]

    def comparable(source: sources.ShardSource, prefix: str) -> list[tuple]:
        return [(i.key.removeprefix(prefix), i.member, i.offset, i.size, i.caption, i.error) for i in source.items()]

    got = comparable(remote, s3.url("shards/"))
    assert got == comparable(local, str(tmp_path / "shards") + "/") and len(got) == 12
    assert [i.key for i in remote.items(1, 2)] == [i.key for i in remote.items() if "00001.tar" in i.key]
    # Listing a shard and reading its members, as a decode worker does, fetches each shard once (in large ranges).
    fetched: list[int] = []
    readinto = storage._Raw.readinto
    monkeypatch.setattr(storage._Raw, "readinto", lambda self, b: fetched.append(readinto(self, b)) or fetched[-1])
    storage.forget()
    reader = ItemReader(ReadOptions())
    for item in remote.items():
        prepared = reader.prepare(item)
        assert prepared.error is None and prepared.prompt and prepared.pixels[0].shape == (224, 224, 3)
    sizes = [(tmp_path / "shards" / f"{n:05d}.tar").stat().st_size for n in range(2)]
    assert sum(fetched) == sum(sizes) and len([n for n in fetched if n]) == 2
    with pytest.raises(sources.SourceError, match="no tar shard matches"):
        sources.ShardSource([s3.url("nothing/*.tar")])


# ------------------------------------------------------------------------------------------ kill -9 and resume

CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from imagereward.collection import pipeline
from imagereward.collection.cli import main

pipeline.score_collection.__kwdefaults__["flush_rows"] = 4  # a part every 4 rows
scored = pipeline._score_batch

def slowly(*args, **kwargs):
    rows = scored(*args, **kwargs)
    time.sleep({delay})
    return rows

pipeline._score_batch = slowly
sys.exit(main(sys.argv[1:]))
"""


def test_killed_s3_run_resumed_equals_an_uninterrupted_local_run(tmp_path: Path, s3: S3, model_dir: Path) -> None:
    """The acceptance test: shards on s3 scored into an s3 store by the command line, killed (SIGKILL) midway,
    resumed; the rows equal those of one uninterrupted run into a local store."""
    total = shards(tmp_path, s3)
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD).format(repo=str(REPO), delay=0.3))
    argv = ["--shards", s3.url("shards/*.tar"), "--store", s3.url("store"), *base_args(model_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, str(script), *argv, "--workers", "1", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if len([k for k in s3.keys("store/") if "/part-" in k]) >= 2:
            break
        assert child.poll() is None, child.communicate()
        time.sleep(0.05)
    assert child.poll() is None, "the run finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert "store/.lock" in s3.keys("store/")  # the dead run's lock is left behind...
    partial = ResultStore.open_existing(s3.url("store")).read()
    assert 0 < partial.num_rows < total  # killed midway: some rows stored, not all

    # ... and taken over at once, as its process is gone from this host.
    resumed = subprocess.run(
        [sys.executable, "-m", "imagereward.collection", *argv, "--workers", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    done = total - partial.num_rows
    assert f"{done} scored, 0 failed, {partial.num_rows} already in the store ({total} found)" in resumed.stderr

    local = tmp_path / "local-store"
    assert main(["--shards", s3.url("shards/*.tar"), "--store", str(local), *base_args(model_dir), "-q"]) == 0
    same_rows(current(s3.url("store")), current(local))
    raw = ResultStore(s3.url("store")).read(["key"], raw=True)["key"].to_pylist()
    assert len(raw) == len(set(raw)) == total  # none lost, none scored twice
    assert not [k for k in s3.keys("store/") if "/.tmp-" in k or k.endswith("/.lock")]


# ------------------------------------------------------------------------------------------ inputs and outputs


def test_parquet_list_on_s3_and_listing_and_export_from_an_s3_store(
    tmp_path: Path, s3: S3, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = write_images(tmp_path / "imgs", 4)
    for image in images[:2]:
        s3.upload(image, f"lists/imgs/{image.name}")
    # Relative paths: beside the list, on s3; absolute local paths: on this machine.
    listed = [Path("imgs") / images[0].name, Path("imgs") / images[1].name, images[2], images[3]]
    write_paths_parquet(tmp_path / "in.parquet", listed, ["a cat", None, "a dog", "a bird"])
    s3.upload(tmp_path / "in.parquet", "lists/in.parquet")

    store = s3.url("store")
    assert main(["--parquet-in", s3.url("lists/in.parquet"), "--store", store, *base_args(model_dir), "-q"]) == 0
    rows = current(store)
    on_s3 = [s3.url(f"lists/imgs/{image.name}") for image in images[:2]]
    assert sorted(rows) == sorted([*on_s3, str(images[2]), str(images[3])])
    assert all(row["status"] == "scored" for row in rows.values())
    assert rows[s3.url(f"lists/imgs/{images[0].name}")]["prompt"] == "a cat"

    # The same images from disk score the same (the prompt of the second: its infotext, as from s3).
    local_list = tmp_path / "local.parquet"
    write_paths_parquet(local_list, images, ["a cat", None, "a dog", "a bird"])
    assert main(["--parquet-in", str(local_list), "--store", str(tmp_path / "local"), *base_args(model_dir), "-q"]) == 0
    by_name = {Path(k).name: r for k, r in current(tmp_path / "local").items()}
    for key, row in rows.items():
        assert row["ImageReward"] == pytest.approx(by_name[key.rsplit("/", 1)[-1]]["ImageReward"], abs=1e-5)
        assert row["prompt"] == by_name[key.rsplit("/", 1)[-1]]["prompt"]

    # Listing and exports read the s3 store.
    capsys.readouterr()
    best = max(row["ImageReward"] for row in rows.values())
    assert main(["--store", store, "--min-score", str(best)]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines()[1:] if line.strip()]) == 1
    assert main(["--store", store, "-o", str(tmp_path / "all.json"), "-q"]) == 0
    exported = json.loads((tmp_path / "all.json").read_text())
    assert len(exported) == 4 and exported[0]["ImageReward"] == pytest.approx(best)
    assert main(["--store", store, "--check"]) == 0
    assert "healthy" in capsys.readouterr().out

    # Copies come out of object storage too; moves only for local files.
    assert main(["--store", store, "--copy-to", str(tmp_path / "copied")]) == 0
    assert sorted(p.name for p in (tmp_path / "copied").iterdir()) == sorted(p.name for p in images)
    assert all((tmp_path / "copied" / p.name).read_bytes() == p.read_bytes() for p in images)
    assert main(["--store", store, "--move-to", str(tmp_path / "moved")]) == 1
    err = capsys.readouterr().err
    assert err.count("on object storage; it can be copied, not moved") == 2 and "2 moved" in err


def test_the_lock_refuses_a_second_writer_and_takes_over_an_ended_lease(tmp_path: Path, s3: S3) -> None:
    url = s3.url("store")
    ResultStore.create(url)
    with ResultStore(url).writer() as writer:
        writer.append([{"key": "/a", "score": 1.0, "status": "scored"}])
        with pytest.raises(StoreBusyError, match="another run is writing to it"), ResultStore(url).writer():
            pass
        holder = json.loads(s3.get("store/.lock"))
        assert set(holder) == {"token", "host", "pid", "expires"} and holder["pid"] == os.getpid()
        assert ResultStore(url).check().in_use
    assert "store/.lock" not in set(s3.keys())  # released

    # A live lease of a run on another machine is respected; an ended one is taken over.
    lease = {"token": "x", "host": "elsewhere", "pid": 1, "expires": time.time() + 60}
    s3.put("store/.lock", json.dumps(lease).encode())
    with pytest.raises(StoreBusyError, match="elsewhere"), ResultStore(url).writer():
        pass
    s3.put("store/.lock", json.dumps({**lease, "expires": time.time() - 1}).encode())
    with ResultStore(url).writer() as writer:
        writer.append([{"key": "/b", "score": 2.0, "status": "scored"}])
    assert sorted(current(url)) == ["/a", "/b"]


def test_the_command_line_is_refused_while_another_run_writes(
    tmp_path: Path, s3: S3, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards(tmp_path, s3, (2,))
    url = s3.url("store")
    with ResultStore.create(url).writer():
        status = main(["--shards", s3.url("shards/*.tar"), "--store", url, *base_args(model_dir), "-q"])
    err = capsys.readouterr().err
    assert status == 3 and "another run is writing to it" in err and len(err.strip().splitlines()) == 1


def test_a_damaged_part_on_s3_is_set_aside_not_deleted(tmp_path: Path, s3: S3) -> None:
    url = s3.url("store")
    store = ResultStore.create(url)
    with store.writer() as writer:
        for key in ("/a", "/b", "/c"):
            writer.append(rows_to_table([{"key": key, "score": 1.0, "status": "scored"}]))
    parts = [k for k in s3.keys("store/") if "/part-" in k]
    data = s3.get(parts[1])
    s3.put(parts[1], data[: len(data) // 2])  # cut short

    reader = ResultStore.open_existing(url)
    assert sorted(reader.read()["key"].to_pylist()) == ["/a", "/c"]
    assert len(reader.problems) == 1 and "set aside as _damaged/" in reader.problems[0]
    name = parts[1].rsplit("/", 1)[1]
    assert s3.get(f"store/_damaged/{name}") == data[: len(data) // 2]  # moved, with its bytes
    assert parts[1] not in set(s3.keys())
    health = ResultStore(url).check()
    assert health.ok and health.set_aside == [name] and health.images == 2


def test_no_credential_reaches_the_store_or_the_output(
    tmp_path: Path, s3: S3, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards(tmp_path, s3, (3,))
    # The secret comes from the environment, and once more inside the store's URL (user info and query).
    endpoint = s3.endpoint.replace(":", "%3A").replace("/", "%2F")
    store = f"s3://testing-key-id:{SECRET}@{s3.bucket}/store?endpoint_override={endpoint}&scheme=http"
    args = ["--shards", s3.url("shards/*.tar"), "--store", store, *base_args(model_dir), "--workers", "0"]
    assert main(args) == 0
    assert main(["--store", store, "--check"]) == 0
    assert main(["--store", store, "--min-score", "-100", "-o", str(tmp_path / "rows.csv")]) == 0
    assert main(["--store", f"s3://testing-key-id:{SECRET}@no-such-bucket-here/store", "--check"]) == 3
    out, err = capsys.readouterr()
    assert SECRET not in out + err and "Traceback" not in err
    assert f"-> s3://***@{s3.bucket}/store?endpoint_override=***&scheme=***" in err
    assert "the bucket 'no-such-bucket-here' does not exist" in err
    keys = s3.keys()
    assert any("/part-" in k for k in keys)
    for key in keys:
        assert SECRET.encode() not in s3.get(key), key
    assert SECRET not in (tmp_path / "rows.csv").read_text()
    assert len(current(s3.url("store"))) == 3  # (the same store, by its plain URL)

    # A Parquet list named with the secret: its rows are keyed and named without it.
    images = write_images(tmp_path / "imgs", 1)
    s3.upload(images[0], "lists/a.png")
    write_paths_parquet(tmp_path / "in.parquet", [Path("a.png"), Path("missing.png")], [None, None])
    s3.upload(tmp_path / "in.parquet", "lists/in.parquet")
    listed = sources.ParquetSource(f"s3://testing-key-id:{SECRET}@{s3.bucket}/lists/in.parquet?scheme=http")
    items = list(listed.items())
    assert [i.key for i in items] == [s3.url("lists/a.png"), s3.url("lists/missing.png")]
    assert SECRET not in repr(items) + str(listed.file) + listed.base
    assert items[0].size == images[0].stat().st_size and items[1].size == -1


def test_missing_bucket_and_no_network_are_one_line(
    tmp_path: Path, s3: S3, model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--shards", "s3://no-such-bucket-here/shards/*.tar", "--store", str(tmp_path / "s")]) == 2
    assert main(["--store", "s3://no-such-bucket-here/store", "--min-score", "0"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("bucket 'no-such-bucket-here' does not exist" in line for line in err)

    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    storage.forget()
    assert main(["--store", s3.url("store"), "--check"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the storage server" in err[0] and SECRET not in err[0]


def test_a_store_on_any_fsspec_url(tmp_path: Path, scorer) -> None:
    pytest.importorskip("fsspec")
    write_shard(tmp_path / "00000.tar", 0, 3)
    url = "memory://bucket/store-" + os.urandom(4).hex()
    first = score_collection(sources.ShardSource([str(tmp_path / "*.tar")]), url, scorer=scorer, flush_rows=1)
    again = score_collection(sources.ShardSource([str(tmp_path / "*.tar")]), url, scorer=scorer)
    assert (first.scored, again.scored, again.skipped) == (3, 0, 3)
    store = ResultStore.open_existing(url)
    assert len(store.parts()) == 1 and store.read().num_rows == 3  # (compacted after the first run)


def test_ray_reads_shards_and_a_parquet_list_on_s3(tmp_path: Path, s3: S3, model_dir: Path, scorer) -> None:
    """Ray gets the source's filesystem for URLs, and its rows are keyed as the single-process path keys them."""
    ray = pytest.importorskip("ray")
    from imagereward.collection.ray_job import run_ray

    shards(tmp_path, s3, (4, 3))
    images = write_images(tmp_path / "imgs", 2)
    for image in images:
        s3.upload(image, f"lists/imgs/{image.name}")
    write_paths_parquet(tmp_path / "in.parquet", [Path("imgs") / p.name for p in images], ["a cat", None])
    s3.upload(tmp_path / "in.parquet", "lists/in.parquet")
    made = {
        "shards": lambda: sources.ShardSource([s3.url("shards/*.tar")]),
        "parquet": lambda: sources.ParquetSource(s3.url("lists/in.parquet")),
    }
    columns = ["key", "member", "prompt", "ImageReward", "status", "fingerprint", "size", "mtime_ns"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        for name, make in made.items():
            run_ray(make(), tmp_path / f"{name}-ray", models_dir=str(model_dir), offline=True, device="cpu")
            score_collection(make(), tmp_path / f"{name}-local", scorer=scorer, batch_size=4)
            got = {r["key"]: r for r in ResultStore(tmp_path / f"{name}-ray").read(columns).to_pylist()}
            want = {r["key"]: r for r in ResultStore(tmp_path / f"{name}-local").read(columns).to_pylist()}
            assert got.keys() == want.keys() and all(k.startswith("s3://") for k in got)
            for key, row in want.items():
                other = dict(got[key])
                assert other.pop("ImageReward") == pytest.approx(row["ImageReward"], abs=1e-5), key
                assert other == {k: v for k, v in row.items() if k != "ImageReward"}, key
    finally:
        ray.shutdown()


def test_access_denied_and_no_credentials_are_one_line(
    tmp_path: Path, s3_auth_endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s3_environment(monkeypatch, s3_auth_endpoint, tmp_path)  # (a key the server does not know)
    storage.forget()
    assert main(["--store", "s3://some-bucket/store", "--check"]) == 3
    assert main(["--shards", "s3://some-bucket/shards/*.tar", "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("access denied; check AWS_ACCESS_KEY_ID" in line for line in err), err
    assert SECRET not in "".join(err)

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage.forget()
    assert main(["--store", "s3://some-bucket/store", "--check"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no credentials found; set AWS_ACCESS_KEY_ID" in err[0], err
    storage.forget()


def test_copying_members_of_shards_on_s3(tmp_path: Path, s3: S3, scorer) -> None:
    import tarfile

    from imagereward.collection.actions import copy_selection, row_bytes

    shards(tmp_path, s3, (3, 2))
    store = tmp_path / "store"
    score_collection(sources.ShardSource([s3.url("shards/*.tar")]), store, scorer=scorer)
    report = copy_selection(store, tmp_path / "best")
    assert (report.done, report.problems) == (5, [])
    members = {}
    for tar in sorted((tmp_path / "shards").glob("*.tar")):
        with tarfile.open(tar) as archive:
            members |= {m.name: archive.extractfile(m).read() for m in archive if m.name.endswith(".jpg")}
    assert {p.name: p.read_bytes() for p in (tmp_path / "best").iterdir()} == members
    row = ResultStore(store).read().to_pylist()[0]
    assert row_bytes(row) == members[row["member"]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["s3://bucket/images", "--store", "s"], "give --shards s3://… or --parquet-in s3://…"),
        (["--paths-file", "s3://bucket/list.txt", "--store", "s"], "give --shards s3://… or --parquet-in s3://…"),
    ],
)
def test_what_object_storage_does_not_take_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
