"""Reading and writing WebUI infotext (the generation parameters shown under an image and stored in its file).

The format, as AUTOMATIC1111 1.10 writes and parses it::

    positive prompt (one or more lines)
    Negative prompt: negative prompt (optional, one or more lines)
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, ImageReward: 0.812

The last line holds the settings; it counts as such only when it holds at least three ``Key: value`` pairs, otherwise
it belongs to the prompt. Values containing a comma, a colon, a quote or a line break are written as JSON strings.
Nothing may follow the settings line: a line added after it makes the WebUI read the settings as prompt text.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from imagereward.errors import ImageInputError

__all__ = [
    "SCORE_KEY",
    "Infotext",
    "format_infotext",
    "format_score",
    "format_settings",
    "format_settings_value",
    "parse_infotext",
    "read_image_infotext",
    "read_score",
    "with_setting",
]

SCORE_KEY = "ImageReward"

_NEGATIVE = "Negative prompt:"
# One "Key: value" pair of the settings line, as the WebUI's parser reads it: a key of at least two characters
# (letters, digits, "_", " ", "-", "/"), then either a JSON string or anything up to the next comma.
_SETTING = re.compile(
    r"""\s*
    (?P<key>\w[\w \-/]+)
    :\s*
    (?P<value>"(?:\\.|[^\\"])+"|[^,]*)
    (?:,|$)""",
    re.X,
)
_KEY = re.compile(r"\w[\w \-/]*\w|\w")
_MIN_SETTINGS = 3

_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286


@dataclass
class Infotext:
    """An infotext split into its parts; ``settings`` values are unquoted."""

    prompt: str = ""
    negative_prompt: str = ""
    settings: dict[str, str] = field(default_factory=dict)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


# What an attempt of _SETTING reads before it needs the colon: blanks, then a word character and the rest of its run
# of key characters, without the run's trailing spaces (from there, blanks other than spaces can lead to a new run).
_KEY_RUN = re.compile(r"\s*(?:\w(?:[\w \-/]*[\w\-/])?)?")


def _settings(line: str) -> Iterator[re.Match[str]]:
    """The matches ``_SETTING.finditer(line)`` gives, in linear time.

    ``finditer`` tries every position; inside a long run of key characters that is not followed by a colon (a prompt
    of plain words), each try re-reads the rest of the run, which made a 100k-character prompt take over a minute.
    A failed try that read a run means every later start inside that run fails the same way (it reaches the same end,
    where no colon is), so the scan resumes after the run (before its trailing spaces): the same matches, each
    character read a bounded number of times.
    """
    pos, end = 0, len(line)
    while pos <= end:
        match = _SETTING.match(line, pos)
        if match is not None and match.end() > pos:
            yield match
            pos = match.end()
            continue
        run = _KEY_RUN.match(line, pos)
        pos = max(pos + 1, run.end() if run is not None else 0)


def _settings_line(lines: list[str]) -> bool:
    """Whether the last of ``lines`` is a settings line."""
    if not lines:
        return False
    return any(found >= _MIN_SETTINGS for found, _ in enumerate(_settings(lines[-1]), start=1))


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")


def parse_infotext(text: str) -> Infotext:
    """Split an infotext into prompt, negative prompt and settings, as the WebUI's "PNG Info" does."""
    lines = _lines(text or "")
    settings: dict[str, str] = {}
    if _settings_line(lines):
        for match in _settings(lines.pop()):
            settings[match.group("key").strip()] = _unquote(match.group("value"))
    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            target = negative
            line = line[len(_NEGATIVE) :].strip()
        target.append(line)
    return Infotext("\n".join(prompt), "\n".join(negative), settings)


def format_settings_value(value: Any) -> str:
    """A value as it is written on the settings line: JSON-quoted when it would otherwise be misread."""
    text = str(value)
    if text == "" or any(c in text for c in ',:"\n\r') or text != text.strip():
        return json.dumps(text, ensure_ascii=False)
    return text


def format_settings(settings: dict[str, Any]) -> str:
    """The settings line for ``settings``; None values are left out."""
    return ", ".join(f"{key}: {format_settings_value(value)}" for key, value in settings.items() if value is not None)


def format_infotext(info: Infotext) -> str:
    """Write an :class:`Infotext` back as text (the inverse of :func:`parse_infotext`).

    A settings line with fewer than three entries is written but will not be read back as settings.
    """
    text = info.prompt
    if info.negative_prompt:
        text += f"\n{_NEGATIVE} {info.negative_prompt}"
    settings = format_settings(info.settings)
    if settings:
        text += f"\n{settings}"
    return text.strip()


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key) or len(key) < 2:
        raise ValueError(
            f"infotext key {key!r} is not usable: it needs two or more letters, digits, spaces, '_', '-' or '/', "
            "starting and ending with a letter or digit"
        )


