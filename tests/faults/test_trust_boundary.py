"""Nobody reaches through the extension what the WebUI would not let them reach.

- The score endpoint exists with `--api-auth` and answers 401 without the right credentials (it was a 404 for
  everyone in A1111 1.10.1: the auth dependency's annotation could not be resolved when FastAPI mounted it).
- The folder tab, while the WebUI is reachable from other machines (`--listen`, `--share`, ...), reads, shows,
  copies and moves only inside the WebUI's output folders and the folders listed in our settings, as the WebUI
  itself refuses extension installs then unless `--enable-insecure-extension-access` is given.
- A folder outside the WebUI's outputs is only read: its store goes to the stores folder, and the status says where.
"""

from __future__ import annotations

import base64
import io
import os
import typing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from imagereward.errors import ImageRewardError
from imagereward.webui.folders import LIFT_FLAG, FolderPolicy, reachable_from_outside
from tests.collection_data import write_images
from tests.test_webui_host import World, _folder_tab_buttons

pytest.importorskip("pyarrow")


@pytest.fixture
def world(tmp_path: Path, scorer: Any):
    w = World(tmp_path)
    w.scorer = scorer  # the folder tab scores for real, with the small random checkpoint
    w.host.opts.outdir_samples = str(tmp_path / "outputs")
    (tmp_path / "outputs").mkdir()
    yield w
    w.host.uninstall()


# ------------------------------------------------------------------------------------------ 0. --api-auth


def _png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _dependency_calls(dependant: Any) -> list[Any]:
    calls = []
    for sub in dependant.dependencies:
        calls.append(sub.call)
        calls.extend(_dependency_calls(sub))
    return calls


def test_the_endpoint_with_api_auth_mounts_with_resolvable_annotations(world: World) -> None:
    """FastAPI resolves each dependency's annotations in its module's globals when the route is mounted; A1111's
    FastAPI raised `NameError: HTTPBasicCredentials` there, and the route did not exist."""
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    world.host.cmd_opts.api_auth = "alice:s3cret"
    app = fastapi.FastAPI()
    for callback in world.host.app_started:
        callback(None, app)
    (route,) = [r for r in app.routes if getattr(r, "path", "") == "/imagereward/v1/score"]
    calls = [route.endpoint, *_dependency_calls(route.dependant)]
    assert len(calls) >= 2  # the endpoint and the credentials check
    for call in calls:
        typing.get_type_hints(call)  # what FastAPI does with string annotations: must not raise

    client = TestClient(app)
    body = {"prompt": "a red car", "images": [_png_b64()]}
    assert client.post("/imagereward/v1/score", json=body).status_code == 401
    assert client.post("/imagereward/v1/score", json=body, auth=("alice", "nope")).status_code == 401
    assert client.post("/imagereward/v1/score", json=body, auth=("alice", "s3cret")).status_code == 200


# ------------------------------------------------------------------------------- 1. the folder tab's boundary


@pytest.mark.parametrize(
    ("flags", "reachable"),
    [
        ({}, False),
        ({"listen": True}, True),
        ({"share": True}, True),
        ({"ngrok": "token"}, True),
        ({"server_name": "0.0.0.0"}, True),
        ({"listen": True, "enable_insecure_extension_access": True}, False),
        ({"listen": True, "insecure": True}, False),  # SD.Next's name for it
        ({"listen": True, "disable_extension_access": False}, False),  # the host's own decision wins
        ({"disable_extension_access": True}, True),
    ],
)
def test_reachable_from_outside_follows_the_webui(flags: dict[str, Any], reachable: bool) -> None:
    assert reachable_from_outside(SimpleNamespace(**flags)) is reachable


def _tab(world: World) -> dict[str, Any]:
    buttons = _folder_tab_buttons(world)
    return {label: button.handlers[0][0] for label, button in buttons.items()}


