"""The accordion's controls as a table: one row of the table per row of the accordion, each control named after the
`JobArgs` field it sets. `script.py` turns the table into gradio components; the labels, ranges and the defaults (from
`JobArgs`) live here, once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .args import MAX_CANDIDATES, MIN_PREVIEW_PERCENT, JobArgs, scorer_label


@dataclass(frozen=True)
class Control:
    name: str  # the JobArgs field
    kind: str  # dropdown, slider, checkbox, textbox
    label: str
    info: str | None = None
    minimum: float = 0
    maximum: float = 0
    step: float = 1
    placeholder: str | None = None

    def value(self, defaults: JobArgs) -> Any:
        value = getattr(defaults, self.name)
        if self.name == "mode":
            return value.value
        if self.name == "scorer":
            return scorer_label(value)
        return value

    def visible(self, defaults: JobArgs) -> bool:
        return self.name != "weights" or defaults.scorer == "ensemble"


ROWS: tuple[tuple[Control, ...], ...] = (
    (
        Control(
            "mode", "dropdown", "Mode", "Sort and top-k rank the N candidates of each requested image, not the whole "
            "job",
        ),
        Control("candidates", "slider", "Candidates per image (best of N)", minimum=1, maximum=MAX_CANDIDATES),
    ),
    (
        Control("k", "slider", "Keep the k best of each group (top-k modes)", minimum=1, maximum=16),
        Control(
            "threshold", "slider", "Threshold (threshold modes, on the scorer's scale)", minimum=-3.0, maximum=3.0,
            step=0.05,
        ),
    ),
    (
        Control(
            "scorer", "dropdown", "Scorer", "ImageReward, PickScore and HPSv2.1 predict human preference; CLIP and "
            "BLIP prompt agreement; Aesthetic ignores the prompt; Ensemble averages standardised scores",
        ),
        Control(
            "weights", "textbox", "Ensemble members and weights", "name=weight, comma-separated; empty: "
            "imagereward=1,hpsv2.1=1", placeholder="imagereward=1,hpsv2.1=1",
        ),
    ),
    (
        Control("by_prompt", "checkbox", "Rank within groups of the same prompt"),
        Control("clean_prompt", "checkbox", "Clean WebUI prompt syntax before scoring"),
        Control("keep_discarded", "checkbox", "Keep discarded images in a separate folder"),
    ),
    (
        Control(
            "finish_kept", "checkbox", "Finish only the kept candidates", "Candidates get the first pass only; hires "
            "fix, ADetailer, face restoration and saving run for the kept ones",
        ),
        Control(
            "preview_percent", "slider", "Preview steps (% of the steps for the candidates; 100: full steps)",
            "Below 100 the kept seeds are sampled again at full steps: a trade-off, see the README",
            minimum=MIN_PREVIEW_PERCENT, maximum=100, step=5,
        ),
        Control(
            "check_previews", "checkbox", "Check the previews", "Also finish the discarded candidates and report how "
            "well the first scores predicted",
        ),
    ),
)  # fmt: skip
