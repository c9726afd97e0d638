"""Drive the reference BLIP score (PyPI ``image-reward==1.5``: ``ImageReward.load_score("BLIP")``) for parity tests.

Runs ONLY under an interpreter that has the reference installed (``tests/reference/README.md``); the test-suite
calls it as a subprocess when ``IMAGEREWARD_BLIP_REFERENCE_PYTHON`` names such an interpreter. Every subcommand
prints one JSON object on stdout. It reuses ``reference_worker.py`` (beside it) for the stubs of ``ImageReward.ReFL``
and ``clip``, the local BERT vocabulary, the random redraw of parameters and the manifest format.

    make-checkpoint --size {tiny,full} --seed N --out DIR --vocab DIR [--training-entries] [--queue-size N]
    score --checkpoint-dir DIR --vocab DIR (--manifest FILE | --images-dir DIR --prompt P ...) [--no-rank] --out FILE

``make-checkpoint`` writes ``model_large.pth`` in the layout of Salesforce's release, ``{"model": state_dict}``,
where the state dict is that of the reference's own ``BLIPScore(...).blip`` (its ``BLIP_Pretrain``: ViT,
BERT with cross-attention layers, ``vision_proj``, ``text_proj``) with every parameter redrawn, and
``med_config.json`` (ImageReward's BERT config; the reference's ``load_score`` reads the same file).
``--training-entries`` adds what Salesforce's pre-training class also saves and the score never reads: momentum
encoders (``visual_encoder_m``, ``text_encoder_m``, ``vision_proj_m``, ``text_proj_m``), ``itm_head``, the
``text_decoder`` (a ``BertLMHeadModel``), the feature queues, ``queue_ptr`` and ``temp``; each is built with the
reference's classes and drawn with another seed, so a loader that read one of them instead would change the scores.

``score`` runs ``ImageReward.load_score("BLIP", device="cpu", download_root=...)`` itself on a temporary folder
holding links to the two files (its downloads find them there; the hub is offline), checks that every tensor of
the reference model equals the checkpoint's (``load_score`` loads with ``strict=False`` and discards the report),
then ``model.score(prompt, path)`` per item and ``model.inference_rank`` per prompt. It also records the reference
tokenizer's ids for each prompt.

For the tiny test model, ``create_vit`` as ``blip_pretrain`` imports it returns the reference's own
``VisionTransformer`` with width 64, depth 2, one head (the release's head width, 64), patch 16, image 224; it is
used whenever ``med_config.json``'s ``hidden_size`` is not 768.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import reference_worker as rw  # beside this file; imports the reference with its stubs
import torch
from torch import nn

BLIP_SCORE_MODULE = sys.modules["ImageReward.models.BLIPScore"]
MED_MODULE = sys.modules["ImageReward.models.BLIP.med"]

CHECKPOINT_NAME = "model_large.pth"
MED_CONFIG_NAME = "med_config.json"

#: The tiny test model: ViT width 64 (one head of 64, as in ViT-L/16), depth 2; BERT hidden 4, 2 layers, 2 heads.
TINY_VIT = {"img_size": 224, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 1, "mlp_ratio": 4.0}
TINY_MED_OVERRIDES = {
    "hidden_size": 4,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 8,
    "vocab_size": 30524,
    "max_position_embeddings": 512,
}
FULL_TEXT_WIDTH = 768
#: Salesforce's pre-training queue length (BLIP_Pretrain's queue_size default).
RELEASE_QUEUE_SIZE = 57600


@contextlib.contextmanager
def tiny_vit() -> Iterator[None]:
    """Make ``BLIP_Pretrain`` build the tiny ViT instead of ViT-L/16."""

    def create_tiny_vit(
        vit: str, image_size: int, use_grad_checkpointing: bool = False, ckpt_layer: int = 0, drop_path_rate: float = 0
    ) -> tuple[nn.Module, int]:
        del vit, use_grad_checkpointing, ckpt_layer
        assert image_size == TINY_VIT["img_size"]
        return rw.VIT_MODULE.VisionTransformer(drop_path_rate=drop_path_rate, **TINY_VIT), TINY_VIT["embed_dim"]

    with rw._patched(rw.BLIP_PRETRAIN_MODULE, "create_vit", create_tiny_vit):
        yield


def architecture_for(med_config: dict[str, Any]) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext() if int(med_config["hidden_size"]) == FULL_TEXT_WIDTH else tiny_vit()


def training_entries(blip: nn.Module, med_path: Path, queue_size: int, seed: int) -> dict[str, torch.Tensor]:
    """The members of Salesforce's ``BLIP_Pretrain`` that the reference's trimmed class lacks, built with the
    reference's classes, with their release names."""
    vision_width = blip.vision_proj.in_features
    text_width = blip.text_proj.in_features
    embed_dim = blip.vision_proj.out_features
    config = MED_MODULE.BertConfig.from_json_file(str(med_path))
    config.encoder_width = vision_width
    extra = nn.Module()
    extra.visual_encoder_m, _ = rw.BLIP_PRETRAIN_MODULE.create_vit("large", 224, False, 0, 0)
    extra.vision_proj_m = nn.Linear(vision_width, embed_dim)
    extra.text_encoder_m = MED_MODULE.BertModel(config=config, add_pooling_layer=False)
    extra.text_proj_m = nn.Linear(text_width, embed_dim)
    extra.itm_head = nn.Linear(text_width, 2)
    extra.text_decoder = MED_MODULE.BertLMHeadModel(config=config)
    state = dict(extra.state_dict())
    generator = torch.Generator().manual_seed(seed + 1000)
    for name, tensor in state.items():  # never read by the score: any values unlike the main encoders' will do
        if tensor.is_floating_point():
            state[name] = torch.randn(tensor.shape, generator=generator) * 0.05 + (1.0 if "LayerNorm" in name else 0.0)
    state["temp"] = torch.tensor(0.07)
    for name in ("image_queue", "text_queue"):
        queue = torch.randn(embed_dim, queue_size, generator=generator)
        state[name] = nn.functional.normalize(queue, dim=0)
    state["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return state


def cmd_make_checkpoint(args: argparse.Namespace) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    med_config = dict(rw.OFFICIAL_MED_CONFIG)
    if args.size == "tiny":
        med_config.update(TINY_MED_OVERRIDES)
    med_path = out / MED_CONFIG_NAME
    med_path.write_text(json.dumps(med_config, indent=2) + "\n", encoding="utf-8")

    torch.manual_seed(args.seed)
    with rw.local_tokenizer(args.vocab), architecture_for(med_config), contextlib.redirect_stdout(sys.stderr):
        model = BLIP_SCORE_MODULE.BLIPScore(med_config=str(med_path), device="cpu")
        redrawn = rw.redraw_parameters(model.blip, args.seed)
        state = dict(model.blip.state_dict())
        used = len(state)
        if args.training_entries:
            queue_size = args.queue_size or (RELEASE_QUEUE_SIZE if args.size == "full" else 64)
            state.update(training_entries(model.blip, med_path, queue_size, args.seed))
    ckpt_path = out / CHECKPOINT_NAME
    torch.save({"model": state}, ckpt_path)
    rw.write_json(
        {
            "checkpoint": str(ckpt_path),
            "med_config": str(med_path),
            "size": args.size,
            "seed": args.seed,
            "sha256": rw.sha256_file(ckpt_path),
            "med_config_sha256": rw.sha256_file(med_path),
            "file_bytes": ckpt_path.stat().st_size,
            "tensor_count": len(state),
            "reference_tensor_count": used,
            "reference_parameter_count": sum(p.numel() for p in model.blip.parameters()),
            "parameters_redrawn": redrawn,
            "training_entries": bool(args.training_entries),
            **rw.versions(),
        },
        None,
    )


def check_loaded(model: nn.Module, ckpt_path: Path) -> int:
    """Every tensor of the reference model equals the checkpoint's: ``load_score`` loaded it all."""
    release = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)["model"]
    ours = model.blip.state_dict()
    bad = [k for k, v in ours.items() if k not in release or not torch.equal(v, release[k])]
    if bad:
        raise SystemExit(f"load_score did not load these tensors from the checkpoint: {bad[:10]}")
    return len(ours)


