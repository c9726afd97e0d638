"""The "ImageReward" section of the WebUI's settings, and reading it into plain settings objects."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..scorers.specs import ENSEMBLE_KEY, SCORERS
from .folders import FolderPolicy, reachable_from_outside, split_folders, webui_output_folders
from .runtime import RuntimeSettings

SECTION = ("imagereward", "ImageReward")

BELOW_THRESHOLD = (
    "keep its best candidate",
    "keep nothing for it (keep the single best of the job when nothing at all passes)",
    "keep nothing",
)


#: Every choice of the accordion's "Scorer" dropdown, by label, in the order shown.
SCORER_LABELS = (*(spec.label for spec in SCORERS.values()), ENSEMBLE_KEY)


@dataclass(frozen=True)
class Option:
    key: str
    default: Any
    label: str
    kind: str = "text"  # text, textbox (several lines), dropdown, slider, checkbox, checkboxes
    choices: tuple[Any, ...] = ()
    minimum: int = 0
    maximum: int = 0


OPTIONS = (
    Option("imagereward_models_dir", "", "Models folder (empty: models/ImageReward in the WebUI folder)"),
    Option("imagereward_device", "auto", "Device for scoring", "dropdown", ("auto", "cuda", "mps", "cpu")),
    Option(
        "imagereward_dtype",
        "auto",
        "Precision (auto: fp16 on GPU, fp32 on CPU; bf16 is less accurate)",
        "dropdown",
        ("auto", "fp16", "fp32", "bf16"),
    ),
    Option(
        "imagereward_batch_size",
        16,
        "Images per scoring pass (halved automatically when memory runs out)",
        "slider",
        minimum=1,
        maximum=256,
    ),
    Option(
        "imagereward_keep_on_gpu",
        True,
        "Keep the model on the GPU between jobs (~1 GB); off: move it to RAM after each job. "
        "Always off with --lowvram/--medvram",
        "checkbox",
    ),
    Option(
        "imagereward_below_threshold",
        BELOW_THRESHOLD[0],
        "Threshold modes, when no candidate of a requested image reaches the threshold",
        "dropdown",
        BELOW_THRESHOLD,
    ),
    Option(
        "imagereward_discarded_dir",
        "",
        "Folder for discarded images, when a job asks to keep them (empty: imagereward-discarded inside the "
        "output folder)",
    ),
    Option("imagereward_show_overlays", True, "Show scores on the gallery's thumbnails", "checkbox"),
    Option(
        "imagereward_scorers",
        list(SCORER_LABELS),
        "Scorers offered in the txt2img/img2img accordion (each downloads its model on first use; reload the UI "
        "to apply). ImageReward is always offered",
        "checkboxes",
        SCORER_LABELS,
    ),
    Option(
        "imagereward_tab_folders",
        "",
        "Folders the ImageReward tab may also use while the WebUI is reachable from other machines (--listen, "
        "--share), besides the WebUI's output folders: one per line or separated by ';'",
        "textbox",
    ),
    Option(
        "imagereward_stores_dir",
        "",
        "Where the ImageReward tab keeps the scores of folders outside the WebUI's output folders (empty: "
        "outputs/imagereward-stores in the WebUI folder); those folders themselves are only read",
    ),
    Option(
        "imagereward_keep_scorers",
        False,
        "Keep a scorer loaded when a job picks another (several models in memory at once); off: one at a time",
        "checkbox",
    ),
)


def register(shared: Any, option_info: type, gradio: Any) -> None:
    """Add the options to `shared.opts` (called from `on_ui_settings`)."""
    for option in OPTIONS:
        component, component_args = None, None
        if option.kind == "dropdown":
            component, component_args = gradio.Dropdown, {"choices": list(option.choices)}
        elif option.kind == "slider":
            component, component_args = gradio.Slider, {"minimum": option.minimum, "maximum": option.maximum, "step": 1}
        elif option.kind == "checkbox":
            component = gradio.Checkbox
        elif option.kind == "checkboxes":
            component, component_args = gradio.CheckboxGroup, {"choices": list(option.choices)}
        elif option.kind == "textbox":
            component, component_args = gradio.Textbox, {"lines": 3}
        shared.opts.add_option(
            option.key,
            option_info(option.default, option.label, component, component_args, section=SECTION),
        )
    protect_folder_options(shared)


#: Our folder settings, protected like the WebUI's own output folders.
FOLDER_OPTIONS = ("imagereward_tab_folders", "imagereward_stores_dir", "imagereward_discarded_dir")


def protect_folder_options(shared: Any) -> None:
    """Put our folder settings among the WebUI's restricted options: with `--hide-ui-dir-config` nobody can change
    them from the page, exactly as the WebUI's own output folders (the list lives in `shared.restricted_opts` in
    older versions, on `opts.restricted_opts` in A1111 1.6 and later)."""
    for holder in (shared, getattr(shared, "opts", None)):
        restricted = getattr(holder, "restricted_opts", None)
        if isinstance(restricted, set):
            restricted.update(FOLDER_OPTIONS)


def get(opts: Any, key: str) -> Any:
    default = next(o.default for o in OPTIONS if o.key == key)
    return getattr(opts, key, default) if opts is not None else default


def models_dir(opts: Any, webui_models_path: str | os.PathLike) -> Path:
    configured = str(get(opts, "imagereward_models_dir") or "").strip()
    return Path(configured).expanduser() if configured else Path(webui_models_path) / "ImageReward"


def runtime_settings(opts: Any, webui_models_path: str | os.PathLike, low_vram: bool) -> RuntimeSettings:
    return RuntimeSettings(
        models_dir=models_dir(opts, webui_models_path),
        device=str(get(opts, "imagereward_device") or "auto"),
        dtype=str(get(opts, "imagereward_dtype") or "auto"),
        batch_size=max(1, int(get(opts, "imagereward_batch_size") or 16)),
        keep_on_device=bool(get(opts, "imagereward_keep_on_gpu")) and not low_vram,
        offload_after_scoring=low_vram,
        keep_other_scorers=bool(get(opts, "imagereward_keep_scorers")) and not low_vram,
    )


def offered_scorers(opts: Any) -> list[str]:
    """The labels the accordion's dropdown offers: the setting's, in the table's order, ImageReward always first."""
    chosen = get(opts, "imagereward_scorers")
    if not isinstance(chosen, (list, tuple)):
        chosen = list(SCORER_LABELS)
    return [label for label in SCORER_LABELS if label in chosen or label == SCORER_LABELS[0]]


