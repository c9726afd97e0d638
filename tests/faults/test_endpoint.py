"""The score endpoint's request limits: each refusal is a 422 naming the limit, and each image reaches the scorer
already reduced to what the model sees, so a request holds at most one full-size image at a time."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from imagereward.webui import api
from imagereward.webui.api import ApiError, check_content_length, score_request
from tests.faults.craft import png, png_claiming

PROMPT = "a lighthouse at dusk"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def recorder(seen: list):
    def score(prompts, images, clean, **choice):
        seen.extend((image.size, image.mode) for image in images)
        return [0.0] * len(images)

    return score


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (png_claiming(40000, 40000), "decompression bomb"),
        (png_claiming(13000, 13000), "more than the limit of 67,108,864"),
        (png(8000, 1), "aspect ratio beyond the limit of 32:1"),
        (b"", "must be a base64-encoded image string"),
        (b"GIF89a", "not a readable image"),
    ],
    ids=["40000-squared bomb", "13000-squared", "8000x1 strip", "empty", "broken"],
)
def test_hostile_images_get_a_422_naming_the_limit(data: bytes, words: str) -> None:
    body = {"prompt": PROMPT, "images": [b64(png(16, 16)), b64(data)]}
    with pytest.raises(ApiError, match=words) as excinfo:
        score_request(body, recorder([]))
    assert "images[1]" in str(excinfo.value)


def test_too_many_images() -> None:
    with pytest.raises(ApiError, match="at most 1024 images per request, got 1025"):
        score_request({"prompt": PROMPT, "images": ["x"] * 1025}, recorder([]))


def test_too_many_bytes_in_all(monkeypatch) -> None:
    image = b64(png(16, 16))
    monkeypatch.setattr(api, "MAX_REQUEST_CHARS", len(image) * 2 - 1)
    seen: list = []
    with pytest.raises(ApiError, match="more than the limit of"):
        score_request({"prompt": PROMPT, "images": [image, image]}, recorder(seen))
    assert seen == []  # refused before anything was decoded
    score_request({"prompt": PROMPT, "images": [image]}, recorder(seen))


def test_a_declared_body_beyond_the_limit_is_refused_before_reading() -> None:
    check_content_length(None)
    check_content_length(str(api.MAX_BODY_BYTES))
    with pytest.raises(ApiError, match="more than the limit"):
        check_content_length(str(api.MAX_BODY_BYTES + 1))
    with pytest.raises(ApiError, match="bad Content-Length"):
        check_content_length("lots")


def test_images_reach_the_scorer_reduced() -> None:
    """Issue 9.2: every image of a request was decoded at full size before scoring (three 13000-squared PNGs: 3 GB)."""
    seen: list = []
    sizes = [(4000, 3000), (300, 9000), (224, 224), (10, 7)]
    score_request({"prompt": PROMPT, "images": [b64(png(w, h)) for w, h in sizes]}, recorder(seen))
    assert seen == [((224, 224), "RGB")] * len(sizes)


def _encoded(image: Image.Image, fmt: str = "PNG", **options) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return b64(buffer.getvalue())


def test_reducing_first_leaves_the_scores_unchanged(scorer) -> None:
    """The reduction is the scorer's own preprocessing, so the endpoint's scores equal the library's."""
    gradient = Image.linear_gradient("L").resize((300, 200))
    rgba = Image.merge("RGBA", [gradient, gradient.rotate(90), gradient.transpose(Image.FLIP_LEFT_RIGHT), gradient])
    rotated = Image.new("RGB", (320, 240), (200, 40, 40))
    rotated.paste((20, 40, 220), (0, 0, 160, 240))
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees when shown
    samples = [
        (gradient.convert("RGB"), "PNG", {}),
        (rgba, "PNG", {}),
        (gradient.convert("P"), "PNG", {}),
        (rotated, "JPEG", {"exif": exif.tobytes(), "quality": 95}),
        (Image.linear_gradient("L").resize((256, 256)).convert("I;16"), "PNG", {}),
    ]
    encoded = [_encoded(image, fmt, **options) for image, fmt, options in samples]
    direct = scorer.score(PROMPT, [Image.open(io.BytesIO(base64.b64decode(e))) for e in encoded])
    result = score_request(
        {"prompt": PROMPT, "images": encoded},
        lambda prompts, images, clean, **choice: scorer.score(list(prompts), list(images), clean_prompts=clean),
    )
    assert result["scores"] == pytest.approx(direct, abs=1e-5)


def test_mounted_on_fastapi_a_hostile_request_is_a_422() -> None:
    """As the WebUI mounts the route: a dict body, ApiError -> 422 with the message."""
    fastapi = pytest.importorskip("fastapi")
    testclient = pytest.importorskip("fastapi.testclient")

    app = fastapi.FastAPI()

    def endpoint(payload: dict = fastapi.Body(...)) -> dict:  # noqa: B008
        try:
            return score_request(payload, recorder([]))
        except ApiError as exc:
            raise fastapi.HTTPException(status_code=422, detail=str(exc)) from None

    app.add_api_route(api.ROUTE, endpoint, methods=["POST"])
    client = testclient.TestClient(app)
    answer = client.post(api.ROUTE, json={"prompt": PROMPT, "images": [b64(png_claiming(40000, 40000))]})
    assert answer.status_code == 422 and "decompression bomb" in answer.json()["detail"]
    answer = client.post(api.ROUTE, json={"prompt": PROMPT, "images": [b64(png(16, 16))]})
    assert answer.status_code == 200 and answer.json()["scores"] == [0.0]


def test_a_streamed_body_is_read_within_the_limit(monkeypatch) -> None:
    """`read_json_body` for the route: a declared or streamed body over the limit is refused before it is held."""
    fastapi = pytest.importorskip("fastapi")
    testclient = pytest.importorskip("fastapi.testclient")
    monkeypatch.setattr(api, "MAX_BODY_BYTES", 2000)
    app = fastapi.FastAPI()

    async def endpoint(request: fastapi.Request) -> dict:
        try:
            payload = await api.read_json_body(request)
            return score_request(payload, recorder([]))
        except ApiError as exc:
            raise fastapi.HTTPException(status_code=422, detail=str(exc)) from None

    endpoint.__annotations__ = {"request": fastapi.Request, "return": dict}  # (string annotations: a local name)
    app.add_api_route(api.ROUTE, endpoint, methods=["POST"])
    client = testclient.TestClient(app)
    small = {"prompt": PROMPT, "images": [b64(png(4, 4))]}
    assert client.post(api.ROUTE, json=small).json()["scores"] == [0.0]
    answer = client.post(api.ROUTE, json={"prompt": PROMPT, "images": ["A" * 3000]})
    assert answer.status_code == 422 and "more than the limit of 2,000" in answer.json()["detail"]

    def chunks():  # no Content-Length: streamed, counted as it comes
        yield b'{"prompt": "x", "images": ["'
        for _ in range(10):
            yield b"A" * 500
        yield b'"]}'

    answer = client.post(api.ROUTE, content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 422 and "more than 2,000 bytes" in answer.json()["detail"]
    answer = client.post(api.ROUTE, content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 422 and "not valid JSON" in answer.json()["detail"]
