"""Drive the HPSv2.1 reference (PyPI ``hpsv2==1.2.0``, which vendors its own copy of open_clip) for parity tests.

Runs ONLY under an interpreter that has ``hpsv2`` installed; our test-suite calls it as a subprocess when
``IMAGEREWARD_HPSV2_REFERENCE_PYTHON`` names such an interpreter. Every subcommand prints one JSON object on stdout (the
reference's own chatter goes to stderr). The environment (Python 3.11; nothing here downloads a model)::

    python3.11 -m venv /work/hpsenv
    /work/hpsenv/bin/pip install "torch==2.14.1" "torchvision==0.29.1"
    /work/hpsenv/bin/pip install "hpsv2==1.2.0"
    # hpsv2 1.2.0's wheel lacks the BPE vocabulary its tokenizer opens at import; open_clip's wheel has the same file
    /work/hpsenv/bin/pip download --no-deps -d /tmp/oc open_clip_torch
    unzip -j /tmp/oc/open_clip_torch-*.whl open_clip/bpe_simple_vocab_16e6.txt.gz \
        -d /work/hpsenv/lib/python3.11/site-packages/hpsv2/src/open_clip/

Versions used for the committed goldens: hpsv2 1.2.0, torch 2.14.1, torchvision 0.29.1, Pillow 13.0.0, numpy 2.4.6,
Python 3.11.7 (timm 1.0.31 and transformers 5.24 come with it but play no part in scoring).

    make-vocab      --bpe FILE.txt.gz [--merges N] --out DIR
    make-checkpoint --size {tiny,full} --seed N --vocab DIR --out DIR [--dtype {fp16,fp32}]
    score           --checkpoint-dir DIR (--manifest FILE | --images-dir DIR --prompt P ...) --out FILE
    preprocess      (--manifest FILE | --images-dir DIR) --out FILE.npz

What the worker changes in the reference, and why (never its arithmetic):

- ``hpsv2.img_score.initialize_model`` builds ``ViT-H-14`` with ``pretrained="laion2B-s32B-b79K"``, which downloads
  LAION's weights (nothing can be downloaded here). Those weights are overwritten at once by the HPS checkpoint
  (``load_state_dict``, strict), so the worker builds the same model with the same arguments and ``pretrained=None``
  and puts it where ``initialize_model`` would (``img_score.model_dict``).
- ``score()`` is ``img_score.score(images, prompt, cp=<checkpoint>, hps_version="v2.1")``: the function that
  ``hpsv2.score`` calls, with the checkpoint path given instead of ``hf_hub_download``.
- The tokenizer is the vendored ``SimpleTokenizer``; the worker points its module-level instance at the checkpoint
  folder's vocabulary (written as ``bpe.txt.gz`` by make-checkpoint: the full one, or the tiny test one).
- For the tiny test model the architecture is registered as an extra model config (``HPS-tiny-test``) of the
  vendored factory; the release's is ``ViT-H-14`` as the package ships it.

The release format, as ``img_score.score`` reads it: ``torch.load(cp)["state_dict"]`` loaded strictly into the
open_clip ``CLIP`` model, i.e. a dict holding the model's state dict under ``"state_dict"`` with open_clip's key names
(``visual.conv1.weight``, ``visual.transformer.resblocks.N.attn.in_proj_weight``, ``token_embedding.weight``,
``text_projection``, ``logit_scale``, ...). The released file is "compressed" (1.97 GB for 986 M parameters), i.e.
its tensors are stored in fp16; ``load_state_dict`` copies them into the fp32 model. ``--dtype fp16`` (the default)
writes that; ``fp32`` is there to check that a full-precision file loads the same way.

Two inputs make the reference fail, and the worker records the error rather than a score: an RGBA image
(``_convert_to_rgb_or_rgba`` keeps four channels and the 3-channel patch convolution refuses them), and a
non-square image whose longest side is already 224 px (``ResizeMaxSize`` then neither resizes nor pads). For RGBA
it also scores ``Image.open(path).convert("RGB")`` (its colour channels, alpha dropped) under ``"<name>#rgb"``:
that is what our scorer computes for such an image.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

with contextlib.redirect_stdout(sys.stderr):
    import hpsv2  # noqa: F401
    import hpsv2.img_score as img_score
    from hpsv2.src.open_clip import factory as oc_factory
    from hpsv2.src.open_clip import tokenizer as oc_tokenizer

REFERENCE_VERSION = "hpsv2 1.2.0"
CHECKPOINT_NAME = "HPS_v2.1_compressed.pt"
BPE_NAME = "bpe.txt.gz"
VOCAB_DIRNAME = "clip-tokenizer"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FULL_MODEL = "ViT-H-14"
TINY_MODEL = "HPS-tiny-test"
#: The tiny test architecture: the release's layout (224 px, 14 px patches, 77 tokens) at a width of 32.
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": None, "width": 32, "heads": 2, "layers": 2},
}
#: The arguments `img_score.initialize_model` passes to `create_model_and_transforms`, less `pretrained`.
MODEL_ARGS: dict[str, Any] = {
    "precision": "amp",
    "device": "cpu",
    "jit": False,
    "force_quick_gelu": False,
    "force_custom_text": False,
    "force_patch_dropout": False,
    "force_image_size": None,
    "pretrained_image": False,
    "image_mean": None,
    "image_std": None,
    "light_augmentation": True,
    "aug_cfg": {},
    "output_dict": True,
    "with_score_predictor": False,
    "with_region_predictor": False,
}


# ------------------------------------------------------------------------------------------------ vocabulary


def bytes_to_unicode() -> dict[int, str]:
    return oc_tokenizer.bytes_to_unicode()


def read_bpe(path: Path) -> list[str]:
    """The merge lines of a `bpe_simple_vocab_16e6.txt.gz`-style file, as SimpleTokenizer reads them."""
    with gzip.open(path) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    return lines[1 : 49152 - 256 - 2 + 1]


def vocab_from_merges(merges: list[str]) -> list[str]:
    """SimpleTokenizer's vocabulary in id order, spelled as Hugging Face's CLIP files spell it."""
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(merge.split()) for merge in merges]
    return [*vocab, "<|startoftext|>", "<|endoftext|>"]


def write_vocab(merges: list[str], out: Path) -> None:
    """vocab.json + merges.txt (the Hugging Face layout our encoder reads) and bpe.txt.gz (SimpleTokenizer's)."""
    out.mkdir(parents=True, exist_ok=True)
    vocab = vocab_from_merges(merges)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), "utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    # No newline at the end: SimpleTokenizer keeps every line after the first, and an empty last line would add an
    # empty token (shifting the special tokens' ids) in a file shorter than the real one.
    data = ("bpe merges (first line skipped)\n" + "\n".join(merges)).encode("utf-8")
    with gzip.GzipFile(out / BPE_NAME, "wb", mtime=0) as fh:
        fh.write(data)


