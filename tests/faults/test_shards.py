"""webdataset tar shards: --copy-to reads each shard once, and odd shards (duplicate keys, an unreadable member, a
JSON list caption, a truncated shard, a member claiming more bytes than the shard has) give rows that say what
happened, never a silent loss or a mispaired caption."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from imagereward.collection.actions import copy_selection, move_selection, row_bytes
from imagereward.collection.pipeline import RunSummary, score_collection
from imagereward.collection.query import Filters, query
from imagereward.collection.sources import ShardSource, caption_text
from imagereward.errors import ImageRewardError
from tests.collection_data import image_bytes, write_shard


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    archive.addfile(info, io.BytesIO(data))


def _jpeg(seed: int) -> bytes:
    return image_bytes(seed, fmt="JPEG")


def _shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            _add(archive, name, data)
    return path


def _score(shard: Path, store: Path, scorer: Any) -> tuple[RunSummary, dict[str, dict[str, Any]]]:
    summary = score_collection(ShardSource([str(shard)]), store, scorer=scorer, hash_files=True)
    rows = query(store, include_errors=True, limit=None).rows
    return summary, {row["key"].rpartition("#")[2]: row for row in rows}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _CountOpens:
    """Counts tarfile.open calls (each one is a listing of a shard's members)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = tarfile.open

        def counting(*args: Any, **kwargs: Any) -> tarfile.TarFile:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(tarfile, "open", counting)


# ---------------------------------------------------------------------------------------- 4: copies in one pass


def test_copy_to_from_one_shard_lists_it_once(tmp_path: Path, scorer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 4: every copied row re-listed the whole shard (10,000 keys: quadratic, minutes)."""
    write_shard(tmp_path / "s.tar", 0, 8)
    score_collection(ShardSource([str(tmp_path / "s.tar")]), tmp_path / "store", scorer=scorer)
    opens = _CountOpens(monkeypatch)
    report = copy_selection(tmp_path / "store", tmp_path / "best", Filters())
    assert (report.done, report.problems) == (8, [])
    assert opens.calls == 1
    for i in range(8):
        assert (tmp_path / "best" / f"{i:09d}.jpg").read_bytes() == _jpeg(i)


def test_copy_to_from_several_shards_lists_each_once(tmp_path: Path, scorer, monkeypatch) -> None:
    write_shard(tmp_path / "shards" / "a.tar", 0, 4)
    write_shard(tmp_path / "shards" / "b.tar", 4, 4)
    score_collection(ShardSource([str(tmp_path / "shards" / "*.tar")]), tmp_path / "store", scorer=scorer)
    opens = _CountOpens(monkeypatch)
    report = copy_selection(tmp_path / "store", tmp_path / "best", Filters())
    assert (report.done, report.problems, opens.calls) == (8, [], 2)
    again = copy_selection(tmp_path / "store", tmp_path / "best", Filters())
    assert (again.done, again.already_there) == (0, 8)  # nothing copied twice, nothing overwritten
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == [f"{i:09d}.jpg" for i in range(8)]


def test_move_from_a_shard_is_refused_without_listing_it(tmp_path: Path, scorer, monkeypatch) -> None:
    shard = tmp_path / "s.tar"
    write_shard(shard, 0, 3)
    before = shard.read_bytes()
    score_collection(ShardSource([str(shard)]), tmp_path / "store", scorer=scorer)
    opens = _CountOpens(monkeypatch)
    report = move_selection(tmp_path / "store", tmp_path / "moved", Filters())
    assert report.done == 0 and len(report.problems) == 3
    assert all("copied, not moved" in p for p in report.problems)
    assert opens.calls == 0 and shard.read_bytes() == before


def test_rows_of_a_shard_read_one_by_one_list_it_once(tmp_path: Path, scorer, monkeypatch) -> None:
    """The gallery reads a page of rows with row_bytes, one call per row: one listing, not one per row."""
    write_shard(tmp_path / "s.tar", 0, 5)
    score_collection(ShardSource([str(tmp_path / "s.tar")]), tmp_path / "store", scorer=scorer)
    rows = query(tmp_path / "store", limit=None).rows
    opens = _CountOpens(monkeypatch)
    assert sorted(row_bytes(r) for r in rows) == sorted(_jpeg(i) for i in range(5))
    assert opens.calls == 1


def test_a_copy_from_a_shard_changed_since_scoring_is_refused(tmp_path: Path, scorer) -> None:
    shard = tmp_path / "s.tar"
    write_shard(shard, 0, 2)
    score_collection(ShardSource([str(shard)]), tmp_path / "store", scorer=scorer)
    _shard(shard, [(f"{i:09d}.jpg", _jpeg(10 + i)) for i in range(2)])  # the same member names, other images
    report = copy_selection(tmp_path / "store", tmp_path / "best", Filters())
    assert report.done == 0 and len(report.problems) == 2
    assert all("changed since it was scored" in p for p in report.problems)
    assert not any((tmp_path / "best").iterdir())


# ------------------------------------------------------------------------------------------- 6: shard quirks


def test_a_duplicate_key_is_never_mispaired(tmp_path: Path, scorer) -> None:
    """Issue 6: a key twice paired image 1 with caption 2 and dropped image 2 silently."""
    shard = _shard(
        tmp_path / "s.tar",
        [
            ("a.jpg", _jpeg(1)),
            ("a.txt", b"the first caption"),
            ("a.jpg", _jpeg(2)),
            ("a.txt", b"the second caption"),
            ("b.jpg", _jpeg(3)),
            ("b.png", image_bytes(4)),
            ("b.txt", b"a caption for b"),
            ("c.jpg", _jpeg(5)),
            ("c.txt", b"c, first"),
            ("d.jpg", _jpeg(6)),
            ("d.txt", b"d"),
            ("c.jpg", _jpeg(7)),
            ("c.txt", b"c, again"),
        ],
    )
    summary, rows = _score(shard, tmp_path / "store", scorer)
    assert rows["a"]["prompt"] == "the first caption" and rows["a"]["sha256"] == _sha(_jpeg(1))
    assert rows["b"]["member"] == "b.jpg" and rows["b"]["prompt"] == "a caption for b"
    assert rows["c"]["prompt"] == "c, first" and rows["c"]["sha256"] == _sha(_jpeg(5))
    assert all(rows[k]["status"] == "scored" for k in "abcd")
    errors = {row["member"]: row["error"] for row in rows.values() if row["status"] == "error"}
    assert sorted(errors) == ["a.jpg", "b.png", "c.jpg"]
    assert "s.tar:a.jpg" in errors["a.jpg"] and "duplicate key 'a'" in errors["a.jpg"]
    assert "a.jpg is the one scored" in errors["a.jpg"]
    assert "s.tar:b.png" in errors["b.png"] and "b.jpg is the one scored" in errors["b.png"]
    assert "again after other keys" in errors["c.jpg"]
    assert summary.scored == 4 and summary.failed == 3
    assert any("more than one .txt or .json caption" in p for p in summary.problems)
    again = score_collection(ShardSource([str(shard)]), tmp_path / "store", scorer=scorer)
    assert again.scored == 0  # the same rows, under the same keys: the first images are not scored again


def test_an_unreadable_member_is_named(tmp_path: Path, scorer) -> None:
    """Issue 6: the error named `<_io.BytesIO object at 0x…>` instead of the member."""
    shard = _shard(tmp_path / "s.tar", [("x.jpg", b"not an image at all"), ("x.txt", b"a fox")])
    _, rows = _score(shard, tmp_path / "store", scorer)
    error = rows["x"]["error"]
    assert rows["x"]["status"] == "error" and "BytesIO" not in error and "s.tar:x.jpg" in error


@pytest.mark.parametrize(
    ("caption", "prompt"),
    [
        (["a red fox in snow", "a fox"], "a red fox in snow"),
        (["", "  ", "the first text"], "the first text"),
        ("a plain string", "a plain string"),
    ],
)
def test_a_json_caption_list_gives_its_first_text(tmp_path: Path, scorer, caption: Any, prompt: str) -> None:
    """Issue 6: a list became its Python repr (``['a red fox in snow', 'a fox']``) as the prompt."""
    shard = _shard(tmp_path / "s.tar", [("x.jpg", _jpeg(1)), ("x.json", json.dumps({"caption": caption}).encode())])
    _, rows = _score(shard, tmp_path / "store", scorer)
    assert rows["x"]["status"] == "scored" and rows["x"]["prompt"] == prompt


def test_a_json_caption_that_is_not_text_is_an_error_not_a_repr(tmp_path: Path, scorer) -> None:
    shard = _shard(
        tmp_path / "s.tar",
        [
            ("x.jpg", _jpeg(1)),
            ("x.json", json.dumps({"caption": {"en": "a fox"}}).encode()),
            ("y.jpg", _jpeg(2)),
            ("y.json", json.dumps({"caption": [{"text": "a fox"}]}).encode()),
        ],
    )
    _, rows = _score(shard, tmp_path / "store", scorer)
    assert rows["x"]["status"] == "error" and "'caption' field" in rows["x"]["error"]
    assert "an object, not text" in rows["x"]["error"]
    assert rows["y"]["status"] == "error" and "a list of dict, not text" in rows["y"]["error"]
    assert caption_text(b'{"caption": 3}', "json", "caption") == "3"
    with pytest.raises(ImageRewardError, match="not valid JSON"):
        caption_text(b"{broken", "json", "caption")


def _cut_before_member(shard: Path, index: int) -> int:
    """Truncate the shard just before member `index` (at a header boundary); returns the new size."""
    with tarfile.open(shard) as archive:
        offset = archive.getmembers()[index].offset
    shard.write_bytes(shard.read_bytes()[:offset])
    return offset


def test_a_shard_cut_between_members_is_reported_as_truncated(tmp_path: Path, scorer) -> None:
    """Issue 6: a shard cut at a member boundary was read as complete, and nothing said so."""
    shard = tmp_path / "s.tar"
    write_shard(shard, 0, 5)
    _cut_before_member(shard, 6)  # after 3 keys of 2 members each
    summary, rows = _score(shard, tmp_path / "store", scorer)
    assert summary.problems == [
        f"shard {shard} is truncated after 6 members (it ends without tar's end-of-archive block)"
    ]
    assert summary.scored == 3 and sorted(rows) == [f"{i:09d}" for i in range(3)]


def test_a_shard_cut_inside_a_member_is_reported_and_the_rows_before_are_scored(tmp_path: Path, scorer) -> None:
    shard = tmp_path / "s.tar"
    write_shard(shard, 0, 5)
    with tarfile.open(shard) as archive:
        cut = archive.getmembers()[6]  # the image of the 4th key
    shard.write_bytes(shard.read_bytes()[: cut.offset_data + 100])
    summary, rows = _score(shard, tmp_path / "store", scorer)
    assert len(summary.problems) == 1 and f"shard {shard} is truncated after 6 members" in summary.problems[0]
    assert [rows[f"{i:09d}"]["status"] for i in range(4)] == ["scored"] * 3 + ["error"]
    error = rows["000000003"]["error"]
    assert f"s.tar:000000003.jpg declares {cut.size:,} bytes" in error and "only 100 are left" in error


def test_a_truncated_shard_on_the_command_line_is_a_message(tmp_path: Path, model_dir: Path, capsys) -> None:
    from imagereward.collection.cli import main

    shard = tmp_path / "s.tar"
    write_shard(shard, 0, 4)
    _cut_before_member(shard, 4)
    args = ["--shards", str(shard), "--store", str(tmp_path / "st"), "--models-dir", str(model_dir), "--offline"]
    assert main([*args, "-q"]) == 1
    err = capsys.readouterr().err
    assert f"shard {shard} is truncated after 4 members" in err and "Traceback" not in err


def test_a_member_claiming_8_gib_is_an_error_row_naming_it(tmp_path: Path, scorer) -> None:
    """Issue 6: a member whose header declares 8 GiB past the end of the shard was skipped without a row."""
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as archive:
        _add(archive, "0.jpg", _jpeg(0))
        _add(archive, "0.txt", b"a fox")
        liar = tarfile.TarInfo("1.jpg")
        liar.size = 8 << 30
        archive.fileobj.write(liar.tobuf(archive.format, archive.encoding, archive.errors))
        data = _jpeg(1)
        archive.fileobj.write(data + b"\0" * (-len(data) % 512))
        archive.offset += 512 + len(data) + (-len(data) % 512)
        _add(archive, "1.txt", b"a dog")
    summary, rows = _score(shard, tmp_path / "store", scorer)
    assert rows["0"]["status"] == "scored"
    assert rows["1"]["status"] == "error" and rows["1"]["member"] == "1.jpg"
    assert "s.tar:1.jpg declares 8,589,934,592 bytes (8.0 GiB)" in rows["1"]["error"]
    assert len(summary.problems) == 1 and "truncated after 2 members" in summary.problems[0]
