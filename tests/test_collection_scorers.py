"""Every scorer in collections: a column per scorer, adding a scorer scores only its column, one decode per image,
stores of the earlier layout, and the newest-row rule with columns arriving in different runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

pytest.importorskip("pyarrow")

from imagereward.collection.columns import SCORE_COLUMNS, WEIGHTS_COLUMNS, UnknownColumnError, pick_column
from imagereward.collection.pipeline import score_collection
from imagereward.collection.query import Filters, query, selected
from imagereward.collection.sources import FileSource
from imagereward.collection.store import ResultStore
from imagereward.scorers.registry import load_scorers
from tests.collection_data import PROMPTS, write_images, write_two_scorer_models

IR, HPS = "ImageReward", "HPSv2.1"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_two_scorer_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_images(root, 6)
    write_images(root, 1, start=50, size=48)  # another size
    wide = Image.open(root / "00050.png")  # not square: HPSv2.1's letterbox pads it, the others crop it
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", wide.info["parameters"])
    wide.crop((0, 0, 48, 20)).save(root / "00050.png", pnginfo=info)
    return root


def run(images: Path, store: Path, models: Path, *names: str, **options):
    return score_collection(
        FileSource([str(images)]), store, scorers=names, models_dir=str(models), device="cpu", offline=True,
        batch_size=4, **options,
    )  # fmt: skip


def rows(store: Path) -> dict[str, dict]:
    return {r["key"]: r for r in ResultStore(store).read().to_pylist()}


def test_adding_a_scorer_scores_only_its_column_and_duckdb_reads_both(
    tmp_path: Path, models: Path, images: Path, monkeypatch: pytest.MonkeyPatch
):
    from imagereward.engine import Scorer

    scored: list[tuple[str, ...]] = []  # the outputs of each model pass, once per image
    real = Scorer.score_pixels

    def counting(self, prompts, pixels, **options):
        scored.extend([self.outputs] * len(pixels))
        return real(self, prompts, pixels, **options)

    monkeypatch.setattr(Scorer, "score_pixels", counting)
    store = tmp_path / "store"
    first = run(images, store, models, "imagereward")
    assert (first.scored, first.skipped, first.total) == (7, 0, 7)
    before = rows(store)
    assert all(r[IR] is not None and r[HPS] is None for r in before.values())

    scored.clear()
    second = run(images, store, models, "imagereward", "hpsv2.1")
    assert (second.scored, second.skipped) == (7, 0)
    assert scored == [("hpsv2.1",)] * 7  # only the new column was scored
    raw = ResultStore(store).read(raw=True).to_pylist()  # (compacted: one row per image now)
    assert len(raw) == 7
    after = rows(store)
    for key, row in after.items():
        assert row[IR] == before[key][IR]  # the same value: not scored again (a new score would be a new row)
        assert row[HPS] is not None and row[f"{HPS} weights"] and row[f"{IR} weights"] == before[key][f"{IR} weights"]

    # The scores are those of the library, each with its own preprocessing (HPSv2.1's letterbox).
    both = load_scorers(["imagereward", "hpsv2.1"], models, device="cpu", offline=True, progress=False)
    keys = sorted(after)
    expected = both.score([PROMPTS[int(Path(k).stem) % 3] for k in keys], keys)
    assert [after[k][IR] for k in keys] == pytest.approx(expected["imagereward"], abs=1e-5)
    assert [after[k][HPS] for k in keys] == pytest.approx(expected["hpsv2.1"], abs=1e-5)

    third = run(images, store, models, "hpsv2.1", "imagereward")
    assert (third.scored, third.skipped) == (0, 7)

    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(
        f'select key, "{IR}", "{HPS}", "{HPS} weights" from read_parquet(\'{store}/*.parquet\') order by key'
    ).fetchall()
    assert [g[0] for g in got] == keys
    assert [g[1] for g in got] == pytest.approx([after[k][IR] for k in keys], abs=1e-12)
    assert [g[2] for g in got] == pytest.approx([after[k][HPS] for k in keys], abs=1e-12)
    assert len({g[3] for g in got}) == 1

    pandas = pytest.importorskip("pandas")
    frame = pandas.read_parquet(store)
    assert len(frame) == 7 and frame[[IR, HPS]].notna().all().all()


def test_ensemble_other_weights_and_a_changed_image(tmp_path: Path, models: Path, images: Path):
    folder = tmp_path / "imgs"
    shutil.copytree(images, folder)
    store = tmp_path / "store"
    run(folder, store, models, "ensemble", weights="imagereward=1,hpsv2.1=1")
    first = rows(store)
    assert all(r["Ensemble"] is not None and r[IR] is not None and r[HPS] is not None for r in first.values())
    assert next(iter(first.values()))["Ensemble weights"].startswith("imagereward=1@")

    # Other ensemble weights: only the ensemble is out of date (its members are scored again to combine them).
    again = run(folder, store, models, "ensemble", weights="imagereward=2,hpsv2.1=1")
    assert again.scored == 7
    second = rows(store)
    for key, row in second.items():
        z_ir, z_hps = row[IR], (row[HPS] - 0.25) / 0.045
        assert row["Ensemble"] == pytest.approx((2 * z_ir + z_hps) / 3, abs=1e-6)
        assert row[HPS] == pytest.approx(first[key][HPS], abs=1e-6)

    # A changed image loses every score of its old content and gets all of the run's again.
    changed = sorted(folder.glob("*.png"))[0]
    write_images(tmp_path / "other", 1, start=9)
    shutil.copy(next((tmp_path / "other").glob("*.png")), changed)
    only_ir = run(folder, store, models, "imagereward")
    assert (only_ir.scored, only_ir.skipped) == (1, 6)
    third = rows(store)
    assert third[str(changed)][IR] is not None
    assert third[str(changed)][HPS] is None and third[str(changed)]["Ensemble"] is None
    assert all(third[k][HPS] is not None for k in third if k != str(changed))


def test_each_image_is_decoded_once_for_every_scorer(
    tmp_path: Path, models: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imagereward.collection.prepare as prepare

    opened: list[str] = []
    real = prepare.open_image

    def counting(stream, name=None):
        opened.append(name)
        return real(stream, name=name)

    monkeypatch.setattr(prepare, "open_image", counting)
    summary = run(images, tmp_path / "store", models, "ensemble", weights="imagereward=1,hpsv2.1=1", workers=0)
    assert summary.scored == 7 and sorted(opened) == sorted(str(p) for p in images.iterdir())
    assert all(r["Ensemble"] is not None for r in rows(tmp_path / "store").values())


def test_selection_picks_a_column(tmp_path: Path, models: Path, images: Path):
    store = tmp_path / "store"
    run(images, store, models, "hpsv2.1")
    results = ResultStore(store)
    assert pick_column(None, [HPS]) == HPS
    assert pick_column("hps", [HPS]) == HPS
    with pytest.raises(UnknownColumnError, match="holds no ImageReward scores"):
        selected(results, Filters(by="imagereward"))
    page = query(store, limit=None)
    assert [r["score"] for r in page.rows] == sorted((r[HPS] for r in page.rows), reverse=True)
    assert page.by == HPS


def test_a_store_of_the_earlier_layout_reads_and_keeps_its_scores(tmp_path: Path, models: Path, images: Path):
    """A store written before the per-scorer columns (``score``, ``model``, the model id folded into the
    fingerprint): its ``score`` reads as ImageReward's, and adding HPSv2.1 scores only HPSv2.1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imagereward.collection.items import fingerprint
    from imagereward.collection.scoring import model_id
    from imagereward.collection.sources import FileSource as Files

    ir = load_scorers(["imagereward"], models, device="cpu", offline=True, progress=False).scorers[0]
    model = model_id(ir)
    items = sorted(Files([str(images)]).items(), key=lambda i: i.key)
    prompts = [PROMPTS[int(Path(i.key).stem) % 3] for i in items]
    scores = ir.score(prompts, [i.path for i in items])
    store = tmp_path / "old"
    store.mkdir()
    (store / ".imagereward-store").touch()
    old = {
        "key": [i.key for i in items],
        "path": [i.path for i in items],
        "size": [i.size for i in items],
        "mtime_ns": [i.mtime_ns for i in items],
        "prompt": prompts,
        "score": scores,
        "status": ["scored"] * len(items),
        "model": [model] * len(items),
        "scorer": ["imagereward 1.0"] * len(items),
        "clean_prompt": [True] * len(items),
        "fingerprint": [fingerprint(i, None, model, True) for i in items],
    }
    pq.write_table(pa.table(old), store / "part-00000000-0000abcd.parquet")

    table = ResultStore(store).read()
    assert table[IR].to_pylist() == pytest.approx(scores, abs=0)
    assert set(table[f"{IR} weights"].to_pylist()) == {model}

    summary = run(images, store, models, "imagereward", "hpsv2.1")
    assert (summary.scored, summary.skipped) == (7, 0)
    after = rows(store)
    assert [after[i.key][IR] for i in items] == pytest.approx(scores, abs=0)  # kept, not scored again
    assert all(after[i.key][HPS] is not None for i in items)
    assert run(images, store, models, "imagereward", "hpsv2.1").scored == 0


