"""Collections: what a rerun costs on a finished store of tar shards, this tree against an earlier revision.

    python bench/resume_benchmark.py --work /tmp/irresume --before-rev main --images 50000 \\
        --json bench/measured/resume_2026-12-06.json

For each revision (the earlier one checked out into a temporary `git worktree`, then this tree), on the same shards:
1. a first run fills a new store of its own with `--images` images (tar shards of `--per-shard`, 64 x 64 JPEGs with a
   .txt caption): everything a run does (listing, decoding, preprocessing, the store, the shard log) except the
   model's forward pass, each image scoring 0 (`--real-first-run`: scored by the model), which keeps a 50k benchmark
   at minutes on a small shared CPU;
2. a no-op rerun over the same shards (nothing changed);
3. a rerun with one more shard of `--per-shard` new images (the +1,000 incremental run).
Every run is a fresh process importing the revision's package; the timed part starts after the model has loaded and
ends when `score_collection` returns (the rows are in the store). The small random checkpoint of the tests
(tests/checkpoints.py), so the figures measure listing, the store and the pipeline, not the full-size model. Prints
one JSON line per run and a Markdown table; `--json` also writes them to a file.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, os, resource, sys, time
from imagereward.collection.pipeline import score_collection
from imagereward.collection.sources import ShardSource
from imagereward.scorer import ImageRewardScorer

shards, store, models, workers, batch, threads, fill = json.loads(sys.argv[1])
scorer = ImageRewardScorer.load(models, device="cpu", offline=True, progress=False)
if fill:  # the same model identity (fingerprints), without the forward pass
    scorer.score = lambda prompts, *args, **kwargs: [0.0] * len(prompts)
    if hasattr(scorer, "score_pixels"):  # (revisions with a column per scorer score through it)
        scorer.score_pixels = lambda prompts, pixels, **kwargs: {o: [0.0] * len(pixels) for o in scorer.outputs}
load = os.getloadavg()[0]
started = time.perf_counter()
summary = score_collection(ShardSource(shards), store, scorer=scorer, batch_size=batch, workers=workers,
                           torch_threads=threads)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": round(seconds, 2), "scored": summary.scored, "failed": summary.failed,
                  "skipped": summary.skipped, "found": summary.total,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "load_average": [round(load, 1), round(os.getloadavg()[0], 1)]}))
"""


def make_shards(folder: Path, shards: int, per_shard: int, size: int) -> list[Path]:
    """`shards` tar shards of `per_shard` JPEGs (a few hundred distinct images in turn) with a .txt caption each."""
    sys.path.insert(0, str(ROOT))
    from tests.collection_data import PROMPTS, image_bytes

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{s:05d}.tar" for s in range(shards)]
    if all(p.exists() for p in paths):
        return paths
    variants = [image_bytes(i, size, fmt="JPEG") for i in range(257)]
    for s, path in enumerate(paths):
        temporary = path.with_suffix(".tmp")
        with tarfile.open(temporary, "w") as archive:
            for i in range(s * per_shard, (s + 1) * per_shard):
                for name, data in ((f"{i:09d}.jpg", variants[i % 257]), (f"{i:09d}.txt", PROMPTS[i % 3].encode())):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(data), 1_700_000_000
                    archive.addfile(info, io.BytesIO(data))
        temporary.rename(path)
    return paths


def measure(
    tree: Path, shards: list[Path], store: Path, models: Path, args: argparse.Namespace, fill: bool = False
) -> dict[str, Any]:
    config = [[str(s) for s in shards], str(store), str(models), args.workers, args.batch_size, args.threads, fill]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(config)], capture_output=True, text=True, cwd=tree, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"a run in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a scratch folder (shards, stores, the worktree)")
    parser.add_argument("--before-rev", default="main", help="the earlier revision to compare with (git rev)")
    parser.add_argument("--images", type=int, default=50000)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="decode workers (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="the model's threads (default 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--real-first-run", action="store_true", help="the first run scores with the model too")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from tests.checkpoints import write_model_dir

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = work / "models"
    if not (models / "ImageReward.pt").exists():
        write_model_dir(models)
    count = args.images // args.per_shard
    folder = work / f"shards-{args.per_shard}-{args.image_size}"
    shards = make_shards(folder, count + 1, args.per_shard, args.image_size)
    base, plus = shards[:count], shards

    rev = subprocess.run(["git", "rev-parse", "--short", args.before_rev], cwd=ROOT, capture_output=True, text=True)
    if rev.returncode != 0:
        raise SystemExit(f"--before-rev {args.before_rev}: not a revision here")
    this = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    before_tree = Path(tempfile.mkdtemp(prefix="before-", dir=work))
    subprocess.run(["git", "worktree", "add", "--detach", str(before_tree), rev.stdout.strip()], cwd=ROOT, check=True)
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "images": count * args.per_shard,
        "per_shard": args.per_shard,
        "image_size": args.image_size,
        "workers": args.workers,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "first_run": "scored by the model" if args.real_first_run else "filled without the model's forward pass",
        "before": f"{args.before_rev} ({rev.stdout.strip()})",
        "after": this.strip() + (" + uncommitted changes" if dirty.stdout.strip() else ""),
    }
    print(json.dumps(info), flush=True)
    results: list[dict[str, Any]] = []
    try:
        for label, tree in (("before", before_tree), ("after", ROOT)):
            store = work / f"store-{label}"
            if store.exists():
                shutil.rmtree(store)  # the benchmark's own store from an earlier run
            first = "first run" if args.real_first_run else "first run (fill, no forward pass)"
            runs = ((first, base, not args.real_first_run), ("no-op rerun", base, False))
            for run, inputs, fill in (*runs, (f"+{args.per_shard} images", plus, False)):
                result = {"version": label, "run": run, **measure(tree, inputs, store, models, args, fill)}
                results.append(result)
                print(json.dumps(result), flush=True)
            time.sleep(1)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=ROOT, check=False)
    print("\n| version | run | images found | scored | already in the store | seconds | peak RSS MB | load average |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['version']} | {r['run']} | {r['found']:,} | {r['scored']:,} | {r['skipped']:,} | {r['seconds']} "
            f"| {r['peak_rss_mb']:,.0f} | {r['load_average'][0]}–{r['load_average'][1]} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
