"""ImageReward v1.0 human-preference scoring, without the reference package's pins.

from imagereward import ImageRewardScorer
scorer = ImageRewardScorer.load("models/ImageReward")
scores = scorer.score("a cat on a sofa", ["a.png", "b.png"])
"""

from typing import Any

from ._version import __version__
from .errors import ImageRewardError

__all__ = ["ImageRewardError", "ImageRewardScorer", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the light modules (infotext, selection, prompt syntax) must not pull in torch.
    if name == "ImageRewardScorer":
        from .scorer import ImageRewardScorer

        return ImageRewardScorer
    raise AttributeError(f"module 'imagereward' has no attribute {name!r}")
