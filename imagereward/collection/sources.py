"""Where a collection's images come from, listed lazily (nothing is decoded here).

- `FileSource`: files and folders (``recursive`` for sub-folders), streamed with `os.scandir`, never listed whole;
- `PathListSource`: a text file with one image path a line (relative paths: relative to the list's folder);
- `ShardSource`: webdataset tar shards (paths or globs): members grouped by key (the member name up to the first dot
  of its base name), one image each, the caption from the key's ``.txt`` member or a field of its ``.json`` member;
- `ParquetSource`: a Parquet file with a column of image paths (relative: to the Parquet file's folder) and,
  optionally, a column of prompts.

Each source splits into ``parts`` disjoint partitions (`items(part, parts)`), one per decode worker: by shard for tar
shards, which are read sequentially, and by a hash of the path otherwise (so a folder that changes while it is scored,
as a WebUI's output folder does, never gives one file to two workers).
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from ..errors import ImageRewardError
from . import deps
from .items import Caption, Item, as_text, key_hash

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"})
CAPTION_SUFFIXES = {".txt": "txt", ".json": "json"}


class SourceError(ImageRewardError):
    """An input that cannot be listed: a missing file, an unreadable list, a compressed or broken tar shard."""


class Source(Protocol):
    description: str

    def items(self, part: int = 0, parts: int = 1) -> Iterator[Item]: ...


def _absolute(path: str | os.PathLike[str], base: Path | None = None) -> str:
    p = Path(path).expanduser()
    if base is not None and not p.is_absolute():
        p = base / p
    return os.path.abspath(p)


def _inside(path: str, folders: Sequence[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


# ----------------------------------------------------------------------------------------------------------- files


class FileSource:
    """Image files, and the images inside folders (`recursive`: and their sub-folders), streamed."""

    def __init__(self, paths: Sequence[str], *, recursive: bool = False, exclude: Sequence[str] = ()) -> None:
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise SourceError(f"{missing[0]}: no such file or folder{more}")
        self.paths = [_absolute(p) for p in paths]
        self.recursive = recursive
        self.exclude = [os.path.realpath(e) for e in exclude]
        self.description = ", ".join(paths[:3]) + (" …" if len(paths) > 3 else "")

    def _walk(self, folder: str) -> Iterator[os.DirEntry[str]]:
        if _inside(os.path.realpath(folder), self.exclude):
            return
        try:
            entries = os.scandir(folder)
        except OSError:
            return  # an unreadable sub-folder: nothing to list there
        subfolders: list[str] = []
        with entries:
            for entry in entries:
                try:
                    if entry.is_file():
                        if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                            yield entry
                    elif self.recursive and entry.is_dir(follow_symlinks=False):
                        subfolders.append(entry.path)
                except OSError:
                    continue
        for sub in subfolders:
            yield from self._walk(sub)

    def _paths(self) -> Iterator[str | os.DirEntry[str]]:
        for path in self.paths:
            if os.path.isdir(path):
                yield from self._walk(path)
            else:
                yield path

    def items(self, part: int = 0, parts: int = 1) -> Iterator[Item]:
        for found in self._paths():
            path = found.path if isinstance(found, os.DirEntry) else found
            if parts > 1 and key_hash(path) % parts != part:
                continue  # another worker's: not even stat'ed here
            try:
                st = found.stat() if isinstance(found, os.DirEntry) else os.stat(found)
            except OSError:
                continue  # gone since it was listed
            yield Item(key=as_text(path), path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)


def folder_source(paths: Sequence[str], *, recursive: bool = True, exclude: Sequence[str] = ()) -> FileSource:
    """Files and folders to score (a WebUI output folder: recursive by default)."""
    return FileSource(paths, recursive=recursive, exclude=exclude)


# ------------------------------------------------------------------------------------------------------ path lists


def _stat_items(paths: Iterable[tuple[str, str | None]], part: int, parts: int) -> Iterator[Item]:
    for path, prompt in paths:
        if parts > 1 and key_hash(path) % parts != part:
            continue
        try:
            st = os.stat(path)
        except OSError:
            st = None
        # A missing file is still an item: decoding it records the error, so it is reported and not lost silently.
        yield Item(
            key=as_text(path),
            path=path,
            size=st.st_size if st else -1,
            mtime_ns=st.st_mtime_ns if st else -1,
            prompt=prompt,
        )


class PathListSource:
    """A text file of image paths, one a line (blank lines and lines starting with # are skipped)."""

    def __init__(self, list_file: str) -> None:
        self.file = Path(list_file)
        if not self.file.is_file():
            raise SourceError(f"{list_file}: no such file (a text file with one image path a line)")
        self.description = str(list_file)

    def _paths(self) -> Iterator[tuple[str, str | None]]:
        base = self.file.resolve().parent
        try:
            with open(self.file, encoding="utf-8", errors="surrogateescape") as handle:
                for line in handle:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        yield _absolute(line, base), None
        except OSError as exc:
            raise SourceError(f"{self.file}: cannot read it ({exc.strerror or exc})") from None

    def items(self, part: int = 0, parts: int = 1) -> Iterator[Item]:
        return _stat_items(self._paths(), part, parts)


# -------------------------------------------------------------------------------------------------------- Parquet


class ParquetSource:
    """A Parquet file with image paths and, optionally, prompts."""

    def __init__(self, file: str, *, path_column: str = "path", prompt_column: str | None = "prompt") -> None:
        pq = deps.pyarrow().parquet
        self.file = Path(file)
        if not self.file.is_file():
            raise SourceError(f"{file}: no such file (a Parquet file with a '{path_column}' column)")
        try:
            names = pq.read_schema(self.file).names
        except Exception as exc:
            raise SourceError(f"{file}: not a readable Parquet file ({exc})") from None
        if path_column not in names:
            raise SourceError(f"{file}: has no column '{path_column}' (its columns: {', '.join(names)})")
        self.path_column = path_column
        self.prompt_column = prompt_column if prompt_column in names else None
        self.description = str(file)

    def _rows(self) -> Iterator[tuple[str, str | None]]:
        pq = deps.pyarrow().parquet
        base = self.file.resolve().parent
        columns = [self.path_column] + ([self.prompt_column] if self.prompt_column else [])
        for batch in pq.ParquetFile(self.file).iter_batches(batch_size=4096, columns=columns):
            paths = batch.column(0).to_pylist()
            prompts = batch.column(1).to_pylist() if self.prompt_column else [None] * len(paths)
            for path, prompt in zip(paths, prompts, strict=True):
                if path:
                    yield _absolute(str(path), base), (str(prompt) if prompt is not None else None)

    def items(self, part: int = 0, parts: int = 1) -> Iterator[Item]:
        return _stat_items(self._rows(), part, parts)


# ----------------------------------------------------------------------------------------------------- tar shards


def expand_shards(patterns: Sequence[str]) -> list[str]:
    """Shard paths from paths and globs (``shards/*.tar``, ``data/{00000..00009}.tar`` is not expanded: use a glob)."""
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise SourceError(f"{pattern}: no tar shard matches")
        found.extend(m for m in matches if os.path.isfile(m))
    return list(dict.fromkeys(_absolute(f) for f in found))


def split_member(name: str) -> tuple[str, str]:
    """webdataset's convention: ``dir/000123.jpg`` -> key ``dir/000123``, suffix ``.jpg`` (the first dot of the base
    name starts the suffix, so ``a.seg.png`` has the key ``a``)."""
    folder, _, base = name.rpartition("/")
    stem, dot, rest = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, (dot + rest).lower()


class ShardSource:
    """webdataset tar shards (uncompressed tar, as webdataset and img2dataset write them)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.shards = expand_shards(patterns)
        if not self.shards:
            raise SourceError(f"{', '.join(patterns)}: no tar shards found")
        self.description = f"{len(self.shards)} tar shard(s)"
        #: Messages for shards that could not be read (wholly or from some point on), filled while listing.
        self.problems: list[str] = []

    def items(self, part: int = 0, parts: int = 1) -> Iterator[Item]:
        for i, shard in enumerate(self.shards):
            if i % parts == part:
                try:
                    yield from shard_items(shard)
                except SourceError as exc:  # one broken shard must not stop the others
                    self.problems.append(str(exc))


def shard_items(shard: str) -> Iterator[Item]:
    """One item per key that has an image, with its caption's place when it has one."""
    try:
        mtime_ns = os.stat(shard).st_mtime_ns
        archive = tarfile.open(shard, "r:")  # noqa: SIM115  (closed by the with below)
    except (OSError, tarfile.TarError) as exc:
        raise SourceError(f"{shard}: not a readable uncompressed tar shard ({exc})") from None
    with archive:
        current: str | None = None
        image: tarfile.TarInfo | None = None
        caption: Caption | None = None
        try:
            for member in archive:
                if not member.isfile():
                    continue
                key, suffix = split_member(member.name)
                if key != current:
                    if current is not None and image is not None:
                        yield _shard_item(shard, mtime_ns, current, image, caption)
                    current, image, caption = key, None, None
                ext = os.path.splitext(suffix)[1] if suffix.count(".") > 1 else suffix
                if ext in IMAGE_SUFFIXES and image is None:
                    image = member
                elif suffix in CAPTION_SUFFIXES and (caption is None or suffix == ".txt"):
                    caption = Caption(member.offset_data, member.size, CAPTION_SUFFIXES[suffix])
        except tarfile.TarError as exc:
            raise SourceError(f"{shard}: a broken tar shard ({exc})") from None
        if current is not None and image is not None:
            yield _shard_item(shard, mtime_ns, current, image, caption)


def _shard_item(shard: str, mtime_ns: int, key: str, image: tarfile.TarInfo, caption: Caption | None) -> Item:
    return Item(
        key=f"{as_text(shard)}#{as_text(key)}",
        path=shard,
        size=image.size,
        mtime_ns=mtime_ns,
        member=image.name,
        offset=image.offset_data,
        caption=caption,
    )


def caption_text(raw: bytes, kind: str, field: str) -> str | None:
    """A caption from a ``.txt`` member (the text) or a ``.json`` member (`field`, e.g. img2dataset's "caption")."""
    text = raw.decode("utf-8", errors="replace")
    if kind == "txt":
        return text.strip() or None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    found = value.get(field) if isinstance(value, dict) else None
    return str(found) if found not in (None, "") else None
