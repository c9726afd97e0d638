"""Plain best-of-N against "finish only the kept candidates", the same job, in the same run of a live WebUI.

    python bench/two_phase.py --url http://127.0.0.1:7860 [--log /path/to/webui.log] [--out result.json]

Each variant is one `POST /sdapi/v1/txt2img` with the extension on (best of N, top-k 1), alternated `--repeats`
times so that a warm-up or a noisy neighbour does not favour one of them; the figure is the median wall time of each.
With `--log` (the WebUI's console log) it also counts ADetailer's per-image runs in each job from the lines ADetailer
prints for every image it looks at. Whatever the weights (random weights time the same as real ones), the job is:
`--width`², `--steps` steps, hires fix `--hr-scale`× with `--hr-steps` steps, `--batch-size` × `--n-iter` requested
images, N = `--candidates`; ADetailer on when `--adetailer` is given (its first model). Prints one JSON object.

It needs only the standard library, so it runs beside any WebUI.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

ADETAILER_MARKS = ("ADetailer: nothing detected", "ADetailer: detected")  # printed once per image it looks at


def job(args: argparse.Namespace, finish_kept: bool, preview: int, check: bool = False) -> dict[str, Any]:
    scripts: dict[str, Any] = {
        "imagereward": {
            "args": [
                {
                    "enabled": True,
                    "mode": "top-k",
                    "candidates": args.candidates,
                    "k": 1,
                    "finish_kept": finish_kept,
                    "preview_percent": preview,
                    "check_previews": check,
                }
            ]
        }
    }
    if args.adetailer:
        scripts["adetailer"] = {"args": [True, False, {"ad_model": args.adetailer}]}
    body = {
        "prompt": args.prompt,
        "negative_prompt": "",
        "seed": args.seed,
        "steps": args.steps,
        "width": args.width,
        "height": args.width,
        "sampler_name": args.sampler,
        "batch_size": args.batch_size,
        "n_iter": args.n_iter,
        "enable_hr": args.hr_scale > 1,
        "hr_scale": args.hr_scale,
        "hr_upscaler": args.hr_upscaler,
        "hr_second_pass_steps": args.hr_steps,
        "denoising_strength": 0.5,
        "save_images": args.save,
        "send_images": True,
        "alwayson_scripts": scripts,
        **json.loads(args.extra),
    }
    return body


def post(url: str, body: dict[str, Any], timeout: float, auth: str = "") -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(url + "/sdapi/v1/txt2img", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def log_size(path: Path | None) -> int:
    return path.stat().st_size if path is not None and path.exists() else 0


def adetailer_runs(path: Path | None, start: int) -> int | None:
    if path is None:
        return None
    with path.open("rb") as handle:
        handle.seek(start)
        text = handle.read().decode("utf-8", "replace")
    return sum(text.count(mark) for mark in ADETAILER_MARKS)


def run_once(args: argparse.Namespace, name: str, finish_kept: bool, preview: int, check: bool) -> dict[str, Any]:
    start = log_size(args.log)
    began = time.perf_counter()
    answer = post(args.url, job(args, finish_kept, preview, check), args.timeout, args.auth)
    seconds = time.perf_counter() - began
    info = json.loads(answer.get("info") or "{}")
    details = (info.get("extra_generation_params") or {}).get("ImageReward details") or {}
    comments = list((details.get("summary") or {}).get("messages") or [])  # the job's comments (the UI shows them)
    return {
        "variant": name,
        "seconds": round(seconds, 2),
        "images": len(answer.get("images") or []),
        "adetailer_runs": adetailer_runs(args.log, start),
        "comments": comments,
        "infotexts": info.get("infotexts", []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--auth", default="", help="user:password, for a WebUI started with --api-auth")
    parser.add_argument("--log", type=Path, help="the WebUI's console log, to count ADetailer's per-image runs")
    parser.add_argument("--out", type=Path, help="also write the JSON there")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--n-iter", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sampler", default="Euler")
    parser.add_argument("--hr-scale", type=float, default=2.0)
    parser.add_argument("--hr-steps", type=int, default=4)
    parser.add_argument("--hr-upscaler", default="Latent")
    parser.add_argument("--adetailer", default="", help="ADetailer's model name (empty: ADetailer off)")
    parser.add_argument("--preview", type=int, default=0, help="also time previews at this percent of the steps")
    parser.add_argument(
        "--check",
        action="store_true",
        help="with --preview: one more run with 'Check the previews' (agreement figures)",
    )
    parser.add_argument("--prompt", default="a lighthouse on a cliff at dusk")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--save", action="store_true", help="save_images: true (the WebUI writes the files)")
    parser.add_argument(
        "--extra",
        default="{}",
        help='more request fields as JSON, e.g. Forge Neo: {"hr_additional_modules": ["Use same choices"]}',
    )
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()

    variants = [("plain best-of-N", False, 100, False), ("finish only the kept", True, 100, False)]
    if args.preview:
        variants.append((f"finish only the kept, previews at {args.preview} %", True, args.preview, False))
        if args.check:
            variants.append(
                (f"previews at {args.preview} %, checked (every candidate finished)", True, args.preview, True)
            )
    runs: list[dict[str, Any]] = []
    for _ in range(args.repeats):
        for name, finish_kept, preview, check in variants:
            runs.append(run_once(args, name, finish_kept, preview, check))
    medians = {name: statistics.median(r["seconds"] for r in runs if r["variant"] == name) for name, *_ in variants}
    plain = medians[variants[0][0]]
    result = {
        "job": {k: v for k, v in vars(args).items() if k not in ("url", "log", "out", "auth")},
        "webui": args.url,
        "median_seconds": medians,
        "ratio_plain_over": {name: round(plain / s, 2) for name, s in medians.items() if s},
        "runs": runs,
    }
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
