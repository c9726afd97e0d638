"""X/Y/Z plot (issue 22.5): every cell is a job; the plot's response holds every cell's details, and every index
points at the cell's own image in the plot's gallery (the grid first, then the cells as X/Y/Z lays them out)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagereward.infotext import read_score
from imagereward.webui.job import DETAILS_KEY, SCORES_KEY
from tests.test_webui_host import TOP1, World, seed_of
from tests.webui_host import XYZPlot


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.host.uninstall()


X, Y = [0, 100], [0, 1000]  # seed offsets: 4 cells, made in the order (0,0) (0,1) (1,0) (1,1), laid out x + 2·y


def plot(world: World, batch_size: int = 1, **arguments) -> tuple[object, dict]:
    p = world.p(TOP1, batch_size=batch_size, n_iter=1, seed=500)
    xyz = XYZPlot()
    xyz.attach(p, x_type=1, x_values=X, y_type=1, y_values=Y, **arguments)
    processed = xyz.run(p, *p.script_args[xyz.args_from : xyz.args_to])
    assert p.scripts.errors == []
    return processed, json.loads(json.dumps(processed.extra_generation_params))  # as the API returns it


def test_every_cell_has_its_details_and_every_index_points_at_its_own_image(world: World) -> None:
    processed, params = plot(world)
    details = params[DETAILS_KEY]
    assert len(processed.images) == 5 and processed.index_of_first_image == 1
    entries = details["images"]
    assert sorted(e["cell"] for e in entries) == [0, 1, 2, 3]
    for entry in entries:
        index = entry["index"]
        assert index == 1 + entry["cell"] and entry["position"] == index - 1
        text = processed.infotexts[index]
        assert read_score(text) == pytest.approx(entry["score"], abs=6e-4)
        x, y = entry["cell"] % 2, entry["cell"] // 2
        assert seed_of(text) in range(500 + X[x] + Y[y], 500 + X[x] + Y[y] + 4)  # one of its own 4 candidates
    assert params[SCORES_KEY] == [e["score"] for e in entries]
    assert [c["summary"]["scored"] for c in details["cells"]] == [4, 4, 4, 4]
    assert (details["summary"]["scored"], details["summary"]["kept"], details["summary"]["discarded"]) == (16, 4, 12)


def test_sub_grids_move_the_cells_and_without_sub_images_no_index_points_anywhere(world: World) -> None:
    processed, params = plot(world, include_sub_grids=True)
    assert [e["index"] for e in sorted(params[DETAILS_KEY]["images"], key=lambda e: e["cell"])] == [2, 3, 4, 5]
    for entry in params[DETAILS_KEY]["images"]:
        assert read_score(processed.infotexts[entry["index"]]) == pytest.approx(entry["score"], abs=6e-4)
    world.host.state.job = ""
    processed, params = plot(world, include_lone_images=False)
    assert len(processed.images) == 1  # the plot's grid only
    assert [e["index"] for e in params[DETAILS_KEY]["images"]] == [None] * 4
    assert len(params[DETAILS_KEY]["cells"]) == 4


def test_a_job_outside_a_plot_keeps_its_own_details(world: World) -> None:
    world.host.state.job = "1 out of 4"  # "prompts from file" names its jobs the same way, with no X/Y/Z selected
    processed = world.run(world.p(TOP1, batch_size=1, n_iter=1))
    entries = processed.extra_generation_params[DETAILS_KEY]["images"]
    assert [e["index"] for e in entries] == [0] and "cell" not in entries[0]


def test_a_cell_that_shows_its_own_grid_has_no_index_for_its_images(world: World) -> None:
    """Two requested images per cell: each cell keeps 2 and its gallery starts with its grid, which is the image the
    plot shows for it; the kept images themselves are not in the plot's gallery."""
    processed, params = plot(world, batch_size=2)
    entries = params[DETAILS_KEY]["images"]
    assert len(entries) == 8 and all(e["index"] is None and e["position"] is None for e in entries)
    assert sorted({e["cell"] for e in entries}) == [0, 1, 2, 3] and len(processed.images) == 5
