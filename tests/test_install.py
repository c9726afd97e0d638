"""install.py: inside the WebUI it installs what is missing; outside it explains itself instead of crashing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

INSTALL = Path(__file__).parent.parent / "install.py"

# Runs install.py as the WebUI does (a script), with some imports made to look missing and, optionally, a stand-in
# for the WebUI's `launch` module that records what it was asked to install.
RUNNER = """
import importlib.machinery, importlib.util, runpy, sys, types
missing = set(sys.argv[2].split(",")) - {""}
real = importlib.util.find_spec
def find_spec(name, *args, **kwargs):
    if name in missing or (name == "launch" and sys.argv[3] == "outside"):
        return None
    return real(name, *args, **kwargs)
importlib.util.find_spec = find_spec
if sys.argv[3] == "webui":
    launch = types.ModuleType("launch")
    launch.__spec__ = importlib.machinery.ModuleSpec("launch", None)
    launch.run_pip = lambda args, desc: print("RUN_PIP", args)
    sys.modules["launch"] = launch
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def run(missing: str, where: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(INSTALL), missing, where],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )


def test_outside_the_webui_it_says_to_use_pip(tmp_path: Path) -> None:
    done = run("tqdm,safetensors", "outside", tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr
    assert "run by the Stable Diffusion WebUI" in done.stdout and "pip install ." in done.stdout
    assert "Missing now: safetensors, tqdm." in done.stdout


def test_outside_the_webui_with_everything_present_it_explains_and_succeeds(tmp_path: Path) -> None:
    done = run("", "outside", tmp_path)
    assert done.returncode == 0 and "run by the Stable Diffusion WebUI" in done.stdout


def test_inside_the_webui_it_installs_only_what_is_missing_without_pins(tmp_path: Path) -> None:
    done = run("tqdm", "webui", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == ["RUN_PIP install tqdm"]
    quiet = run("", "webui", tmp_path)
    assert quiet.returncode == 0 and quiet.stdout == ""
