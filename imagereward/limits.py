"""Limits on the images we decode, and opening image files within them.

Decoding is where an image costs memory: a 493 KB PNG can declare 13000 x 13000 pixels (0.5 GB once decoded), and an
8000 x 1 PNG of 103 bytes becomes 1.8 million x 224 pixels when its short side is scaled to 224. Both sizes are in
the file's header, so they are checked after `Image.open` (which reads only the header) and before `load()`.

- ``MAX_PIXELS``: 8192 x 8192, four times a 4096 x 4096 upscale; at most 256 MiB decoded (4 bytes per pixel).
- ``MAX_ASPECT``: 32:1 (longer side / shorter side). The model sees the central 224 x 224 square after the short side
  is scaled to 224, so a narrower strip holds almost nothing it scores; the intermediate stays under 7168 x 224.

The same limits apply to the command line, the library (paths, PIL images and tensors) and the WebUI's score
endpoint. PIL's own decompression-bomb check (``Image.MAX_IMAGE_PIXELS``, which the WebUI may switch off) is caught
as well, so a bomb is always a clear `ImageInputError`, never a traceback.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from typing import IO

from PIL import Image, UnidentifiedImageError

from .errors import ImageInputError

MAX_PIXELS = 8192 * 8192
MAX_ASPECT = 32


def describe_limits() -> str:
    return f"at most {MAX_PIXELS:,} pixels (e.g. 8192 x 8192) and an aspect ratio of at most {MAX_ASPECT}:1"


def check_size(width: int, height: int, what: str = "the image") -> None:
    """Raise ImageInputError when a width x height image is beyond the limits (or has no pixels)."""
    if width < 1 or height < 1:
        raise ImageInputError(f"{what} has no pixels (size {width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageInputError(
            f"{what} is {width}x{height} = {width * height:,} pixels, more than the limit of {MAX_PIXELS:,} "
            "(8192 x 8192); scale it down first"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageInputError(
            f"{what} is {width}x{height}, an aspect ratio beyond the limit of {MAX_ASPECT}:1; crop it first "
            "(the model sees only the central square)"
        )


def open_image(source: str | os.PathLike | bytes | IO[bytes], name: str | None = None) -> Image.Image:
    """Open and fully decode an image (a path, bytes or a binary file object) within the limits.

    Raises ImageInputError naming the file (or `name`) for anything that is not a readable image within the limits:
    a missing file, a truncated or unknown format, a decompression bomb, an extreme aspect ratio.
    """
    label = name if name is not None else (os.fsdecode(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit refuses it next
            handle = Image.open(source)
        try:
            check_size(handle.width, handle.height, label)
            handle.load()
            if getattr(handle, "fp", None) is None:
                return handle  # PIL closed the file after decoding: no copy needed (half the peak memory)
            image = handle.copy()  # multi-frame formats keep their file open: keep the first frame only
        finally:
            if getattr(handle, "fp", None) is not None:
                handle.close()
        return image
    except ImageInputError:
        raise
    except FileNotFoundError:
        raise ImageInputError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ImageInputError(f"{label}: is a folder, not an image") from None
    except Image.DecompressionBombError as exc:
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"it declares {int(declared.group(1)):,} pixels" if declared else str(exc)
        raise ImageInputError(
            f"{label}: refused as a decompression bomb ({size}); the limit is {describe_limits()}"
        ) from None
    except MemoryError:
        raise ImageInputError(f"{label}: not enough memory to decode it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error) as exc:
        # (struct.error: some of PIL's plugins let it escape on a truncated header)
        raise ImageInputError(f"{label}: not a readable image ({exc})") from None
