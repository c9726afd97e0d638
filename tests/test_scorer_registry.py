"""The shared machinery every scorer goes through: names and aliases, loading a family once for several of its
outputs, the engine's batching with and without prompts, the ensemble, and the command line's columns."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from imagereward.cli import main
from imagereward.ensemble import EnsembleError, make_ensemble, parse_weights
from imagereward.errors import ModelFileMissingError
from imagereward.infotext import _check_key
from imagereward.scorers import registry, specs
from imagereward.scorers.specs import ScorerSpec, ScoreScale, Standardisation
from tests import fake_family

IMAGES = sorted((Path(__file__).parent / "fixtures" / "images").glob("*.png"))


def _spec(name: str, needs_prompt: bool, mean: float | None, std: float | None) -> ScorerSpec:
    return ScorerSpec(
        name=name,
        label=name.upper(),
        infotext_key=f"{name.upper()} score",
        family="fake-pair",
        needs_prompt=needs_prompt,
        scale=ScoreScale(-5.0, 20.0, 0.1, 0.0),
        standardisation=Standardisation(mean, std, "test"),
        summary="test",
    )


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Two scorers `fa` (reads the prompt) and `fb` (does not) from one fake family, files placed offline."""
    monkeypatch.setitem(specs.SCORERS, "fa", _spec("fa", True, 0.0, 1.0))
    monkeypatch.setitem(specs.SCORERS, "fb", _spec("fb", False, 10.0, 2.0))
    monkeypatch.setitem(registry.FAMILY_MODULES, "fake-pair", "tests.fake_family")
    fake_family.LOADS.clear()
    fake_family.FORWARDS.clear()
    models = tmp_path / "models"
    fake_family.write_release(models / "fake-pair")
    return models


def test_every_table_entry_is_consistent() -> None:
    for name, spec in specs.SCORERS.items():
        assert spec.name == name and specs.canonical_name(spec.label) == name
        _check_key(spec.infotext_key)  # the WebUI's infotext parser must read the key back
        assert spec.family in registry.FAMILY_MODULES
        assert spec.scale.minimum <= spec.scale.default_threshold <= spec.scale.maximum
        if spec.standardisation.known:
            assert spec.standardisation.source and spec.standardisation.std > 0
    assert specs.canonical_name("HPSv2") == "hpsv2.1" and specs.canonical_name("Pick_Score") == "pickscore"
    assert specs.canonical_name("nonsense") is None


def test_unknown_names_are_refused_with_the_known_ones() -> None:
    with pytest.raises(registry.UnknownScorerError, match="choose from imagereward, clip"):
        registry.resolve_names(["imagereward", "dalle"])
    assert registry.resolve_names(["PickScore", "pickscore", "Ensemble"]) == ["pickscore", "ensemble"]


def test_one_family_loads_once_and_encodes_each_batch_once(fake: Path) -> None:
    scorers = registry.load_scorers(["fa", "fb"], fake, offline=True, batch_size=3)
    assert [frozenset({"fa", "fb"})] == fake_family.LOADS and len(scorers.scorers) == 1
    table = scorers.score("a cat", IMAGES[:5])
    assert list(table) == ["fa", "fb"] and all(len(v) == 5 for v in table.values())
    assert fake_family.FORWARDS == [3, 2]  # one pass per batch gives both outputs
    alone = registry.load_scorers(["fb"], fake, offline=True).score(None, IMAGES[:5])  # no prompt needed
    assert alone["fb"] == pytest.approx(table["fb"], abs=1e-6)
    assert fake_family.LOADS[-1] == frozenset({"fb"})


def test_a_set_of_families_decodes_each_image_once_and_counts_progress_once(fake: Path, monkeypatch) -> None:
    """Issue 20.6: every family read and decoded every file again, and progress restarted at 0 for each."""
    from imagereward import preprocess

    first = registry.load_family("fake-pair", ["fa"], fake, offline=True, batch_size=2)
    second = registry.load_family("fake-pair", ["fb"], fake, offline=True, batch_size=2)
    expected = {"fa": first.score("a cat", IMAGES[:5]), "fb": second.score(None, IMAGES[:5])}
    scorers = registry.ScorerSet(["fa", "fb"], [first, second])
    opened: list[Path] = []
    real = preprocess.open_image
    monkeypatch.setattr(preprocess, "open_image", lambda path: opened.append(Path(path)) or real(path))
    calls: list[tuple[int, int]] = []
    table = scorers.score("a cat", IMAGES[:5], progress=lambda done, total: calls.append((done, total)))
    assert sorted(opened) == sorted(IMAGES[:5])  # each file opened and decoded once, for both models
    assert calls == [(2, 5), (4, 5), (5, 5)]
    for name in ("fa", "fb"):
        assert table[name] == pytest.approx(expected[name], abs=1e-6)


