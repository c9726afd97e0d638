"""`POST /imagereward/v1/score`: images + prompt(s) -> scores, for API users scoring images they already have.

Memory per request is bounded whatever the payload (measured by `bench/endpoint_memory.py`, see BENCHMARKS.md):

- the body: at most ``MAX_REQUEST_CHARS`` characters of base64 in all, ``MAX_IMAGES`` images;
- each image is checked against `imagereward.limits` (pixels, aspect ratio) from its header, before it is decoded;
- images are decoded one at a time, and each is reduced at once to the 224 x 224 square the model sees (the
  scorer's own preprocessing, so scores are unchanged), so at most one full-size image is in memory at any time;
  only HPSv2.1 (whose letterbox no reduction repeats exactly) and ensembles whose members see images differently
  keep the decoded images, up to ``MAX_WHOLE_PIXELS`` pixels per request.

A request beyond a limit gets a 422 whose message names the limit.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .. import limits
from ..errors import ImageRewardError

ROUTE = "/imagereward/v1/score"
MAX_IMAGES = 1024
#: Base64 characters in all images of one request together (about 75 MiB of image files).
MAX_REQUEST_CHARS = 100 * 1024 * 1024
#: The largest HTTP body worth reading for this route: the images plus generous room for prompts and JSON.
MAX_BODY_BYTES = MAX_REQUEST_CHARS + 8 * 1024 * 1024

#: (prompts, images, clean_prompt, scorer=name, weights=text) -> the ranking scores, or `{name: scores}` per scorer.
ScoreFn = Callable[..., "list[float] | dict[str, list[float]]"]


class ApiError(ImageRewardError):
    """A bad request; the route answers 422 with this message."""


def check_content_length(value: str | None) -> None:
    """For the route, before the body is read: refuse a declared body larger than any valid request."""
    if value is None:
        return
    try:
        size = int(value)
    except ValueError:
        raise ApiError(f"bad Content-Length {value!r}") from None
    if size > MAX_BODY_BYTES:
        raise ApiError(f"the request body has {size:,} bytes, more than the limit of {MAX_BODY_BYTES:,}")


async def read_json_body(request: Any) -> Any:
    """The JSON body of a Starlette/FastAPI request, read with the size limit: refused from its `Content-Length`
    before reading, and while streaming when it has none (or lies). For the route, in place of a parsed `dict`
    parameter, which FastAPI fills by reading and parsing the whole body first, whatever its size."""
    check_content_length(request.headers.get("content-length"))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(f"the request body has more than {MAX_BODY_BYTES:,} bytes, the limit")
        chunks.append(chunk)
    data = b"".join(chunks)
    del chunks
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ApiError(f"the body is not valid JSON: {exc}") from None


@dataclass(frozen=True)
class Reduction:
    """How an image is cut down right after decoding so that scoring it gives the score of the whole image:
    `crop`: the 224 x 224 RGB square of a centre-cropping scorer (with its RGB order and crop rounding); `none`:
    kept whole, under `MAX_WHOLE_PIXELS` for the request: HPSv2.1 (its letterbox resizes float pixels without
    clamping, which no 8-bit or clamped reduction repeats exactly) and ensembles whose members see images
    differently."""

    kind: str = "crop"
    rgb_first: bool = False
    floor_crop: bool = False


#: Pixels of all images of one request together when they must be kept whole (see `Reduction`).
MAX_WHOLE_PIXELS = 256 * 1024 * 1024


def reduction_for(names: Sequence[str]) -> Reduction:
    """The reduction that serves every scorer named (the ranking scorer and an ensemble's members)."""
    from ..scorers.specs import SCORERS

    kinds = {
        ("none", False, False) if SCORERS[n].letterbox else ("crop", SCORERS[n].rgb_first, SCORERS[n].floor_crop)
        for n in names
        if n in SCORERS
    }
    if len(kinds) != 1:
        return Reduction("none")
    kind, rgb_first, floor_crop = kinds.pop()
    return Reduction(kind, rgb_first, floor_crop)


def _reduce(image: Image.Image, reduction: Reduction = Reduction()) -> Any:
    """What the scorer would make of `image` (EXIF orientation, 8-bit scaling, resize, crop, RGB
    conversion where the scorer does it); scoring it gives the same score as scoring `image`."""
    from ..preprocess import load_pil, pil_to_uint8

    image = load_pil(image)
    if reduction.kind == "none":
        return image
    rounding = "floor" if reduction.floor_crop else "round"
    return Image.fromarray(pil_to_uint8(image, rgb_first=reduction.rgb_first, crop_rounding=rounding), "RGB")


def decode_image(data: Any, position: int, reduction: Reduction = Reduction()) -> Any:
    """A base64 string (optionally a data URL) -> the decoded image reduced to what the model sees."""
    if not isinstance(data, str) or not data:
        raise ApiError(f"images[{position}] must be a base64-encoded image string")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(f"images[{position}] is not valid base64: {exc}") from None
    try:
        image = limits.open_image(raw, name=f"images[{position}]")
        del raw
        return _reduce(image, reduction)
    except ImageRewardError as exc:
        raise ApiError(str(exc)) from None


def _check_sizes(images: list[Any]) -> None:
    if len(images) > MAX_IMAGES:
        raise ApiError(f"at most {MAX_IMAGES} images per request, got {len(images)}")
    total = sum(len(item) for item in images if isinstance(item, str))
    if total > MAX_REQUEST_CHARS:
        raise ApiError(
            f"the images hold {total:,} characters of base64 in all, more than the limit of {MAX_REQUEST_CHARS:,} "
            "per request; send them in several requests"
        )


FIELDS = ("prompt", "prompts", "images", "clean_prompt", "scorer", "weights")


def _scorer_choice(payload: Mapping[str, Any]) -> tuple[str, str]:
    from .args import ArgumentError, parse_scorer, parse_weights_arg

    try:
        scorer = parse_scorer(payload.get("scorer", "imagereward"))
        weights = parse_weights_arg(payload.get("weights"))
    except ArgumentError as exc:
        raise ApiError(str(exc).removeprefix("ImageReward: ")) from None
    if weights and scorer != "ensemble":
        raise ApiError('\'weights\' only applies with "scorer": "ensemble"')
    if scorer == "ensemble":
        from ..ensemble import EnsembleError, make_ensemble

        try:
            make_ensemble([scorer], weights)
        except EnsembleError as exc:
            raise ApiError(str(exc)) from None
    return scorer, weights


def _members(scorer: str, weights: str) -> tuple[str, ...]:
    from ..ensemble import make_ensemble
    from ..scorers.specs import ENSEMBLE

    return make_ensemble([scorer], weights).members if scorer == ENSEMBLE else (scorer,)


def _needs_prompt(scorer: str, weights: str) -> bool:
    from ..scorers.specs import SCORERS

    return any(SCORERS[name].needs_prompt for name in _members(scorer, weights))


def score_request(payload: Any, score: ScoreFn) -> dict[str, Any]:
    """Validate the request body and score. Body: {"prompt": str} or {"prompts": [str, ...]} (one per image),
    "images": [base64, ...], optional "clean_prompt": bool (default true), "scorer": a scorer's name (default
    "imagereward"; "aesthetic" needs no prompt), "weights": "name=w,..." with "scorer": "ensemble"."""
    if not isinstance(payload, Mapping):
        raise ApiError("the body must be a JSON object with 'images' and 'prompt' (or 'prompts')")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise ApiError(f"unknown field(s) {unknown}; expected {', '.join(FIELDS)}")
    scorer, weights = _scorer_choice(payload)
    images = payload.get("images")
    if not isinstance(images, list) or not images:
        raise ApiError("'images' must be a non-empty list of base64-encoded images")
    _check_sizes(images)
    if "prompt" not in payload and "prompts" not in payload and not _needs_prompt(scorer, weights):
        payload = {**payload, "prompt": ""}
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
    reduction = reduction_for(_members(scorer, weights))
    decoded = []
    whole = 0
    for i, item in enumerate(images):
        decoded.append(decode_image(item, i, reduction))
        if reduction.kind == "none":
            whole += decoded[-1].width * decoded[-1].height
            if whole > MAX_WHOLE_PIXELS:
                raise ApiError(
                    f"with this scorer the images are kept whole until scored: at most {MAX_WHOLE_PIXELS:,} "
                    "pixels per request in all; send fewer or smaller images per request"
                )
    result = score(prompts, decoded, clean, scorer=scorer, weights=weights)
    table = result if isinstance(result, dict) else {scorer: list(result)}
    answer: dict[str, Any] = {"scores": json_scores(table[scorer]), "scorer": scorer}
    answer["model"] = "ImageReward v1.0" if scorer == "imagereward" else _label(scorer)
    if len(table) > 1:  # the ensemble's members
        answer["members"] = {name: json_scores(values) for name, values in table.items() if name != scorer}
    return answer


def json_scores(values: Sequence[float]) -> list[float | None]:
    """Scores rounded to 6 decimals, with null for one that is not a finite number: NaN and Infinity are not JSON,
    and strict parsers reject the whole answer."""
    return [round(float(v), 6) if v is not None and math.isfinite(v) else None for v in values]


def _label(name: str) -> str:
    from .args import scorer_label

    return scorer_label(name)
