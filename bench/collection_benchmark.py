"""Collections: images/s (one process, decode workers, local Ray) and peak memory against the collection's size.

    python bench/collection_benchmark.py --work /tmp/irbench --throughput 10000 --rss 1000,100000
    python bench/collection_benchmark.py --work /tmp/irbench --throughput 2000 --rss 1000,10000 --no-ray   # quick

The small random checkpoint of the tests (tests/checkpoints.py: ViT width 64, 2 blocks; BERT 32 wide, 2 layers) and
synthetic images, so the figures measure the pipeline (listing, reading, decoding, preprocessing to 224 x 224, the
store), not the full-size model. Every measurement runs in a fresh process; its peak RSS is its own (`ru_maxrss`),
and its decode workers' peak is the largest of them (`RUSAGE_CHILDREN`). The timed part starts after the model has
loaded (and, for Ray, after `ray.init`) and ends when the store holds every row. Prints one JSON line per run and a
Markdown table at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_folder(folder: Path, count: int, size: int) -> None:
    from tests.collection_data import write_images

    if folder.is_dir() and len(list(folder.iterdir())) >= count:
        return
    write_images(folder, count, size=size)


def make_shards(folder: Path, count: int, size: int, per_shard: int = 1000) -> None:
    """`count` JPEGs with .txt captions in shards of `per_shard` (distinct pixels from a few hundred variants)."""
    from tests.collection_data import PROMPTS, image_bytes

    if folder.is_dir() and len(list(folder.glob("*.tar"))) >= (count + per_shard - 1) // per_shard:
        return
    folder.mkdir(parents=True, exist_ok=True)
    variants = [image_bytes(i, size, fmt="JPEG") for i in range(257)]
    for shard in range((count + per_shard - 1) // per_shard):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as archive:
            for i in range(shard * per_shard, min(count, (shard + 1) * per_shard)):
                for name, data in ((f"{i:09d}.jpg", variants[i % 257]), (f"{i:09d}.txt", PROMPTS[i % 3].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))


def child(args: argparse.Namespace) -> None:
    """One measurement, in this (fresh) process."""
    from imagereward.collection.cli import model_threads
    from imagereward.collection.pipeline import score_collection
    from imagereward.collection.sources import FileSource, ShardSource
    from imagereward.collection.store import ResultStore
    from imagereward.scorer import ImageRewardScorer

    source = ShardSource([f"{args.data}/*.tar"]) if args.kind == "shards" else FileSource([args.data])
    torch_threads = None
    peak_while_scoring = [0.0]
    load_before = os.getloadavg()[0]
    if args.mode == "ray":
        import ray

        from imagereward.collection.ray_job import run_ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        started = time.perf_counter()
        run_ray(source, args.store, models_dir=args.models, offline=True, device="cpu", batch_size=args.batch_size)
    else:
        import torch

        scorer = ImageRewardScorer.load(args.models, device="cpu", offline=True, progress=False)
        torch_threads = torch.get_num_threads()
        started = time.perf_counter()
        threads = args.threads or model_threads(None, args.workers)  # as the command line does

        def progress(_: Any) -> None:
            peak_while_scoring[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        score_collection(
            source,
            args.store,
            scorer=scorer,
            batch_size=args.batch_size,
            workers=args.workers,
            torch_threads=threads,
            progress=progress,
        )
        torch_threads = threads or torch_threads
    seconds = time.perf_counter() - started
    rows = ResultStore(args.store).read(["key"]).num_rows
    result = {
        "mode": args.mode,
        "kind": args.kind,
        "workers": args.workers,
        "images": rows,
        "seconds": round(seconds, 2),
        "images_per_s": round(rows / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_mb_while_scoring": round(peak_while_scoring[0], 1) if args.mode != "ray" else None,
        "workers_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "torch_threads": torch_threads,
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # the machine may be shared
    }
    print(json.dumps(result), flush=True)


def measure(
    work: Path, models: Path, kind: str, data: Path, mode: str, workers: int, batch: int, tag: str, threads: int = 0
) -> dict:
    store = work / f"store-{tag}"
    if store.exists():
        import shutil

        shutil.rmtree(store)  # the benchmark's own store from an earlier run of this script
    command = [sys.executable, __file__, "_child", "--kind", kind, "--data", str(data), "--store", str(store)]
    command += ["--models", str(models), "--mode", mode, "--workers", str(workers), "--batch-size", str(batch)]
    command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{tag} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["tag"] = tag
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a scratch folder (images, shards, stores)")
    parser.add_argument("--throughput", type=int, default=10000, help="images for the images/s runs")
    parser.add_argument("--rss", default="1000,100000", help="collection sizes for the peak memory runs")
    parser.add_argument("--workers", default="0,1,2", help="decode worker counts for the images/s runs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64, help="side of the synthetic images (images/s runs)")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--model-threads", type=int, default=0, help="the model's threads (default: as the CLI)")
    parser.add_argument("--rss-only", action="store_true", help="only the peak memory runs")
    args = parser.parse_args()

    from tests.checkpoints import write_model_dir

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    models = work / "models"
    if not (models / "ImageReward.pt").exists():
        write_model_dir(models)
    print(json.dumps({"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}), flush=True)
    results: list[dict[str, Any]] = []

    threads = args.model_threads
    if not args.rss_only:
        folder = work / f"folder-{args.throughput}-{args.image_size}"
        make_folder(folder, args.throughput, args.image_size)
        for n in (int(w) for w in args.workers.split(",")):
            tag = f"files-w{n}-t{threads}"
            results.append(measure(work, models, "files", folder, "local", n, args.batch_size, tag, threads))
        if not args.no_ray:
            results.append(measure(work, models, "files", folder, "ray", 0, args.batch_size, "files-ray"))
    local = [r for r in results if r["mode"] == "local"]
    best = max(local, key=lambda r: r["images_per_s"])["workers"] if local else int(args.workers.split(",")[-1])
    for count in (int(c) for c in args.rss.split(",")):
        shards = work / f"shards-{count}"
        make_shards(shards, count, 32)
        tag = f"shards-{count}"
        results.append(measure(work, models, "shards", shards, "local", best, args.batch_size, tag, threads))

    print("\n| run | input | workers | threads | images | s | images/s | peak RSS MB main (scoring) / worker | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['mode']} | {r['kind']} | {r['workers'] if r['mode'] == 'local' else 'Ray'} | {r['torch_threads']} "
            f"| {r['images']} | {r['seconds']} | {r['images_per_s']} "
            f"| {r['peak_rss_mb']} ({r['peak_rss_mb_while_scoring']}) / {r['workers_peak_rss_mb']} "
            f"| {r['load_average'][0]}–{r['load_average'][1]} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        p = argparse.ArgumentParser()
        for name in ("--kind", "--data", "--store", "--models", "--mode"):
            p.add_argument(name, required=True)
        p.add_argument("--workers", type=int, default=0)
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--threads", type=int, default=0)
        child(p.parse_args(sys.argv[2:]))
    else:
        main()
