"""CLIP's prompt encoder: OpenAI's byte-level BPE (49,408 pieces), shared by every CLIP-based scorer.

For the other families (PickScore, HPSv2.1) the whole interface is:

    encoder = ClipPromptEncoder(folder)          # folder holds vocab.json + merges.txt (openai/clip-vit-large-patch14)
    batch = encoder(["a cat", "a dog"])          # TokenBatch: input_ids/attention_mask (B, L) int64, truncated flags
    encoder.count_tokens("a cat")                # 4: [SOT] a cat [EOT], before truncation

A prompt becomes `[SOT] piece ... piece [EOT]`, at most 77 tokens: a longer prompt keeps its first 75 pieces and
ends with [EOT], as OpenAI's `clip.tokenize(truncate=True)` and open_clip's tokenizer do. Rows are padded with id 0
(what both references pad with) up to the longest prompt of the batch and the mask marks the real tokens; the text
tower is causal and is read at [EOT] (`clip_backbone.text_embeddings`), so padding never changes a score.

The text is cleaned as OpenAI's `basic_clean` does before the BPE (`clean_text`). The BPE itself is transformers'
`CLIPTokenizerFast` (the Rust `tokenizers` backend), the one class that reads a vocab.json + merges.txt folder the
same way from transformers 4.30 to 5.x; we add [SOT]/[EOT] and truncate ourselves, so transformers' own truncation
and special-token rules (which changed across versions) play no part.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..errors import ModelFileMissingError
from ..hub import HubFile
from .base import TokenBatch

CONTEXT_LENGTH = 77
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408
PAD_ID = 0

#: The canonical source of the vocabulary files (identical to the `bpe_simple_vocab_16e6.txt.gz` shipped in OpenAI's
#: `clip` package: same 48,894 merges, same ids). Families put them under `<family folder>/clip-tokenizer/`.
TOKENIZER_REPO_ID = "openai/clip-vit-large-patch14"
TOKENIZER_DIRNAME = "clip-tokenizer"


def tokenizer_files(
    dirname: str = TOKENIZER_DIRNAME, repo_ids: tuple[str, ...] = (TOKENIZER_REPO_ID,)
) -> tuple[HubFile, ...]:
    """The HubFile entries for the two vocabulary files, placed under `<family folder>/<dirname>/`."""
    return tuple(HubFile(repo_ids, name, f"{dirname}/{name}") for name in ("vocab.json", "merges.txt"))


# ------------------------------------------------------------------------------------------------ text cleaning
# OpenAI's `basic_clean` runs ftfy's `fix_text`, then `html.unescape` twice, then collapses whitespace and lower-cases.
# ftfy is not one of our dependencies, so the fixes of `fix_text` that change ordinary prompts are written out here
# (ligatures, full-width forms, curly quotes, control characters, NFC). Its mojibake repair (text decoded with the
# wrong codec, e.g. "cafÃ©") is not: such a prompt is tokenized as written.

#: Latin ligatures that ftfy spells out (their compatibility decomposition): Ĳ ĳ ŉ Ǆ..ǌ ﬀ..ﬆ.
_LIGATURES = {
    code: unicodedata.normalize("NFKC", chr(code))
    for code in [0x0132, 0x0133, 0x0149, *range(0x01C4, 0x01CD), *range(0xFB00, 0xFB07)]
}
#: Full-width ASCII and half-width CJK forms -> their ordinary width; the ideographic space -> a space.
_WIDTH = {
    code: unicodedata.normalize("NFKC", chr(code))
    for code in range(0xFF01, 0xFFF0)
    if unicodedata.normalize("NFKC", chr(code)) != chr(code)
}
_WIDTH[0x3000] = " "
_QUOTES = {**dict.fromkeys([0x02BC, 0x2018, 0x2019, 0x201A, 0x201B], "'"), **dict.fromkeys(range(0x201C, 0x2020), '"')}
#: Control characters that ftfy removes: C0 controls other than tab, newline, form feed and return; DEL; the
#: deprecated Arabic format characters; the byte-order mark; interlinear annotations and the object replacement mark.
_CONTROL = dict.fromkeys([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF])
_CONTROL.update(dict.fromkeys(range(0xFFF9, 0xFFFD)))
_TRANSLATION = {**_LIGATURES, **_WIDTH, **_QUOTES, **_CONTROL}
_WHITESPACE = re.compile(r"\s+")
_ENTITY = re.compile(r"&#?\w+;")  # ftfy decodes only entities closed by a semicolon
_SPECIAL = re.compile("(" + re.escape(START_TOKEN) + "|" + re.escape(END_TOKEN) + ")")


def clean_text(text: str) -> str:
    """The prompt as OpenAI's tokenizer reads it: fixed as above, HTML entities decoded, whitespace collapsed,
    lower-cased."""
    if "<" not in text:  # ftfy decodes entities only in text that does not look like HTML, until none is left
        while (decoded := _ENTITY.sub(lambda m: html.unescape(m.group()), text)) != text:
            text = decoded
    text = unicodedata.normalize("NFC", text.translate(_TRANSLATION))
    text = html.unescape(html.unescape(text))
    return _WHITESPACE.sub(" ", text).strip().lower()


# ------------------------------------------------------------------------------------------------ the encoder


class ClipPromptEncoder:
    """Prompts -> `TokenBatch` with OpenAI's vocabulary; see the module's docstring."""

    def __init__(
        self,
        folder: str | Path,
        context_length: int = CONTEXT_LENGTH,
        *,
        clean: Callable[[str], str] | None = None,
    ) -> None:
        """`clean`: the text cleaning before BPE (default OpenAI's and open_clip's, `clean_text`; PickScore's
        transformers tokenizer only normalises)."""
        from transformers import CLIPTokenizerFast

        self._clean = clean or clean_text

        folder = Path(folder)
        missing = [name for name in ("vocab.json", "merges.txt") if not (folder / name).is_file()]
        if missing:
            raise ModelFileMissingError(
                f"the CLIP tokenizer file(s) {', '.join(missing)} are missing from {folder}: delete the folder to "
                "download them again"
            )
        try:
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileMissingError(
                f"{folder / 'vocab.json'} could not be read ({exc}); delete the folder to download it again"
            ) from None
        size = len(vocab) if isinstance(vocab, dict) else 0
        if size < 3 or vocab.get(START_TOKEN) != size - 2 or vocab.get(END_TOKEN) != size - 1:
            raise ModelFileMissingError(
                f"{folder / 'vocab.json'} is not a CLIP vocabulary ({START_TOKEN} and {END_TOKEN} must be its last "
                "two ids)"
            )
        try:
            # No length limit here: truncation is ours, and transformers would otherwise warn about every long prompt.
            tokenizer = CLIPTokenizerFast.from_pretrained(str(folder), local_files_only=True, model_max_length=10**9)
        except Exception as exc:  # a damaged merges file fails deep inside the backend
            raise ModelFileMissingError(
                f"the CLIP tokenizer in {folder} could not be read ({type(exc).__name__}: {exc}); delete the folder "
                "to download it again"
            ) from None
        start, end = tokenizer.convert_tokens_to_ids([START_TOKEN, END_TOKEN])
        if (start, end) != (size - 2, size - 1):
            raise ModelFileMissingError(f"transformers read {folder} as another vocabulary than its vocab.json")
        self._tokenizer = tokenizer
        self.start_id, self.end_id = int(start), int(end)
        self.vocab_size = int(end) + 1
        self.max_length = int(context_length)

    def pieces(self, prompts: Sequence[str]) -> list[list[int]]:
        """Each prompt's BPE ids, without the [SOT]/[EOT] around it and without truncation.

        "<|startoftext|>" and "<|endoftext|>" written in a prompt are read as those tokens, as OpenAI's tokenizer
        does; we split them off ourselves because transformers 4.30's fast tokenizer, unlike later ones, spells
        them out piece by piece."""
        result: list[list[int]] = []
        for prompt in prompts:
            parts = _SPECIAL.split(self._clean(prompt))
            texts = parts[0::2]
            encoded = self._tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
            ids: list[int] = list(encoded[0])
            for special, text_ids in zip(parts[1::2], encoded[1:], strict=True):
                ids.append(self.start_id if special == START_TOKEN else self.end_id)
                ids.extend(text_ids)
            result.append(ids)
        return result

    def __call__(self, prompts: Sequence[str]) -> TokenBatch:
        pieces = self.pieces(prompts)
        room = self.max_length - 2
        rows = [[self.start_id, *ids[:room], self.end_id] for ids in pieces]
        length = max((len(row) for row in rows), default=2)
        input_ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return TokenBatch(input_ids, attention_mask, tuple(len(ids) > room for ids in pieces))

    def count_tokens(self, prompt: str) -> int:
        """Tokens of the prompt, [SOT] and [EOT] included, before truncation."""
        return len(self.pieces([prompt])[0]) + 2
