"""Every scorer on a CUDA GPU: fp16 against fp32 (same order, largest difference), throughput and peak memory.

    python bench/gpu_scorers.py --out results/gpu_scorers.json [--families imagereward,openai-clip-vit-l-14,...]
    python bench/gpu_scorers.py --device cpu --no-accuracy --images 16 --batches 8 --families pickscore-v1 --out x.json

Each family's full-size release is written with random weights by its own `write_random_release` (our code; no
download), loaded through the registry as a user's would be, then:
- accuracy: 8 test images x 3 prompts (one longer than every model reads), fp32 and fp16 weights on the GPU;
- speed: 256 images of 512 x 512 as uint8 GPU tensors (the WebUI hook's input), batch 64 and 256, fp16;
  and 64 PIL images end to end (decode, resize on the CPU threads, transfer, score);
- memory: weights, and peak allocated per batch size.
Results go to --out as JSON after every family, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagereward.scorers import registry  # noqa: E402
from imagereward.scorers.specs import SCORERS  # noqa: E402

IMAGES = sorted((ROOT / "tests" / "fixtures" / "images").glob("*.png"))
PROMPTS = [
    "a cat on a sofa",
    "a photograph of an astronaut riding a horse on the moon, highly detailed",
    " ".join(["a very detailed oil painting of a lighthouse on a cliff at sunset with dramatic clouds"] * 6),
]
FAMILIES = ("", "openai-clip-vit-l-14", "blip-large", "pickscore-v1", "hpsv2.1")


def write_release(key: str, folder: Path, size: str) -> None:
    if key == "":  # ImageReward: the benchmark's own writer, and the BERT vocabulary of the test fixtures
        from bench.make_full_checkpoint import write_full
        from tests.checkpoints import write_model_dir

        if size == "full":
            write_full(folder)
        else:
            write_model_dir(folder)
            return
        shutil.copytree(ROOT / "tests" / "fixtures" / "bert-base-uncased", folder / "bert-base-uncased")
        return
    module = importlib.import_module(registry.FAMILY_MODULES[key])
    module.write_random_release(folder, size=size, seed=0)


DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def order(values: list[float]) -> list[int]:
    return sorted(range(len(values)), key=lambda i: -values[i])


def accuracy(names: list[str], models: Path, key: str) -> dict:
    results: dict = {}
    loaded = {}
    for dtype in ("fp32", "fp16"):
        scorer = registry.load_family(key, names, models, device=DEVICE, dtype=dtype, progress=False)
        tables = []
        for prompt in PROMPTS:
            tables.append(scorer.score_outputs(prompt, [Image.open(p) for p in IMAGES]))
        loaded[dtype] = tables
        del scorer
        empty()
    for name in names:
        worst, same = 0.0, True
        for full, half in zip(loaded["fp32"], loaded["fp16"], strict=True):
            diffs = [abs(a - b) for a, b in zip(full[name], half[name], strict=True)]
            worst = max(worst, *diffs)
            same = same and order(full[name]) == order(half[name])
        spread = max(max(t[name]) - min(t[name]) for t in loaded["fp32"])
        results[name] = {"max_abs_diff_fp16_vs_fp32": worst, "same_order": same, "fp32_spread": spread}
    return results


def empty() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def speed(names: list[str], models: Path, key: str, count: int, batches: tuple[int, ...]) -> dict:
    dtype = "fp16" if DEVICE == "cuda" else "fp32"
    scorer = registry.load_family(key, names, models, device=DEVICE, dtype=dtype, progress=False)
    weights_mb = sum(p.numel() * p.element_size() for p in scorer.model.parameters()) / 2**20
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    tensors = torch.randint(0, 256, (count, 3, 512, 512), dtype=torch.uint8, device=DEVICE, generator=generator)
    prompt = PROMPTS[1]
    out: dict = {"dtype": dtype, "weights_mib": round(weights_mb, 1), "batch": {}}
    cuda = DEVICE == "cuda"
    for batch in batches:
        scorer.batch_size = batch
        scorer.score_outputs(prompt, tensors[:batch])  # warm-up (kernels, allocator)
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else 0
        start = time.perf_counter()
        repeats = 3 if cuda else 1
        for _ in range(repeats):
            scorer.score_outputs(prompt, tensors)
        sync()
        elapsed = time.perf_counter() - start
        out["batch"][str(batch)] = {
            "images_per_s_from_gpu_tensors": round(repeats * len(tensors) / elapsed, 1),
            "peak_activation_mib": round((torch.cuda.max_memory_allocated() - base) / 2**20, 1) if cuda else None,
        }
    pictures = [Image.open(IMAGES[i % len(IMAGES)]).convert("RGB").resize((512, 512)) for i in range(count // 4)]
    scorer.batch_size = max(batches[0], 1)
    scorer.score_outputs(prompt, pictures[:8])
    sync()
    start = time.perf_counter()
    scorer.score_outputs(prompt, pictures)
    sync()
    out["images_per_s_from_pil_512"] = round(len(pictures) / (time.perf_counter() - start), 1)
    del scorer, tensors
    empty()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/gpu-scorers")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="full", choices=("full", "tiny"))
    parser.add_argument("--images", type=int, default=256, help="tensor images for the speed test")
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--no-accuracy", action="store_true", help="speed and memory only (the CPU benchmark)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    batches = tuple(int(b) for b in args.batches.split(","))
    keys = ["" if k in ("", "imagereward") else k for k in args.families.split(",")]
    report: dict = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "size": args.size,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d"),
        "families": {},
    }
    try:
        import transformers

        report["transformers"] = transformers.__version__
    except ImportError:
        pass
    work = Path(args.work)
    for key in keys:
        names = [name for name, spec in SCORERS.items() if spec.family == key]
        entry: dict = {"scorers": names}
        label = key or "imagereward"
        start = time.perf_counter()
        try:
            models = work / (label + "-models")
            folder = registry.family_folder(models, registry.get_family(key))
            write_release(key, folder, args.size)
            entry["write_s"] = round(time.perf_counter() - start, 1)
            if not args.no_accuracy:
                entry["accuracy"] = accuracy(names, models, key)
            entry["speed"] = speed(names, models, key, args.images, batches)
            if DEVICE == "cpu":  # the process's peak resident memory: run one family per process to read it alone
                import resource

                entry["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            shutil.rmtree(models, ignore_errors=True)
        except Exception as exc:  # one family's problem must not cost the others' figures
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc()[-3000:]
        report["families"][label] = entry
        print(label, json.dumps(entry, indent=1)[:2000], flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
