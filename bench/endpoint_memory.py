"""Peak memory of the score endpoint (`POST /imagereward/v1/score`) for hostile and for the worst allowed requests.

    python bench/endpoint_memory.py                      # small random checkpoint from tests/, CPU
    python bench/endpoint_memory.py --models-dir DIR     # a real models folder

Each request is sent to a fresh server process (FastAPI + uvicorn, the route mounted as the WebUI mounts it: a JSON
body parsed into a dict, `score_request`, 422 on `ApiError`), after one small warm-up request, so the process's peak
resident memory (VmHWM) minus its resident memory before the request is what that request cost. The model's own
activations do not depend on the payload (they are bounded by the batch size), so the small checkpoint measures the
request's cost; add the model's figures from BENCHMARKS.md for a full-size one. Linux only (reads /proc).

Needs fastapi, uvicorn and httpx (`pip install fastapi uvicorn httpx`); not used by the tests.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 1024 * 1024


# ------------------------------------------------------------------------------------------------------ server side


def serve(port: int, models_dir: str, streamed: bool) -> None:
    import uvicorn
    from fastapi import Body, FastAPI, HTTPException, Request

    from imagereward.scorer import ImageRewardScorer
    from imagereward.webui.api import ROUTE, ApiError, read_json_body, score_request

    scorer = ImageRewardScorer.load(models_dir, device="cpu", offline=True, progress=False)
    app = FastAPI()

    def score(payload: object) -> dict:
        try:
            return score_request(payload, lambda p, i, c: scorer.score(list(p), list(i), clean_prompts=c))
        except ApiError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None

    def parsed(payload: dict = Body(...)) -> dict:  # noqa: B008  (as imagereward/webui/script.py mounts it)
        return score(payload)

    async def read_with_limit(request: Request) -> dict:  # the body read by read_json_body, within its limit
        try:
            payload = await read_json_body(request)
        except ApiError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return score(payload)

    read_with_limit.__annotations__ = {"request": Request, "return": dict}  # (string annotations of a local import)
    app.add_api_route(ROUTE, read_with_limit if streamed else parsed, methods=["POST"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


# ------------------------------------------------------------------------------------------------------ payloads


def _png(width: int, height: int, mode: str = "RGB", noise: bool = False) -> bytes:
    import numpy as np
    from PIL import Image

    if noise:
        channels = len(mode)
        data = np.random.default_rng(width * 7 + height).integers(0, 256, (height, width, channels), dtype=np.uint8)
        image = Image.fromarray(data if channels > 1 else data[:, :, 0], mode)
    else:
        image = Image.new(mode, (width, height), (90, 140, 200, 255)[: len(mode)] if len(mode) > 1 else 128)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1 if noise else 6)
    return buffer.getvalue()


def _claiming(width: int, height: int) -> bytes:
    from tests.faults.craft import png_claiming

    return png_claiming(width, height)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _worst_allowed() -> dict:
    """The largest decode the limits allow (8192 x 8192 RGBA: 256 MiB decoded) plus 1023 noise images filling the
    request up to its base64 limit: every limit at its maximum at once."""
    from imagereward.webui.api import MAX_IMAGES, MAX_REQUEST_CHARS

    big = _b64(_png(8192, 8192, "RGBA"))
    filler = _b64(_png(180, 180, noise=True))
    room = MAX_REQUEST_CHARS - len(big)
    count = min(MAX_IMAGES - 1, room // len(filler))
    images = [big] + [filler] * count
    return {"prompt": "a lighthouse at dusk", "images": images}


SCENARIOS: dict[str, tuple[str, Callable[[], dict]]] = {
    "three 13000x13000 PNGs (493 KB each)": (
        "refused",
        lambda: {"prompt": "x", "images": [_b64(_claiming(13000, 13000))] * 3},
    ),
    "an 8000x1 PNG (103 bytes)": ("refused", lambda: {"prompt": "x", "images": [_b64(_png(8000, 1))]}),
    "a 40000x40000 decompression bomb": ("refused", lambda: {"prompt": "x", "images": [_b64(_claiming(40000, 40000))]}),
    "1025 images": ("refused", lambda: {"prompt": "x", "images": [_b64(_png(8, 8))] * 1025}),
    "16 WebUI-size images (512x512 noise PNGs)": (
        "scored",
        lambda: {"prompt": "a lighthouse at dusk", "images": [_b64(_png(512, 512, noise=True))] * 16},
    ),
    "1024 small images (64x64)": (
        "scored",
        lambda: {"prompt": "a lighthouse at dusk", "images": [_b64(_png(64, 64, noise=True))] * 1024},
    ),
    "one 8192x8192 RGBA image (the pixel limit)": (
        "scored",
        lambda: {"prompt": "a lighthouse at dusk", "images": [_b64(_png(8192, 8192, "RGBA"))]},
    ),
    "worst allowed: 8192x8192 RGBA + noise images up to 100 MiB of base64": ("scored", _worst_allowed),
    "over the limit: 150 MiB of base64": (
        "refused",
        lambda: {"prompt": "x", "images": [_b64(_png(400, 400, noise=True))] * (150 * MIB // 640_000)},
    ),
}


# ------------------------------------------------------------------------------------------------------ client side


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(name: str, body: dict, models_dir: str, streamed: bool = False) -> dict:
    import httpx

    from imagereward.webui.api import ROUTE

    port = _free_port()
    command = [sys.executable, __file__, "--serve", str(port), "--models-dir", models_dir]
    server = subprocess.Popen(command + (["--streamed"] if streamed else []))
    url = f"http://127.0.0.1:{port}{ROUTE}"
    try:
        for _ in range(600):
            try:
                httpx.post(url, json={"prompt": "warm up", "images": [_b64(_png(32, 32))]}, timeout=60)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        before = _status_kib(server.pid, "VmRSS")
        data = json.dumps(body).encode()
        start = time.perf_counter()
        answer = httpx.post(url, content=data, headers={"content-type": "application/json"}, timeout=600)
        seconds = time.perf_counter() - start
        peak = _status_kib(server.pid, "VmHWM")
        detail = answer.json().get("detail") if answer.status_code != 200 else f"{len(answer.json()['scores'])} scores"
        return {
            "request": name,
            "body_mib": round(len(data) / MIB, 1),
            "status": answer.status_code,
            "answer": str(detail)[:110],
            "rss_before_mib": round(before / 1024),
            "peak_mib": round(peak / 1024),
            "request_cost_mib": round((peak - before) / 1024),
            "seconds": round(seconds, 2),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", help="a models folder (default: a small random checkpoint from tests/)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--streamed",
        action="store_true",
        help="mount the route with read_json_body (body size checked before and while reading) instead of a dict",
    )
    parser.add_argument("--only", help="run the scenarios whose name contains this text")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a Markdown table")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.models_dir, args.streamed)
        return
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir
        if models_dir is None:
            from tests.checkpoints import write_model_dir

            models_dir = str(write_model_dir(Path(tmp) / "models"))
        if not args.json:
            print("| request | body MiB | answer | RSS before MiB | peak MiB | request's cost MiB | seconds |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, (_expected, make) in SCENARIOS.items():
            if args.only and args.only not in name:
                continue
            row = measure(name, make(), models_dir, args.streamed)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                answer = f"{row['status']}: {row['answer']}".replace("|", "/")
                print(
                    f"| {name} | {row['body_mib']} | {answer} | {row['rss_before_mib']} | {row['peak_mib']} | "
                    f"{row['request_cost_mib']} | {row['seconds']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
