"""Odd file names and odd prompts: the output is always complete and readable; nothing crashes half-way."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import sys
from pathlib import Path

import pytest
from PIL import PngImagePlugin

from imagereward import infotext
from imagereward.cli import main
from tests.faults.craft import png

NOT_UTF8 = os.fsdecode(b"caf\xe9-\xff.png")  # Latin-1 bytes from another system: not UTF-8


@pytest.fixture
def odd_names(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    names = [NOT_UTF8, "space name.png", "quote'\"name.png", "emoji-🦊.png", "new\nline.png", "-dash.png"]
    for i, name in enumerate(names):
        try:
            (folder / name).write_bytes(png(32 + i, 32))
        except (OSError, UnicodeEncodeError):
            pytest.skip(f"this file system does not take the name {name!r}")
    return folder


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_odd_file_names_are_written_and_copied(
    odd_names: Path, model_dir: Path, tmp_path: Path, fmt: str, capsys
) -> None:
    """Issue 9.6: a non-UTF-8 byte in a file name crashed the output (UnicodeEncodeError), left a 0-byte -o file
    and made no copies."""
    out, best = tmp_path / f"out.{fmt}", tmp_path / "best"
    args = [str(odd_names), "-p", "a fox", "-k", "6", "--copy-to", str(best), "-o", str(out), "-f", fmt]
    code = main([*args, "--models-dir", str(model_dir), "--offline", "-q"])
    assert code == 0, capsys.readouterr().err
    text = out.read_text(encoding="utf-8")
    if fmt == "json":
        rows = json.loads(text)
        assert len(rows) == 6 and any(r["path"].endswith("caf\\xe9-\\xff.png") for r in rows)
    else:
        assert "caf\\xe9-\\xff.png" in text  # shown with escapes, never dropped
    if fmt == "csv":
        assert len(list(csv.DictReader(io.StringIO(text)))) == 6
    assert sorted(os.listdir(best)) == sorted(os.listdir(odd_names))
    assert (best / NOT_UTF8).read_bytes() == (odd_names / NOT_UTF8).read_bytes()


def test_odd_names_on_standard_output(odd_names: Path, model_dir: Path, capsysbinary) -> None:
    code = main([str(odd_names), "-p", "a fox", "--models-dir", str(model_dir), "--offline", "-q"])
    out = capsysbinary.readouterr().out.decode("utf-8")  # valid UTF-8 throughout
    assert code == 0 and "caf\\xe9-\\xff.png" in out


ODD_PROMPTS = [
    "",
    " ",
    "🦊" * 500,
    "\x00\x01 nul and control",
    "مرحبا بالعالم",  # right to left
    "(((((((((((((((((((((((((a:1.5",
    "[[[[[[[[[[[[[[[[[[[[",
    "<lora:" * 200,
    "a " * 20000,
    "BREAK AND BREAK AND",
]


def test_odd_prompts_score_and_stay_finite(scorer) -> None:
    import torch

    images = [torch.zeros(3, 32, 32)] * len(ODD_PROMPTS)
    for clean in (True, False):
        scores = scorer.score(ODD_PROMPTS, images, clean_prompts=clean)
        assert len(scores) == len(ODD_PROMPTS) and all(math.isfinite(s) for s in scores)


def test_a_prompt_argument_that_is_not_utf8(tmp_path: Path, model_dir: Path, capsysbinary) -> None:
    """`-p` with bytes that are not UTF-8 (Python keeps them as lone surrogates, which the tokenizer refuses)."""
    path = tmp_path / "a.png"
    path.write_bytes(png(32, 32))
    prompt = os.fsdecode(b"a caf\xe9 at night")
    code = main([str(path), "-p", prompt, "--models-dir", str(model_dir), "--offline", "-q", "-f", "json"])
    out = capsysbinary.readouterr().out.decode("utf-8")
    assert code == 0 and json.loads(out)[0]["prompt"] == "a caf\\xe9 at night"


def test_a_huge_prompt_in_a_png_is_read(tmp_path: Path, model_dir: Path, capsys) -> None:
    prompt = "a castle on a hill, " * 10_000  # 200k characters
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{prompt}\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 64x64")
    path = tmp_path / "long.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    code = main([str(path), "--models-dir", str(model_dir), "--offline", "-f", "json"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)[0]["truncated"] is True
    assert "longer than the model reads" in captured.err


@pytest.mark.parametrize(
    "line",
    [
        "word " * 40_000,  # one run of key characters with no colon: was quadratic (100k characters: 72 s)
        "a-" * 100_000,
        "x" + " " * 200_000 + "\t",
        'a: "x, ' * 30_000,
    ],
    ids=["words", "dashes", "spaces", "open quotes"],
)
def test_parsing_long_lines_is_linear(line: str) -> None:
    """Issue 9.10. (Not timed: the test would have taken minutes before the fix; it now runs in milliseconds.)"""
    info = infotext.parse_infotext(line)
    assert info.prompt or info.settings


def test_the_linear_scan_finds_what_the_webuis_regex_finds() -> None:
    rng = random.Random(9)
    alphabet = 'ab1_ -/:,"\\\t\nxy'
    samples = ["Steps: 20, Sampler: Euler a, CFG scale: 7", 'a: "b, c", d-e/f g: 1', "\t\tk: v, kk:vv,"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(5000)]
    for line in samples:
        expected = [(m.span(), m.groups()) for m in infotext._SETTING.finditer(line)]
        assert [(m.span(), m.groups()) for m in infotext._settings(line)] == expected, line


def test_prompts_with_webui_syntax_in_infotext(tmp_path: Path) -> None:
    text = '(masterpiece:1.2), <lora:x:0.8>\nNegative prompt: bad\nSteps: 20, Sampler: "Euler, a", Seed: 1'
    info = infotext.parse_infotext(text)
    assert info.prompt.startswith("(masterpiece") and info.settings["Sampler"] == "Euler, a"
    assert re.search("lora", info.prompt) and sys.maxsize
