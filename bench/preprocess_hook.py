"""Preprocessing time of what the WebUI hook and the command line score: N images of S x S.

    PYTHONPATH=. python bench/preprocess_hook.py --images 16 --size 512

Times the scorer's own preprocessing (`Scorer._pixels`: decoding, resize, crop, normalisation, in its thread pool),
not the model, on the test checkpoint's scorer, for:
- the hook's input: the WebUI's final images, 8-bit RGB PIL images (the reference-exact PIL path);
- the same images as reForge saves them (RGBA, stealth infotext in the alpha channel), as the command line reads them;
- the same pixels as one float tensor batch (the tensor path, which the hook does not use), for scale.
Run it with PYTHONPATH pointing at each tree to compare two versions; nothing is asserted.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagereward.scorer import ImageRewardScorer  # noqa: E402
from tests.checkpoints import write_model_dir  # noqa: E402
from tests.test_rescore import as_webui_image, decoded, infotext, with_stealth_alpha  # noqa: E402


def best_ms(work: object, repeats: int) -> tuple[float, float]:
    """(best, median) wall time of `work()` in milliseconds, after one warm-up call."""
    work()  # type: ignore[operator]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()  # type: ignore[operator]
        times.append(1000.0 * (time.perf_counter() - start))
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scorer = ImageRewardScorer.load(write_model_dir(Path(tmp)), device="cpu", offline=True, progress=False)
        samples = [decoded(args.size, args.size, seed) for seed in range(args.images)]
        pictures = [as_webui_image(sample) for sample in samples]
        saved = []
        for seed, picture in enumerate(pictures):
            path = Path(tmp) / f"{seed}.png"
            with_stealth_alpha(picture, infotext(seed, args.size, args.size, 0.0)).save(path)
            saved.append(Image.open(path))
        for image in saved:
            image.load()
        batch = torch.stack([torch.from_numpy(np.asarray(p).copy()).permute(2, 0, 1) for p in pictures]).float() / 255
        cases = {
            "hook: 8-bit RGB PIL images": lambda: scorer._pixels(pictures),
            "command line: reForge's RGBA PNGs (decoded)": lambda: scorer._pixels(saved),
            "tensor path: one float batch (not used by the hook)": lambda: scorer._pixels(list(batch.unbind(0))),
        }
        print(
            f"{args.images} images of {args.size}x{args.size}, torch threads {torch.get_num_threads()}, "
            f"{platform.processor() or platform.machine()}, from {ROOT}"
        )
        for name, work in cases.items():
            best, median = best_ms(work, args.repeats)
            print(f"  {name}: best {best:.1f} ms, median {median:.1f} ms")


if __name__ == "__main__":
    main()
