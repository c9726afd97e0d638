"""`POST /imagereward/v1/score`: images + prompt(s) -> scores, for API users scoring images they already have."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..errors import ImageRewardError

ROUTE = "/imagereward/v1/score"
MAX_IMAGES = 1024

ScoreFn = Callable[[Sequence[str], Sequence[Image.Image], bool], list[float]]


class ApiError(ImageRewardError):
    """A bad request; the route answers 422 with this message."""


def decode_image(data: Any, position: int) -> Image.Image:
    """A base64 string (optionally a data URL) -> a decoded PIL image."""
    if not isinstance(data, str) or not data:
        raise ApiError(f"images[{position}] must be a base64-encoded image string")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=False)
        with Image.open(io.BytesIO(raw)) as handle:
            handle.load()
            return handle.copy()
    except (binascii.Error, ValueError) as exc:
        raise ApiError(f"images[{position}] is not valid base64: {exc}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ApiError(f"images[{position}] is not a readable image: {exc}") from None


def score_request(payload: Any, score: ScoreFn) -> dict[str, Any]:
    """Validate the request body and score. Body: {"prompt": str} or {"prompts": [str, ...]} (one per image),
    "images": [base64, ...], optional "clean_prompt": bool (default true)."""
    if not isinstance(payload, Mapping):
        raise ApiError("the body must be a JSON object with 'images' and 'prompt' (or 'prompts')")
    unknown = sorted(set(payload) - {"prompt", "prompts", "images", "clean_prompt"})
    if unknown:
        raise ApiError(f"unknown field(s) {unknown}; expected images, prompt or prompts, clean_prompt")
    images = payload.get("images")
    if not isinstance(images, list) or not images:
        raise ApiError("'images' must be a non-empty list of base64-encoded images")
    if len(images) > MAX_IMAGES:
        raise ApiError(f"at most {MAX_IMAGES} images per request, got {len(images)}")
    if ("prompt" in payload) == ("prompts" in payload):
        raise ApiError("give either 'prompt' (one for all images) or 'prompts' (one per image)")
    if "prompt" in payload:
        if not isinstance(payload["prompt"], str):
            raise ApiError("'prompt' must be a string")
        prompts = [payload["prompt"]] * len(images)
    else:
        prompts = payload["prompts"]
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ApiError("'prompts' must be a list of strings")
        if len(prompts) != len(images):
            raise ApiError(f"{len(prompts)} prompts for {len(images)} images: give one prompt per image")
    clean = payload.get("clean_prompt", True)
    if not isinstance(clean, bool):
        raise ApiError("'clean_prompt' must be true or false")
    decoded = [decode_image(item, i) for i, item in enumerate(images)]
    scores = score(prompts, decoded, clean)
    return {"scores": [round(s, 6) for s in scores], "model": "ImageReward v1.0"}
