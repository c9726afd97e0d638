"""The WebUI prompt cleaner: syntax out, words in, never an exception."""

from __future__ import annotations

import pytest

from imagereward.prompt_syntax import clean_prompt, has_webui_syntax

CASES = [
    # plain text stays (only tidied)
    ("a cat sitting on a sofa", "a cat sitting on a sofa"),
    ("", ""),
    ("   ", ""),
    ("ratio 16:9, wide shot", "ratio 16:9, wide shot"),
    ("https://example.com/path?q=1 logo", "https://example.com/path?q=1 logo"),
    ("easynegative, bad-hands-5, photo of sks_person", "easynegative, bad-hands-5, photo of sks_person"),
    ("a\nmulti-line\n\nprompt", "a multi-line prompt"),
    # extra networks
    ("a cat <lora:catStyle_v2:0.8>", "a cat"),
    ("<lyco:thing:1.0>a cat<hypernet:anime:0.5>", "a cat"),
    ("<lora:x:1> <hypernet:y:0.5>", ""),
    ("a, <lora:x:1>, b", "a, b"),
    ("a <3 b", "a <3 b"),
    ("(<lora:x:1>:1.2) cat", "cat"),
    # emphasis
    ("a (cute:1.3) cat", "a cute cat"),
    ("((masterpiece)), best quality", "masterpiece, best quality"),
    ("(a, b:0.9)", "a, b"),
    ("[blurry] photo", "blurry photo"),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", "a house on a hill, sun, sky."),
    ("((red:1.2) hat:0.8)", "red hat"),
    ("(word: 1.2 )", "word"),
    ("(word:-0.5)", "word"),
    ("(a:b)", "a:b"),
    ("(unnecessary)(parens)", "unnecessaryparens"),
    # prompt editing, at the final step
    ("a [cat:dog:0.5]", "a dog"),
    ("[a:b:10]", "b"),
    ("[a:0.5] cat", "a cat"),
    ("cat [hat::0.5]", "cat"),
    ("[ in the rain:0.25]street", "in the rainstreet"),
    ("a [b : c : 1] d", "a c d"),
    ("a[b:[c:d:2]:1]e", "ade"),
    ("a [[[b]]:2] c", "a b c"),
    ("[(a:2):3]", "a"),
    ("[(red:1.2) cat:(blue:0.9) dog:0.3]", "blue dog"),
    ("[a:b]", "a:b"),
    # alternation
    ("[a|b|c]", "a b c"),
    ("a [cat|dog] friend", "a cat dog friend"),
    ("[a|(b:1.1)]", "a b"),
    ("[cat|[big:small:0.5] dog]", "cat small dog"),
    ("[a||b]", "a b"),
    # BREAK and AND
    ("a cat BREAK a dog", "a cat, a dog"),
    ("BREAK a cat BREAK", "a cat"),
    ("a BREAKFAST table", "a BREAKFAST table"),
    ("a cat :1.2 AND a dog", "a cat, a dog"),
    ("a cat AND a dog:0.5 AND (a bird:1.1)", "a cat, a dog, a bird"),
    ("salt and pepper", "salt and pepper"),
    ("a (cute:1.3) [cat:dog:0.4] <lora:x:1> BREAK sitting", "a cute dog, sitting"),
    # escapes
    (r"\(literal\] text", "(literal] text"),
    (r"a \(b:1.2\) c", "a (b:1.2) c"),
    (r"(\(inner\):1.1)", "(inner)"),
    (r"[a\:b:c:0.5]", "c"),
    (r"[a\:b:0.5]", "a:b"),
    (r"back\\slash", "back\\slash"),
    (r"trailing\\", "trailing\\"),
    # unbalanced and malformed: never raise, brackets never survive
    ("((a", "a"),
    ("(a:1.2", "a:1.2"),
    ("a)", "a"),
    (")a]", "a"),
    ("a (b [c d) e", "a b c d e"),
    ("[a:(b:0.4]", "a:b:0.4"),
    ("((a][:b:c [d:3]", "a:b:c d"),
    ("[cat:dog:0.4 ]", "dog"),
    ("(a:1.2.3)", "a:1.2.3"),
    ("(:1.2)", ""),
    ("[]()", ""),
    # tidy
    ("a ,, b ,  , c,", "a, b, c"),
    (", , a , b", "a, b"),
    ("a , b", "a, b"),
    ("16,000 stars", "16,000 stars"),
]


