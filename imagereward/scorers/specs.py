"""The scorers on offer, as a table without torch (the WebUI's infotext and front-end code read it).

Each entry names the model family that computes it (`registry.FAMILY_MODULES`), its infotext key, the range its values
usually fall in (for the threshold slider), and its standardisation for the ensemble with the source of the figures.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreScale:
    """The range a scorer's values usually fall in, for the WebUI's threshold slider and for display."""

    minimum: float
    maximum: float
    step: float
    default_threshold: float
    decimals: int = 3
    #: the badge colour goes from red at the first value to green at the second (a display choice: the values
    #: bracket what the scorer usually gives generated images)
    colours: tuple[float, float] = (-2.0, 2.0)


@dataclass(frozen=True)
class Standardisation:
    """Mean and standard deviation that put a scorer on a common scale for the ensemble, and their source.
    None where no published figure exists: such a scorer cannot join the ensemble (see `ensemble.py`)."""

    mean: float | None
    std: float | None
    source: str
    approximate: bool = False  # derived from published aggregates rather than per-image scores

    @property
    def known(self) -> bool:
        return self.mean is not None and self.std is not None and self.std > 0


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
    #: the model converts images to RGB before resizing (transformers' CLIP processor) rather than after the crop
    rgb_first: bool = False
    #: the model sees the whole image shrunk into a black-bordered square (HPSv2's letterbox), not a centre crop
    letterbox: bool = False
    #: the model's crop is placed at (side - size) // 2 (transformers) rather than rounded (torchvision)
    floor_crop: bool = False
    #: preference accuracy (%) on ImageReward-test / Pick-a-Pic / HPDv2, HPSv3 paper's table (None: not reported)
    published: tuple[float | None, float | None, float | None] = (None, None, None)


IMAGEREWARD = ScorerSpec(
    name="imagereward",
    label="ImageReward",
    infotext_key="ImageReward",
    family="",
    needs_prompt=True,
    scale=ScoreScale(-3.0, 3.0, 0.05, 0.0, colours=(-2.0, 2.0)),
    standardisation=Standardisation(
        0.0,
        1.0,
        "built in: the model already reports (reward - 0.1672) / 1.0333, the mean and std of its rewards on the "
        "ImageReward test set (THUDM/ImageReward, ImageReward.py; the authors in its issue #7)",
    ),
    summary="human preference for an image given its prompt (137k expert comparisons)",
    licence="Apache-2.0 (code); model card of THUDM/ImageReward",
    published=(65.1, 61.1, 74.0),  # HPSv3 paper's table; the ImageReward paper: 65.14 on its test set
)

CLIP = ScorerSpec(
    name="clip",
    label="CLIP",
    infotext_key="CLIP score",
    family="openai-clip-vit-l-14",
    needs_prompt=True,
    # A cosine; with ViT-L/14 a generated image and its own prompt give 0.16..0.36 (mean +- 2 std of the benchmark
    # below), an unrelated prompt about 0.1; 0.2 keeps all but clear mismatches.
    scale=ScoreScale(0.0, 0.5, 0.005, 0.2, decimals=4, colours=(0.15, 0.35)),
    standardisation=Standardisation(
        0.2584,
        0.0487,
        "per-image CLIP scores of the ImageReward paper's benchmark (100 DiffusionDB prompts x 10 images x 6 "
        "generators, 6,000 images), computed with the reference package; their per-generator means equal the "
        "paper's Table 1 CLIP column",
    ),
    summary="how well the image matches the prompt (cosine of OpenAI CLIP ViT-L/14 image and text embeddings)",
    licence="MIT (OpenAI CLIP code and weights)",
)

AESTHETIC = ScorerSpec(
    name="aesthetic",
    label="Aesthetic",
    infotext_key="Aesthetic score",
    family="openai-clip-vit-l-14",
    needs_prompt=False,
    # A regression to mean ratings on a 1..10 scale, unbounded (five Linear layers): web photos score about 3..7,
    # generated images mostly 5..7; blank or broken images fall below 3.
    scale=ScoreScale(0.0, 10.0, 0.05, 5.0, colours=(4.0, 7.0)),
    standardisation=Standardisation(
        4.5,
        0.7,
        "LAION-Aesthetics v2 subset sizes on the 2.37 B English images of LAION-5B (LAION blog 'LAION-Aesthetics'): "
        "50.6 % score 4.5 or more (median 4.5); the sizes of the 5+, 6+, 6.5+ subsets imply a std of 0.52 to 0.90 "
        "(0.7 taken); web photos rather than generated images",
        approximate=True,
    ),
    summary="how good the image looks, ignoring the prompt (LAION's improved aesthetic predictor: an MLP trained on "
    "SAC, LAION-Logos and AVA ratings, on CLIP ViT-L/14 image embeddings)",
    licence="Apache-2.0 (LAION improved-aesthetic-predictor); MIT (OpenAI CLIP)",
)

BLIP = ScorerSpec(
    name="blip",
    label="BLIP",
    infotext_key="BLIP score",
    family="blip-large",
    needs_prompt=True,
    # A cosine of unit vectors (-1..1); an image and its own prompt score well above 0. The slider covers 0..1; the
    # typical values of the real weights could not be measured here (they are not on this machine).
    scale=ScoreScale(0.0, 1.0, 0.005, 0.4, decimals=4, colours=(0.25, 0.55)),
    standardisation=Standardisation(None, None, "no published mean or std of the BLIP score was found"),
    summary="how well the image matches the prompt (cosine of BLIP ViT-L/16 image and BERT text features, the "
    "reference package's BLIP score)",
    licence="BSD-3-Clause (Salesforce BLIP code and weights)",
)

PICKSCORE = ScorerSpec(
    name="pickscore",
    label="PickScore",
    infotext_key="PickScore",
    family="pickscore-v1",
    needs_prompt=True,
    rgb_first=True,
    floor_crop=True,
    # 100 x the cosine of prompt and image (exp(logit_scale) = 100 in the release): generated images mostly score
    # 17..23 (averages reported in diffusion fine-tuning papers: about 20.5-21 for SD 1.5, 22-22.5 for SDXL).
    scale=ScoreScale(15.0, 25.0, 0.05, 20.0, colours=(18.0, 24.0)),
    standardisation=Standardisation(None, None, "no published per-image mean or std of PickScore was found"),
    summary="human preference for an image given its prompt (CLIP ViT-H/14 fine-tuned on Pick-a-Pic)",
    licence="MIT (PickScore code); the yuvalkirstain/PickScore_v1 weights carry no licence tag",
    published=(61.6, 70.5, 79.8),  # HPSv3 paper, preference accuracy table
)

HPSV21 = ScorerSpec(
    name="hpsv2.1",
    label="HPSv2.1",
    infotext_key="HPSv2-1",  # the WebUI's infotext keys cannot hold a "."
    family="hpsv2.1",
    needs_prompt=True,
    letterbox=True,
    # the cosine of prompt and image, no logit scale (hpsv2.score returns it as is): generated images mostly score
    # 0.2..0.33 (the HPSv2.1 benchmark's generator averages: mean 0.25, spread 0.045); four decimals.
    scale=ScoreScale(0.1, 0.4, 0.001, 0.25, decimals=4, colours=(0.2, 0.32)),
    standardisation=Standardisation(
        0.25,
        0.045,
        "HPSv2 README, HPSv2.1 benchmark table: mean and spread of the 22 generators' average scores over the "
        "3,200 HPD v2 benchmark prompts (25.00 and 4.51 on its x100 scale); a spread between generators, not "
        "between images",
        approximate=True,
    ),
    summary="human preference for an image given its prompt (OpenCLIP ViT-H/14 fine-tuned on HPDv2)",
    licence="Apache-2.0 (HPSv2 code and weights)",
    published=(66.8, None, 84.1),  # HPSv2 README (HPSv3's table has no HPSv2.1 row)
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
ENSEMBLE_KEY = "Ensemble"  # infotext key and label of the ensemble's score
#: The ensemble's scale: a weighted mean of z-scores.
ENSEMBLE_SCALE = ScoreScale(-3.0, 3.0, 0.05, 0.0, colours=(-2.0, 2.0))


def front_end_table() -> dict[str, dict[str, object]]:
    """What the gallery's JavaScript knows of each scorer, by label (the value of the "ImageReward scorer" infotext
    entry): its infotext key, name, decimals and colour range. tests/fixtures/scorers.json holds it for the JS tests."""
    table: dict[str, dict[str, object]] = {}
    for spec in SCORERS.values():
        table[spec.label] = {
            "name": spec.name,
            "key": spec.infotext_key,
            "digits": spec.scale.decimals,
            "colours": list(spec.scale.colours),
        }
    table[ENSEMBLE_KEY] = {
        "name": ENSEMBLE,
        "key": ENSEMBLE_KEY,
        "digits": ENSEMBLE_SCALE.decimals,
        "colours": list(ENSEMBLE_SCALE.colours),
    }
    return table


def canonical_name(name: str) -> str | None:
    """The table's name for what a user typed, or None."""
    key = name.strip().lower().replace("_", "-").replace(" ", "")
    if key in SCORERS or key == ENSEMBLE:
        return key
    return ALIASES.get(key)