def read_vocab_merges(folder: Path) -> list[str]:
    lines = (folder / "merges.txt").read_text("utf-8").split("\n")
    return [line for line in lines[1:] if line]


def use_vocabulary(bpe_path: Path) -> int:
    """Point the vendored tokenizer's module-level instance at this vocabulary; returns its size."""
    oc_tokenizer._tokenizer = oc_tokenizer.SimpleTokenizer(str(bpe_path))
    return len(oc_tokenizer._tokenizer.encoder)


# ------------------------------------------------------------------------------------------------ the model


def register_tiny(vocab_size: int) -> None:
    config = json.loads(json.dumps(TINY_CONFIG))
    config["text_cfg"]["vocab_size"] = vocab_size
    oc_factory._MODEL_CONFIGS[TINY_MODEL] = config


def build_model(name: str) -> tuple[torch.nn.Module, Any]:
    """The model and `preprocess_val` exactly as `img_score.initialize_model` makes them, without LAION's weights."""
    with contextlib.redirect_stdout(sys.stderr):
        model, _, preprocess_val = oc_factory.create_model_and_transforms(name, None, **MODEL_ARGS)
    return model, preprocess_val


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random with a sane scale: weights N(0, 0.02), biases N(0, 0.02), LayerNorm weights
    1 + N(0, 0.1) (so a scorer that ignored them would differ), logit scale ln(100)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if name == "logit_scale":
                param.fill_(math.log(100.0))
            elif ("ln_" in name or name.startswith("ln_final")) and leaf == "weight":
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.02 * noise)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def versions() -> dict[str, str]:
    import torchvision

    return {
        "reference": REFERENCE_VERSION,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pillow": Image.__version__,
        "python": sys.version.split()[0],
    }


