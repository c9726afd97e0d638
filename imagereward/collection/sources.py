"""Where a collection's images come from, listed lazily (nothing is decoded here).

- `FileSource`: files and folders (``recursive`` for sub-folders), streamed with `os.scandir`, never listed whole;
- `PathListSource`: a text file with one image path a line (relative paths: relative to the list's folder);
- `ShardSource`: webdataset tar shards (paths or globs): members grouped by key (the member name up to the first dot
  of its base name), one image each, the caption from the key's ``.txt`` member or a field of its ``.json`` member;
- `ParquetSource`: a Parquet file with a column of image paths (relative: to the Parquet file's folder) and,
  optionally, a column of prompts.

Tar shards and Parquet lists may be on object storage (``s3://bucket/shards/*.tar``, ``gs://…``, any fsspec URL;
see `storage`): a shard is then read through a seekable file with a large read-ahead, so listing it and reading its
members fetches it once, in big ranges; its items are those of the same shard on disk, keyed by its URL.

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
from . import deps, storage
from .items import Caption, Item, as_text, key_hash

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"})
CAPTION_SUFFIXES = {".txt": "txt", ".json": "json"}


class SourceError(ImageRewardError):
    """An input that cannot be listed: a missing file, an unreadable list, a compressed or broken tar shard."""


class Source(Protocol):
    def items(self, part: int = 0, parts: int = 1) -> Iterator[Item]: ...


def _absolute(path: str | os.PathLike[str], base: Path | str | None = None) -> str:
    if storage.is_url(path):
        return str(path)
    if isinstance(base, str) and storage.is_url(base):  # listed in a file on object storage
        return str(path) if os.path.isabs(path) else storage.join(base, str(path))
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


def stat(path: str) -> tuple[int, int] | None:
    """(size, mtime in ns) of a file or an object by URL; None when it is missing or cannot be asked."""
    if storage.is_url(path):
        try:
            return storage.info(path)
        except storage.StorageError:
            return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _stat_items(paths: Iterable[tuple[str, str | None]], part: int, parts: int) -> Iterator[Item]:
    for path, prompt in paths:
        if parts > 1 and key_hash(path) % parts != part:
            continue
        st = stat(path)
        # A missing file is still an item: decoding it records the error, so it is reported and not lost silently.
        yield Item(
            key=as_text(path),
            path=path,
            size=st[0] if st else -1,
            mtime_ns=st[1] if st else -1,
            prompt=prompt,
        )


class PathListSource:
    """A text file of image paths, one a line (blank lines and lines starting with # are skipped).

    UTF-8 (with or without a byte-order mark; bytes that are not UTF-8 are kept, as file names may hold them), and
    UTF-16 or UTF-32 with a byte-order mark (Windows PowerShell's ``>`` writes UTF-16), or UTF-16 without one when its
    NUL bytes give it away. A line that cannot name a file (a NUL byte, bytes its encoding cannot decode) becomes an
    error row saying which line and why; the other lines are scored.
    """

    def __init__(self, list_file: str) -> None:
        self.file = Path(list_file)
        if not self.file.is_file():
            raise SourceError(f"{list_file}: no such file (a text file with one image path a line)")
        try:
            self.encoding = list_encoding(self.file)
        except OSError as exc:
            raise SourceError(f"{list_file}: cannot read it ({exc.strerror or exc})") from None

    def _paths(self) -> Iterator[tuple[str, str | None, str | None]]:
        base = self.file.resolve().parent
        utf8 = self.encoding == "utf-8-sig"
        try:
            with open(
                self.file, encoding=self.encoding, errors="surrogateescape" if utf8 else _undecodable()
            ) as handle:
                for number, line in enumerate(handle, start=1):
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    problem = path_problem(line, None if utf8 else self.encoding)
                    if problem is None:
                        yield _absolute(line, base), None, None
                    else:
                        yield _absolute(_shown(line), base), None, f"line {number} of {self.file.name}: {problem}"
        except OSError as exc:
            raise SourceError(f"{self.file}: cannot read it ({exc.strerror or exc})") from None

    def items(self, part: int = 0, parts: int = 1) -> Iterator[Item]:
        return _listed_items(self._paths(), part, parts)


# -------------------------------------------------------------------------------------------------------- Parquet


class ParquetSource:
    """A Parquet file with image paths and, optionally, prompts."""

    def __init__(self, file: str, *, path_column: str = "path", prompt_column: str | None = "prompt") -> None:
        deps.pyarrow()  # (a missing pyarrow: one line saying what to install)
        #: A Parquet file on object storage: where it is (else None, and `file` is its local path).
        self.location: storage.Location | None = None
        if storage.is_url(file):
            try:
                self.location = storage.locate(file)
                found = storage.info(file)
            except storage.StorageError as exc:
                raise SourceError(str(exc)) from None
            shown = self.location.shown
            if found is None:
                raise SourceError(f"{shown}: no such object (a Parquet file with a '{path_column}' column)")
            self.file = Path(self.location.path)  # (its name, for messages: no query; read through `location`)
        else:
            self.file = Path(file)
            shown = file
            if not self.file.is_file():
                raise SourceError(f"{file}: no such file (a Parquet file with a '{path_column}' column)")
        try:
            schema = self._parquet().schema_arrow
        except storage.StorageError as exc:
            raise SourceError(str(exc)) from None
        except Exception as exc:
            if self.location is not None and storage.is_access_error(exc):
                raise SourceError(str(storage.explain(exc, shown))) from None
            raise SourceError(f"{shown}: not a readable Parquet file ({storage.scrub(str(exc))})") from None
        file = shown
        names = schema.names
        if path_column not in names:
            raise SourceError(f"{file}: has no column '{path_column}' (its columns: {', '.join(names)})")
        self.path_column = path_column
        self.prompt_column = prompt_column if prompt_column in names else None
        # Checked here, before anything is scored: a column of numbers or bytes would otherwise turn every row into
        # a failed row (paths) or be scored as its digits (prompts), without a word about the column.
        for column, what, option in (
            (path_column, "image paths", "--path-column"),
            (self.prompt_column, "prompts", "--prompt-column"),
        ):
            if column is None:
                continue
            kind = schema.field(column).type
            if not _text_type(kind, allow_null=column == self.prompt_column):
                raise SourceError(
                    f"{file}: column '{column}' holds {kind}, expected text (strings) with the {what}; "
                    f"name another column with {option}"
                )

    def _parquet(self) -> object:
        pq = deps.pyarrow().parquet
        if self.location is None:
            return pq.ParquetFile(self.file)
        return pq.ParquetFile(self.location.path, filesystem=self.location.fs)

    @property
    def base(self) -> str:
        """The folder that relative paths in the file are relative to (a URL for a file on object storage)."""
        if self.location is not None:
            return storage.parent(self.location.url)
        return str(self.file.resolve().parent)

    def _rows(self) -> Iterator[tuple[str, str | None, str | None]]:
        base: str | Path = self.base if self.location is not None else Path(self.base)
        columns = [self.path_column] + ([self.prompt_column] if self.prompt_column else [])
        number = 0
        for batch in self._parquet().iter_batches(batch_size=4096, columns=columns):  # type: ignore[attr-defined]
            paths = batch.column(0).to_pylist()
            prompts = batch.column(1).to_pylist() if self.prompt_column else [None] * len(paths)
            for path, prompt in zip(paths, prompts, strict=True):
                number += 1
                if not path:
                    continue
                text = None if prompt is None else str(prompt)
                problem = path_problem(str(path), None)
                if problem is None:
                    yield _absolute(str(path), base), text, None
                else:
                    yield _absolute(_shown(str(path)), base), text, f"row {number} of {self.file.name}: {problem}"

    def items(self, part: int = 0, parts: int = 1) -> Iterator[Item]:
        return _listed_items(self._rows(), part, parts)


def _listed_items(rows: Iterable[tuple[str, str | None, str | None]], part: int, parts: int) -> Iterator[Item]:
    """Items of (path, prompt, error) rows: stat'ed, or for a row with an error an item carrying it (an error row)."""
    for path, prompt, error in rows:
        if error is None:
            yield from _stat_items([(path, prompt)], part, parts)
        elif parts <= 1 or key_hash(path) % parts == part:
            yield Item(key=as_text(path), path=path, size=-1, mtime_ns=-1, prompt=prompt, error=error)


def list_encoding(file: Path) -> str:
    """The encoding of a list of paths, from its byte-order mark; UTF-16 without one when its first 4 KiB have NUL
    bytes in every other place only (ASCII in UTF-16); else UTF-8 ("utf-8-sig": a UTF-8 mark is skipped)."""
    with open(file, "rb") as handle:
        head = handle.read(4096)
    for mark, encoding in (
        (b"\xff\xfe\x00\x00", "utf-32"),  # (before UTF-16 LE, whose mark it starts with)
        (b"\x00\x00\xfe\xff", "utf-32"),
        (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"),
    ):
        if head.startswith(mark):
            return encoding
    head = head[: len(head) // 2 * 2]
    pairs = len(head) // 2
    odd, even = head[1::2].count(0), head[0::2].count(0)
    if pairs >= 2 and even == 0 and odd * 2 >= pairs:
        return "utf-16-le"
    if pairs >= 2 and odd == 0 and even * 2 >= pairs:
        return "utf-16-be"
    return "utf-8-sig"


_UNDECODABLE = "imagereward.undecodable"


def _undecodable() -> str:
    """An error handler keeping each byte the decoder refuses as a lone surrogate (U+DC00 + the byte), which a correct
    UTF-16 or UTF-32 decoding never gives, so such a line is known to be undecodable (and is shown escaped)."""
    import codecs

    def escape(exc: UnicodeError) -> tuple[str, int]:
        if not isinstance(exc, UnicodeDecodeError):
            raise exc
        return "".join(chr(0xDC00 + b) for b in exc.object[exc.start : exc.end]), exc.end

    try:
        codecs.lookup_error(_UNDECODABLE)
    except LookupError:
        codecs.register_error(_UNDECODABLE, escape)
    return _UNDECODABLE


def path_problem(path: str, encoding: str | None) -> str | None:
    """Why a listed path cannot name a file (None when it can); `encoding`: the list's, when it is not UTF-8."""
    if "\x00" in path:
        return (
            "the path holds a NUL byte (is the list UTF-16 or UTF-32 without a byte-order mark, or NUL-separated? "
            "save it as UTF-8, one path a line)"
        )
    if encoding is not None and any(0xDC00 <= ord(c) <= 0xDCFF for c in path):
        return f"bytes that are not valid {encoding.upper().replace('-LE', '').replace('-BE', '')}"
    try:
        os.fsencode(path)
    except UnicodeError:  # (Windows: bytes that were not UTF-8 cannot make a file name)
        return "bytes that are not valid UTF-8 (save the list as UTF-8)"
    return None


def _shown(path: str) -> str:
    """A path that cannot name a file, as text to show and to key its error row by (NUL and stray bytes escaped)."""
    text = "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC00 <= ord(c) <= 0xDCFF else c for c in path)
    text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _text_type(kind: object, *, allow_null: bool) -> bool:
    pa = deps.pyarrow()
    if pa.types.is_dictionary(kind):
        kind = kind.value_type  # type: ignore[attr-defined]
    text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    is_view = getattr(pa.types, "is_string_view", None)
    return text or bool(is_view and is_view(kind)) or (allow_null and pa.types.is_null(kind))


# ----------------------------------------------------------------------------------------------------- tar shards


def expand_shards(patterns: Sequence[str]) -> list[str]:
    """Shard paths from paths and globs (``shards/*.tar``, ``data/{00000..00009}.tar`` is not expanded: use a glob);
    URLs (``s3://bucket/shards/*.tar``) give the canonical URLs of the objects they match."""
    found: list[str] = []
    for pattern in patterns:
        if storage.is_url(pattern):
            try:
                matches = storage.expand(pattern)
            except storage.StorageError as exc:
                raise SourceError(str(exc)) from None
            if not matches:
                raise SourceError(f"{storage.redact(pattern)}: no tar shard matches")
            found.extend(matches)
            continue
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
            raise SourceError(f"{', '.join(storage.redact(p) for p in patterns)}: no tar shards found")
        # The filesystems of the URLs as given (with any options in them): a decode worker that unpickles this
        # source reads the shards through them.
        self.locations = [storage.locate(p) for p in patterns if storage.is_url(p)]
        #: Messages for shards that could not be read (wholly or from some point on), filled while listing.
        self.problems: list[str] = []

    def items(self, part: int = 0, parts: int = 1) -> Iterator[Item]:
        for i, shard in enumerate(self.shards):
            if i % parts == part:
                try:
                    yield from shard_items(shard)
                except SourceError as exc:  # one broken shard must not stop the others
                    if str(exc) not in self.problems:  # (a source is listed more than once per run)
                        self.problems.append(str(exc))


def shard_items(shard: str) -> Iterator[Item]:
    """One item per key that has an image, with its caption's place when it has one; members are streamed once.

    Odd shards give the same items every time, and nothing is dropped silently:

    - a key's caption is its first ``.txt`` member, else its first ``.json`` member;
    - a key's first image is its item; any other image under that key (``a.jpg`` twice, ``a.jpg`` and ``a.png``, or
      the key again after other keys) becomes an item with an `error` naming that member, under a key of its own
      (``shard.tar#a.png@7``: the member's name and place), so it never replaces the first one's row;
    - a member declaring more bytes than the shard has left (a truncated shard, or a size field that lies) becomes an
      error item naming it and the size it claims, and listing stops there.

    Raises SourceError for a shard that cannot be opened; and, after the last item, for what was wrong with the
    shard as a whole (truncated or corrupt after N members, keys with more than one caption).
    """
    try:
        if storage.is_url(shard):
            found = storage.info(shard)
            if found is None:
                raise SourceError(f"{shard}: no such object")
            shard_size, mtime_ns = found
            handle = storage.shard_reader(shard)  # (shared with the reading of the members: seek first)
            handle.seek(0)
            archive = tarfile.open(fileobj=handle, mode="r:")  # noqa: SIM115  (closed by the with below)
        else:
            st = os.stat(shard)
            shard_size, mtime_ns = st.st_size, st.st_mtime_ns
            archive = tarfile.open(shard, "r:")  # noqa: SIM115  (closed by the with below)
    except storage.StorageError as exc:
        raise SourceError(str(exc)) from None
    except (OSError, tarfile.TarError) as exc:
        raise SourceError(f"{shard}: not a readable uncompressed tar shard ({exc})") from None
    walk = _ShardWalk(shard, mtime_ns)
    complete = 0  # members wholly inside the shard
    ending: str | None = None
    with archive:
        try:
            for member in archive:
                if member.offset_data + member.size > shard_size:
                    yield from walk.past_end(member, shard_size)
                    ending = f"shard {shard} is truncated after {complete} members ({walk.cut})"
                    break
                complete += 1
                if member.isfile():
                    yield from walk.add(member)
            else:
                ending = _tar_ending(archive, shard, complete)
        except tarfile.TarError as exc:
            yield from walk.flush()
            if archive.offset > shard_size:  # (tarfile's "unexpected end of data": cut in a member's padding)
                raise SourceError(f"shard {shard} is truncated after {complete} members ({exc})") from None
            raise SourceError(f"shard {shard} is broken after {complete} members ({exc})") from None
        except storage.StorageError as exc:  # (the network failed mid-shard: the next run goes on from here)
            yield from walk.flush()
            raise SourceError(f"shard {shard}: read stopped after {complete} members ({exc})") from None
        yield from walk.flush()
    notes = [ending] if ending else []
    if walk.extra_captions:
        first = walk.extra_captions[0]
        notes.append(
            f"{shard}: {len(walk.extra_captions)} key(s) have more than one .txt or .json caption (first: {first}); "
            "each key's first is used"
        )
    if notes:
        raise SourceError("; ".join(notes))


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
    """A caption from a ``.txt`` member (the text) or a ``.json`` member (`field`, e.g. img2dataset's "caption").

    A JSON value that is a list of texts (several captions of one image) gives its first non-empty one; a value that
    is not text (an object, a list of objects) raises ImageRewardError saying so, as does a member that is not JSON.
    """
    text = raw.decode("utf-8", errors="replace")
    if kind == "txt":
        return text.strip() or None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ImageRewardError(f"its .json caption is not valid JSON ({exc})") from None
    found = value.get(field) if isinstance(value, dict) else value
    where = f"the {field!r} field of its .json caption" if isinstance(value, dict) else "its .json caption"
    if found is None or found == "":
        return None
    if isinstance(found, str):
        return found
    if isinstance(found, (int, float)) and not isinstance(found, bool):
        return str(found)
    if isinstance(found, list) and all(isinstance(v, str) for v in found):
        return next((v for v in found if v.strip()), None)
    kind_of = "a list of " + ", ".join(sorted({type(v).__name__ for v in found})) if isinstance(found, list) else None
    raise ImageRewardError(f"{where} is {kind_of or _JSON_KINDS.get(type(found), type(found).__name__)}, not text")


_JSON_KINDS = {dict: "an object", bool: "true or false", list: "a list"}


class _ShardWalk:
    """Groups a shard's members by key as they stream by (see `shard_items`)."""

    def __init__(self, shard: str, mtime_ns: int) -> None:
        self.shard, self.mtime_ns, self.name = shard, mtime_ns, os.path.basename(shard)
        self.ordinal = 0  # the place of the member being added, from 1
        self.seen: dict[str, str | None] = {}  # keys already grouped -> their image member's name
        self.key: str | None = None
        self.image: tarfile.TarInfo | None = None
        self.captions: dict[str, tarfile.TarInfo] = {}  # "txt"/"json" -> the first such member
        self.extra: list[tuple[int, tarfile.TarInfo]] = []  # (place, member): further images of the key
        self.extra_captions: list[str] = []  # keys with a second caption of a kind
        self.cut = ""  # what ended the shard early

    def add(self, member: tarfile.TarInfo) -> Iterator[Item]:
        self.ordinal += 1
        key, suffix = split_member(member.name)
        if key != self.key:
            yield from self.flush()
            self.key = key
        ext = os.path.splitext(suffix)[1] if suffix.count(".") > 1 else suffix
        if ext in IMAGE_SUFFIXES:
            if self.image is None and key not in self.seen:
                self.image = member
            else:
                self.extra.append((self.ordinal, member))
        elif suffix in CAPTION_SUFFIXES:
            kind = CAPTION_SUFFIXES[suffix]
            if kind in self.captions or key in self.seen:
                self.extra_captions.append(repr(as_text(key)))
            else:
                self.captions[kind] = member

    def flush(self) -> Iterator[Item]:
        key = self.key
        if key is None:
            return
        first = self.seen.get(key, self.image.name if self.image is not None else None)
        if self.image is not None:
            caption = self.captions.get("txt") or self.captions.get("json")
            yield _shard_item(self.shard, self.mtime_ns, key, self.image, _caption(caption))
        for place, member in self.extra:
            scored = f"{first} is the one scored" if first is not None else "none of them is scored"
            again = "" if key not in self.seen else " (the key appears again after other keys)"
            yield self._error(
                member, place, f"{self.name}:{member.name}: duplicate key {as_text(key)!r}{again}; {scored}"
            )
        self.seen.setdefault(key, first)
        self.key, self.image, self.captions, self.extra = None, None, {}, []

    def past_end(self, member: tarfile.TarInfo, shard_size: int) -> Iterator[Item]:
        """The member declaring more bytes than are left: its key's item becomes an error naming it; the rest of the
        shard cannot be found."""
        self.ordinal += 1
        left = max(0, shard_size - member.offset_data)
        self.cut = (
            f"{self.name}:{member.name} declares {member.size:,} bytes ({_human(member.size)}), "
            f"but only {left:,} are left in the shard"
        )
        key, suffix = split_member(member.name)
        if key != self.key:
            yield from self.flush()
            self.key = key
        ext = os.path.splitext(suffix)[1] if suffix.count(".") > 1 else suffix
        image = self.image if self.image is not None else (member if ext in IMAGE_SUFFIXES else None)
        if image is not None and key not in self.seen:
            yield Item(
                key=f"{as_text(self.shard)}#{as_text(key)}",
                path=self.shard,
                size=member.size if image is member else image.size,
                mtime_ns=self.mtime_ns,
                member=image.name,
                offset=image.offset_data,
                error=self.cut,
            )
            self.seen[key] = image.name
            self.image = None
        elif image is member:
            yield self._error(member, self.ordinal, self.cut)
        yield from self.flush()

    def _error(self, member: tarfile.TarInfo, place: int, message: str) -> Item:
        return Item(
            key=f"{as_text(self.shard)}#{as_text(member.name)}@{place}",
            path=self.shard,
            size=member.size,
            mtime_ns=self.mtime_ns,
            member=member.name,
            offset=member.offset_data,
            error=message,
        )


def _caption(member: tarfile.TarInfo | None) -> Caption | None:
    if member is None:
        return None
    _, suffix = split_member(member.name)
    return Caption(member.offset_data, member.size, CAPTION_SUFFIXES[suffix])


def _tar_ending(archive: tarfile.TarFile, shard: str, complete: int) -> str | None:
    """None when the members end at a tar end-of-archive block; else what is wrong (truncated or corrupt there)."""
    handle = archive.fileobj
    if handle is None:
        return None
    handle.seek(archive.offset)
    block = handle.read(tarfile.BLOCKSIZE)
    if len(block) == tarfile.BLOCKSIZE and block.count(0) == tarfile.BLOCKSIZE:
        return None
    if len(block) < tarfile.BLOCKSIZE:
        return f"shard {shard} is truncated after {complete} members (it ends without tar's end-of-archive block)"
    return f"shard {shard} is corrupt after {complete} members (no tar header at byte {archive.offset:,})"


def _human(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value, shown = float(size), "bytes"
    for name in ("KiB", "MiB", "GiB"):
        value, shown = value / 1024, name
        if value < 1024:
            break
    return f"{value:.1f} {shown}"
