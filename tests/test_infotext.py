"""WebUI infotext: parsing as A1111 does, editing the settings line safely, reading it from image files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from imagereward.errors import ImageInputError
from imagereward.infotext import (
    SCORE_KEY,
    Infotext,
    format_infotext,
    format_score,
    format_settings,
    format_settings_value,
    parse_infotext,
    read_image_infotext,
    read_score,
    with_setting,
)

SETTINGS = "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"
FULL = f"a cat, (cute:1.2)\nNegative prompt: ugly, blurry\n{SETTINGS}"


# --- parsing --------------------------------------------------------------------------------------------------------


def test_parse_full() -> None:
    info = parse_infotext(FULL)
    assert info.prompt == "a cat, (cute:1.2)"
    assert info.negative_prompt == "ugly, blurry"
    assert info.settings == {
        "Steps": "20",
        "Sampler": "Euler a",
        "CFG scale": "7",
        "Seed": "965400086",
        "Size": "512x512",
        "Model hash": "45dee52b",
    }


def test_parse_without_negative_prompt() -> None:
    info = parse_infotext(f"a cat\n{SETTINGS}")
    assert info == Infotext("a cat", "", parse_infotext(FULL).settings)


def test_parse_multiline_prompt_and_negative_prompt() -> None:
    text = f"line one\n  line two  \nline three\nNegative prompt: bad\nworse\n{SETTINGS}"
    info = parse_infotext(text)
    assert info.prompt == "line one\nline two\nline three"
    assert info.negative_prompt == "bad\nworse"
    assert info.settings["Steps"] == "20"


def test_parse_prompt_only() -> None:
    assert parse_infotext("just a prompt") == Infotext("just a prompt", "", {})
    assert parse_infotext("a\nb") == Infotext("a\nb", "", {})
    assert parse_infotext("") == Infotext("", "", {})


def test_last_line_with_fewer_than_three_pairs_is_prompt() -> None:
    text = "a cat\nSteps: 20, Seed: 1"
    info = parse_infotext(text)
    assert info.prompt == "a cat\nSteps: 20, Seed: 1"
    assert info.settings == {}


def test_settings_like_prompt_line_before_real_settings() -> None:
    text = f"style: anime, mood: dark, light: soft\n{SETTINGS}"
    info = parse_infotext(text)
    assert info.prompt == "style: anime, mood: dark, light: soft"
    assert info.settings["Seed"] == "965400086"


def test_lone_settings_like_line_is_read_as_settings_like_the_webui() -> None:
    info = parse_infotext("style: anime, mood: dark, light: soft")
    assert info.prompt == ""
    assert info.settings == {"style": "anime", "mood": "dark", "light": "soft"}


def test_negative_prompt_only_and_crlf() -> None:
    info = parse_infotext(f"\r\nNegative prompt: nope\r\n{SETTINGS}\r\n")
    assert info.prompt == ""
    assert info.negative_prompt == "nope"
    assert info.settings["Size"] == "512x512"


def test_quoted_values_are_unquoted() -> None:
    text = (
        'a cat\nSteps: 20, Lora hashes: "x: 123abc, y: 456def", Prompt: "say \\"hi\\", \\u00e9", '
        'Seed: 1, Bad quote: "unterminated, Size: 512x512'
    )
    settings = parse_infotext(text).settings
    assert settings["Lora hashes"] == "x: 123abc, y: 456def"
    assert settings["Prompt"] == 'say "hi", é'
    assert settings["Seed"] == "1"
    assert settings["Bad quote"] == '"unterminated'
    assert settings["Size"] == "512x512"


def test_duplicate_key_last_wins() -> None:
    assert parse_infotext("p\nA1: 1, B2: 2, A1: 3").settings == {"A1": "3", "B2": "2"}


# --- writing --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Euler a", "Euler a"),
        (20, "20"),
        (0.5, "0.5"),
        ("a, b", '"a, b"'),
        ("x: 1", '"x: 1"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("two\nlines", '"two\\nlines"'),
        ("", '""'),
        (" padded ", '" padded "'),
        ("é, ü", '"é, ü"'),
    ],
)
def test_format_settings_value(value: object, expected: str) -> None:
    assert format_settings_value(value) == expected


@pytest.mark.parametrize(
    "value", ["plain", "a, b", "k: v, k2: v2", 'q"uote', '"already quoted"', "", " x ", "new\nline", "\\"]
)
def test_values_round_trip(value: str) -> None:
    text = with_setting(f"p\n{SETTINGS}", "Extra", value)
    assert parse_infotext(text).settings["Extra"] == value
    assert text.count("\n") == 1


def test_format_infotext_round_trip() -> None:
    info = Infotext(
        "a cat,\nsecond line",
        "blurry\nugly",
        {"Steps": "20", "Lora hashes": "a: 1, b: 2", "Seed": "7", "Template": 'say "hi"', SCORE_KEY: "0.812"},
    )
    text = format_infotext(info)
    assert text.splitlines()[-1].startswith("Steps: 20, Lora hashes: ")
    assert parse_infotext(text) == info
    assert parse_infotext(format_infotext(parse_infotext(FULL))) == parse_infotext(FULL)
    assert format_infotext(parse_infotext(FULL)) == FULL


def test_format_settings_skips_none() -> None:
    assert format_settings({"A1": 1, "B2": None, "C3": "x, y"}) == 'A1: 1, C3: "x, y"'


# --- with_setting ---------------------------------------------------------------------------------------------------


def test_with_setting_adds_at_the_end() -> None:
    text = with_setting(FULL, SCORE_KEY, "0.812")
    assert text == f"{FULL}, ImageReward: 0.812"


def test_with_setting_replaces_in_place() -> None:
    text = 'p\nSteps: 20, ImageReward: 0.100, Lora hashes: "a: 1, b: 2", Seed: 3'
    assert (
        with_setting(text, SCORE_KEY, "0.812") == 'p\nSteps: 20, ImageReward: 0.812, Lora hashes: "a: 1, b: 2", Seed: 3'
    )


def test_with_setting_replaces_quoted_value_and_quotes_new_one() -> None:
    text = 'p\nSteps: 20, Lora hashes: "a: 1, b: 2", Seed: 3'
    out = with_setting(text, "Lora hashes", "c: 3, d: 4")
    assert out == 'p\nSteps: 20, Lora hashes: "c: 3, d: 4", Seed: 3'
    assert parse_infotext(out).settings == {"Steps": "20", "Lora hashes": "c: 3, d: 4", "Seed": "3"}


def test_with_setting_key_inside_a_quoted_value_is_not_touched() -> None:
    text = 'p\nSteps: 20, Note: "ImageReward: 5, ok", Seed: 3'
    out = with_setting(text, SCORE_KEY, "0.5")
    assert out == 'p\nSteps: 20, Note: "ImageReward: 5, ok", Seed: 3, ImageReward: 0.5'
    assert parse_infotext(out).settings["Note"] == "ImageReward: 5, ok"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ImageReward: 0.5, Steps: 20, Seed: 3, Size: 1x1", "Steps: 20, Seed: 3, Size: 1x1"),
        ("Steps: 20, ImageReward: 0.5, Seed: 3, Size: 1x1", "Steps: 20, Seed: 3, Size: 1x1"),
        ("Steps: 20, Seed: 3, Size: 1x1, ImageReward: 0.5", "Steps: 20, Seed: 3, Size: 1x1"),
        ('Steps: 20, L: 1, Hashes: "a: 1, b: 2", ImageReward: 0.5', 'Steps: 20, L: 1, Hashes: "a: 1, b: 2"'),
        ("Steps: 20, Seed: 3, Size: 1x1", "Steps: 20, Seed: 3, Size: 1x1"),
    ],
)
def test_with_setting_removes(line: str, expected: str) -> None:
    assert with_setting(f"prompt\n{line}", SCORE_KEY, None) == f"prompt\n{expected}"


def test_with_setting_removes_and_replaces_duplicates() -> None:
    text = "p\nImageReward: 1, Steps: 20, ImageReward: 2, Seed: 3"
    assert with_setting(text, SCORE_KEY, None) == "p\nSteps: 20, Seed: 3"
    assert with_setting(text, SCORE_KEY, "9") == "p\nImageReward: 9, Steps: 20, Seed: 3"


def test_with_setting_without_settings_line_appends_one() -> None:
    assert with_setting("a cat", SCORE_KEY, "0.5") == "a cat\nImageReward: 0.5"
    assert (
        with_setting("a cat\nNegative prompt: x\n", SCORE_KEY, "0.5") == "a cat\nNegative prompt: x\nImageReward: 0.5\n"
    )
    assert with_setting("", SCORE_KEY, "0.5") == "ImageReward: 0.5"
    assert with_setting("a cat", SCORE_KEY, None) == "a cat"


def test_with_setting_keeps_trailing_whitespace_and_adds_no_lines() -> None:
    text = f"{FULL}\n"
    out = with_setting(text, SCORE_KEY, "0.5")
    assert out == f"{FULL}, ImageReward: 0.5\n"
    assert parse_infotext(out).settings[SCORE_KEY] == "0.5"
    assert parse_infotext(out).prompt == "a cat, (cute:1.2)"


def test_with_setting_after_trailing_comma() -> None:
    assert with_setting("p\nA1: 1, B2: 2, C3: 3,", "D4", "4") == "p\nA1: 1, B2: 2, C3: 3, D4: 4"


def test_with_setting_never_adds_a_line_after_settings() -> None:
    out = with_setting(FULL, "Note", "multi\nline, value")
    assert out.count("\n") == FULL.count("\n")
    assert parse_infotext(out).settings["Note"] == "multi\nline, value"


@pytest.mark.parametrize("key", ["", "x", "Bad:key", "new\nline", " Lead", "Trail ", "a,b"])
def test_with_setting_rejects_unusable_keys(key: str) -> None:
    with pytest.raises(ValueError, match="not usable"):
        with_setting(FULL, key, "1")


# --- scores ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "text"),
    [(0.8123, "0.812"), (-1.2344, "-1.234"), (2.0, "2.000"), (-0.0001, "0.000"), (-0.0, "0.000"), (0.0005, "0.001")],
)
def test_format_score(score: float, text: str) -> None:
    assert format_score(score) == text


def test_read_score() -> None:
    assert read_score(with_setting(FULL, SCORE_KEY, format_score(-1.2344))) == pytest.approx(-1.234)
    assert read_score(FULL) is None
    assert read_score("") is None
    assert read_score(with_setting(FULL, SCORE_KEY, "n/a")) is None
    assert read_score(with_setting(FULL, SCORE_KEY, "nan")) is None
    assert read_score("a cat\nImageReward: 0.5") is None  # one pair is not a settings line
    assert read_score("a cat, ImageReward: 0.5, x\nSteps: 1, Seed: 2, Size: 3") is None  # only the settings line


# --- images ---------------------------------------------------------------------------------------------------------


def _png(tmp_path: Path, **text: str) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    path = tmp_path / "image.png"
    Image.new("RGB", (8, 8), "red").save(path, pnginfo=info)
    return path


def _user_comment_exif(raw: bytes) -> bytes:
    exif = Image.Exif()
    exif[0x8769] = {0x9286: raw}
    return exif.tobytes()


def _saved(fmt: str, path: Path, exif: bytes | None = None) -> Path:
    image = Image.new("RGB", (8, 8), "blue")
    if exif is None:
        image.save(path, fmt)
    else:
        image.save(path, fmt, exif=exif)
    return path


def test_png_parameters(tmp_path: Path) -> None:
    path = _png(tmp_path, parameters=FULL, other="x")
    assert read_image_infotext(path) == FULL
    assert read_image_infotext(str(path)) == FULL
    with Image.open(path) as image:
        assert read_image_infotext(image) == FULL
    assert read_image_infotext(io.BytesIO(path.read_bytes())) == FULL


def test_png_itxt_unicode(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", "ネコ, café\nSteps: 1, Seed: 2, Size: 8x8")
    path = tmp_path / "itxt.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert read_image_infotext(path) == "ネコ, café\nSteps: 1, Seed: 2, Size: 8x8"


def test_png_without_metadata(tmp_path: Path) -> None:
    assert read_image_infotext(_png(tmp_path)) is None
    assert read_image_infotext(_png(tmp_path, other="x")) is None
    assert read_image_infotext(_png(tmp_path, parameters="")) is None


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_user_comment_unicode_as_a1111_writes_it(tmp_path: Path, fmt: str) -> None:
    text = f"ネコ, (cute:1.2)\nNegative prompt: ugly\n{SETTINGS}, ImageReward: 0.812"
    raw = b"UNICODE\x00" + text.encode("utf-16-be")  # helper.UserComment.dump(text, encoding="unicode")
    path = _saved(fmt, tmp_path / f"image.{fmt.lower()}", _user_comment_exif(raw))
    assert read_image_infotext(path) == text
    assert read_score(read_image_infotext(path) or "") == pytest.approx(0.812)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"UNICODE\x00" + "a cat".encode("utf-16-le"), "a cat"),  # little-endian, no BOM
        (b"UNICODE\x00\xff\xfe" + "a cat".encode("utf-16-le"), "a cat"),  # BOM
        (b"UNICODE\x00\xfe\xff" + "a cat".encode("utf-16-be"), "a cat"),
        (b"UNICODE\x00" + "a cat".encode("utf-16-be") + b"\x00\x00", "a cat"),  # NUL terminated
        (b"ASCII\x00\x00\x00a cat", "a cat"),
        (b"\x00" * 8 + b"a cat", "a cat"),
        (b"a cat in utf-8, caf\xc3\xa9", "a cat in utf-8, café"),  # no prefix at all
        (b"UNICODE\x00", None),
        (b"", None),
    ],
)
def test_exif_user_comment_variants(tmp_path: Path, raw: bytes, expected: str | None) -> None:
    path = _saved("JPEG", tmp_path / "variant.jpg", _user_comment_exif(raw))
    assert read_image_infotext(path) == expected


def test_jpeg_without_metadata(tmp_path: Path) -> None:
    assert read_image_infotext(_saved("JPEG", tmp_path / "plain.jpg")) is None
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"  # EXIF present, but no UserComment
    assert read_image_infotext(_saved("JPEG", tmp_path / "exif.jpg", exif.tobytes())) is None


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # Pillow's own, when it opens the JPEG
@pytest.mark.parametrize(
    "exif", [b"Exif\x00\x00garbage", b"Exif\x00\x00MM\x00*\x00\x00\xff\xff", b"\x00" * 40, b"Exif\x00\x00II*\x00\x08"]
)
def test_garbage_exif_reads_as_none(tmp_path: Path, exif: bytes) -> None:
    path = _saved("JPEG", tmp_path / "garbage.jpg", exif)
    try:
        with Image.open(path) as image:
            image.load()
    except Exception:
        pytest.skip("this Pillow cannot open such a file at all (Pillow 9.5 gives up on some broken EXIF)")
    assert read_image_infotext(path) is None


def test_exif_comment_wins_over_png_parameters_like_the_webui(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "from text chunk")
    path = tmp_path / "both.png"
    exif = _user_comment_exif(b"UNICODE\x00" + "from exif".encode("utf-16-be"))
    Image.new("RGB", (8, 8)).save(path, pnginfo=info, exif=exif)
    assert read_image_infotext(path) == "from exif"


def test_gif_comment(tmp_path: Path) -> None:
    path = tmp_path / "image.gif"
    Image.new("P", (8, 8)).save(path, comment=b"a cat\nSteps: 1, Seed: 2, Size: 8x8")
    assert read_image_infotext(path) == "a cat\nSteps: 1, Seed: 2, Size: 8x8"


def test_image_without_info_attribute_values() -> None:
    image = Image.new("RGB", (4, 4))
    assert read_image_infotext(image) is None
    image.info["parameters"] = 12345  # not text
    assert read_image_infotext(image) is None
    image.info["exif"] = "not bytes"
    assert read_image_infotext(image) is None


def test_unreadable_file_raises_image_input_error(tmp_path: Path) -> None:
    path = tmp_path / "not-an-image.png"
    path.write_bytes(b"hello")
    with pytest.raises(ImageInputError, match="not a readable image"):
        read_image_infotext(path)
    with pytest.raises(ImageInputError):
        read_image_infotext(tmp_path / "missing.png")


def test_piexif_written_jpeg(tmp_path: Path) -> None:
    """Exactly what A1111's images.save_image writes, when piexif is around to write it."""
    piexif = pytest.importorskip("piexif")
    helper = pytest.importorskip("piexif.helper")

    text = f"a cat, é\n{SETTINGS}"
    path = _saved("JPEG", tmp_path / "a1111.jpg")
    exif_bytes = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: helper.UserComment.dump(text, encoding="unicode")}})
    piexif.insert(exif_bytes, str(path))
    assert read_image_infotext(path) == text


def test_json_dump_of_quote_matches_parse() -> None:
    # the quoting is plain JSON, so anything JSON can hold survives
    value = 'tab\there, "q", back\\slash, ü'
    assert json.loads(format_settings_value(value)) == value
    assert parse_infotext(with_setting(FULL, "Odd", value)).settings["Odd"] == value
