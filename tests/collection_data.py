"""Synthetic collections for the collection tests and the benchmark: small images with WebUI infotext, webdataset
tar shards with .txt/.json captions, and Parquet files of paths and prompts."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

PROMPTS = ("a red fox in snow", "a lighthouse at dusk", "a bowl of ramen, (detailed:1.2)")


def infotext(prompt: str, seed: int) -> str:
    return f"{prompt}\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: 64x64"


def image_bytes(seed: int, size: int = 32, prompt: str | None = None, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    # A smooth gradient plus noise: images differ enough that their scores differ.
    base = np.linspace(0, 255, size, dtype=np.float32)[None, :, None] * rng.uniform(0.2, 1.0, (1, 1, 3))
    pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    if prompt is not None and fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", infotext(prompt, seed))
        Image.fromarray(pixels).save(out, fmt, pnginfo=info)
    else:
        Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def write_images(folder: Path, count: int, *, start: int = 0, size: int = 32) -> list[Path]:
    """`count` PNGs with WebUI infotext (three prompts in turn), named 00000.png, 00001.png, …"""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = folder / f"{i:05d}.png"
        path.write_bytes(image_bytes(i, size, PROMPTS[i % len(PROMPTS)]))
        paths.append(path)
    return paths


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    archive.addfile(info, io.BytesIO(data))


def write_shard(path: Path, first: int, count: int, *, caption: str = "txt", size: int = 32) -> list[tuple[str, str]]:
    """A webdataset shard of `count` JPEGs with a caption each (`caption`: "txt", "json" or "both"); returns
    (key, prompt) pairs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pairs = []
    with tarfile.open(path, "w") as archive:
        for i in range(first, first + count):
            key = f"{i:09d}"
            prompt = PROMPTS[i % len(PROMPTS)]
            _add(archive, f"{key}.jpg", image_bytes(i, size, fmt="JPEG"))
            if caption in ("txt", "both"):
                _add(archive, f"{key}.txt", prompt.encode())
            if caption in ("json", "both"):
                text = prompt if caption == "json" else "the json caption loses to the txt one"
                _add(archive, f"{key}.json", json.dumps({"caption": text, "width": size}).encode())
            pairs.append((key, prompt))
    return pairs


def write_paths_parquet(path: Path, images: list[Path], prompts: list[str | None]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": [str(p) for p in images], "prompt": prompts}), path)


def write_two_scorer_models(folder: Path) -> Path:
    """ImageReward's small random checkpoint at `folder`, HPSv2.1's tiny one in its subfolder (several-scorer runs)."""
    from imagereward.scorers import hpsv2
    from tests.checkpoints import write_model_dir

    root = write_model_dir(folder)
    hpsv2.write_random_release(root / "hpsv2.1", size="tiny", seed=3)
    return root
