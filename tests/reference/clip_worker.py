"""Drive the reference CLIP and Aesthetic scores (PyPI ``image-reward==1.5``: ``ImageReward.load_score("CLIP")`` and
``load_score("Aesthetic")``, on OpenAI's ``clip`` package) for parity tests.

Runs ONLY under an interpreter that has ``image-reward`` (installed ``--no-deps``) and OpenAI's ``clip`` package
(``openai-clip``); our test-suite calls it as a subprocess when ``IMAGEREWARD_CLIP_REFERENCE_PYTHON`` names such an
interpreter. Every subcommand prints one JSON object on stdout (the reference's own chatter goes to stderr).

    make-tokenizer  --out DIR [--merges N]
    make-checkpoint --size {tiny,full} --seed N --out DIR [--tokenizer DIR]
    score    --checkpoint-dir DIR [--tokenizer DIR] (--manifest FILE | --images-dir DIR --prompt P ...) --out FILE
    tokenize [--tokenizer DIR] --prompts FILE --out FILE

The reference is used as shipped; the worker only
(1) stubs ``ImageReward.ReFL`` (training code: diffusers, accelerate, datasets), which ``import ImageReward`` pulls in;
(2) makes ``clip``'s download step return the checkpoint given (its SHA-256 check is of OpenAI's file, and nothing may
    be fetched), and names LAION's file as ``ImageReward.utils._download`` expects it (the URL's basename);
(3) with ``--tokenizer`` naming a vocabulary other than OpenAI's full one (the small test vocabulary), makes
    ``clip.tokenize`` use the reference's own ``SimpleTokenizer`` on that vocabulary's merges;
(4) for the tiny test model, builds the aesthetic head (which the reference builds as ``MLP(768)``) with the widths
    of the checkpoint given: the reference's own ``MLP`` class, its ``layers`` of the same layout made narrower.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import hashlib
import json
import math
import os
import resource
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.modules.setdefault("ImageReward.ReFL", types.ModuleType("ImageReward.ReFL"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

with contextlib.redirect_stdout(sys.stderr):
    import clip
    import ImageReward as RM

CLIP_MODULE = sys.modules["clip.clip"]
CLIP_MODEL_MODULE = sys.modules["clip.model"]
TOKENIZER_MODULE = sys.modules["clip.simple_tokenizer"]
AESTHETIC_MODULE = sys.modules["ImageReward.models.AestheticScore"]
REFERENCE_MLP = AESTHETIC_MODULE.MLP  # kept: score() swaps the module's name for a factory of tiny heads

REFERENCE_VERSION = "image-reward 1.5 (load_score CLIP/Aesthetic) + openai-clip 1.0.1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CLIP_NAME = "ViT-L-14.pt"
AESTHETIC_NAME = "sac+logos+ava1-l14-linearMSE.pth"  # LAION's name; the reference saves it under the URL's basename
AESTHETIC_REFERENCE_NAME = "sac%2Blogos%2Bava1-l14-linearMSE.pth"
TOKENIZER_DIRNAME = "clip-tokenizer"
FULL_MERGES = 49152 - 256 - 2  # what SimpleTokenizer reads of its merges file

#: CLIP(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size, context_length, vocab_size,
#: transformer_width, transformer_heads, transformer_layers) without the vocabulary, which the tokenizer gives.
SIZES = {
    "full": {"embed_dim": 768, "vision_layers": 24, "vision_width": 1024, "transformer_width": 768, "layers": 12},
    "tiny": {"embed_dim": 32, "vision_layers": 1, "vision_width": 64, "transformer_width": 64, "layers": 1},
}
TINY_HEAD = (32, 48, 24, 12, 6, 1)  # the aesthetic MLP's widths in the tiny model (the release: 768, 1024, ..., 1)


# --------------------------------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    import PIL
    import torchvision

    return {
        "reference_version": REFERENCE_VERSION,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_json(data: dict[str, Any], out: Path | None, stdout_extra: dict[str, Any] | None = None) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    print(json.dumps({**data, **(stdout_extra or {})}, indent=2, ensure_ascii=False))


def _patched(module: Any, name: str, value: Any) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def manager() -> Iterator[None]:
        original = getattr(module, name)
        setattr(module, name, value)
        try:
            yield
        finally:
            setattr(module, name, original)

    return manager()


# -------------------------------------------------------------------------------------------------- tokenizer


def reference_merges() -> list[str]:
    """The merges SimpleTokenizer reads from the clip package's ``bpe_simple_vocab_16e6.txt.gz``."""
    with gzip.open(TOKENIZER_MODULE.default_bpe()) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    return lines[1 : FULL_MERGES + 1]


