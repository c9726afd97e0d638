"""Turn a WebUI prompt into the plain text ImageReward should read.

ImageReward's text encoder reads a prompt as English (BERT WordPiece, at most 33 word pieces), while a WebUI prompt
carries syntax meant for the diffusion model: extra-network tags (``<lora:name:0.8>``), attention weights
(``(word:1.2)``, ``((word))``, ``[word]``), prompt editing (``[from:to:0.5]``, ``[a|b]``), ``BREAK`` and
composable-diffusion ``AND``. :func:`clean_prompt` removes that syntax and keeps the words the image was asked for,
as they stand at the last sampling step. The rules follow AUTOMATIC1111's prompt parser where it is unambiguous and
prefer readable text where it is lenient or where a prompt is malformed; nothing here ever raises on odd input.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["clean_prompt", "has_webui_syntax"]

# Escaped characters are swapped for private-use placeholders while parsing, then restored as literal text.
_ESCAPES = {"(": "\ue000", ")": "\ue001", "[": "\ue002", "]": "\ue003", "\\": "\ue004", ":": "\ue005", "|": "\ue006"}
_RESTORE = str.maketrans({v: k for k, v in _ESCAPES.items()})
_PLACEHOLDERS = re.compile("[\ue000-\ue006]")
_ESCAPE = re.compile(r"\\(.?)", re.S)

# <lora:name:0.8>, <lyco:...>, <hypernet:...>: the WebUI's extra-network tag is "<" word ":" anything ">".
_EXTRA_NETWORK = re.compile(r"<\w+:[^>]+>")
_AND = re.compile(r"\bAND\b")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_NUMBER = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")
_SUBPROMPT_WEIGHT = re.compile(r"\s*:\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*$")

_SYNTAX = re.compile(r"[()\[\]\\]|<\w+:[^>]+>|\bBREAK\b|\bAND\b")
_SPACES = re.compile(r"\s+")
_COMMAS = re.compile(r"\s*,(?:\s*,)*")

# Deeper nesting than this is not tracked (its brackets are dropped); it keeps rendering free of recursion limits.
_MAX_DEPTH = 64


@dataclass(eq=False)
class _Sep:
    """A ``:`` or ``|`` that may separate the parts of the bracket group it stands in."""

    char: str


@dataclass(eq=False)
class _Group:
    """A bracket group, ``(...)`` or ``[...]``; the root group has opener ``""``."""

    opener: str
    items: list[str | _Sep | _Group] = field(default_factory=list)


def has_webui_syntax(prompt: str) -> bool:
    """Whether ``prompt`` holds anything :func:`clean_prompt` would remove (beyond tidying commas and spaces)."""
    return bool(prompt) and _SYNTAX.search(prompt) is not None


def clean_prompt(prompt: str, *, steps: int | None = None) -> str:
    """The prompt as plain text: WebUI syntax removed, prompt editing resolved to its final step.

    ``steps``, when known, makes ``[a:b:N]`` exact: an edit scheduled at or after the last step never happens
    (``a`` is kept). Without it every edit is assumed to happen before the end (``b`` is kept).
    """
    if not prompt:
        return ""
    if steps is not None and steps < 1:
        steps = None
    text = _PLACEHOLDERS.sub("", prompt)
    text = _ESCAPE.sub(_escape, text)
    text = _EXTRA_NETWORK.sub(" ", text)
    parts = _AND.split(text)
    if len(parts) > 1:  # composable diffusion: "a cat :1.2 AND a dog" -> subprompts with optional weights
        parts = [_SUBPROMPT_WEIGHT.sub("", part) for part in parts]
    cleaned = []
    for part in parts:
        part = _BREAK.sub(", ", part)
        cleaned.append(_render(_parse(part), steps).translate(_RESTORE))
    return _tidy(", ".join(cleaned))


def _escape(match: re.Match[str]) -> str:
    """``\\(`` and friends become placeholders; a backslash before any other character is dropped."""
    char = match.group(1)
    return _ESCAPES.get(char, char)


def _tidy(text: str) -> str:
    """One space between words, no empty or doubled commas, no space before a comma, nothing dangling at the ends."""
    text = _SPACES.sub(" ", text)
    text = _COMMAS.sub(",", text)
    return text.strip(" ,")


def _parse(text: str) -> _Group:
    """Build the bracket tree. Stray closers are dropped; unclosed groups become plain text (see ``_dissolve``)."""
    root = _Group("")
    stack = [root]
    run: list[str] = []

    def flush() -> None:
        if run:
            stack[-1].items.append("".join(run))
            run.clear()

    for char in text:
        if char in "([":
            flush()
            if len(stack) <= _MAX_DEPTH:
                group = _Group(char)
                stack[-1].items.append(group)
                stack.append(group)
        elif char in ")]":
            flush()
            opener = "(" if char == ")" else "["
            depth = next((i for i in range(len(stack) - 1, 0, -1) if stack[i].opener == opener), None)
            if depth is None:
                continue  # a closer nothing opened: drop it
            while len(stack) - 1 > depth:  # groups opened inside and never closed
                _dissolve(stack.pop(), stack[-1])
            stack.pop()
        elif char in ":|":
            flush()
            stack[-1].items.append(_Sep(char))
        else:
            run.append(char)
    flush()
    while len(stack) > 1:
        _dissolve(stack.pop(), stack[-1])
    return root


def _dissolve(group: _Group, parent: _Group) -> None:
    """An unclosed group: drop its opener and splice its content into the parent, separators as plain text."""
    index = next(i for i in range(len(parent.items) - 1, -1, -1) if parent.items[i] is group)
    items = [item.char if isinstance(item, _Sep) else item for item in group.items]
    parent.items[index : index + 1] = items


def _split(items: list[str | _Sep | _Group], sep: str) -> list[list[str | _Sep | _Group]]:
    """Split a group's top-level items at separators ``sep``."""
    parts: list[list[str | _Sep | _Group]] = [[]]
    for item in items:
        if isinstance(item, _Sep) and item.char == sep:
            parts.append([])
        else:
            parts[-1].append(item)
    return parts


def _number(items: list[str | _Sep | _Group]) -> float | None:
    """The number that ``items`` spell (plain text only, surrounding spaces allowed), else None."""
    if not all(isinstance(item, str) for item in items):
        return None
    text = "".join(items)  # type: ignore[arg-type]
    if not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _render(group: _Group, steps: int | None) -> str:
    """The text of a group as the final sampling step sees it."""
    if group.opener == "[":
        alternatives = _split(group.items, "|")
        if len(alternatives) > 1:  # [a|b|c]: each word is used in turn, so keep them all
            rendered = (_render_items(alt, steps).strip() for alt in alternatives)
            return " ".join(text for text in rendered if text)
        parts = _split(group.items, ":")
        when = _number(parts[-1]) if len(parts) > 1 else None
        if when is not None:
            reached = steps is None or _edit_happens(when, steps)
            if len(parts) == 2:  # [a:N]: a is added at step N
                return _render_items(parts[0], steps) if reached else ""
            before = _join(parts[:-2], steps)
            after = _render_items(parts[-2], steps)
            return after if reached else before
        return _render_items(group.items, steps)  # [word]: de-emphasis
    if group.opener == "(":
        parts = _split(group.items, ":")
        if len(parts) > 1 and _number(parts[-1]) is not None:  # (words:1.2)
            return _join(parts[:-1], steps)
    return _render_items(group.items, steps)


def _join(parts: list[list[str | _Sep | _Group]], steps: int | None) -> str:
    """Render parts that were split at ``:`` and put the colons back."""
    return ":".join(_render_items(part, steps) for part in parts)


def _render_items(items: list[str | _Sep | _Group], steps: int | None) -> str:
    """Render a run of items; separators that did not split anything are plain text."""
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, _Sep):
            out.append(item.char)
        else:
            out.append(_render(item, steps))
    return "".join(out)


def _edit_happens(when: float, steps: int) -> bool:
    """Whether an edit scheduled at ``when`` (a fraction below 1, else a step) takes effect before the last step."""
    at = when * steps if when < 1 else when
    return min(steps, int(at)) < steps
