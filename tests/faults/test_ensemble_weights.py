"""Ensemble weights that overflow were accepted, and the endpoint answered 200 with `"scores": [NaN]`, which strict
JSON parsers reject. Weights are bounded, the mean cannot overflow, and no answer carries NaN or Infinity."""

from __future__ import annotations

import base64
import io
import json
import math

import pytest
from PIL import Image

from imagereward.ensemble import EnsembleError, make_ensemble, parse_weights
from imagereward.webui.api import ApiError, score_request


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("text", ["imagereward=1e308,hpsv2.1=1e308", "imagereward=2e6", "imagereward=-1"])
def test_weights_beyond_the_bound_are_refused(text: str) -> None:
    with pytest.raises(EnsembleError, match="must be a finite number >= 0 and at most 1,000,000"):
        parse_weights(text)


def test_the_endpoint_refuses_overflowing_weights_with_a_422_sentence() -> None:
    body = {"scorer": "ensemble", "weights": "imagereward=1e308,hpsv2.1=1e308", "prompt": "a", "images": [_png()]}
    with pytest.raises(ApiError, match="at most 1,000,000"):
        score_request(body, lambda *a, **k: pytest.fail("scored despite the bad weights"))


def test_the_largest_weights_give_a_finite_mean() -> None:
    ensemble = make_ensemble(["ensemble"], "imagereward=1e6,hpsv2.1=1e6")
    (value,) = ensemble.combine({"imagereward": [1.0], "hpsv2.1": [0.3]})
    assert math.isfinite(value)
    lopsided = make_ensemble(["ensemble"], "imagereward=1e6,hpsv2.1=0")
    assert lopsided.combine({"imagereward": [1.5], "hpsv2.1": [math.nan]})[0] == pytest.approx(
        make_ensemble(["ensemble"], "imagereward=1").combine({"imagereward": [1.5]})[0]
    )  # a member weighted 0 does not make the mean NaN


def test_no_nan_or_infinity_in_the_answer() -> None:
    def score(prompts, images, clean, **choice):
        return {"ensemble": [math.nan, math.inf, 0.25], "imagereward": [math.nan, 1.0, -math.inf]}

    answer = score_request({"prompt": "a", "images": [_png()] * 3, "scorer": "ensemble"}, score)
    assert answer["scores"] == [None, None, 0.25]
    assert answer["members"]["imagereward"] == [None, 1.0, None]
    json.dumps(answer, allow_nan=False)  # strict JSON
