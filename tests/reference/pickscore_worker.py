"""Drive the PickScore v1 reference (the model card's code: transformers' `AutoProcessor` + `AutoModel`) for parity.

Runs ONLY under an interpreter with transformers 4.55.x and torch (the environment of ``tests/reference/README.md``
has them: ``pip install "torch==2.14.1" "transformers==4.55.4"`` is all it needs; transformers 4.5x picks the PIL
``CLIPImageProcessor`` for this processor, 5.x a torchvision one that resizes differently). Our test-suite calls it as
a subprocess when ``IMAGEREWARD_PICKSCORE_REFERENCE_PYTHON`` names such an interpreter. Every subcommand prints one
JSON object on stdout.

    make-checkpoint --size {tiny,full} --seed N --vocab DIR --out DIR [--bin]
    score           --checkpoint-dir DIR (--manifest FILE | --images-dir DIR --prompt P ...) --out FILE

The release is two hub repositories, laid out here as one folder:

    <out>/config.json, <out>/model.safetensors      yuvalkirstain/PickScore_v1 (CLIPModel, ViT-H/14), as
                                                    `save_pretrained` writes them
    <out>/pytorch_model.bin                         (--bin) the same weights as the repo's older pickle file: a plain
                                                    `torch.save` of the state dict, with the `position_ids` buffers
                                                    that transformers of 2023 still saved
    <out>/processor/                                laion/CLIP-ViT-H-14-laion2B-s32B-b79K's processor:
                                                    config.json, preprocessor_config.json (the repo's,
                                                    verbatim), the tokenizer files (vocab.json, merges.txt,
                                                    tokenizer_config.json, ...) as
                                                    `CLIPTokenizerFast.save_pretrained` writes them from --vocab
                                                    (tokenizer.json left out)

``score`` runs the model card's ``calc_probs`` up to the softmax, for each prompt over all images at once::

    processor = AutoProcessor.from_pretrained(<out>/processor)
    model = AutoModel.from_pretrained(<out>).eval()
    image_inputs = processor(images=images, padding=True, truncation=True, max_length=77, return_tensors="pt")
    text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
    image_embs = model.get_image_features(**image_inputs); image_embs /= image_embs.norm(dim=-1, keepdim=True)
    text_embs = model.get_text_features(**text_inputs);   text_embs /= text_embs.norm(dim=-1, keepdim=True)
    scores = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]

with ``images = [Image.open(path) for path in paths]``. Nothing in the reference is patched.
"""

from __future__ import annotations

import argparse
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
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import (
    AutoModel,
    AutoProcessor,
    CLIPConfig,
    CLIPModel,
    CLIPTokenizerFast,
)

PROCESSOR_DIRNAME = "processor"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

#: preprocessor_config.json of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (the older CLIPFeatureExtractor layout).
LAION_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}

#: CLIP ViT-H/14 as PickScore_v1's config.json describes it (OpenCLIP's ViT-H-14 converted to transformers).
FULL_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
FULL_VISION = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 16,
    "num_hidden_layers": 32,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}
FULL_PROJECTION = 1024
#: The tiny test model: the release's layout (224 px, 14 px patches, 77 positions) at a width of 32.
TINY_TEXT = {**FULL_TEXT, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2}
TINY_VISION = {
    **FULL_VISION,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
}
TINY_PROJECTION = 16


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def versions() -> dict[str, str]:
    import tokenizers

    return {
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pillow": Image.__version__,
        "python": sys.version.split()[0],
    }