def cmd_score(args: argparse.Namespace) -> None:
    ckpt_dir: Path = args.checkpoint_dir.resolve()
    ckpt_path = ckpt_dir / CHECKPOINT_NAME
    med_path = ckpt_dir / MED_CONFIG_NAME
    med_config = json.loads(med_path.read_text(encoding="utf-8"))
    items, base = rw.load_items(args.manifest, args.images_dir, args.prompt or [])

    with tempfile.TemporaryDirectory() as root:  # load_score's download folder: links to the two files
        for path in (ckpt_path, med_path):
            (Path(root) / path.name).symlink_to(path)
        start = time.perf_counter()
        with rw.local_tokenizer(args.vocab), architecture_for(med_config), contextlib.redirect_stdout(sys.stderr):
            model = rw.RM.load_score("BLIP", device="cpu", download_root=root)
        load_seconds = time.perf_counter() - start
    loaded = check_loaded(model, ckpt_path)
    rss_after_load = rw.peak_rss_mb()

    start = time.perf_counter()
    scores = [float(model.score(item["prompt"], rw._resolve(base, item["image"]))) for item in items]
    score_seconds = time.perf_counter() - start

    ranks: list[dict[str, Any]] = []
    by_prompt: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_prompt.setdefault(item["prompt"], []).append(index)
    if not args.no_rank:
        for prompt, indices in by_prompt.items():
            if len(indices) < 2:  # inference_rank squeezes a single score to a 0-d tensor
                continue
            rank, rewards = model.inference_rank(prompt, [rw._resolve(base, items[i]["image"]) for i in indices])
            ranks.append({"prompt": prompt, "indices": indices, "rank": rank, "scores": rewards})

    tokens = []
    for prompt in by_prompt:
        encoded = model.blip.tokenizer(prompt, padding="max_length", truncation=True, max_length=35)
        tokens.append(
            {"prompt": prompt, "input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        )

    result: dict[str, Any] = {
        "checkpoint_sha256": rw.sha256_file(ckpt_path),
        "med_config_sha256": rw.sha256_file(med_path),
        "reference_call": 'ImageReward.load_score("BLIP"), then BLIPScore.score(prompt, path) per item',
        "tensors_loaded_and_checked": loaded,
        **rw.versions(),
    }
    if args.out is not None:  # lets the output serve as a manifest again
        result["images_dir"] = os.path.relpath(base, args.out.resolve().parent)
    result["scores"] = scores
    result["items"] = [{**item, "score": score} for item, score in zip(items, scores, strict=True)]
    result["inference_rank"] = ranks
    result["tokens"] = tokens
    timing = {
        "load_seconds": round(load_seconds, 3),
        "score_seconds_per_item": round(score_seconds / max(len(items), 1), 4),
        "peak_rss_mb_after_load": round(rss_after_load, 1),
        "peak_rss_mb": round(rw.peak_rss_mb(), 1),
    }
    rw.write_json(result, args.out, stdout_extra={"timing": timing})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    make = sub.add_parser("make-checkpoint", help="random-weight model_large.pth built with the reference's classes")
    make.add_argument("--size", choices=("tiny", "full"), required=True)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--out", type=Path, required=True, help="folder for model_large.pth and med_config.json")
    make.add_argument("--vocab", type=Path, required=True, help="folder holding bert-base-uncased vocab.txt")
    make.add_argument("--training-entries", action="store_true", help="add the release's training-only entries")
    make.add_argument("--queue-size", type=int, default=0, help="queue length (default 57600 full, 64 tiny)")
    make.set_defaults(func=cmd_make_checkpoint)

    score = sub.add_parser("score", help="reference BLIP scores for manifest items")
    score.add_argument("--checkpoint-dir", type=Path, required=True, help="holds model_large.pth, med_config.json")
    score.add_argument("--vocab", type=Path, required=True)
    score.add_argument("--manifest", type=Path, help='JSON list of {"image", "prompt"} (or {"items": [...]})')
    score.add_argument("--images-dir", type=Path, help="instead of a manifest: every image here x every --prompt")
    score.add_argument("--prompt", action="append", help="with --images-dir; repeatable")
    score.add_argument("--no-rank", action="store_true", help="skip inference_rank")
    score.add_argument("--out", type=Path)
    score.set_defaults(func=cmd_score)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
