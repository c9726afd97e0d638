"""Stealth infotext: WebUI generation parameters hidden in the lowest bit of each alpha value.

reForge writes it into every PNG and WebP it saves unless its setting "Stealth infotext mode" has been saved as
"None": until the settings are first applied, the setting is missing from config.json and reads as "Alpha". The
image is made opaque (alpha 255), then the bits of a signature, a length and the parameters are written into the
alpha values column by column, leaving 254 wherever a bit is 0. To the eye the image is opaque, as it was when
the WebUI scored it; PIL's RGBA resize, though, premultiplies the colour by those 254s, which moved the score of a
64x64 image by up to 2.7e-3 on the test checkpoint. An alpha channel that only carries these bits is therefore not
transparency, and the image is scored by its colour channels.

The "RGB" mode of the same setting writes into the colour values themselves: those pixels are changed for good, and
a re-score reads them as saved.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: The signatures that open an alpha-channel payload: plain text, and gzip-compressed text.
ALPHA_SIGNATURES = (b"stealth_pnginfo", b"stealth_pngcomp")
_SIGNATURE_BITS = 8 * len(ALPHA_SIGNATURES[0])
#: The lowest alpha value such an image holds: 255 with its lowest bit cleared.
_OPAQUE = 254


def alpha_carries_infotext(alpha: np.ndarray) -> bool:
    """Whether an (H, W) uint8 alpha channel is opaque apart from its lowest bits, which open with a stealth
    infotext signature (read column by column, top to bottom, as it is written)."""
    if alpha.dtype != np.uint8 or alpha.ndim != 2 or alpha.size < _SIGNATURE_BITS:
        return False
    return _opens_with_signature(alpha[:, : _signature_columns(alpha.shape[0])]) and int(alpha.min()) >= _OPAQUE


def image_carries_infotext(image: Image.Image) -> bool:
    """Whether a PIL image is RGBA with stealth infotext in its alpha channel (see `alpha_carries_infotext`).
    The signature is read from the first columns only, so an image without it costs next to nothing."""
    if image.mode != "RGBA" or image.width * image.height < _SIGNATURE_BITS:
        return False
    head = image.crop((0, 0, min(_signature_columns(image.height), image.width), image.height)).getchannel("A")
    return _opens_with_signature(np.asarray(head)) and int(np.asarray(image.getchannel("A")).min()) >= _OPAQUE


def _signature_columns(height: int) -> int:
    return -(-_SIGNATURE_BITS // height)


def _opens_with_signature(columns: np.ndarray) -> bool:
    bits = columns.T.reshape(-1)[:_SIGNATURE_BITS] & 1
    return len(bits) == _SIGNATURE_BITS and np.packbits(bits).tobytes() in ALPHA_SIGNATURES
