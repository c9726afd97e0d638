from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from imagereward.webui.api import ApiError, score_request


def b64_png(color: tuple[int, int, int] = (255, 0, 0), mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, (8, 6), color if mode == "RGB" else 128).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def recording_scorer(calls: list):
    def score(prompts, images, clean, **choice):
        calls.append((list(prompts), [im.size for im in images], clean))
        return [0.1234567 * (i + 1) for i in range(len(images))]

    return score


def test_one_prompt_for_all_images_and_data_urls() -> None:
    calls: list = []
    body = {"prompt": "a cat", "images": [b64_png(), "data:image/png;base64," + b64_png(mode="L")]}
    result = score_request(body, recording_scorer(calls))
    assert result["scores"] == [0.123457, 0.246913]
    # Each image reaches the scorer already reduced to the 224 x 224 square the model sees (bounded memory).
    assert calls == [(["a cat", "a cat"], [(224, 224), (224, 224)], True)]


def test_one_prompt_per_image_and_no_cleaning() -> None:
    calls: list = []
    score_request(
        {"prompts": ["a", "b"], "images": [b64_png(), b64_png()], "clean_prompt": False}, recording_scorer(calls)
    )
    assert calls[0][0] == ["a", "b"] and calls[0][2] is False


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "must be a JSON object"),
        ({"prompt": "a"}, "'images' must be a non-empty list"),
        ({"images": ["x"]}, "either 'prompt'"),
        ({"prompt": "a", "prompts": ["a"], "images": ["x"]}, "either 'prompt'"),
        ({"prompts": ["a", "b"], "images": [b64_png()]}, "2 prompts for 1 images"),
        ({"prompt": 3, "images": [b64_png()]}, "'prompt' must be a string"),
        ({"prompt": "a", "images": ["!!!notbase64"]}, r"images\[0\]"),
        ({"prompt": "a", "images": [base64.b64encode(b"not an image").decode()]}, r"images\[0\]: not a readable"),
        ({"prompt": "a", "images": [b64_png()], "extra": 1}, "unknown field"),
    ],
)
def test_bad_requests_are_explained(body: object, message: str) -> None:
    with pytest.raises(ApiError, match=message):
        score_request(body, recording_scorer([]))