def test_every_part_has_every_column() -> None:
    from imagereward.collection.store import arrow_schema

    names = arrow_schema().names
    assert all(c in names for c in (*SCORE_COLUMNS, *WEIGHTS_COLUMNS)) and "score" not in names
    assert SCORE_COLUMNS[:1] == (IR,) and HPS in SCORE_COLUMNS and "Ensemble" in SCORE_COLUMNS


def test_command_line_scorers_and_by(tmp_path: Path, models: Path, images: Path, capsys) -> None:
    import json

    from imagereward.collection.cli import main

    store = str(tmp_path / "store")
    base = ["--models-dir", str(models), "--offline", "--device", "cpu", "--workers", "0", "-q"]
    assert main([str(images), "--store", store, "--scorer", "imagereward", *base]) == 0
    assert main(["--store", store, "--by", "hpsv2.1", "--min-score", "0"]) == 2
    assert "the store holds no HPSv2.1 scores (it holds: ImageReward)" in capsys.readouterr().err
    assert main(["--store", store, "--by", "judge"]) == 2
    assert "--by 'judge' is not a scorer" in capsys.readouterr().err

    assert main([str(images), "--store", store, "-s", "hpsv2.1", "-s", "imagereward", *base[:-1]]) == 0
    said = capsys.readouterr().err
    assert "7 scored (HPSv2.1: 7, ImageReward: 0), 0 failed, 0 already in the store (7 found)" in said
    assert main(["--store", store, "--by", "HPSv2.1", "-o", str(tmp_path / "out.json"), "-q"]) == 0
    rows = json.loads((tmp_path / "out.json").read_text())
    assert [r["HPSv2.1"] for r in rows] == sorted((r["HPSv2.1"] for r in rows), reverse=True)
    assert all(r["ImageReward"] is not None and r["HPSv2.1 weights"] for r in rows)
    assert main(["--store", store, "--by", "hps", "--limit", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[0] == "HPSv2.1"


def test_columns_from_different_runs_merge_in_read_compact_and_index(tmp_path: Path) -> None:
    """Each score column: the newest non-null value among the key's rows with the newest row's fingerprint."""
    from imagereward.collection.store import ResultStore as Store

    def row(key: str, fp: int, **scores: float) -> dict:
        values = {c: v for c, v in scores.items()}
        records = {f"{c} weights": f"w-{c}" for c in scores}
        return {"key": key, "path": key, "status": "scored", "fingerprint": fp, **values, **records}

    store = Store.create(tmp_path / "s")
    with store.writer() as writer:
        writer.append([row("/a", 1, ImageReward=1.0), row("/b", 1, ImageReward=2.0), row("/c", 1, ImageReward=3.0)])
        writer.append([row("/a", 1, **{"HPSv2.1": 0.25}), row("/b", 2, **{"HPSv2.1": 0.5})])  # /b: new content
        writer.append([row("/a", 1, ImageReward=1.5)])  # /a: ImageReward again, newest wins
        before = {r["key"]: r for r in store.read().to_pylist()}
        index = store.index(weights={"ImageReward": "w-ImageReward", "HPSv2.1": "w-HPSv2.1", "CLIP": "w-CLIP"})
        writer.compact()
    assert (before["/a"][IR], before["/a"][HPS]) == (1.5, 0.25)
    assert (before["/b"][IR], before["/b"][HPS], before["/b"]["fingerprint"]) == (None, 0.5, 2)
    assert (before["/c"][IR], before["/c"][HPS]) == (3.0, None)
    assert index.get("/a").valid == {IR, HPS} and index.get("/b").valid == {HPS} and index.get("/c").valid == {IR}
    assert Store(tmp_path / "s").index(weights={IR: "other"}).get("/a").valid == frozenset()
    assert len(store.parts()) == 1
    after = store.read(raw=True).to_pylist()  # what a plain reader sees: one row per key, every column
    assert {r["key"]: (r[IR], r[HPS], r[f"{IR} weights"]) for r in after} == {
        k: (r[IR], r[HPS], r[f"{IR} weights"]) for k, r in before.items()
    }


def test_the_folder_tab_scores_with_the_chosen_scorers(tmp_path: Path, models: Path, images: Path) -> None:
    import json
    import threading

    from imagereward.infotext import parse_infotext
    from imagereward.webui import collection_tab as tab
    from imagereward.webui.folders import FolderPolicy

    folder = tmp_path / "outputs"
    shutil.copytree(images, folder)
    policy = FolderPolicy.make(restricted=False, output_folders=[folder], stores_dir=tmp_path / "st", base=tmp_path)
    assert tab.scorer_names(["HPSv2.1", "ImageReward"]) == ("hpsv2.1", "imagereward")
    with pytest.raises(Exception, match="unknown scorer 'Judge'"):
        tab.scorer_names(["Judge"])
    first = load_scorers(["imagereward"], models, device="cpu", offline=True, progress=False)
    assert "7 scored" in tab.score_folder(folder, tab.LockedScorer(first, threading.Lock()), policy=policy)
    both = load_scorers(["imagereward", "hpsv2.1"], models, device="cpu", offline=True, progress=False)
    text = tab.score_folder(folder, tab.LockedScorer(both, threading.Lock()), policy=policy)
    assert "7 scored, 0 already in the store" in text  # (HPSv2.1's column only: ImageReward's values stay)
    items, info, status, _ = tab.browse(folder, tab.View.of(None, None, "", 1, ["HPSv2.1"]), policy)
    assert len(items) == 7 and "best first by HPSv2.1" in status
    settings = [parse_infotext(t).settings for t in json.loads(info)["infotexts"]]
    assert all(s["ImageReward scorer"] == "HPSv2.1" and "HPSv2-1" in s for s in settings)
    values = [float(s["HPSv2-1"]) for s in settings]
    assert values == sorted(values, reverse=True)


def test_the_aesthetic_score_needs_no_prompt(tmp_path: Path) -> None:
    from imagereward.scorers import openai_clip
    from tests.collection_data import image_bytes

    models = tmp_path / "models"
    openai_clip.write_random_release(models / "openai-clip-vit-l-14", size="tiny", seed=2)
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(3):
        (folder / f"{seed}.png").write_bytes(image_bytes(seed))  # no infotext, no prompt
    summary = run(folder, tmp_path / "store", models, "aesthetic")
    assert (summary.scored, summary.failed) == (3, 0)
    got = rows(tmp_path / "store")
    expected = load_scorers(["aesthetic"], models, device="cpu", offline=True, progress=False).score(None, sorted(got))[
        "aesthetic"
    ]
    assert [got[k]["Aesthetic"] for k in sorted(got)] == pytest.approx(expected, abs=1e-5)
    assert all(r["prompt"] is None for r in got.values())