def emit(data: dict[str, Any], out: Path | None = None, stdout_extra: dict[str, Any] | None = None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({**data, **(stdout_extra or {})}, indent=2, ensure_ascii=False))


# ------------------------------------------------------------------------------------------------ commands


def cmd_make_vocab(args: argparse.Namespace) -> None:
    merges = read_bpe(Path(args.bpe))
    if args.merges:
        merges = merges[: args.merges]
    write_vocab(merges, Path(args.out))
    emit({"out": str(args.out), "merges": len(merges), "vocab_size": len(merges) + 514})


def cmd_make_checkpoint(args: argparse.Namespace) -> None:
    out = Path(args.out)
    merges = read_vocab_merges(Path(args.vocab))
    write_vocab(merges, out / VOCAB_DIRNAME)
    vocab_size = use_vocabulary(out / VOCAB_DIRNAME / BPE_NAME)
    if args.size == "tiny":
        register_tiny(vocab_size)
        name = TINY_MODEL
    else:
        if vocab_size != 49408:
            raise SystemExit(f"the full model needs the full vocabulary (49408 tokens), got {vocab_size}")
        name = FULL_MODEL
    started = time.perf_counter()
    model, _ = build_model(name)
    randomise(model, args.seed)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    state = {key: value.detach().to(dtype).contiguous() for key, value in model.state_dict().items()}
    del model
    path = out / CHECKPOINT_NAME
    torch.save({"state_dict": state}, path)
    info = {
        "out": str(out),
        "model": name,
        "seed": args.seed,
        "dtype": args.dtype,
        "tensors": len(state),
        "parameters": sum(t.numel() for t in state.values()),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "vocab_size": vocab_size,
        "versions": versions(),
    }
    (out / "reference_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    emit(info, stdout_extra={"seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": peak_rss_mb()})


def _manifest(args: argparse.Namespace) -> tuple[list[dict[str, Any]], Path]:
    if args.manifest:
        manifest = Path(args.manifest)
        data = json.loads(manifest.read_text("utf-8"))
        items = data["items"] if isinstance(data, dict) else data
        base = manifest.parent / data.get("images_dir", ".") if isinstance(data, dict) else manifest.parent
        return [{"image": i["image"], "prompt": i["prompt"]} for i in items], base
    base = Path(args.images_dir)
    names = sorted(p.name for p in base.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    prompts = args.prompt or [""]
    return [{"image": name, "prompt": prompt} for prompt in prompts for name in names], base


def _tiny_or_full(checkpoint_dir: Path) -> str:
    vocab_size = use_vocabulary(checkpoint_dir / VOCAB_DIRNAME / BPE_NAME)
    state = torch.load(checkpoint_dir / CHECKPOINT_NAME, map_location="cpu", mmap=True)["state_dict"]
    width = state["visual.conv1.weight"].shape[0]
    del state
    if width == 1280:
        return FULL_MODEL
    register_tiny(vocab_size)
    return TINY_MODEL


def _expected_to_fail(image: Image.Image) -> bool:
    """RGBA (4 channels reach the model) or non-square with the long side already 224 px (not padded)."""
    return image.mode == "RGBA" or (max(image.size) == 224 and image.width != image.height)


def cmd_score(args: argparse.Namespace) -> None:
    checkpoint_dir = Path(args.checkpoint_dir)
    items, base = _manifest(args)
    name = _tiny_or_full(checkpoint_dir)
    started = time.perf_counter()
    model, preprocess_val = build_model(name)
    img_score.model_dict["model"] = model
    img_score.model_dict["preprocess_val"] = preprocess_val
    cp = str(checkpoint_dir / CHECKPOINT_NAME)
    load_s = time.perf_counter() - started
    results: list[dict[str, Any]] = []
    by_prompt: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_prompt.setdefault(item["prompt"], []).append(index)
    scores: dict[int, Any] = {}
    score_started = time.perf_counter()
    for prompt, indices in by_prompt.items():
        # One call per prompt for the images the reference can take (each call reloads the checkpoint, as
        # `hpsv2.score` does); the others (and all of them, should that call fail) one call per image, so that a
        # failure is recorded for the image that caused it.
        with contextlib.redirect_stdout(sys.stderr):
            paths = {i: str(base / items[i]["image"]) for i in indices}
            batch = [i for i in indices if not _expected_to_fail(Image.open(paths[i]))]
            try:
                values = img_score.score([paths[i] for i in batch], prompt, cp=cp, hps_version="v2.1") if batch else []
                scores.update({i: float(v) for i, v in zip(batch, values, strict=True)})
            except Exception:
                pass
            for i in indices:
                if i in scores:
                    continue
                try:
                    scores[i] = float(img_score.score([paths[i]], prompt, cp=cp, hps_version="v2.1")[0])
                except Exception as exc:  # the reference's own failure, recorded as such
                    scores[i] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                    rgb = Image.open(paths[i]).convert("RGB")
                    scores[-1 - i] = float(img_score.score(rgb, prompt, cp=cp, hps_version="v2.1")[0])
    for index, item in enumerate(items):
        value = scores[index]
        row: dict[str, Any] = {"image": item["image"], "prompt": item["prompt"]}
        if isinstance(value, dict):
            row.update(value)
            results.append(row)
            results.append({"image": item["image"] + "#rgb", "prompt": item["prompt"], "score": scores[-1 - index]})
        else:
            row["score"] = value
            results.append(row)
    data = {
        "reference": REFERENCE_VERSION,
        "call": 'hpsv2.img_score.score(paths, prompt, cp=checkpoint, hps_version="v2.1")',
        "model": name,
        "checkpoint_sha256": sha256_file(Path(cp)),
        "images_dir": os.path.relpath(base, Path(args.out).parent) if args.out else str(base),
        "items": results,
    }
    emit(
        data,
        Path(args.out) if args.out else None,
        {
            "load_s": round(load_s, 2),
            "score_s": round(time.perf_counter() - score_started, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        },
    )


def cmd_preprocess(args: argparse.Namespace) -> None:
    """`preprocess_val(Image.open(path))` for each image (RGB images only: RGBA keeps 4 channels there)."""
    items, base = _manifest(args)
    register_tiny(1000)  # the transform depends only on the image size, which the tiny model shares
    _, preprocess_val = build_model(TINY_MODEL)
    names = list(dict.fromkeys(item["image"] for item in items))
    arrays = {}
    for name in names:
        tensor = preprocess_val(Image.open(base / name))
        arrays[name] = tensor.numpy().astype(np.float32)
    np.savez(args.out, **arrays)
    emit({"out": str(args.out), "images": {n: list(a.shape) for n, a in arrays.items()}})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    vocab = sub.add_parser("make-vocab", help="vocab.json/merges.txt/bpe.txt.gz from a bpe_simple_vocab file")
    vocab.add_argument("--bpe", required=True)
    vocab.add_argument("--merges", type=int, default=0, help="keep only the first N merges (tiny test vocabulary)")
    vocab.add_argument("--out", required=True)
    make = sub.add_parser(
        "make-checkpoint", help="random-weight HPS_v2.1_compressed.pt built with the reference's code"
    )
    make.add_argument("--size", choices=("tiny", "full"), required=True)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--vocab", required=True, help="folder with vocab.json + merges.txt")
    make.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16")
    make.add_argument("--out", required=True)
    score = sub.add_parser("score", help="reference scores")
    score.add_argument("--checkpoint-dir", required=True)
    score.add_argument("--manifest")
    score.add_argument("--images-dir")
    score.add_argument("--prompt", action="append")
    score.add_argument("--out")
    pre = sub.add_parser("preprocess", help="preprocess_val's tensors")
    pre.add_argument("--manifest")
    pre.add_argument("--images-dir")
    pre.add_argument("--prompt", action="append")
    pre.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    {
        "make-vocab": cmd_make_vocab,
        "make-checkpoint": cmd_make_checkpoint,
        "score": cmd_score,
        "preprocess": cmd_preprocess,
    }[args.command](args)


if __name__ == "__main__":
    main()
