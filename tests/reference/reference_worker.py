"""Drive the reference implementation (PyPI ``image-reward==1.5``, import name ``ImageReward``) for parity tests.

Runs ONLY under an interpreter that has the reference installed (see ``tests/reference/README.md``); our
test-suite calls it as a subprocess when ``IMAGEREWARD_REFERENCE_PYTHON`` names such an interpreter. Every
subcommand prints one JSON object on stdout (the reference's own chatter goes to stderr).

    make-checkpoint --size {tiny,full} --seed N --out DIR --vocab DIR
    score      --checkpoint-dir DIR --vocab DIR (--manifest FILE | --images-dir DIR --prompt P ...) --out FILE
    tokenize   --vocab DIR --prompts FILE --out FILE
    preprocess (--manifest FILE | --images-dir DIR) --out FILE.npz

The reference is used as shipped; the worker only (1) stubs the modules that ``import ImageReward`` pulls in for
training and CLIP scores (``ImageReward.ReFL``, ``clip``), (2) points ``BertTokenizer.from_pretrained(
"bert-base-uncased")`` at a local folder holding ``vocab.txt``, and (3) for the tiny test model, swaps the ViT-L
built by ``create_vit`` for a small ViT of the reference's own class and sizes the MLP head's input to the text
width.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import resource
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

for _stub in ("ImageReward.ReFL", "clip"):  # training (diffusers, accelerate, datasets) and CLIPScore: not needed
    sys.modules.setdefault(_stub, types.ModuleType(_stub))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

with contextlib.redirect_stdout(sys.stderr):
    import ImageReward as RM

IR_MODULE = sys.modules["ImageReward.ImageReward"]  # the package re-exports the class under the same name
BLIP_MODULE = sys.modules["ImageReward.models.BLIP.blip"]
BLIP_PRETRAIN_MODULE = sys.modules["ImageReward.models.BLIP.blip_pretrain"]
VIT_MODULE = sys.modules["ImageReward.models.BLIP.vit"]

REFERENCE_VERSION = "image-reward 1.5"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

#: The tiny test model: ViT (img 224, patch 16, width 128, depth 2, 2 heads, MLP ratio 4) and BERT (hidden 32).
TINY_VIT = {"img_size": 224, "patch_size": 16, "embed_dim": 128, "depth": 2, "num_heads": 2, "mlp_ratio": 4.0}
TINY_MED_OVERRIDES = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 30524,
    "max_position_embeddings": 512,
}
FULL_TEXT_WIDTH = 768

#: The official med_config.json of THUDM/ImageReward (key order kept).
OFFICIAL_MED_CONFIG: dict[str, Any] = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}


# --------------------------------------------------------------------------------------------------------------
# Patches around the reference


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    """Temporarily replace ``module.name``."""
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


@contextlib.contextmanager
def local_tokenizer(vocab_dir: Path) -> Iterator[None]:
    """Make the reference's ``BertTokenizer.from_pretrained('bert-base-uncased')`` read ``vocab_dir``."""
    vocab_dir = Path(vocab_dir).resolve()
    if not (vocab_dir / "vocab.txt").is_file():
        raise SystemExit(f"no vocab.txt in {vocab_dir}")
    real = BLIP_MODULE.BertTokenizer

    class _LocalBertTokenizer:
        """Stands in for the ``BertTokenizer`` name inside ``ImageReward.models.BLIP.blip``."""

        @staticmethod
        def from_pretrained(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == "bert-base-uncased":
                name = str(vocab_dir)
            return real.from_pretrained(name, *args, **kwargs)

    with _patched(BLIP_MODULE, "BertTokenizer", _LocalBertTokenizer):
        yield


@contextlib.contextmanager
def tiny_architecture(text_width: int) -> Iterator[None]:
    """Build the tiny ViT instead of ViT-L, and size the MLP head's input to ``text_width``."""

    def create_tiny_vit(
        vit: str, image_size: int, use_grad_checkpointing: bool = False, ckpt_layer: int = 0, drop_path_rate: float = 0
    ) -> tuple[nn.Module, int]:
        del vit, use_grad_checkpointing, ckpt_layer
        assert image_size == TINY_VIT["img_size"]
        encoder = VIT_MODULE.VisionTransformer(drop_path_rate=drop_path_rate, **TINY_VIT)
        return encoder, TINY_VIT["embed_dim"]

    original_mlp = IR_MODULE.MLP

    def mlp_for_text_width(input_size: int) -> nn.Module:
        assert input_size == FULL_TEXT_WIDTH  # what the reference hard-codes
        return original_mlp(text_width)

    with _patched(BLIP_PRETRAIN_MODULE, "create_vit", create_tiny_vit), _patched(IR_MODULE, "MLP", mlp_for_text_width):
        yield


def _architecture_for(med_config: dict[str, Any]) -> contextlib.AbstractContextManager[None]:
    """The tiny patches when ``med_config`` is not the full-size text width, else nothing."""
    if int(med_config["hidden_size"]) == FULL_TEXT_WIDTH:
        return contextlib.nullcontext()
    return tiny_architecture(int(med_config["hidden_size"]))


# --------------------------------------------------------------------------------------------------------------
# Helpers


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages that decide the reference's numbers."""
    import PIL
    import timm
    import torchvision
    import transformers

    return {
        "reference_version": REFERENCE_VERSION,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_json(data: dict[str, Any], out: Path | None, stdout_extra: dict[str, Any] | None = None) -> None:
    """Write ``data`` to ``out`` (if given) and print it, plus ``stdout_extra`` (e.g. timings), on stdout."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    print(json.dumps({**data, **(stdout_extra or {})}, indent=2, ensure_ascii=False))


def load_items(manifest: Path | None, images_dir: Path | None, prompts: list[str]) -> tuple[list[dict[str, str]], Path]:
    """Items ``{"image", "prompt"}`` and the folder their relative image paths start from.

    A manifest is a JSON list of items, or an object with an ``items`` list and optionally ``images_dir`` (relative
    to the manifest), so that a golden file can serve as its own manifest. Relative image paths start from the
    manifest's folder (or its ``images_dir``). Without a manifest, every image in ``images_dir`` (sorted by name)
    is paired with every prompt.
    """
    if manifest is not None:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        raw = data["items"] if isinstance(data, dict) else data
        items = [{"image": str(item["image"]), "prompt": str(item.get("prompt", ""))} for item in raw]
        base = manifest.resolve().parent
        if isinstance(data, dict) and data.get("images_dir"):
            base = (base / data["images_dir"]).resolve()
        return items, base
    if images_dir is None:
        raise SystemExit("give --manifest or --images-dir")
    names = sorted(p.name for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    items = [{"image": name, "prompt": prompt} for prompt in prompts for name in names]
    return items, images_dir.resolve()


def _resolve(base: Path, image: str) -> str:
    path = Path(image)
    return str(path if path.is_absolute() else (base / path).resolve())


# --------------------------------------------------------------------------------------------------------------
# Random "rich" weights


def redraw_parameters(model: nn.Module, seed: int) -> int:
    """Redraw every parameter of ``model`` so that a wrongly mapped key changes the scores; returns the count.

    Linear/conv weights ~ N(0, 1/fan_in), their biases ~ N(0, 0.05); LayerNorm weight ~ 1 + N(0, 0.1), bias ~
    N(0, 0.05); word/position embeddings ~ N(0, 0.5); the ViT's cls token ~ N(0, 1) and position embedding ~
    N(0, 0.5) (as large as the patch embeddings they are added to, so their layout matters). Buffers (BERT's
    ``position_ids``) are left as the reference builds them.
    """
    generator = torch.Generator().manual_seed(seed)
    done: set[int] = set()

    def normal_(tensor: torch.Tensor, mean: float, std: float) -> None:
        tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * std + mean)

    with torch.no_grad():
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                full = f"{module_name}.{param_name}" if module_name else param_name
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    fan_in = param.shape[1] * math.prod(param.shape[2:]) if param_name == "weight" else 0
                    if param_name == "weight":
                        normal_(param, 0.0, 1.0 / math.sqrt(fan_in))
                    else:
                        normal_(param, 0.0, 0.05)
                elif isinstance(module, nn.LayerNorm):
                    normal_(param, 1.0 if param_name == "weight" else 0.0, 0.1 if param_name == "weight" else 0.05)
                elif isinstance(module, nn.Embedding):
                    normal_(param, 0.0, 0.5)
                elif param_name == "cls_token":
                    normal_(param, 0.0, 1.0)
                elif param_name == "pos_embed":
                    normal_(param, 0.0, 0.5)
                else:
                    raise RuntimeError(f"no redraw rule for parameter {full} of {type(module).__name__}")
                done.add(id(param))
    missing = [name for name, param in model.named_parameters() if id(param) not in done]
    if missing:
        raise RuntimeError(f"parameters not redrawn: {missing}")
    return len(done)


# --------------------------------------------------------------------------------------------------------------
# Subcommands


def cmd_make_checkpoint(args: argparse.Namespace) -> None:
    """Build the reference model, redraw its weights and save ``ImageReward.pt`` + ``med_config.json``."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    med_config = dict(OFFICIAL_MED_CONFIG)
    if args.size == "tiny":
        med_config.update(TINY_MED_OVERRIDES)
    med_path = out / "med_config.json"
    med_path.write_text(json.dumps(med_config, indent=2) + "\n", encoding="utf-8")

    torch.manual_seed(args.seed)  # the reference's own init runs first; make it reproducible too
    with local_tokenizer(args.vocab), _architecture_for(med_config), contextlib.redirect_stdout(sys.stderr):
        model = IR_MODULE.ImageReward(med_config=str(med_path), device="cpu")
    redrawn = redraw_parameters(model, args.seed)
    state_dict = model.state_dict()
    ckpt_path = out / "ImageReward.pt"
    torch.save(state_dict, ckpt_path)
    write_json(
        {
            "checkpoint": str(ckpt_path),
            "med_config": str(med_path),
            "size": args.size,
            "seed": args.seed,
            "sha256": sha256_file(ckpt_path),
            "med_config_sha256": sha256_file(med_path),
            "file_bytes": ckpt_path.stat().st_size,
            "tensor_count": len(state_dict),
            "parameter_count": sum(p.numel() for p in model.parameters()),
            "parameters_redrawn": redrawn,
            "buffers": [name for name, _ in model.named_buffers()],
            **versions(),
        },
        None,
    )


def cmd_score(args: argparse.Namespace) -> None:
    """Score manifest items with the reference's ``load`` / ``score`` / ``inference_rank``."""
    ckpt_dir: Path = args.checkpoint_dir
    ckpt_path = ckpt_dir / "ImageReward.pt"
    med_path = ckpt_dir / "med_config.json"
    med_config = json.loads(med_path.read_text(encoding="utf-8"))
    items, base = load_items(args.manifest, args.images_dir, args.prompt or [])

    start = time.perf_counter()
    with local_tokenizer(args.vocab), _architecture_for(med_config), contextlib.redirect_stdout(sys.stderr):
        model = RM.load(name=str(ckpt_path), device="cpu", med_config=str(med_path))
    load_seconds = time.perf_counter() - start
    rss_after_load = peak_rss_mb()

    start = time.perf_counter()
    scores = [float(model.score(item["prompt"], _resolve(base, item["image"]))) for item in items]
    score_seconds = time.perf_counter() - start

    ranks: list[dict[str, Any]] = []
    if not args.no_rank:
        by_prompt: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            by_prompt.setdefault(item["prompt"], []).append(index)
        for prompt, indices in by_prompt.items():
            if len(indices) < 2:  # inference_rank squeezes a single score to a 0-d tensor
                continue
            rank, rewards = model.inference_rank(prompt, [_resolve(base, items[i]["image"]) for i in indices])
            ranks.append({"prompt": prompt, "indices": indices, "rank": rank, "scores": rewards})

    result: dict[str, Any] = {
        "checkpoint_sha256": sha256_file(ckpt_path),
        "med_config_sha256": sha256_file(med_path),
        **versions(),
    }
    if args.out is not None:  # lets the output serve as a manifest again
        result["images_dir"] = os.path.relpath(base, args.out.resolve().parent)
    result["scores"] = scores
    result["items"] = [{**item, "score": score} for item, score in zip(items, scores, strict=True)]
    result["inference_rank"] = ranks
    timing = {
        "load_seconds": round(load_seconds, 3),
        "score_seconds_per_item": round(score_seconds / max(len(items), 1), 4),
        "peak_rss_mb_after_load": round(rss_after_load, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    write_json(result, args.out, stdout_extra={"timing": timing})


def cmd_tokenize(args: argparse.Namespace) -> None:
    """Tokenize prompts exactly as the reference's scoring does."""
    data = json.loads(args.prompts.read_text(encoding="utf-8"))
    raw = data["items"] if isinstance(data, dict) else data
    prompts = [item["prompt"] if isinstance(item, dict) else str(item) for item in raw]
    with local_tokenizer(args.vocab):
        tokenizer = BLIP_MODULE.init_tokenizer()
    results = []
    for prompt in prompts:
        encoded = tokenizer(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        ids = encoded.input_ids[0].tolist()
        results.append(
            {
                "prompt": prompt,
                "input_ids": ids,
                "attention_mask": encoded.attention_mask[0].tolist(),
                "tokens": tokenizer.convert_ids_to_tokens(ids),
            }
        )
    write_json(
        {
            **versions(),
            "vocab_sha256": sha256_file(Path(args.vocab) / "vocab.txt"),
            "max_length": 35,
            "special_ids": {
                "pad": tokenizer.pad_token_id,
                "unk": tokenizer.unk_token_id,
                "cls": tokenizer.cls_token_id,
                "sep": tokenizer.sep_token_id,
                "bos_dec": tokenizer.bos_token_id,
                "enc": tokenizer.enc_token_id,
            },
            "items": results,
        },
        args.out,
    )


def cmd_preprocess(args: argparse.Namespace) -> None:
    """Save the reference's ``_transform(224)`` output for each image as float32 (N, 3, 224, 224)."""
    from PIL import Image

    items, base = load_items(args.manifest, args.images_dir, [""])
    names = list(dict.fromkeys(item["image"] for item in items))
    transform = IR_MODULE._transform(224)
    arrays = []
    for name in names:
        with Image.open(_resolve(base, name)) as pil_image:  # the reference passes Image.open(path) as is
            arrays.append(transform(pil_image).numpy().astype(np.float32))
    pixels = np.stack(arrays) if arrays else np.zeros((0, 3, 224, 224), np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, pixel_values=pixels, names=np.array(names))
    write_json({**versions(), "out": str(args.out), "names": names, "shape": list(pixels.shape)}, None)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    make = sub.add_parser("make-checkpoint", help="random-weight checkpoint built with the reference's classes")
    make.add_argument("--size", choices=("tiny", "full"), required=True)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--out", type=Path, required=True, help="folder for ImageReward.pt and med_config.json")
    make.add_argument("--vocab", type=Path, required=True, help="folder holding bert-base-uncased vocab.txt")
    make.set_defaults(func=cmd_make_checkpoint)

    score = sub.add_parser("score", help="reference scores for manifest items")
    score.add_argument("--checkpoint-dir", type=Path, required=True, help="holds ImageReward.pt, med_config.json")
    score.add_argument("--vocab", type=Path, required=True)
    score.add_argument("--manifest", type=Path, help='JSON list of {"image", "prompt"} (or {"items": [...]})')
    score.add_argument("--images-dir", type=Path, help="instead of a manifest: every image here x every --prompt")
    score.add_argument("--prompt", action="append", help="with --images-dir; repeatable")
    score.add_argument("--no-rank", action="store_true", help="skip inference_rank")
    score.add_argument("--out", type=Path)
    score.set_defaults(func=cmd_score)

    tok = sub.add_parser("tokenize", help="the reference tokenizer's ids and masks")
    tok.add_argument("--vocab", type=Path, required=True)
    tok.add_argument("--prompts", type=Path, required=True, help='JSON list of strings (or {"items": [{"prompt"}]})')
    tok.add_argument("--out", type=Path)
    tok.set_defaults(func=cmd_tokenize)

    pre = sub.add_parser("preprocess", help="the reference's preprocessing as float32 arrays")
    pre.add_argument("--manifest", type=Path)
    pre.add_argument("--images-dir", type=Path)
    pre.add_argument("--out", type=Path, required=True)
    pre.set_defaults(func=cmd_preprocess)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
