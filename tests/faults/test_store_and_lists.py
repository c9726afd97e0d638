"""A damaged results store, odd path lists and odd Parquet inputs: a clear line and the run goes on, never a
traceback; nothing the user made is deleted (a damaged part is moved into ``STORE/_damaged/``)."""

from __future__ import annotations

import os
import struct
from datetime import datetime, timezone
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from imagereward.collection.actions import copy_selection  # noqa: E402
from imagereward.collection.cli import main  # noqa: E402
from imagereward.collection.query import query  # noqa: E402
from imagereward.collection.sources import ParquetSource, PathListSource, SourceError  # noqa: E402
from imagereward.collection.store import ResultStore, arrow_schema, rows_to_table  # noqa: E402
from tests.collection_data import write_images  # noqa: E402

# --------------------------------------------------------------------------------------------------------- helpers


def row(key: str, score: float, fp: int = 1) -> dict:
    return {
        "key": key,
        "path": key,
        "size": 10,
        "mtime_ns": 5,
        "prompt": "a cat",
        "score": score,
        "status": "scored",
        "model": "m",
        "scorer": "imagereward test",
        "clean_prompt": True,
        "fingerprint": fp,
        "scored_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
    }


def damage(part: Path, how: str) -> bytes:
    """Damage a part as a disk or a copy would; returns its bytes afterwards (to check they are kept)."""
    data = part.read_bytes()
    if how == "cut":  # the end (the footer) missing
        data = data[: len(data) // 2]
    elif how == "pages":  # the footer intact, the data pages overwritten
        footer = struct.unpack("<I", data[-8:-4])[0]
        end = len(data) - 8 - footer
        data = data[:4] + b"\xff" * (end - 4) + data[end:]
    elif how == "empty":
        data = b""
    elif how == "foreign":  # a readable Parquet file that is not a part (keys are numbers)
        pq.write_table(pa.table({"key": [1, 2], "score": [0.5, 0.7]}), part)
        return part.read_bytes()
    part.write_bytes(data)
    return data


def three_parts(tmp_path: Path) -> tuple[ResultStore, list[Path]]:
    """A store of three parts: /a0 /a1, /b0 /b1, /c0 /c1 (scores 0..5)."""
    store = ResultStore.create(tmp_path / "s")
    with store.writer() as writer:
        for n, name in enumerate("abc"):
            writer.append([row(f"/{name}{i}", 2.0 * n + i) for i in range(2)])
    parts = store.parts()
    assert len(parts) == 3
    return store, parts


def assert_set_aside(store: ResultStore, part: Path, data: bytes) -> None:
    assert not part.exists()
    kept = store.folder / "_damaged" / part.name
    assert kept.read_bytes() == data  # moved, not deleted or changed
    assert len(store.problems) == 1
    message = store.problems[0]
    assert part.name in message and "set aside as _damaged/" in message and "\n" not in message


# ------------------------------------------------------------------------------------------ 2. a damaged part


@pytest.mark.parametrize("how", ["cut", "pages", "empty", "foreign"])
def test_a_damaged_part_is_set_aside_and_the_query_goes_on(tmp_path: Path, how: str) -> None:
    """Issue 2: one damaged part made every query end in an ArrowInvalid traceback."""
    store, parts = three_parts(tmp_path)
    data = damage(parts[1], how)
    page = query(store, limit=None)
    assert sorted(r["key"] for r in page.rows) == ["/a0", "/a1", "/c0", "/c1"]
    assert page.total == 4
    assert len(page.problems) == 1 and parts[1].name in page.problems[0]
    assert_set_aside(store, parts[1], data)
    # Said once: the next read finds nothing to say, and a Parquet reader of the folder skips _damaged/.
    assert query(store.folder).problems == []
    assert pq.read_table(store.folder).num_rows == 4


@pytest.mark.parametrize("reader", ["read", "index", "rows", "compact", "copy"])
def test_every_reader_sets_a_damaged_part_aside(tmp_path: Path, reader: str) -> None:
    store, parts = three_parts(tmp_path)
    data = damage(parts[1], "cut" if reader == "rows" else "pages")  # (rows() reads only the footers)
    if reader == "read":
        assert store.read()["key"].to_pylist() == ["/a0", "/a1", "/c0", "/c1"]
    elif reader == "index":
        index = store.index()
        assert len(index) == 4 and index.is_done("/a0", 1) and not index.is_done("/b0", 1)  # /b*: scored again
    elif reader == "rows":
        assert store.rows() == 4
    elif reader == "compact":
        with store.writer() as writer:
            writer.compact()
        assert len(store.parts()) == 1
        assert store.read()["ImageReward"].to_pylist() == pytest.approx([0.0, 1.0, 4.0, 5.0])
        assert not list(store.folder.glob(".tmp-*"))
    else:
        report = copy_selection(store, tmp_path / "best")
        assert len(report.problems) == 4  # (the rows name no real files) - but no traceback
    assert_set_aside(store, parts[1], data)


def test_a_reader_never_moves_a_part_under_a_writer(tmp_path: Path) -> None:
    """While another run holds the lock, a reader leaves the damaged part out of its read and says so; the writer
    sets it aside when it reads."""
    store, parts = three_parts(tmp_path)
    data = damage(parts[0], "cut")
    writing = ResultStore(store.folder)
    with writing.writer():
        page = query(store.folder, limit=None)
        assert page.total == 4 and parts[0].exists()
        assert len(page.problems) == 1 and "left out of this read" in page.problems[0]
        assert len(writing.index()) == 4
        assert_set_aside(writing, parts[0], data)


def test_scoring_after_damage_scores_the_lost_images_again(tmp_path: Path, model_dir: Path, capsys) -> None:
    """End to end: the damaged part is set aside with one line, its images are scored again, nothing else is."""
    write_images(tmp_path / "imgs", 3)
    store = tmp_path / "store"
    base = [str(tmp_path / "imgs"), "--store", str(store), "--models-dir", str(model_dir), "--offline"]
    base += ["--device", "cpu", "--workers", "0"]
    assert main([*base, "-q"]) == 0
    (part,) = ResultStore(store).parts()
    data = damage(part, "cut")
    capsys.readouterr()
    status = main(base)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "ArrowInvalid" not in err
    assert "3 scored, 0 failed, 0 already in the store (3 found)" in err
    damaged = [line for line in err.splitlines() if "is damaged" in line]
    assert len(damaged) == 1 and f"set aside as _damaged{os.sep}{part.name}" in damaged[0]
    assert (store / "_damaged" / part.name).read_bytes() == data
    assert status == 1  # said, so a script notices
    assert len([line for line in out.splitlines() if "/imgs/" in line]) == 3
    assert main([*base, "-q"]) == 0  # and then nothing is left to do


def test_check_reports_and_repair_sets_aside(tmp_path: Path, capsys) -> None:
    store, parts = three_parts(tmp_path)
    data = damage(parts[2], "pages")  # footer intact: only a whole read finds it
    (store.folder / ".tmp-0badf00d.parquet").write_bytes(b"PAR1 half")
    staging = store.folder / ".ray-12345678"
    staging.mkdir()
    pq.write_table(arrow_schema().empty_table(), staging / "empty.parquet")
    pq.write_table(rows_to_table([row("/d0", 9.0)]), staging / "done.parquet")

    assert main(["--store", str(store.folder), "--check"]) == 1
    out, err = capsys.readouterr()
    assert "3 part(s)" in out and f"damaged: {parts[2].name}" in out
    assert ".ray-12345678" in out and ".tmp-0badf00d.parquet" in out and "Traceback" not in err
    assert parts[2].read_bytes() == data and staging.is_dir()  # --check changes nothing

    assert main(["--store", str(store.folder), "--repair"]) == 0
    out, err = capsys.readouterr()
    assert "set aside as _damaged" in err and "adopted 1 row(s)" in err and "removed 1 unfinished" in err
    assert "healthy" in out
    assert (store.folder / "_damaged" / parts[2].name).read_bytes() == data
    assert not staging.exists() and not (store.folder / ".tmp-0badf00d.parquet").exists()
    assert sorted(ResultStore(store.folder).read()["key"].to_pylist()) == ["/a0", "/a1", "/b0", "/b1", "/d0"]

    assert main(["--store", str(store.folder), "--check"]) == 0
    out, _ = capsys.readouterr()
    assert "healthy" in out and "set aside earlier in _damaged/: 1 file(s)" in out


def test_check_and_repair_usage(tmp_path: Path, capsys) -> None:
    assert main(["--store", str(tmp_path / "missing"), "--check"]) == 3
    assert main(["a.png", "--store", str(tmp_path / "s"), "--repair"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "with --store alone" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------------------- 3. path lists


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-8-sig", "utf-32"])
def test_paths_file_in_utf16_and_with_byte_order_marks(tmp_path: Path, encoding: str) -> None:
    """Issue 3: a UTF-16 list (PowerShell's default) aborted the run with "ValueError: embedded null byte"; a UTF-8
    byte-order mark made the first path unfindable."""
    images = write_images(tmp_path / "imgs", 3)
    text = "# PowerShell: ls imgs > list.txt\r\n" + "".join(f"imgs\\{p.name}\r\n" for p in images[:2])
    text = text.replace("\\", os.sep) + f"{images[2]}\r\n"
    (tmp_path / "list.txt").write_bytes(text.encode(encoding))  # (utf-16, utf-32, utf-8-sig: with a mark)
    items = sorted(PathListSource(str(tmp_path / "list.txt")).items(), key=lambda i: i.key)
    assert [i.key for i in items] == [str(p) for p in images]
    assert all(i.size == p.stat().st_size and i.error is None for i, p in zip(items, images, strict=True))


def test_a_bad_line_is_an_error_row_not_the_end_of_the_run(tmp_path: Path, model_dir: Path, capsys) -> None:
    images = write_images(tmp_path / "imgs", 2)
    # UTF-8 with a NUL in one path; UTF-16 with an unpaired surrogate (bytes no decoder takes) in another.
    (tmp_path / "a.txt").write_bytes(f"{images[0]}\nimgs/bro\x00ken.png\n{images[1]}\n".encode())
    utf16 = "\ufeff".encode("utf-16-le") + f"{images[0]}\n".encode("utf-16-le") + b"x\x00\x00\xd8y\x00\n\x00"
    (tmp_path / "b.txt").write_bytes(utf16)
    base = ["--models-dir", str(model_dir), "--offline", "--device", "cpu", "--workers", "0", "-q"]
    for name, bad in (("a.txt", "imgs/bro\\x00ken.png"), ("b.txt", "x\\x00\\xd8y")):
        store = tmp_path / f"store-{name}"
        assert main(["--paths-file", str(tmp_path / name), "--store", str(store), *base]) == 1  # a failed row
        err = capsys.readouterr().err
        assert "Traceback" not in err and "ValueError" not in err
        rows = {r["key"]: r for r in ResultStore(store).read().to_pylist()}
        assert rows[str(images[0])]["status"] == "scored"
        (failed,) = [r for r in rows.values() if r["status"] == "error"]
        assert failed["key"].endswith(bad)
        assert failed["error"].startswith("line 2 of " + name)
        assert ("NUL byte" if name == "a.txt" else "not valid UTF-16") in failed["error"]


# -------------------------------------------------------------------------------------------- 7. Parquet columns


@pytest.mark.parametrize(
    ("column", "values", "shown"),
    [
        ("path", pa.array([1, 2], pa.int64()), "column 'path' holds int64"),
        ("path", pa.array([b"a.png", b"b.png"], pa.binary()), "column 'path' holds binary"),
        ("path", pa.array([["a.png"], ["b.png"]]), "column 'path' holds list<"),
        ("prompt", pa.array([7, 8], pa.int64()), "column 'prompt' holds int64"),
    ],
)
def test_parquet_columns_of_the_wrong_type_are_named(
    tmp_path: Path, capsys, column: str, values: object, shown: str
) -> None:
    """Issue 7: a path column of numbers or bytes made every row a failed row without a word about the column; a
    prompt column of numbers was scored as their digits."""
    write_images(tmp_path / "imgs", 2)
    table = {"path": pa.array(["imgs/00000.png", "imgs/00001.png"]), "prompt": pa.array(["a fox", "a cat"])}
    table[column] = values
    pq.write_table(pa.table(table), tmp_path / "in.parquet")
    with pytest.raises(SourceError, match="expected text"):
        ParquetSource(str(tmp_path / "in.parquet"))
    store = tmp_path / "store"
    assert main(["--parquet-in", str(tmp_path / "in.parquet"), "--store", str(store)]) == 2
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    assert shown in line and "expected text (strings)" in line and f"--{column}-column" in line
    assert not store.exists()  # refused before anything was created


def test_parquet_text_columns_still_read(tmp_path: Path) -> None:
    images = write_images(tmp_path / "imgs", 3)
    prompts = pa.array(["a fox", None, "a cat"]).dictionary_encode()  # (pandas categoricals)
    paths = pa.array([f"imgs/{p.name}" for p in images[:2]] + ["imgs/\x00.png"], pa.large_string())
    pq.write_table(pa.table({"path": paths, "prompt": prompts}), tmp_path / "in.parquet")
    items = list(ParquetSource(str(tmp_path / "in.parquet")).items())
    assert [i.prompt for i in items] == ["a fox", None, "a cat"]
    assert [i.error is None for i in items] == [True, True, False]
    assert "row 3 of in.parquet" in (items[2].error or "") and "\x00" not in items[2].key
    pq.write_table(pa.table({"path": paths, "prompt": pa.nulls(3)}), tmp_path / "nulls.parquet")
    assert ParquetSource(str(tmp_path / "nulls.parquet")).prompt_column == "prompt"
