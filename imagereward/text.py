"""The prompt tokenizer: bert-base-uncased WordPiece plus BLIP's two added tokens.

BLIP adds `[DEC]` as the bos token (id 30522) and `[ENC]` as an additional special token (id 30523). The reward
model reads `[CLS] prompt [SEP]`, truncated to 35 tokens. Padding is to the longest prompt of a batch rather than to 35:
the padded positions are masked out, so the score does not change, and short prompts cost less.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import MAX_TEXT_LENGTH
from .errors import ModelFileMissingError
from .prompt_syntax import clean_prompt

DEC_TOKEN, ENC_TOKEN = "[DEC]", "[ENC]"
DEC_TOKEN_ID, ENC_TOKEN_ID = 30522, 30523


@dataclass(frozen=True)
class EncodedPrompts:
    input_ids: torch.Tensor  # (P, L) int64
    attention_mask: torch.Tensor  # (P, L) int64
    truncated: tuple[bool, ...]  # per prompt: more than max_length tokens were cut


class PromptTokenizer:
    """Tokenizes prompts exactly as the reference does, with an optional cleaner for WebUI prompt syntax."""

    def __init__(self, tokenizer_dir: str | Path, max_length: int = MAX_TEXT_LENGTH) -> None:
        from transformers import BertTokenizerFast

        folder = Path(tokenizer_dir)
        if not (folder / "vocab.txt").is_file():
            raise ModelFileMissingError(f"the tokenizer vocabulary {folder / 'vocab.txt'} is missing")
        # A folder with only vocab.txt works from transformers 4.30 to 5.x; lower-casing is bert-base-uncased's.
        tokenizer = BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True, local_files_only=True)
        tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
        tokenizer.add_special_tokens({"additional_special_tokens": [ENC_TOKEN]})
        ids = tokenizer.convert_tokens_to_ids([DEC_TOKEN, ENC_TOKEN])
        if ids != [DEC_TOKEN_ID, ENC_TOKEN_ID]:
            raise ModelFileMissingError(
                f"{folder / 'vocab.txt'} is not the bert-base-uncased vocabulary ([DEC], [ENC] got ids {ids})"
            )
        self._tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, prompts: Sequence[str], *, clean: bool = False) -> EncodedPrompts:
        texts = [encodable(clean_prompt(p) if clean else p) for p in prompts]
        full = self._tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        encoded = self._tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return EncodedPrompts(
            input_ids=encoded["input_ids"].long(),
            attention_mask=encoded["attention_mask"].long(),
            truncated=tuple(len(ids) > self.max_length for ids in full),
        )

    def count_tokens(self, prompt: str, *, clean: bool = False) -> int:
        """Word pieces of the prompt, [CLS] and [SEP] included, before truncation."""
        text = encodable(clean_prompt(prompt) if clean else prompt)
        return len(self._tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])


def encodable(text: str) -> str:
    """The text with lone surrogates (from undecodable bytes, e.g. a file name's) replaced by "?": the tokenizer
    refuses them with an unhelpful TypeError. Valid text is returned unchanged."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text