def test_a_listening_webui_keeps_the_tab_inside_its_output_folders(world: World, tmp_path: Path) -> None:
    world.host.cmd_opts.listen = True
    tab = _tab(world)
    outside = tmp_path / "private"
    write_images(outside, 2)

    for folder in ("/", "/etc", str(outside)):
        items, _, line, _ = tab["Show"](folder, "", "", "", 1)
        assert items == [] and "outside the folders" in line and LIFT_FLAG in line
        assert "Settings → ImageReward" in line
    _, _, line, _ = tab["Score new images"](str(outside), False, "", "", "")
    assert "outside the folders" in line and world.loads == 0  # refused before the model is loaded
    assert not (outside / ".imagereward-scores").exists()

    inside = tmp_path / "outputs" / "txt2img-images"
    write_images(inside, 2)
    assert "2 scored" in tab["Score new images"](str(tmp_path / "outputs"), False, "", "", "")[2]
    line = tab["Copy"](str(tmp_path / "outputs"), "", "", "", str(tmp_path / "elsewhere"))
    assert "outside the folders" in line and not (tmp_path / "elsewhere").exists()
    line = tab["Move"](str(tmp_path / "outputs"), "", "", "", "/tmp")
    assert "outside the folders" in line and len(list(inside.iterdir())) == 2
    assert "2 copied" in tab["Copy"](str(tmp_path / "outputs"), "", "", "", str(tmp_path / "outputs" / "best"))


def test_the_settings_folders_and_the_insecure_flag_lift_the_limit(world: World, tmp_path: Path) -> None:
    outside = tmp_path / "private"
    write_images(outside, 2)
    world.host.cmd_opts.listen = True
    world.host.opts.imagereward_tab_folders = f"{tmp_path / 'elsewhere'}\n{outside}"
    tab = _tab(world)
    _, _, line, _ = tab["Show"](str(outside), "", "", "", 1)
    assert "has not been scored yet" in line

    world.host.opts.imagereward_tab_folders = ""
    world.host.cmd_opts.enable_insecure_extension_access = True
    _, _, line, _ = tab["Show"]("/", "", "", "", 1)
    assert "has not been scored yet" in line


def test_a_link_cannot_lead_out_of_an_allowed_folder(tmp_path: Path) -> None:
    outputs, private = tmp_path / "outputs", tmp_path / "private"
    outputs.mkdir()
    private.mkdir()
    os.symlink(private, outputs / "link")
    policy = FolderPolicy.make(restricted=True, output_folders=[outputs], stores_dir=outputs / "s", base=tmp_path)
    with pytest.raises(ImageRewardError, match="outside the folders"):
        policy.folder(outputs / "link")
    with pytest.raises(ImageRewardError, match="outside the folders"):
        policy.folder(outputs / ".." / "private")
    assert policy.permits(outputs / "a.png") and not policy.permits(outputs / "link" / "a.png")
    assert FolderPolicy.make(restricted=False, output_folders=[outputs], stores_dir="s").permits(private)


def test_a_folder_that_is_only_read_gets_its_store_elsewhere_and_is_told_where(world: World, tmp_path: Path) -> None:
    outside = tmp_path / "pictures"
    write_images(outside, 3)
    before = sorted(p.name for p in outside.iterdir())
    world.host.opts.imagereward_stores_dir = str(tmp_path / "stores")
    tab = _tab(world)
    items, _, line, page = tab["Score new images"](str(outside), False, "", "", "")
    assert "3 scored" in line and "kept in" in line and str(tmp_path / "stores") in line
    assert len(items) == 3 and page == 1  # and the folder's first page is shown
    assert sorted(p.name for p in outside.iterdir()) == before  # nothing written into the folder
    (store,) = (tmp_path / "stores").iterdir()
    assert store.name.startswith("pictures-")
    items, _, line, _ = tab["Show"](str(outside), "", "", "", 1)
    assert len(items) == 3 and "3 image(s) match" in line

    # An output folder keeps its store inside it, so the scores move with the folder.
    write_images(tmp_path / "outputs" / "a", 1)
    tab["Score new images"](str(tmp_path / "outputs"), False, "", "", "")
    assert (tmp_path / "outputs" / ".imagereward-scores").is_dir()


def test_a_store_an_earlier_version_left_in_a_folder_stays_in_use(tmp_path: Path) -> None:
    folder = tmp_path / "pictures"
    (folder / ".imagereward-scores").mkdir(parents=True)
    policy = FolderPolicy.make(restricted=False, output_folders=[tmp_path / "o"], stores_dir=tmp_path / "s")
    assert policy.store_of(folder) == folder / ".imagereward-scores"


def test_our_folder_settings_are_protected_like_the_webuis_own(world: World) -> None:
    """With `--hide-ui-dir-config` the WebUI refuses changes of the options in `restricted_opts` from the page."""
    from imagereward.webui import settings

    shared = SimpleNamespace(opts=SimpleNamespace(restricted_opts={"outdir_samples"}), restricted_opts=None)
    settings.protect_folder_options(shared)
    assert {"imagereward_tab_folders", "imagereward_stores_dir", "imagereward_discarded_dir"} <= (
        shared.opts.restricted_opts
    )
