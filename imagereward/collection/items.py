"""What one image of a collection is, and what the store records about it.

An `Item` is an image as a source lists it, before anything is decoded: where its bytes are (a file, or a member of a
webdataset tar shard at a byte offset), its size and modification time, and its prompt when the source knows it in
advance (``--prompt``, a Parquet column). Its *fingerprint* says whether the stored row still describes the image: the
same image bytes (size, mtime), the same prompt source and the same prompt cleaning. Which scorer and weights made each
score is recorded per score column (`columns`), not in the fingerprint: rows written now pass ``model=""``; rows of
earlier versions folded ImageReward's model id in, and keep it in their ``model`` column, so they are still
recognised (`store.DoneIndex`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

from .columns import SCORE_COLUMNS, WEIGHTS_COLUMNS

#: Values of the store's ``status`` column.
SCORED = "scored"
FAILED = "error"
MOVED = "moved"

#: The store's columns, in order (also the Ray job's output). `key` is unique per image: its path, or
#: ``shard.tar#key`` for a member of a tar shard; the newest row of a key is the one that counts.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("key", "string"),
    ("path", "string"),
    ("path_bytes", "binary"),  # the path's bytes, only when they are not UTF-8 (then `path` shows them escaped)
    ("member", "string"),
    ("size", "int64"),
    ("mtime_ns", "int64"),
    ("sha256", "string"),
    ("prompt", "string"),
    *((column, "float64") for column in SCORE_COLUMNS),  # one per scorer, by its label (see `columns`)
    ("status", "string"),
    ("error", "string"),
    ("moved_to", "string"),
    ("model", "string"),  # null, or the model id an earlier version folded into `fingerprint` (see `fingerprint`)
    ("scorer", "string"),  # the program that wrote the row: "imagereward <version>"
    ("clean_prompt", "bool"),
    ("fingerprint", "int64"),
    ("scored_at", "timestamp_us_utc"),
    *((column, "string") for column in WEIGHTS_COLUMNS),  # what made each score (see `columns`)
)


@dataclass(frozen=True)
class Caption:
    """Where a tar member's caption is: a ``.txt`` member (the whole text) or a ``.json`` member (one field)."""

    offset: int
    size: int
    kind: str  # "txt" or "json"


@dataclass(frozen=True)
class Item:
    key: str
    path: str
    size: int
    mtime_ns: int
    member: str | None = None  # the member's name inside a tar shard
    offset: int | None = None  # where the member's bytes start inside the shard
    prompt: str | None = None  # known before decoding (Parquet input); None: from a caption or the image's infotext
    caption: Caption | None = None
    error: str | None = None  # known while listing (a duplicate key, a member past the end of its shard): not read


def member_label(item: Item) -> str:
    """How messages name an item: ``shard.tar:member`` for a tar member, else its path."""
    return f"{os.path.basename(item.path)}:{item.member}" if item.member is not None else item.path


def as_text(value: str) -> str:
    """Text any UTF-8 writer takes (Arrow, CSV, JSON, a terminal): bytes of a file name that are not UTF-8, which
    Python keeps as lone surrogates, become backslash escapes such as \\xff."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")


def path_bytes(path: str) -> bytes | None:
    """The path's bytes when its text had to be escaped (so the file can still be opened), else None."""
    return None if as_text(path) == path else os.fsencode(path)


def real_path(row: dict[str, Any]) -> str:
    """The path of a store row as the file system knows it."""
    raw = row.get("path_bytes")
    return os.fsdecode(raw) if raw else row["path"]


def key_hash(key: str) -> int:
    """A 64-bit hash of a key (unsigned), for the compact index of what is already scored."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")


def fingerprint(item: Item, fixed_prompt: str | None, model: str, clean: bool) -> int:
    """A signed 64-bit hash of everything that decides an item's score apart from its pixels' identity."""
    prompt = fixed_prompt if fixed_prompt is not None else item.prompt
    text = "\x1f".join(
        (str(item.size), str(item.mtime_ns), "\x00" if prompt is None else "=" + prompt, model, "1" if clean else "0")
    )
    digest = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)
