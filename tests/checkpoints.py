"""Writing small random checkpoints in the release's format (`torch.save` of the reference model's state dict).

The official key names are spelled out here from the release's layout, independently of the key map in
`imagereward.weights`, so that a mistake in that map cannot hide in both places.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"
VOCAB_DIR = FIXTURES / "bert-base-uncased"


def official_state_dict(
    width: int = 64, depth: int = 2, hidden: int = 32, layers: int = 2, ffn: int = 64, vocab: int = 30524, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random weights with the release's key names and shapes (reduced sizes), plus its unused tensors."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float | None = None) -> torch.Tensor:
        fan_in = shape[-1] if len(shape) > 1 else 1
        return torch.randn(*shape, generator=g) * (scale if scale is not None else fan_in**-0.5)

    def linear(prefix: str, out_f: int, in_f: int, state: dict) -> None:
        state[f"{prefix}.weight"] = rand(out_f, in_f)
        state[f"{prefix}.bias"] = rand(out_f, scale=0.02)

    def norm(prefix: str, size: int, state: dict) -> None:
        state[f"{prefix}.weight"] = 1 + rand(size, scale=0.1)
        state[f"{prefix}.bias"] = rand(size, scale=0.05)

    s: dict[str, torch.Tensor] = {}
    v = "blip.visual_encoder"
    s[f"{v}.cls_token"] = rand(1, 1, width, scale=0.5)
    s[f"{v}.pos_embed"] = rand(1, 197, width, scale=0.5)
    s[f"{v}.patch_embed.proj.weight"] = rand(width, 3, 16, 16, scale=(3 * 256) ** -0.5)
    s[f"{v}.patch_embed.proj.bias"] = rand(width, scale=0.02)
    for b in range(depth):
        p = f"{v}.blocks.{b}"
        norm(f"{p}.norm1", width, s)
        linear(f"{p}.attn.qkv", 3 * width, width, s)
        linear(f"{p}.attn.proj", width, width, s)
        norm(f"{p}.norm2", width, s)
        linear(f"{p}.mlp.fc1", 4 * width, width, s)
        linear(f"{p}.mlp.fc2", width, 4 * width, s)
    norm(f"{v}.norm", width, s)
    t = "blip.text_encoder"
    s[f"{t}.embeddings.word_embeddings.weight"] = rand(vocab, hidden, scale=0.5)
    s[f"{t}.embeddings.position_embeddings.weight"] = rand(512, hidden, scale=0.5)
    norm(f"{t}.embeddings.LayerNorm", hidden, s)
    s[f"{t}.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    for i in range(layers):
        p = f"{t}.encoder.layer.{i}"
        for name in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "crossattention.self.query",
            "crossattention.output.dense",
        ):
            linear(f"{p}.{name}", hidden, hidden, s)
        for name in ("crossattention.self.key", "crossattention.self.value"):
            linear(f"{p}.{name}", hidden, width, s)
        for name in ("attention.output.LayerNorm", "crossattention.output.LayerNorm", "output.LayerNorm"):
            norm(f"{p}.{name}", hidden, s)
        linear(f"{p}.intermediate.dense", ffn, hidden, s)
        linear(f"{p}.output.dense", hidden, ffn, s)
    sizes = (hidden, 1024, 128, 64, 16, 1)
    for index, (a, b) in zip((0, 2, 4, 6, 7), itertools.pairwise(sizes), strict=True):
        linear(f"mlp.layers.{index}", b, a, s)
    linear("blip.vision_proj", 256, width, s)
    linear("blip.text_proj", 256, hidden, s)
    return s


def med_config(hidden: int = 32, layers: int = 2, heads: int = 2, ffn: int = 64) -> dict:
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": ffn,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": 30524,
        "encoder_width": 768,
        "add_cross_attention": True,
    }


def write_model_dir(folder: Path, state: dict[str, torch.Tensor] | None = None, *, vocab: bool = True) -> Path:
    """A models folder laid out as the download leaves it: ImageReward.pt, med_config.json, bert-base-uncased/."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state if state is not None else official_state_dict(), folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(med_config()), encoding="utf-8")
    if vocab:
        (folder / "bert-base-uncased").mkdir(exist_ok=True)
        (folder / "bert-base-uncased" / "vocab.txt").write_bytes((VOCAB_DIR / "vocab.txt").read_bytes())
    return folder
