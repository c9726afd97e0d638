"""The Ray job on a cluster of two nodes that do not share the store's folder: every row reaches the store.

The second node runs in a private mount namespace with an empty tmpfs over the store's parent folder, as a machine
of a cluster without a shared file system would see it; the scoring actors need a resource only that node has. The
driver runs in a process of its own, connected with `address=`. Both nodes are started with ports, a temp folder and
an auth setting of their own, bound to 127.0.0.1, and are stopped (their process groups only) whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("ray")

import imagereward
from imagereward.collection.store import ResultStore
from tests.collection_data import write_images

RAY = shutil.which("ray")
ROOT = Path(imagereward.__file__).resolve().parents[1]
STARTED = "will now block forever"  # what `ray start --block` prints once its node is up


def _can_hide_a_folder() -> bool:
    if RAY is None or not shutil.which("unshare") or sys.platform != "linux":
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", folder]
        try:
            return subprocess.run(probe, capture_output=True, timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


pytestmark = pytest.mark.skipif(
    not _can_hide_a_folder(), reason="needs the ray CLI, and unshare/mount permitted (root on Linux)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_args(temp: Path) -> list[str]:
    ports = {
        "--dashboard-agent-listen-port": _free_port(),
        "--dashboard-agent-grpc-port": _free_port(),
        "--runtime-env-agent-port": _free_port(),
        "--metrics-export-port": _free_port(),
    }
    return [
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
        "--object-store-memory=100000000",
        *(f"{name}={port}" for name, port in ports.items()),
    ]


def _wait_started(log: Path, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if STARTED in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"the {what} did not start: {log.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the node's process group (its `ray start --block` stops what it started), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # the group's other processes (workers) may outlive it by a moment
            time.sleep(1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        return


@pytest.fixture
def two_nodes() -> Iterator[dict]:
    base = Path(tempfile.mkdtemp(prefix="irn-", dir="/tmp"))  # short: Ray's socket paths must stay under 108 bytes
    far = base / "far"  # hidden on the second node
    far.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    procs: list[subprocess.Popen] = []
    try:
        head_args = [
            RAY, "start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
            f"--dashboard-port={_free_port()}", *_node_args(base / "t1"),
        ]  # fmt: skip
        with open(base / "head.log", "wb") as log:
            procs.append(subprocess.Popen(head_args, env=env, stdout=log, stderr=log, start_new_session=True))
        node_args = [
            RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", '--resources={"far": 1}',
            *_node_args(base / "t2"),
        ]  # fmt: skip
        hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
        script = 'mount -t tmpfs tmpfs "$1" && shift && exec "$@"'
        with open(base / "node.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [*hide, script, "sh", str(far), *node_args],
                    env=env,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
        _wait_started(base / "head.log", procs[0], "head node")  # (the second node waits for the head meanwhile)
        _wait_started(base / "node.log", procs[1], "second node")
        yield {"address": f"127.0.0.1:{port}", "far": far, "env": env, "base": base}
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(base, ignore_errors=True)


DRIVER = """
import json, os, sys, time
import ray
args = json.loads(sys.argv[1])
ray.init(address=args["address"], _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
deadline = time.monotonic() + 60
while sum(n["Alive"] for n in ray.nodes()) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)

@ray.remote(num_cpus=0, resources={"far": 0.01})
def sees(path):
    return os.path.exists(path)

hidden = not ray.get(sees.remote(args["marker"]))  # the far node does not see the store
ray.data.DataContext.get_current().enable_progress_bars = False
from imagereward.collection.ray_job import run_ray
from imagereward.collection.sources import FileSource
summary = run_ray(
    FileSource([args["images"]]), args["store"], address=args["address"], models_dir=args["models"], offline=True,
    device="cpu", batch_size=4, actor_resources={"far": 1},
)
print(json.dumps({"hidden": hidden, "scored": summary.scored, "failed": summary.failed, "total": summary.total}))
"""


def test_rows_scored_on_a_node_without_the_store_reach_it(tmp_path: Path, two_nodes: dict, model_dir: Path) -> None:
    images = write_images(tmp_path / "imgs", 10)
    store = ResultStore.create(two_nodes["far"] / "store")
    args = {
        "address": two_nodes["address"],
        "marker": str(store.folder / ".imagereward-store"),
        "images": str(tmp_path / "imgs"),
        "store": str(store.folder),
        "models": str(model_dir),
    }
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(args)],
        env=two_nodes["env"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["hidden"]
    keys = set(store.read(["key"]).column("key").to_pylist())
    assert keys == {str(p) for p in images}
    assert (result["scored"], result["failed"], result["total"]) == (10, 0, 10)
    names = {p.name for p in store.folder.iterdir()}
    assert not [n for n in names if n.startswith(".ray-")], names
