"""The ImageReward v1.0 network, inference only.

Written here on `torch.nn.functional.scaled_dot_product_attention` rather than on transformers' BLIP classes: those
classes changed names, signatures and attention plumbing between transformers 4.30 (the WebUI's pin) and 5.x, while
this file depends on nothing but torch >= 2.1. Dropout layers are left out: they do nothing at inference.

Shapes: B images, P = 1 + patches image tokens (197 at 224 px), L text tokens (at most 35).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .config import HeadConfig, ImageRewardConfig, TextConfig, VisionConfig
from .scorers.base import ScoringModel

# BERT's additive mask value for padding: (1 - mask) * -10000, as the released model was trained with.
_PAD_MASK_VALUE = -10000.0


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, H*D) -> (B, H, N, D)."""
    batch, tokens, width = x.shape
    return x.view(batch, tokens, num_heads, width // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) -> (B, N, H*D)."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


# ----------------------------------------------------------------------------------------------------------- vision


class VisionAttention(nn.Module):
    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(_merge_heads(out))


class VisionMlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VisionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.attn = VisionAttention(config.width, config.num_heads)
        self.norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = VisionMlp(config.width, config.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT image encoder: (B, 3, 224, 224) normalised pixels -> (B, P, width) token features."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.Conv2d(3, config.width, kernel_size=config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.empty(1, config.num_patches + 1, config.width))
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ------------------------------------------------------------------------------------------------------------- text


class TextAttention(nn.Module):
    """BERT attention; as cross-attention, keys and values come from the image tokens (width `kv_width`)."""

    def __init__(self, hidden: int, num_heads: int, kv_width: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q = _split_heads(self.query(x), self.num_heads)
        k = _split_heads(self.key(context), self.num_heads)
        v = _split_heads(self.value(context), self.num_heads)
        return self.out(_merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


class TextLayer(nn.Module):
    """Post-norm BERT layer: self-attention, cross-attention to the image, feed-forward, each + residual.

    With `image_width=None` the layer has no cross-attention: BLIP's "text" mode (its unimodal text encoder), which
    skips the cross-attention sublayer and so reads the prompt alone.
    """

    def __init__(self, config: TextConfig, image_width: int | None) -> None:
        super().__init__()
        eps = config.layer_norm_eps
        self.self_attn = TextAttention(config.hidden_size, config.num_heads, config.hidden_size)
        self.self_attn_norm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.cross_attn: TextAttention | None = None
        self.cross_attn_norm: nn.LayerNorm | None = None
        if image_width is not None:
            self.cross_attn = TextAttention(config.hidden_size, config.num_heads, image_width)
            self.cross_attn_norm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.ffn_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=eps)

    def forward(self, x: torch.Tensor, image: torch.Tensor | None, pad_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.self_attn_norm(x + self.self_attn(x, x, pad_mask))
        if self.cross_attn is not None and self.cross_attn_norm is not None:
            if image is None:
                raise ValueError("this text encoder attends to the image: pass the image tokens")
            x = self.cross_attn_norm(x + self.cross_attn(x, image))
        return self.ffn_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))


class TextEncoder(nn.Module):
    """BERT over the prompt, attending to the image at every layer: -> (B, L, hidden).

    `image_width=None` builds it without cross-attention (BLIP's text mode): then `forward` takes no image.
    """

    def __init__(self, config: TextConfig, image_width: int | None) -> None:
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.embed_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(TextLayer(config, image_width) for _ in range(config.num_layers))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed_norm(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        # Additive mask over keys, broadcast over heads and queries; skipped when nothing is padded.
        pad_mask = None
        if not bool(attention_mask.all()):
            pad_mask = ((1.0 - attention_mask[:, None, None, :].to(x.dtype)) * _PAD_MASK_VALUE).to(x.dtype)
        for layer in self.layers:
            x = layer(x, image, pad_mask)
        return x


# ------------------------------------------------------------------------------------------------------------- head


class RewardHead(nn.Module):
    """Linear layers only (the released model has no activations between them), then normalisation."""

    def __init__(self, in_features: int, config: HeadConfig) -> None:
        super().__init__()
        sizes = (in_features, *config.hidden_sizes, 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.score_mean = config.score_mean
        self.score_std = config.score_std

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(self.layers[0].weight.dtype)
        for layer in self.layers:
            x = layer(x)
        return (x.squeeze(-1) - self.score_mean) / self.score_std


class ImageRewardModel(ScoringModel):
    """Score = head(text_encoder(prompt, vision(image))[:, 0]), normalised."""

    outputs = ("imagereward",)
    fp32_modules = ("head",)

    def __init__(self, config: ImageRewardConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionTransformer(config.vision)
        self.text = TextEncoder(config.text, image_width=config.vision.width)
        self.head = RewardHead(config.text.hidden_size, config.head)

    def forward(  # type: ignore[override]
        self, pixels: torch.Tensor, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """pixels (B, 3, H, W) normalised; input_ids/attention_mask (B, L). Returns {"imagereward": (B,) scores}."""
        return {"imagereward": self.reward(pixels, input_ids, attention_mask)}

    def reward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B,) scores in the head's dtype."""
        image_tokens = self.vision(pixels.to(self.vision.patch_embed.weight.dtype))
        text_tokens = self.text(input_ids, attention_mask, image_tokens)
        return self.head(text_tokens[:, 0, :])
