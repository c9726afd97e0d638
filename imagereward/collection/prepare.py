"""Decoding one item into the models' input, in a worker process: bytes -> prompt and pixels, one decode per image.

From that one decode, each pixel layout the run's models read (`scoring.Geometry`: ImageReward's 224 crop as uint8,
a quarter of the size of the normalised floats; HPSv2.1's letterbox as float32) is made with the same calls as the
file path, so the scores are those of the file path (the tests check this). Per-item problems (unreadable image, no
prompt) become the item's error and never stop a run.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

from ..errors import ImageRewardError
from ..infotext import parse_infotext, read_image_infotext
from ..limits import open_image
from ..preprocess import apply_exif_orientation
from . import storage
from .items import Item, member_label
from .scoring import DEFAULT_GEOMETRIES, Geometry
from .sources import caption_text

NO_PROMPT = "no prompt: the image has no WebUI generation parameters and no caption; pass --prompt"


@dataclass
class Prepared:
    item: Item
    pixels: tuple[np.ndarray | None, ...] | None  # one array per `ReadOptions.geometries` (None: not wanted); error
    prompt: str | None
    sha256: str | None
    error: str | None


@dataclass
class ReadOptions:
    fixed_prompt: str | None = None
    caption_field: str = "caption"
    exif_orientation: bool = True
    hash_files: bool = False
    geometries: tuple[Geometry, ...] = DEFAULT_GEOMETRIES  # the pixel layouts the run's models read
    needs_prompt: bool = True  # False: no scorer of the run reads one (aesthetic), so none is required


class ItemReader:
    """Reads items' bytes; keeps the last tar shard open, as a worker reads its shards member after member."""

    def __init__(self, options: ReadOptions) -> None:
        self.options = options
        self._shard_path: str | None = None
        self._shard = None

    def close(self) -> None:
        if self._shard is not None:
            self._shard.close()
        self._shard, self._shard_path = None, None

    def _read_at(self, path: str, offset: int, size: int) -> bytes:
        if storage.is_url(path):  # (through the reader the shard's listing uses: fetched once, in large ranges)
            try:
                data = storage.read_range(path, offset, size)
            except storage.StorageError as exc:
                raise ImageRewardError(str(exc)) from None
            if len(data) != size:
                raise ImageRewardError(f"{path}: truncated tar shard")
            return data
        if self._shard_path != path:
            self.close()
            self._shard = open(path, "rb")  # noqa: SIM115  (kept open across items; closed by close())
            self._shard_path = path
        self._shard.seek(offset)
        data = self._shard.read(size)
        if len(data) != size:
            raise ImageRewardError(f"{path}: truncated tar shard")
        return data

    def raw(self, item: Item) -> bytes:
        if item.offset is None and storage.is_url(item.path):
            try:
                return storage.read_all(item.path)
            except FileNotFoundError:
                raise ImageRewardError("no such object") from None
            except storage.StorageError as exc:
                raise ImageRewardError(str(exc)) from None
        if item.offset is None:
            try:
                with open(item.path, "rb") as handle:
                    return handle.read()
            except FileNotFoundError:
                raise ImageRewardError("no such file") from None
            except OSError as exc:
                raise ImageRewardError(f"cannot read it ({exc.strerror or exc})") from None
        return self._read_at(item.path, item.offset, item.size)

    def prepare(self, item: Item, wanted: frozenset[int] | None = None) -> Prepared:
        if item.error is not None:  # found while listing (a duplicate key, a member past the shard's end)
            return Prepared(item, None, None, None, item.error)
        try:
            data = self.raw(item)
            caption = None
            if item.caption is not None:
                caption = self._read_at(item.path, item.caption.offset, item.caption.size)
        except ImageRewardError as exc:
            return Prepared(item, None, None, None, _message(exc, item))
        return prepare_data(item, data, caption, self.options, wanted)


def _message(exc: Exception, item: Item) -> str:
    message = str(exc)
    for prefix in (f"{item.member}: ", f"{item.path}: "):
        message = message.removeprefix(prefix)
    return message


def prepare_data(
    item: Item, data: bytes, caption: bytes | None, options: ReadOptions, wanted: frozenset[int] | None = None
) -> Prepared:
    """The item's prompt and pixels from its bytes (and its caption member's bytes, for a tar member): the layouts
    numbered in `wanted` (default: every one of `options.geometries`)."""
    digest = hashlib.sha256(data).hexdigest() if options.hash_files else None
    stream = io.BytesIO(data)
    try:
        image = open_image(stream, name=item.member or item.path)
        prompt = options.fixed_prompt if options.fixed_prompt is not None else item.prompt
        if prompt is None and caption is not None and item.caption is not None:
            prompt = caption_text(caption, item.caption.kind, options.caption_field)
        if prompt is None and item.member is None:
            text = read_image_infotext(image)
            prompt = parse_infotext(text).prompt if text else None
        if prompt is None and options.needs_prompt:
            return Prepared(item, None, None, digest, NO_PROMPT)
        if options.exif_orientation:
            image = apply_exif_orientation(image)
        pixels = tuple(
            geometry.make(image) if wanted is None or i in wanted else None
            for i, geometry in enumerate(options.geometries)
        )
    except ImageRewardError as exc:  # (PIL names an in-memory image by its object: name the member or file)
        return Prepared(item, None, None, digest, _message(exc, item).replace(repr(stream), repr(member_label(item))))
    return Prepared(item, pixels, prompt, digest, None)
