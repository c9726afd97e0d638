"""The tokenizer's truncation flag at its edge: 35 tokens ([CLS] + 33 word pieces + [SEP]) are read whole, 36 are
cut (the flag the WebUI's "prompt too long" note and `Scorer.truncated` rely on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagereward.config import MAX_TEXT_LENGTH
from imagereward.text import PromptTokenizer

VOCAB_DIR = Path(__file__).parent / "fixtures" / "bert-base-uncased"


@pytest.fixture(scope="module")
def tokenizer() -> PromptTokenizer:
    return PromptTokenizer(VOCAB_DIR)


@pytest.mark.parametrize(("tokens", "cut"), [(34, False), (35, False), (36, True), (37, True)])
def test_the_truncation_flag_at_the_limit(tokenizer: PromptTokenizer, tokens: int, cut: bool) -> None:
    prompt = " ".join(["cat"] * (tokens - 2))  # one word piece each, plus [CLS] and [SEP]
    assert MAX_TEXT_LENGTH == 35 and tokenizer.count_tokens(prompt) == tokens
    encoded = tokenizer([prompt])
    assert encoded.truncated == (cut,)
    assert int(encoded.attention_mask[0].sum()) == min(tokens, MAX_TEXT_LENGTH)
    assert encoded.input_ids[0][0].item() == 101 and encoded.input_ids[0][min(tokens, 35) - 1].item() == 102


def test_a_batch_flags_each_prompt_on_its_own(tokenizer: PromptTokenizer) -> None:
    exact, over = " ".join(["cat"] * 33), " ".join(["cat"] * 34)
    assert tokenizer([over, "a cat", exact]).truncated == (True, False, False)
