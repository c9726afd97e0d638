"""The scorers on offer, as a table without torch (the WebUI's infotext and front-end code read it).

Each entry names the model family that computes it (`registry.FAMILY_MODULES`), its infotext key, the range its values
usually fall in (for the threshold slider), and its standardisation for the ensemble with the source of the figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScoreScale:
    """The range a scorer's values usually fall in, for the WebUI's threshold slider and for display."""

    minimum: float
    maximum: float
    step: float
    default_threshold: float
    decimals: int = 3


@dataclass(frozen=True)
class Standardisation:
    """Mean and standard deviation that put a scorer on a common scale for the ensemble, and their source."""

    mean: float
    std: float
    source: str


@dataclass(frozen=True)
class ScorerSpec:
    name: str  # what the user types: "imagereward", "pickscore", ...
    label: str  # what the user reads: "ImageReward", "PickScore", ...
    infotext_key: str  # key in the image's parameters: "ImageReward", "PickScore", ...
    family: str  # ModelFamily.key
    needs_prompt: bool
    scale: ScoreScale
    standardisation: Standardisation
    summary: str  # one line: what it measures
    licence: str = ""
    #: preference accuracy (%) on ImageReward-test / Pick-a-Pic / HPDv2, HPSv3 paper's table (None: not reported)
    published: tuple[float | None, float | None, float | None] = (None, None, None)
    extra: dict[str, str] = field(default_factory=dict)


IMAGEREWARD = ScorerSpec(
    name="imagereward",
    label="ImageReward",
    infotext_key="ImageReward",
    family="",
    needs_prompt=True,
    scale=ScoreScale(-3.0, 3.0, 0.05, 0.0),
    standardisation=Standardisation(
        0.0, 1.0, "built in: the model reports (reward - mean) / std of its training set's rewards (ImageReward paper)"
    ),
    summary="human preference for an image given its prompt (137k expert comparisons)",
    licence="Apache-2.0 (code); model card of THUDM/ImageReward",
    published=(65.1, 61.1, 74.0),
)

# The values below marked "to confirm" are first estimates; each scorer's author replaces them from its reference.
_TO_CONFIRM = Standardisation(0.0, 1.0, "to confirm")

CLIP = ScorerSpec(
    name="clip",
    label="CLIP",
    infotext_key="CLIP score",
    family="openai-clip-vit-l-14",
    needs_prompt=True,
    scale=ScoreScale(0.0, 0.5, 0.005, 0.2),  # to confirm: cosine of text and image embeddings
    standardisation=_TO_CONFIRM,
    summary="how well the image matches the prompt (cosine of OpenAI CLIP ViT-L/14 embeddings)",
    licence="MIT (OpenAI CLIP)",
)

AESTHETIC = ScorerSpec(
    name="aesthetic",
    label="Aesthetic",
    infotext_key="Aesthetic score",
    family="openai-clip-vit-l-14",
    needs_prompt=False,
    scale=ScoreScale(1.0, 10.0, 0.05, 5.0),  # to confirm
    standardisation=_TO_CONFIRM,
    summary="how good the image looks, ignoring the prompt (LAION aesthetic predictor on CLIP ViT-L/14)",
    licence="Apache-2.0 (LAION improved aesthetic predictor); MIT (OpenAI CLIP)",
)

BLIP = ScorerSpec(
    name="blip",
    label="BLIP",
    infotext_key="BLIP score",
    family="blip-large",
    needs_prompt=True,
    scale=ScoreScale(0.0, 1.0, 0.005, 0.4),  # to confirm
    standardisation=_TO_CONFIRM,
    summary="how well the image matches the prompt (cosine of BLIP ViT-L image and text features)",
    licence="BSD-3-Clause (Salesforce BLIP)",
)

PICKSCORE = ScorerSpec(
    name="pickscore",
    label="PickScore",
    infotext_key="PickScore",
    family="pickscore-v1",
    needs_prompt=True,
    scale=ScoreScale(0.0, 30.0, 0.1, 20.0),  # to confirm: logit scale x cosine
    standardisation=_TO_CONFIRM,
    summary="human preference for an image given its prompt (CLIP ViT-H/14 fine-tuned on Pick-a-Pic)",
    licence="MIT (PickScore code); model card of yuvalkirstain/PickScore_v1",
    published=(61.6, 70.5, 79.8),
)

HPSV21 = ScorerSpec(
    name="hpsv2.1",
    label="HPSv2.1",
    infotext_key="HPSv2.1",
    family="hpsv2.1",
    needs_prompt=True,
    scale=ScoreScale(0.0, 0.5, 0.005, 0.25),  # to confirm
    standardisation=_TO_CONFIRM,
    summary="human preference for an image given its prompt (OpenCLIP ViT-H/14 fine-tuned on HPDv2)",
    licence="Apache-2.0 (HPSv2 code and weights)",
    published=(66.8, None, 84.1),
)

SCORERS: dict[str, ScorerSpec] = {spec.name: spec for spec in (IMAGEREWARD, CLIP, AESTHETIC, BLIP, PICKSCORE, HPSV21)}

#: Names accepted beside the canonical ones (compared after lower-casing and removing spaces and underscores).
ALIASES: dict[str, str] = {
    "image-reward": "imagereward",
    "clipscore": "clip",
    "clip-score": "clip",
    "aesthetics": "aesthetic",
    "laion-aesthetic": "aesthetic",
    "blipscore": "blip",
    "blip-score": "blip",
    "pick": "pickscore",
    "pick-score": "pickscore",
    "hpsv2": "hpsv2.1",
    "hps": "hpsv2.1",
    "hpsv21": "hpsv2.1",
    "hps-v2.1": "hpsv2.1",
}

ENSEMBLE = "ensemble"


def canonical_name(name: str) -> str | None:
    """The table's name for what a user typed, or None."""
    key = name.strip().lower().replace("_", "-").replace(" ", "")
    if key in SCORERS or key == ENSEMBLE:
        return key
    return ALIASES.get(key)


def spec_for_infotext_key(key: str) -> ScorerSpec | None:
    for spec in SCORERS.values():
        if spec.infotext_key == key:
            return spec
    return None
