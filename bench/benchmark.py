"""Speed and memory of our scorer beside the reference implementation, in one process on one machine.

    python bench/benchmark.py --checkpoint-dir /path/to/full --vocab tests/fixtures/bert-base-uncased
    # CPU, smaller counts:
    python bench/benchmark.py --checkpoint-dir ... --device cpu --images 8 --batch-sizes 1,8 --dtypes fp32,bf16

Run it with an interpreter that has both this package (PYTHONPATH=.) and, for the side-by-side numbers, the
reference (`image-reward==1.5`, see tests/reference/README.md); without the reference those rows are skipped.
The checkpoint folder holds a full-size `ImageReward.pt` + `med_config.json` (random weights are fine: speed does not
depend on the values). Loads are timed in fresh subprocesses so their peak memory is their own.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagereward.scorer import ImageRewardScorer  # noqa: E402

PROMPT = "a painting of an ocean with clouds and birds, day time, low depth field effect"
WORKER = ROOT / "tests" / "reference" / "reference_worker.py"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Smooth random images (low-frequency noise plus detail), like decoded generations rather than white noise."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        low = rng.random((size // 32, size // 32, 3))
        base = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
        detail = rng.normal(0, 12, (size, size, 3))
        images.append(Image.fromarray(np.clip(base + detail, 0, 255).astype(np.uint8)))
    return images


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_reference_module() -> Any | None:
    """The reference worker (it imports the reference with its stand-ins), or None when not installed."""
    if importlib.util.find_spec("ImageReward") is None:
        return None
    spec = importlib.util.spec_from_file_location("reference_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(io.StringIO()):
        spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------------- loads


def probe_load(kind: str, checkpoint_dir: Path, vocab: Path, device: str) -> dict[str, float]:
    """Runs in a fresh subprocess: load once (library imports and tokenizer included, `import torch` not), report
    time and peak RSS."""
    start = time.perf_counter()
    if kind == "reference":
        worker = load_reference_module()
        with worker.local_tokenizer(vocab), contextlib.redirect_stdout(sys.stderr):
            model = worker.RM.load(
                name=str(checkpoint_dir / "ImageReward.pt"),
                device=device,
                med_config=str(checkpoint_dir / "med_config.json"),
            )
    elif kind == "ours-safetensors":
        model = ImageRewardScorer.from_files(
            checkpoint_dir / "ImageReward.safetensors", checkpoint_dir / "med_config.json", vocab, device=device
        ).model
    else:  # the first load of a .pt, before any conversion exists (writing the conversion is not timed)
        from imagereward.config import TextConfig
        from imagereward.text import PromptTokenizer
        from imagereward.weights import build_model, read_torch_checkpoint

        PromptTokenizer(vocab)  # as in every load, so the three rows compare the same work
        state = read_torch_checkpoint(checkpoint_dir / "ImageReward.pt")
        model = build_model(state, TextConfig.from_file(checkpoint_dir / "med_config.json"), device=device)
    sync(torch.device(device))
    loaded = {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}
    # Memory-mapped weights are read lazily: also time until every weight has been read once (the first forward).
    for tensor in model.state_dict().values():
        if tensor.is_floating_point():
            tensor.sum()
    sync(torch.device(device))
    loaded.update(seconds_all_read=time.perf_counter() - start, peak_rss_mb_all_read=peak_rss_mb())
    return loaded


def measure_loads(args: argparse.Namespace, with_reference: bool) -> dict[str, Any]:
    if not (args.checkpoint_dir / "ImageReward.safetensors").exists():
        ImageRewardScorer.from_files(
            args.checkpoint_dir / "ImageReward.pt", args.checkpoint_dir / "med_config.json", args.vocab, device="cpu"
        )  # writes the conversion once
    kinds = ["ours-safetensors", "ours-pt"] + (["reference"] if with_reference else [])
    results = {}
    for kind in kinds:
        runs = []
        for _ in range(args.load_repeats):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--probe-load",
                    kind,
                    "--checkpoint-dir",
                    str(args.checkpoint_dir),
                    "--vocab",
                    str(args.vocab),
                    "--device",
                    str(args.device),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        results[kind] = {key: min(r[key] for r in runs) for key in runs[0]}
    return results


# -------------------------------------------------------------------------------------------------- throughput


def timed(fn: Any, device: torch.device, repeats: int) -> tuple[float, Any]:
    """Best of `repeats` wall times, after one untimed warm-up call whose time is returned as `first`."""
    best, result = float("inf"), None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def run_throughput(args: argparse.Namespace, worker: Any | None) -> dict[str, Any]:
    device = torch.device(args.device)
    images = synthetic_images(args.images, args.size)
    results: dict[str, Any] = {"rows": []}

    reference_scores = None
    if worker is not None:
        with worker.local_tokenizer(args.vocab), contextlib.redirect_stdout(io.StringIO()):
            ref = worker.RM.load(
                name=str(args.checkpoint_dir / "ImageReward.pt"),
                device=str(device),
                med_config=str(args.checkpoint_dir / "med_config.json"),
            )
        subset = images[: args.reference_images]
        with contextlib.redirect_stdout(io.StringIO()):
            seconds, (_, reference_scores) = timed(lambda: ref.inference_rank(PROMPT, subset), device, 1)
        results["rows"].append(
            {
                "path": "reference inference_rank (PIL, fp32, 1 image/forward)",
                "dtype": "fp32",
                "batch": 1,
                "images": len(subset),
                "images_per_s": len(subset) / seconds,
            }
        )
        results["reference_images_per_s"] = len(subset) / seconds
        del ref
        if device.type == "cuda":
            torch.cuda.empty_cache()

    fp32_scores: list[float] | None = None
    for dtype in args.dtypes:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        scorer = ImageRewardScorer.from_files(
            args.checkpoint_dir / "ImageReward.safetensors",
            args.checkpoint_dir / "med_config.json",
            args.vocab,
            device=device,
            dtype=dtype,
        )
        weights_mb = sum(p.numel() * p.element_size() for p in scorer.model.parameters()) / 2**20
        start = time.perf_counter()
        scorer.batch_size = max(args.batch_sizes)
        first_scores = scorer.score(PROMPT, images)
        first_call = time.perf_counter() - start
        if dtype == "fp32":
            fp32_scores = first_scores
        row_common = {"dtype": dtype, "weights_mb": round(weights_mb, 1), "first_call_s": round(first_call, 3)}
        if reference_scores is not None and dtype == "fp32":
            n = len(reference_scores)
            results["max_abs_diff_fp32_vs_reference"] = float(
                np.max(np.abs(np.subtract(first_scores[:n], reference_scores)))
            )
        if fp32_scores is not None:
            diff = np.abs(np.subtract(first_scores, fp32_scores))
            row_common["max_abs_diff_vs_fp32"] = float(diff.max())
            row_common["same_order_as_fp32"] = bool(np.array_equal(np.argsort(first_scores), np.argsort(fp32_scores)))
        for batch in args.batch_sizes:
            scorer.batch_size = batch
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds, _ = timed(partial(scorer.score, PROMPT, images), device, args.repeats)
            peak = (
                (torch.cuda.max_memory_allocated(device) - base_mem) / 2**20 - weights_mb
                if device.type == "cuda"
                else None
            )
            results["rows"].append(
                {
                    "path": "ours, from PIL images (reference-exact preprocessing)",
                    "batch": batch,
                    "images": len(images),
                    "images_per_s": len(images) / seconds,
                    "peak_activation_mb": peak,
                    **row_common,
                }
            )
        # the WebUI hook's input: a batch of float tensors already on the device
        tensors = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in images])
        tensors = tensors.to(device).float().div_(255)
        count = max(args.tensor_images, len(images))
        tensors = tensors.repeat((count + len(images) - 1) // len(images), 1, 1, 1)[:count]
        for batch in args.batch_sizes:
            scorer.batch_size = batch
            seconds, _ = timed(partial(scorer.score, PROMPT, tensors), device, args.repeats)
            results["rows"].append(
                {
                    "path": f"ours, from {device.type} tensors (WebUI hook)",
                    "batch": batch,
                    "images": count,
                    "images_per_s": count / seconds,
                    **row_common,
                }
            )
        if device.type == "cuda":
            scorer.to("cpu")
            torch.cuda.empty_cache()
            results.setdefault("offload_mb_left", {})[dtype] = (torch.cuda.memory_allocated(device) - base_mem) / 2**20
        scorer = tensors = None  # free before the next dtype loads
    return results


def markdown(results: dict[str, Any]) -> str:
    ref = results.get("throughput", {}).get("reference_images_per_s")
    lines = [
        "| path | dtype | batch | images | images/s | x reference | max |Δ| vs fp32 | peak act. MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results.get("throughput", {}).get("rows", []):
        ratio = f"{row['images_per_s'] / ref:.1f}" if ref else "-"
        diff = row.get("max_abs_diff_vs_fp32")
        peak = row.get("peak_activation_mb")
        lines.append(
            f"| {row['path']} | {row['dtype']} | {row['batch']} | {row['images']} | "
            f"{row['images_per_s']:.2f} | {ratio} | {'-' if diff is None else f'{diff:.1e}'} | "
            f"{'-' if peak is None else f'{peak:.0f}'} |"
        )
    loads = results.get("loads", {})
    if loads:
        lines += [
            "",
            "| load | seconds | peak RSS MB | seconds, all weights read | peak RSS MB, all weights read |",
            "| --- | --- | --- | --- | --- |",
        ]
        for kind, v in loads.items():
            lines.append(
                f"| {kind} | {v['seconds']:.2f} | {v['peak_rss_mb']:.0f} | {v['seconds_all_read']:.2f} | "
                f"{v['peak_rss_mb_all_read']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint-dir", type=Path, required=True)
    parser.add_argument("--vocab", type=Path, default=ROOT / "tests" / "fixtures" / "bert-base-uncased")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=64, help="PIL images of --size x --size")
    parser.add_argument("--tensor-images", type=int, default=256, help="images for the tensor path")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-sizes", default="1,16,64,256")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16")
    parser.add_argument("--reference-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--load-repeats", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--skip-loads", action="store_true")
    parser.add_argument("--loads-only", action="store_true")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--probe-load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_load:
        print(json.dumps(probe_load(args.probe_load, args.checkpoint_dir, args.vocab, args.device)))
        return
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.dtypes = [d.strip() for d in args.dtypes.split(",")]
    if "fp32" in args.dtypes:  # fp32 first: the others are compared with it
        args.dtypes.remove("fp32")
        args.dtypes.insert(0, "fp32")

    worker = None if args.no_reference else load_reference_module()
    device_name = (
        torch.cuda.get_device_name()
        if str(args.device).startswith("cuda")
        else platform.processor() or platform.machine()
    )
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "device": device_name,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "reference": worker is not None,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    if not args.skip_loads:
        results["loads"] = measure_loads(args, worker is not None)
    if not args.loads_only:
        results["throughput"] = run_throughput(args, worker)
    print(json.dumps(results, indent=2))
    print(markdown(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
