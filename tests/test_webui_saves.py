"""The record of a deferred save must not change when a later hook draws on the image object the WebUI saved."""

from __future__ import annotations

from PIL import Image, ImageDraw

from imagereward.webui.saves import SaveBuffer


def test_a_hook_drawing_on_the_saved_object_after_save_image_changes_nothing_recorded() -> None:
    buffer = SaveBuffer()
    image = Image.new("RGB", (16, 16), "white")
    buffer.record({"image": image, "path": "outputs", "suffix": ""}, iteration=0, batch_index=0, batch_size=1)
    # A later hook (an overlay, a watermark extension, the WebUI's own colour correction) draws on the same object
    # after save_image returned.
    ImageDraw.Draw(image).rectangle((0, 0, 15, 15), fill="red")
    [saved] = buffer.of(0)
    assert saved.arguments["image"].getpixel((8, 8)) == (255, 255, 255)  # what save_image was given, as it was
    assert saved.arguments["image"] is not image


def test_arguments_without_an_image_are_recorded_as_given() -> None:
    buffer = SaveBuffer()
    buffer.record({"image": None, "path": "outputs", "suffix": "-mask"}, iteration=1, batch_index=1, batch_size=2)
    [saved] = buffer.of(3)
    assert saved.arguments == {"image": None, "path": "outputs", "suffix": "-mask"} and not saved.is_final
