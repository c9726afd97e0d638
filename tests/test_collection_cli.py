"""`python -m imagereward.collection`: score into a store, list, export, copy; clear messages for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

from imagereward.collection.cli import build_parser, main, wants_collection
from tests.collection_data import write_images, write_shard

REPO = Path(__file__).resolve().parents[1]


def test_end_to_end_score_rerun_export_copy(tmp_path: Path, model_dir: Path, capsys) -> None:
    write_images(tmp_path / "imgs", 6)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"nope")
    base = ["--models-dir", str(model_dir), "--offline", "--device", "cpu", "--workers", "1"]
    store = str(tmp_path / "store")
    assert main([str(tmp_path / "imgs"), "--store", store, *base]) == 1  # one image failed
    out, err = capsys.readouterr()
    assert "6 scored, 1 failed, 0 already in the store (7 found)" in err
    assert len([line for line in out.splitlines() if "/imgs/" in line]) == 6

    assert main([str(tmp_path / "imgs"), "--store", store, "-q", *base]) == 0
    assert main(["--store", store, "-o", str(tmp_path / "all.json"), "-q"]) == 0
    rows = json.loads((tmp_path / "all.json").read_text())
    assert len(rows) == 6 and all(isinstance(r["ImageReward"], float) for r in rows)
    best = max(r["ImageReward"] for r in rows)

    assert main(["--store", store, "--min-score", str(best), "--copy-to", str(tmp_path / "best")]) == 0
    assert len(list((tmp_path / "best").iterdir())) == 1
    out, err = capsys.readouterr()
    assert "1 copied" in err

    worst = min(r["ImageReward"] for r in rows)
    assert main(["--store", store, "--max-score", str(worst), "--move-to", str(tmp_path / "low"), "-q"]) == 0
    assert len(list((tmp_path / "low").iterdir())) == 1 and len(list((tmp_path / "imgs").iterdir())) == 6
    out, err = capsys.readouterr()
    assert "1 moved" in err
    assert main([str(tmp_path / "imgs"), str(tmp_path / "low"), "--store", store, *base]) == 0  # nothing new
    out, err = capsys.readouterr()
    assert "0 scored, 0 failed, 7 already in the store (7 found)" in err


def test_shards_on_the_command_line(tmp_path: Path, model_dir: Path, capsys) -> None:
    write_shard(tmp_path / "00000.tar", 0, 3, caption="json")
    args = ["--shards", str(tmp_path / "*.tar"), "--store", str(tmp_path / "s"), "--models-dir", str(model_dir)]
    assert main([*args, "--offline", "--device", "cpu", "--workers", "0", "-q", "-o", str(tmp_path / "o.csv")]) == 0
    assert len((tmp_path / "o.csv").read_text().strip().splitlines()) == 4  # header + 3 rows


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shards", "x/*.tar"], "add --store DIR"),
        (["a.png", "--min-score", "1"], "add --store DIR"),
        (["a", "--paths-file", "l.txt", "--store", "s"], "one kind of input"),
        (["--store", "s", "--min-score", "nan"], "finite"),
        (["--store", "s", "--copy-to", "a", "--move-to", "b"], "not both"),
        (["--shards", "nothing-here/*.tar", "--store", "s"], "no tar shard matches"),
        (["missing-folder", "--store", "s"], "no such file or folder"),
        (["--store", "missing-store"], "does not exist"),
        (["--store", "s", "--device", "tpu"], "--device tpu"),
    ],
)
def test_bad_input_gets_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, argv: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    status = main(argv)
    err = capsys.readouterr().err
    assert status in (2, 3)
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "s" / "part-00000000").exists()


def test_wants_collection_names_the_flags_that_switch_to_it() -> None:
    parser = build_parser()
    assert not wants_collection(parser.parse_args(["a.png"]))
    assert not wants_collection(parser.parse_args(["a.png", "--workers", "3", "--limit", "5"]))
    for extra in (
        ["--store", "s"],
        ["--shards", "x"],
        ["--ray"],
        ["--move-to", "d"],
        ["--min-score", "0"],
        ["--rescore"],
    ):
        assert wants_collection(parser.parse_args(extra)), extra
    assert parser.parse_args(["--ray"]).ray == "local"
    assert parser.parse_args(["--ray", "10.0.0.1:6379"]).ray == "10.0.0.1:6379"


def test_python_dash_m_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "imagereward.collection", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0 and "--store" in done.stdout and "--shards" in done.stdout


def test_without_pyarrow_the_message_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for name in ("pyarrow", "pyarrow.parquet", "pyarrow.compute"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if it were not installed
    write_images(tmp_path / "imgs", 1)
    assert main([str(tmp_path / "imgs"), "--store", str(tmp_path / "s")]) == 3
    assert not (tmp_path / "s").exists()
    err = capsys.readouterr().err
    assert "pip install 'sd-webui-imagereward[collections]'" in err and "Traceback" not in err


def test_the_package_imports_without_the_optional_dependencies() -> None:
    code = (
        "import sys; sys.modules.update(pyarrow=None, ray=None); "
        "import imagereward, imagereward.collection, imagereward.collection.cli, imagereward.collection.pipeline; "
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