def below_threshold_rule(opts: Any) -> tuple[bool, bool]:
    """(keep_best_if_none, per_group) for the selection, from the setting."""
    value = get(opts, "imagereward_below_threshold")
    if value == BELOW_THRESHOLD[1]:
        return True, False
    if value == BELOW_THRESHOLD[2]:
        return False, True
    return True, True


def folder_policy(
    opts: Any, cmd_opts: Any, data_path: str | os.PathLike[str], base: str | os.PathLike[str] = "."
) -> FolderPolicy:
    """The folder tab's rules now (settings can change while the WebUI runs); relative folders are taken from
    `base`, the WebUI's working folder."""
    outputs = webui_output_folders(opts, data_path)
    discarded = str(get(opts, "imagereward_discarded_dir") or "").strip()
    stores = str(get(opts, "imagereward_stores_dir") or "").strip()
    stores = stores or os.path.join(data_path, "outputs", "imagereward-stores")
    return FolderPolicy.make(
        restricted=reachable_from_outside(cmd_opts),
        output_folders=[*outputs, *([discarded] if discarded else [])],
        extra_folders=split_folders(str(get(opts, "imagereward_tab_folders") or "")),
        stores_dir=stores,
        base=base,
    )


def discarded_dir(opts: Any, samples_dir: str) -> str:
    configured = str(get(opts, "imagereward_discarded_dir") or "").strip()
    return configured or os.path.join(samples_dir, "imagereward-discarded")
