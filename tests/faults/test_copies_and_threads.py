"""--copy-to never writes outside its folder or over a file; earlier copies are not scored again; one scorer shared by
eight threads gives the same scores as one thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from imagereward.cli import main
from tests.faults.craft import png


def _run(args: list[str], model_dir: Path) -> int:
    return main([*args, "--models-dir", str(model_dir), "--offline", "-q", "-f", "json"])


def test_a_dangling_link_in_the_copy_folder_is_not_written_through(tmp_path: Path, model_dir: Path, capsys) -> None:
    """Issue 9.10: `exists()` is False for a dangling link, and the copy went through it, outside the folder."""
    images, best, outside = tmp_path / "images", tmp_path / "best", tmp_path / "outside.png"
    images.mkdir()
    best.mkdir()
    (images / "a.png").write_bytes(png(40, 40))
    (best / "a.png").symlink_to(outside)  # dangling: points where nothing is yet
    assert _run([str(images), "-p", "a fox", "-k", "1", "--copy-to", str(best)], model_dir) == 0
    assert not outside.exists()
    assert (best / "a.png").is_symlink() and (best / "a-1.png").read_bytes() == (images / "a.png").read_bytes()


def test_copies_inside_a_scanned_folder_are_not_scored_again(tmp_path: Path, model_dir: Path, capsys) -> None:
    """Issue 9.10: with the target inside a source folder, later -r runs re-scored and re-copied earlier copies."""
    import json

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.png").write_bytes(png(30 + i, 30))
    args = [str(images), "-r", "-p", "a fox", "-k", "2", "--copy-to", str(images / "best")]
    assert _run(args, model_dir) == 0
    capsys.readouterr()
    assert _run(args, model_dir) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and not any("best" in Path(r["path"]).parts for r in rows)
    assert len(list((images / "best").iterdir())) == 2  # identical copies are skipped, not duplicated


def test_eight_threads_on_one_scorer(scorer) -> None:
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 40 + i, 48, generator=generator) for i in range(8)]
    prompts = [f"prompt number {i}" for i in range(8)]
    expected = [scorer.score(prompts[i], [images[i]])[0] for i in range(8)]
    results: dict[int, float] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = scorer.score(prompts[i], [images[i]])[0]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [results[i] for i in range(8)] == pytest.approx(expected, abs=1e-5)
