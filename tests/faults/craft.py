"""Hostile and broken inputs, made on the fly: image headers that declare huge sizes, odd checkpoints, a small
full disk. Nothing here is large: a decompression bomb is a few hundred bytes that *claim* a size."""

from __future__ import annotations

import contextlib
import io
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 8-bit RGB pixels, with one compressed row of data.

    Opening it reads only the header; decoding it would allocate width x height x 3 bytes (a 40000 x 40000 one:
    4.8 GB) before finding the data short. A real decompression bomb is the same header with data that inflates.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" + b"\0" * 3 * min(width, 4096), 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    """A real PNG of that size (keep it small)."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def small_tmpfs(folder: Path, size_bytes: int) -> Iterator[Path | None]:
    """A tmpfs of `size_bytes` mounted on `folder`, or None where mounting is not allowed (not root, a container
    without the capability, not Linux): callers skip their tmpfs variant then and keep their stand-in variant."""
    folder.mkdir(parents=True, exist_ok=True)
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        yield None
        return
    size_kib = max(64, size_bytes // 1024)
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)], capture_output=True, check=False
    )
    if done.returncode != 0:
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run([umount, "-l", str(folder)], capture_output=True, check=False)