@pytest.mark.parametrize(("prompt", "expected"), CASES)
def test_clean_prompt(prompt: str, expected: str) -> None:
    assert clean_prompt(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "steps", "expected"),
    [
        ("[a:b:30]", 20, "a"),  # the edit would happen after the last step
        ("[a:b:20]", 20, "a"),  # ... or at it: the last step still uses "a"
        ("[a:b:19]", 20, "b"),
        ("[a:b:0.5]", 20, "b"),
        ("[a:b:0.99]", 1, "b"),  # a fraction: 0.99 of 1 step is step 0, before the last step
        ("[a:30] cat", 20, "cat"),
        ("[a::30] cat", 20, "a cat"),
        ("[a:b:30]", None, "b"),
        ("[a:b:30]", 0, "b"),  # nonsense steps are ignored
    ],
)
def test_steps_make_edits_exact(prompt: str, steps: int | None, expected: str) -> None:
    assert clean_prompt(prompt, steps=steps) == expected


def test_deep_nesting_does_not_raise() -> None:
    deep = "x " + "(" * 5000 + "y" + ")" * 5000 + " z"
    assert clean_prompt(deep) == "x y z"
    unclosed = "(" * 10000 + "a"
    assert clean_prompt(unclosed) == "a"
    closers = "a" + ")]" * 5000
    assert clean_prompt(closers) == "a"


def test_long_prompt_is_fast_enough() -> None:
    prompt = ", ".join(f"(word{i}:1.{i % 10}) [a{i}:b{i}:0.5] <lora:n{i}:1>" for i in range(2000))
    cleaned = clean_prompt(prompt)
    assert cleaned.startswith("word0 b0, word1 b1")
    assert "<" not in cleaned and "(" not in cleaned and "[" not in cleaned


def test_private_use_placeholders_in_input_cannot_fake_brackets() -> None:
    assert clean_prompt("a\ue000b\ue003c") == "abc"


@pytest.mark.parametrize(
    "prompt",
    ["(", ")", "[", "]", ":", "|", "<", ">", "\\", "[:]", "[|]", "(:)", "[::]", "[a:b:]", "<lora:>", "AND", "BREAK"],
)
def test_odd_fragments_never_raise_and_leave_no_brackets(prompt: str) -> None:
    cleaned = clean_prompt(prompt)
    assert isinstance(cleaned, str)
    assert not set(cleaned) & set("()[]")


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat on a sofa", False),
        ("ratio 16:9, url https://x.org", False),
        ("", False),
        ("a (cat)", True),
        ("a [cat]", True),
        ("a <lora:x:1>", True),
        ("a BREAK b", True),
        ("a AND b", True),
        (r"a \(b\)", True),
        ("a <3 b", False),
    ],
)
def test_has_webui_syntax(prompt: str, expected: bool) -> None:
    assert has_webui_syntax(prompt) is expected


@pytest.mark.parametrize(
    "prompt",
    ["a cat on a sofa", "ratio 16:9", "photo,  4k ,, sharp", "  spaced  out  ", "a <3 b", "x | y"],
)
def test_prompts_without_syntax_are_only_tidied(prompt: str) -> None:
    assert not has_webui_syntax(prompt)
    assert clean_prompt(prompt) == " ".join(prompt.split()).replace(" ,", ",").replace(",,", ",").strip(" ,")