def emit(data: dict[str, Any], out: Path | None = None, stdout_extra: dict[str, Any] | None = None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({**data, **(stdout_extra or {})}, indent=2, ensure_ascii=False))


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random with a sane scale: weights and biases N(0, 0.02), LayerNorm weights 1 + N(0, 0.1)
    (so a scorer that ignored them would differ), logit scale ln(100) as in the trained model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if name == "logit_scale":
                param.fill_(math.log(100.0))
            elif ("layer_norm" in name or "layrnorm" in name) and name.endswith(".weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.02 * noise)


def write_processor(vocab_dir: Path, out: Path, config: CLIPConfig) -> None:
    """The processor folder as the laion repo holds it. Its config.json (the CLIP model's) is what tells
    `AutoProcessor` which processor class to build."""
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    tokenizer = CLIPTokenizerFast(
        vocab_file=str(vocab_dir / "vocab.json"), merges_file=str(vocab_dir / "merges.txt"), model_max_length=77
    )
    tokenizer.save_pretrained(str(out))
    # Left out: written by tokenizers 0.21 in a layout that transformers 4.30's tokenizers cannot parse (the laion
    # repo's is older), and not among the files we download; AutoProcessor builds the same tokenizer without it.
    (out / "tokenizer.json").unlink(missing_ok=True)
    (out / "preprocessor_config.json").write_text(json.dumps(LAION_PREPROCESSOR_CONFIG, indent=2) + "\n", "utf-8")


def cmd_make_checkpoint(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = len(json.loads((Path(args.vocab) / "vocab.json").read_text("utf-8")))
    full = args.size == "full"
    text = {**(FULL_TEXT if full else TINY_TEXT), "vocab_size": vocab_size}
    vision = FULL_VISION if full else TINY_VISION
    config = CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=FULL_PROJECTION if full else TINY_PROJECTION
    )
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    model = CLIPModel(config).eval()
    randomise(model, args.seed)
    model.save_pretrained(str(out), safe_serialization=True)
    if args.bin:
        state = {key: value.contiguous() for key, value in model.state_dict().items()}
        for tower, count in (("text_model", config.text_config.max_position_embeddings), ("vision_model", None)):
            if count is None:
                count = (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1
            state[f"{tower}.embeddings.position_ids"] = torch.arange(count).unsqueeze(0)
        torch.save(state, out / "pytorch_model.bin")
    del model
    write_processor(Path(args.vocab), out / PROCESSOR_DIRNAME, config)
    files = {
        name: {"bytes": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
        for name in ("model.safetensors", "pytorch_model.bin")
        if (out / name).exists()
    }
    info = {
        "out": str(out),
        "size": args.size,
        "seed": args.seed,
        "vocab_size": vocab_size,
        "files": files,
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
    return [{"image": name, "prompt": prompt} for prompt in args.prompt for name in names], base


def cmd_score(args: argparse.Namespace) -> None:
    checkpoint_dir = Path(args.checkpoint_dir)
    items, base = _manifest(args)
    started = time.perf_counter()
    processor = AutoProcessor.from_pretrained(str(checkpoint_dir / PROCESSOR_DIRNAME))
    model = AutoModel.from_pretrained(str(checkpoint_dir)).eval()
    load_s = time.perf_counter() - started
    by_prompt: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_prompt.setdefault(item["prompt"], []).append(index)
    scores: dict[int, float] = {}
    tokens: dict[str, list[int]] = {}
    score_started = time.perf_counter()
    for prompt, indices in by_prompt.items():
        images = [Image.open(base / items[i]["image"]) for i in indices]
        image_inputs = processor(images=images, padding=True, truncation=True, max_length=77, return_tensors="pt")
        text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.no_grad():
            image_embs = model.get_image_features(**image_inputs)
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = model.get_text_features(**text_inputs)
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            values = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
        scores.update({i: float(v) for i, v in zip(indices, values.tolist(), strict=True)})
        tokens[prompt] = text_inputs["input_ids"][0].tolist()
    results = [{**item, "score": scores[i]} for i, item in enumerate(items)]
    data = {
        "reference": f"PickScore v1 model card code, transformers {transformers.__version__}",
        "processor": type(processor.image_processor).__name__ + " + " + type(processor.tokenizer).__name__,
        "model_sha256": sha256_file(checkpoint_dir / "model.safetensors"),
        "images_dir": os.path.relpath(base, Path(args.out).parent) if args.out else str(base),
        "items": results,
        "tokens": tokens,
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-checkpoint", help="random-weight PickScore release built with transformers' CLIPModel")
    make.add_argument("--size", choices=("tiny", "full"), required=True)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--vocab", required=True, help="folder with vocab.json + merges.txt")
    make.add_argument("--bin", action="store_true", help="also write pytorch_model.bin (the repo's older file)")
    make.add_argument("--out", required=True)
    score = sub.add_parser("score", help="reference scores (the model card's code)")
    score.add_argument("--checkpoint-dir", required=True)
    score.add_argument("--manifest")
    score.add_argument("--images-dir")
    score.add_argument("--prompt", action="append")
    score.add_argument("--out")
    args = parser.parse_args(argv)
    {"make-checkpoint": cmd_make_checkpoint, "score": cmd_score}[args.command](args)


if __name__ == "__main__":
    main()
