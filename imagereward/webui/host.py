"""What differs between the WebUIs the script runs in, in one place.

AUTOMATIC1111 1.10, Forge, Forge Neo and reForge share one processing loop (`modules/processing.py`'s
`process_images_inner`). SD.Next (vladmandic/sdnext) keeps A1111's script hooks but runs its own loop over a
diffusers pipeline (`modules/processing_diffusers.py`); read from its source, the differences that matter here:

- no `postprocess_image_after_composite`: `postprocess_image` is the last hook that sees each image (after its
  detailer and colour correction; only its optional grading, inpaint overlay and "resize after" come later);
- after an interrupt or skip it does not call the scripts' `postprocess`; its `after_process` callback still runs,
  and `modules.processing.processed` then holds the job's `Processed`;
- the sampling is one diffusers pipeline call: there is no `p.sample` to split into a first pass and the rest;
- its infotext records `Batch: <count>x<size>` (a paste-back field), read while the job runs, when the plan has made
  the batch count N times larger: the kept images' texts get the user's own numbers back;
- a batch cut short by an interrupt or skip never reaches `postprocess_image`: an interrupt replaces it by the live
  preview (`state.current_image`, a preview of the sampling so far, possibly of an earlier batch) or by nothing, and
  `keep_incomplete` only decides whether that preview is saved; a skip leaves it empty;
- its option names: `keep_incomplete` (save interrupted images), `image_metadata` (metadata in files); it has no
  `grid_only_if_multiple` (a grid needs two images) and its `save_image` has no `short_filename`;
- its Control tab runs an installed extension's scripts only when the script's title is in
  `installer.control_extensions`; it is the modern UI's place to generate (txt2img and img2img are "legacy" tabs,
  hidden by default), and its generate action leaves `generation_info_control` empty (the info panel falls back to
  `processing.processed`), so the badges get the job's texts from there too, when its result HTML changes.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

A1111 = "a1111"
SDNEXT = "sdnext"

# The marker module of SD.Next: its diffusers processing (A1111, Forge and reForge have none).
SDNEXT_MARKER = "modules.processing_diffusers"


@dataclass(frozen=True)
class Host:
    """The traits of one WebUI that the script's glue reads."""

    name: str
    label: str
    final_hook: str  # the hook whose `pp.image` is the image the WebUI then saves and shows
    finishes_interrupted: bool  # calls the scripts' `postprocess` after an interrupt or skip
    incomplete_option: str  # the option that saves images cut short by an interrupt
    # True where a batch cut short is replaced (a preview, or nothing) and never post-processed, whatever the
    # incomplete option says; False where that option makes it a batch of finished candidates (A1111).
    replaces_cut_short_batch: bool
    metadata_option: str  # the option that writes the infotext into files
    split_refused: str | None  # why "finish only the kept" cannot work in this WebUI (None: it can)
    batch_setting: str | None = None  # the infotext setting holding "<batch count>x<batch size>"
    # Tabs whose generate action leaves `generation_info_<tab>` empty: tab -> the elem_id of a component that the
    # action updates when it ends (gradio 3.43's Gallery has no change event; the Control tab's result HTML has).
    unfilled_info_tabs: tuple[tuple[str, str], ...] = ()

    def opt(self, opts: Any, name: str, default: Any) -> Any:
        """An option of the WebUI, or `default` where this WebUI has no such option."""
        try:
            return getattr(opts, name)
        except AttributeError:
            return default

    def saves_incomplete(self, opts: Any) -> bool:
        return bool(self.opt(opts, self.incomplete_option, False))

    def writes_metadata(self, opts: Any) -> bool:
        return bool(self.opt(opts, self.metadata_option, True))

    def user_infotext(self, text: str, n_iter: int, batch_size: int) -> str:
        """`text` with the batch numbers the user asked for (the job's plan ran more batches)."""
        if not self.batch_setting or not text:
            return text
        from ..infotext import parse_infotext, with_setting

        if self.batch_setting not in parse_infotext(text).settings:
            return text
        value = f"{n_iter}x{batch_size}" if n_iter > 1 or batch_size > 1 else None
        return with_setting(text, self.batch_setting, value)


A1111_HOST = Host(
    name=A1111,
    label="AUTOMATIC1111",
    final_hook="postprocess_image_after_composite",
    finishes_interrupted=True,
    incomplete_option="save_incomplete_images",
    replaces_cut_short_batch=False,
    metadata_option="enable_pnginfo",
    split_refused=None,
)

SDNEXT_HOST = Host(
    name=SDNEXT,
    label="SD.Next",
    final_hook="postprocess_image",
    finishes_interrupted=False,
    incomplete_option="keep_incomplete",
    replaces_cut_short_batch=True,
    metadata_option="image_metadata",
    split_refused="SD.Next samples with one diffusers pipeline call, which has no first pass to stop after",
    batch_setting="Batch",
    unfilled_info_tabs=(("control", "control-result"),),
)


def _module_present(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that is not a real package (stand-ins)
        return False


def detect() -> Host:
    """The WebUI the script was loaded into."""
    return SDNEXT_HOST if _module_present(SDNEXT_MARKER) else A1111_HOST


def accepted(function: Callable[..., Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """`arguments` less the named ones `function` does not take (SD.Next's `save_image` has no `short_filename`)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return arguments
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return arguments
    return {k: v for k, v in arguments.items() if k in parameters}


def allow_in_control(title: str) -> bool:
    """Put `title` on SD.Next's list of extensions its Control tab runs; False where there is no such list."""
    installer = sys.modules.get("installer")
    allowed = getattr(installer, "control_extensions", None)
    if not isinstance(allowed, list):
        return False
    if title not in allowed:
        allowed.append(title)
    return True