def test_missing_files_name_the_scorer_and_the_url(fake: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileMissingError) as excinfo:
        registry.load_scorers(["fa"], tmp_path / "empty", offline=True)
    message = str(excinfo.value)
    assert "FA model files are missing" in message and "https://example.invalid/fake.safetensors" in message


def test_ensemble_is_the_weighted_mean_of_standardised_scores(fake: Path) -> None:
    scorers = registry.load_scorers(["ensemble"], fake, offline=True, weights="fa=1,fb=3")
    table = scorers.score("a cat", IMAGES[:4])
    assert list(table) == ["ensemble", "fa", "fb"]
    for i in range(4):
        expected = (1 * (table["fa"][i] - 0.0) / 1.0 + 3 * (table["fb"][i] - 10.0) / 2.0) / 4
        assert table["ensemble"][i] == pytest.approx(expected, abs=1e-6)


def test_ensemble_rules() -> None:
    assert make_ensemble(["ensemble"]).members == ("imagereward", "hpsv2.1")
    assert make_ensemble(["ensemble", "clip"], "imagereward=2").weights == (1.0, 2.0)
    assert parse_weights("PickScore = 2, hps=0.5") == {"pickscore": 2.0, "hpsv2.1": 0.5}
    for bad, words in (
        ("pickscore", "name=weight"),
        ("imagereward=x", "not a number"),
        ("imagereward=nan", "finite"),
        ("judge=1", "unknown scorer"),
    ):
        with pytest.raises(EnsembleError, match=words):
            parse_weights(bad)
    with pytest.raises(EnsembleError, match="add up to 0"):
        make_ensemble(["ensemble"], "imagereward=0,hpsv2.1=0")
    with pytest.raises(EnsembleError, match="PickScore cannot join"):
        make_ensemble(["ensemble", "pickscore"])
    assert math.isnan(make_ensemble(["ensemble"]).combine({"imagereward": [math.nan], "hpsv2.1": [0.3]})[0])


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, source in enumerate(IMAGES[:4]):
        Image.open(source).convert("RGB").save(folder / f"{i}.png")  # no infotext: no prompt
    return folder


def test_cli_one_column_per_scorer_ranked_by_the_first(fake: Path, tmp_path: Path, capsys) -> None:
    folder = _folder(tmp_path)
    out = tmp_path / "scores.csv"
    code = main([str(folder), "-p", "a cat", "-s", "fb", "-s", "fa", "--models-dir", str(fake), "--offline", "-q",
                 "-o", str(out)])  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0])[-2:] == ["fb", "fa"] and len(rows) == 4
    assert [float(r["score"]) for r in rows] == sorted((float(r["fb"]) for r in rows), reverse=True)
    assert all(float(r["score"]) == pytest.approx(float(r["fb"]), abs=1e-4) for r in rows)
    main([str(folder), "-p", "a cat", "-s", "fb,fa", "--models-dir", str(fake), "--offline", "-q", "-f", "table"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["rank", "FB", "FA"]


def test_cli_scorer_without_prompt_needs_none(fake: Path, tmp_path: Path, capsys) -> None:
    folder = _folder(tmp_path)
    assert main([str(folder), "-s", "fb", "--models-dir", str(fake), "--offline", "-q", "-f", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and all(r["scores"]["fb"] == r["score"] for r in rows)
    assert main([str(folder), "-s", "fa", "--models-dir", str(fake), "--offline", "-q", "-f", "json"]) == 3
    assert "no prompt" in capsys.readouterr().err


def test_cli_usage_errors_for_scorers(fake: Path, tmp_path: Path, capsys) -> None:
    folder = _folder(tmp_path)
    assert main([str(folder), "-p", "x", "-s", "judge", "--models-dir", str(fake), "--offline"]) == 2
    assert "--scorer judge: unknown" in capsys.readouterr().err
    assert main([str(folder), "-p", "x", "-s", "fa", "--weights", "fa=1", "--models-dir", str(fake)]) == 2
    assert "--weights only applies with --scorer ensemble" in capsys.readouterr().err
    assert main(["--store", str(tmp_path / "store"), "-s", "judge"]) == 2  # (collections take --scorer too)
    assert "--scorer judge: unknown" in capsys.readouterr().err