def cmd_make_tokenizer(args: argparse.Namespace) -> None:
    """vocab.json + merges.txt in transformers' format for the first N merges of the reference's vocabulary, built
    as SimpleTokenizer builds its encoder (bytes, bytes + '</w>', merges, the two special tokens)."""
    merges = reference_merges()[: args.merges] if args.merges is not None else reference_merges()
    alphabet = list(TOKENIZER_MODULE.bytes_to_unicode().values())
    pieces = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(m.split()) for m in merges)]
    pieces += ["<|startoftext|>", "<|endoftext|>"]
    args.out.mkdir(parents=True, exist_ok=True)
    vocab = {piece: index for index, piece in enumerate(pieces)}
    (args.out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (args.out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    write_json({"vocab_size": len(vocab), "merges": len(merges), "out": str(args.out)}, None)


@contextlib.contextmanager
def reference_tokenizer(tokenizer_dir: Path | None) -> Iterator[int]:
    """Make ``clip.tokenize`` read ``tokenizer_dir``'s merges (SimpleTokenizer over a gzip of merges.txt) unless it
    is OpenAI's full vocabulary; yields the vocabulary size."""
    if tokenizer_dir is None:
        yield len(CLIP_MODULE._tokenizer.encoder)
        return
    merges = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").rstrip("\n").split("\n")[1:]
    if merges == reference_merges():
        yield len(CLIP_MODULE._tokenizer.encoder)
        return
    with tempfile.TemporaryDirectory() as tmp:
        bpe = Path(tmp) / "bpe.txt.gz"
        with gzip.open(bpe, "wt", encoding="utf-8") as fh:
            fh.write("#version: 0.2\n" + "\n".join(merges))  # no final newline: it would read as an empty merge
        tokenizer = TOKENIZER_MODULE.SimpleTokenizer(bpe_path=str(bpe))
        vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
        assert vocab == tokenizer.encoder, "vocab.json is not the vocabulary of its merges.txt"
        with _patched(CLIP_MODULE, "_tokenizer", tokenizer):
            yield len(tokenizer.encoder)


def load_prompts(path: Path) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = [item["prompt"] for item in data["items"]]
    return [str(p) for p in data]


def cmd_tokenize(args: argparse.Namespace) -> None:
    """``clip.tokenize(prompts, truncate=True)``: ids up to the last non-zero, and whether the prompt was cut."""
    prompts = load_prompts(args.prompts)
    with reference_tokenizer(args.tokenizer):
        tokenizer = CLIP_MODULE._tokenizer
        rows = clip.tokenize(prompts, truncate=True)
        items = []
        for prompt, row in zip(prompts, rows, strict=True):
            length = len(tokenizer.encode(prompt)) + 2
            ids = [int(x) for x in row[: min(length, 77)]]
            items.append({"prompt": prompt, "input_ids": ids, "truncated": length > 77})
    write_json({"reference": REFERENCE_VERSION, "items": items}, args.out)


# ------------------------------------------------------------------------------------------------ checkpoints


def tiny_mlp(widths: tuple[int, ...]) -> nn.Module:
    """The reference's ``MLP`` with the release's layout (Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear,
    Linear) and the given widths."""
    mlp = REFERENCE_MLP(widths[0])
    w = widths
    mlp.layers = nn.Sequential(
        nn.Linear(w[0], w[1]),
        nn.Dropout(0.2),
        nn.Linear(w[1], w[2]),
        nn.Dropout(0.2),
        nn.Linear(w[2], w[3]),
        nn.Dropout(0.1),
        nn.Linear(w[3], w[4]),
        nn.Linear(w[4], w[5]),
    )
    return mlp


def perturb(model: nn.Module, seed: int) -> None:
    """Make every parameter random (the reference's own init leaves biases at 0 and LayerNorms at 1, which would
    hide a mistake in their mapping): LayerNorm weights 1 + N(0, 0.1), everything else + N(0, 0.02); the logit
    scale stays log(1/0.07)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name == "logit_scale":
                continue
            std = 0.1 if (".ln_" in name or name.startswith("ln_")) and name.endswith("weight") else 0.02
            noise = torch.randn(parameter.shape, generator=generator) * std
            parameter.add_(noise.to(parameter.dtype))


def redraw_head(head: nn.Module, seed: int) -> None:
    """Weights N(0, 1/fan_in) and biases N(0, 0.02): PyTorch's default init shrinks the signal about 1.7 times per
    layer, so that five layers would leave scores that hardly differ between images."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in head.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * layer.in_features**-0.5)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.02)


def cmd_make_checkpoint(args: argparse.Namespace) -> None:
    """``ViT-L-14.pt`` as OpenAI ships it (a TorchScript archive of the reference's ``clip.model.CLIP``: fp16 where
    ``convert_weights`` puts fp16, the image size, context length and vocabulary size as tensors) and the aesthetic
    head as LAION ships it (a
    ``torch.save`` of the reference ``MLP``'s state dict, fp32), random weights."""
    size = SIZES[args.size]
    torch.manual_seed(args.seed)
    with reference_tokenizer(args.tokenizer) as vocab_size:
        pass
    model = CLIP_MODEL_MODULE.CLIP(
        embed_dim=size["embed_dim"],
        image_resolution=224,
        vision_layers=size["vision_layers"],
        vision_width=size["vision_width"],
        vision_patch_size=14,
        context_length=77,
        vocab_size=vocab_size,
        transformer_width=size["transformer_width"],
        transformer_heads=size["transformer_width"] // 64,
        transformer_layers=size["layers"],
    ).eval()
    perturb(model, args.seed)
    # The release's state dict carries these three numbers as tensors (clip.model.build_model deletes them).
    for name, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", vocab_size)):
        if hasattr(model, name):
            delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    image = torch.zeros(1, 3, 224, 224)
    text = torch.zeros(1, 77, dtype=torch.long)
    text[0, :2] = torch.tensor([vocab_size - 2, vocab_size - 1])
    traced = torch.jit.trace_module(
        model,
        {"forward": (image, text), "encode_image": (image,), "encode_text": (text,)},
        check_trace=False,
        _store_inputs=False,
    )
    # OpenAI's archive holds the weights `clip.model.convert_weights` makes fp16 (convolutions, linear layers,
    # attention projections, the two output projections) in fp16 and the rest (embeddings, LayerNorms, logit scale)
    # in fp32: which is which is asked of convert_weights itself, on a copy; the trace itself ran in fp32.
    probe = copy.deepcopy(model)
    CLIP_MODEL_MODULE.convert_weights(probe)
    halves = {name for name, parameter in probe.named_parameters() if parameter.dtype == torch.float16}
    for name, parameter in traced.named_parameters():
        if name in halves:
            parameter.data = parameter.data.half()
    args.out.mkdir(parents=True, exist_ok=True)
    traced.save(str(args.out / CLIP_NAME))

    head = REFERENCE_MLP(768) if args.size == "full" else tiny_mlp(TINY_HEAD)
    redraw_head(head, args.seed + 1)
    torch.save(head.state_dict(), args.out / AESTHETIC_NAME)
    if args.tokenizer is not None:
        target = args.out / TOKENIZER_DIRNAME
        target.mkdir(exist_ok=True)
        for name in ("vocab.json", "merges.txt"):
            (target / name).write_bytes((args.tokenizer / name).read_bytes())
    write_json(
        {
            "out": str(args.out),
            "size": args.size,
            "seed": args.seed,
            "vocab_size": vocab_size,
            "clip_parameters": sum(p.numel() for p in model.parameters()),
            "clip_sha256": sha256_file(args.out / CLIP_NAME),
            "aesthetic_sha256": sha256_file(args.out / AESTHETIC_NAME),
        },
        None,
    )


# ----------------------------------------------------------------------------------------------------- scoring


def load_items(manifest: Path | None, images_dir: Path | None, prompts: list[str]) -> tuple[list[dict], Path]:
    """Items (image, prompt) from a manifest (a list, or an object with ``items`` and optional ``images_dir``), or
    every image of ``images_dir`` with every prompt."""
    if manifest is not None:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        items = data["items"] if isinstance(data, dict) else data
        base = manifest.resolve().parent
        if isinstance(data, dict) and data.get("images_dir"):
            base = (base / data["images_dir"]).resolve()
        return [{"image": i["image"], "prompt": i["prompt"]} for i in items], base
    if images_dir is None:
        raise SystemExit("give --manifest or --images-dir")
    images = sorted(p.name for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [{"image": image, "prompt": prompt} for prompt in prompts for image in images], images_dir.resolve()


@contextlib.contextmanager
def reference_files(checkpoint_dir: Path) -> Iterator[Path]:
    """A download folder holding the checkpoint's files under the names the reference looks for, and ``clip``'s
    download step pointed at it (it would fetch OpenAI's file again since a random checkpoint has another hash)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / CLIP_NAME).symlink_to((checkpoint_dir / CLIP_NAME).resolve())
        (root / AESTHETIC_REFERENCE_NAME).symlink_to((checkpoint_dir / AESTHETIC_NAME).resolve())

        def local_download(url: str, download_root: str) -> str:
            path = Path(download_root) / os.path.basename(url)
            if not path.is_file():
                raise SystemExit(f"{path} is missing (the worker never downloads)")
            return str(path)

        with _patched(CLIP_MODULE, "_download", local_download):
            yield root


def head_widths(path: Path) -> tuple[int, ...]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = [state[f"layers.{i}.weight"] for i in (0, 2, 4, 6, 7)]
    return (int(weights[0].shape[1]), *(int(w.shape[0]) for w in weights))


def cmd_score(args: argparse.Namespace) -> None:
    """Score every item with ``load_score("CLIP")`` and ``load_score("Aesthetic")``: ``model.score(prompt, path)``
    per item, and ``model.inference_rank(prompt, paths)`` per prompt (``--no-rank`` skips it)."""
    items, base = load_items(args.manifest, args.images_dir, args.prompt or [])
    started = time.perf_counter()
    widths = head_widths(args.checkpoint_dir / AESTHETIC_NAME)
    tiny = widths[0] != 768
    mlp_factory = (lambda input_size: tiny_mlp(widths)) if tiny else REFERENCE_MLP
    tokenizer_dir = args.tokenizer or (
        args.checkpoint_dir / TOKENIZER_DIRNAME if (args.checkpoint_dir / TOKENIZER_DIRNAME).is_dir() else None
    )
    with (
        reference_tokenizer(tokenizer_dir),
        reference_files(args.checkpoint_dir) as root,
        _patched(AESTHETIC_MODULE, "MLP", mlp_factory),
        contextlib.redirect_stdout(sys.stderr),
    ):
        models = {
            "clip": RM.load_score("CLIP", device="cpu", download_root=str(root)),
            "aesthetic": RM.load_score("Aesthetic", device="cpu", download_root=str(root)),
        }
        loaded = time.perf_counter()
        rss_loaded = peak_rss_mb()
        with torch.no_grad():
            for item in items:
                path = str(base / item["image"])
                for name, model in models.items():
                    item[name] = float(model.score(item["prompt"], path))
            rank: dict[str, dict[str, list[float]]] = {}
            if not args.no_rank:
                for prompt in dict.fromkeys(i["prompt"] for i in items):
                    paths = [str(base / i["image"]) for i in items if i["prompt"] == prompt]
                    if len(paths) > 1:
                        rank[prompt] = {n: list(m.inference_rank(prompt, paths)[1]) for n, m in models.items()}
    done = time.perf_counter()
    result: dict[str, Any] = {
        "reference": REFERENCE_VERSION,
        "versions": versions(),
        "checkpoint_sha256": sha256_file(args.checkpoint_dir / CLIP_NAME),
        "aesthetic_sha256": sha256_file(args.checkpoint_dir / AESTHETIC_NAME),
        "images_dir": os.path.relpath(base, args.out.resolve().parent) if args.out is not None else str(base),
        "items": items,
    }
    if rank:
        result["rank"] = rank
    timings = {
        "load_s": round(loaded - started, 3),
        "score_s_per_item": round((done - loaded) / max(1, len(items)), 4),
        "peak_rss_mb_loaded": round(rss_loaded, 1),
        "peak_rss_mb_end": round(peak_rss_mb(), 1),
    }
    if any(not math.isfinite(i["clip"]) or not math.isfinite(i["aesthetic"]) for i in items):
        raise SystemExit("the reference gave a non-finite score")
    write_json(result, args.out, {"timings": timings})


# -------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    make_tokenizer = commands.add_parser("make-tokenizer")
    make_tokenizer.add_argument("--out", type=Path, required=True)
    make_tokenizer.add_argument("--merges", type=int, default=None, help="first N merges only (default: all)")
    make_tokenizer.set_defaults(run=cmd_make_tokenizer)

    make = commands.add_parser("make-checkpoint")
    make.add_argument("--size", choices=sorted(SIZES), required=True)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--tokenizer", type=Path, default=None, help="vocab.json + merges.txt (default: OpenAI's)")
    make.set_defaults(run=cmd_make_checkpoint)

    score = commands.add_parser("score")
    score.add_argument("--checkpoint-dir", type=Path, required=True)
    score.add_argument("--tokenizer", type=Path, default=None)
    score.add_argument("--manifest", type=Path, default=None)
    score.add_argument("--images-dir", type=Path, default=None)
    score.add_argument("--prompt", action="append")
    score.add_argument("--out", type=Path, default=None)
    score.add_argument("--no-rank", action="store_true")
    score.set_defaults(run=cmd_score)

    tokenize = commands.add_parser("tokenize")
    tokenize.add_argument("--tokenizer", type=Path, default=None)
    tokenize.add_argument("--prompts", type=Path, required=True)
    tokenize.add_argument("--out", type=Path, default=None)
    tokenize.set_defaults(run=cmd_tokenize)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