def with_setting(text: str, key: str, value: Any | None) -> str:
    """``text`` with ``Key: value`` set on its settings line (None removes the key).

    Other entries are left byte for byte as they were. An existing key keeps its place; a new one is appended.
    When ``text`` has no settings line, one is added as a new last line.
    """
    _check_key(key)
    text = text or ""
    body = text.rstrip()
    tail = text[len(body) :]
    head, newline, last = body.rpartition("\n")
    if not _settings_line([last]):
        if value is None:
            return text
        entry = f"{key}: {format_settings_value(value)}"
        return f"{body}\n{entry}{tail}" if body else entry
    matches = [m for m in _settings(last) if m.group("key").strip() == key]
    if value is None:
        for match in reversed(matches):
            last = _remove_entry(last, match)
    elif matches:
        first, rest = matches[0], matches[1:]
        for match in reversed(rest):
            last = _remove_entry(last, match)
        last = last[: first.start("value")] + format_settings_value(value) + last[first.end("value") :]
    else:
        last = last.rstrip()
        separator = " " if last.endswith(",") else ", "
        last = f"{last}{separator}{key}: {format_settings_value(value)}"
    return f"{head}{newline}{last}{tail}"


def _remove_entry(line: str, match: re.Match[str]) -> str:
    """``line`` without one ``Key: value`` entry and its separating comma."""
    before, after = line[: match.start()], line[match.end() :]
    if match.group(0).endswith(","):  # an entry followed by more: drop it with its comma
        return before + (after if before else after.lstrip())
    before = before.rstrip()  # the last entry: drop the comma before it
    return before[:-1] if before.endswith(",") else before


def format_score(score: float, decimals: int = 3) -> str:
    """A score as written in infotext: three decimals (or the scorer's own), no negative zero."""
    text = f"{float(score):.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def read_score(text: str) -> float | None:
    """The ImageReward score on the settings line of ``text``, or None when absent or unreadable."""
    value = parse_infotext(text or "").settings.get(SCORE_KEY)
    if value is None:
        return None
    try:
        score = float(value)
    except ValueError:
        return None
    return score if math.isfinite(score) else None


def read_image_infotext(path_or_image: Any) -> str | None:
    """The infotext stored in an image (a path, a binary file object or a PIL image), or None when it has none.

    PNG: the ``parameters`` text chunk. JPEG and WebP: the EXIF UserComment (which wins over a text chunk, as in the
    WebUI). GIF: the comment. Unreadable metadata reads as None; an unreadable file raises ImageInputError.
    """
    from PIL import Image

    if isinstance(path_or_image, Image.Image):
        return _image_infotext(path_or_image)
    source = path_or_image if hasattr(path_or_image, "read") else os.fspath(path_or_image)
    try:
        with Image.open(source) as image:
            return _image_infotext(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageInputError(f"{path_or_image}: not a readable image ({exc})") from exc


def _image_infotext(image: Any) -> str | None:
    info = getattr(image, "info", None) or {}
    text = _as_text(info.get("parameters"))
    comment = _exif_user_comment(info.get("exif"))
    if comment:
        text = comment
    if not text and getattr(image, "format", None) == "GIF":
        text = _as_text(info.get("comment"))
    return text or None


def _as_text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    value = value.strip("\x00")
    return value if value.strip() else None


def _exif_user_comment(exif_data: Any) -> str | None:
    """The EXIF UserComment of raw EXIF bytes, decoded; None when absent or unreadable."""
    if not isinstance(exif_data, (bytes, bytearray)) or not exif_data:
        return None
    try:
        from PIL import Image

        with warnings.catch_warnings():  # Pillow warns about corrupt EXIF; we read it as absent instead
            warnings.simplefilter("ignore")
            exif = Image.Exif()
            exif.load(bytes(exif_data))
            raw = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
        return _decode_user_comment(raw)
    except Exception:  # any malformed EXIF reads as "no infotext"
        return None


_CHARSET_PREFIX = re.compile(r"charset=(\"[^\"]*\"|\S+)\s?", re.I)


def _decode_user_comment(raw: Any) -> str | None:
    """Decode a UserComment: an 8-byte character-code prefix (``UNICODE``, ``ASCII``, ``JIS`` or none), then text."""
    if isinstance(raw, str):
        match = _CHARSET_PREFIX.match(raw)  # some tools render it as 'charset=Unicode text'
        if match:
            return _as_text(raw[match.end() :])
        if raw[:8] in ("UNICODE\x00", "ASCII\x00\x00\x00", "JIS\x00\x00\x00\x00\x00", "\x00" * 8):
            raw = raw.encode("latin-1", errors="replace")
        else:
            return _as_text(raw)
    if isinstance(raw, tuple):  # a few readers hand undefined bytes over as a tuple of ints
        raw = bytes(raw)
    if not isinstance(raw, (bytes, bytearray)):
        return None
    raw = bytes(raw)
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\x00":
        return _as_text(_decode_utf16(body))
    if prefix in (b"ASCII\x00\x00\x00", b"\x00" * 8):
        return _as_text(body)
    if prefix == b"JIS\x00\x00\x00\x00\x00":
        return _as_text(body.decode("shift_jis", errors="replace"))
    return _as_text(raw)


def _decode_utf16(body: bytes) -> str:
    """UTF-16 of either byte order: a BOM decides, else where the zero bytes of ASCII text fall (big-endian default)."""
    if body[:2] == b"\xff\xfe":
        return body[2:].decode("utf-16-le", errors="replace")
    if body[:2] == b"\xfe\xff":
        return body[2:].decode("utf-16-be", errors="replace")
    if len(body) % 2:
        body = body[:-1]
    zeros_even = body[0::2].count(0)
    zeros_odd = body[1::2].count(0)
    return body.decode("utf-16-le" if zeros_odd > zeros_even else "utf-16-be", errors="replace")
