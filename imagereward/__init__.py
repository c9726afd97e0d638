"""ImageReward v1.0 human-preference scoring, without the reference package's pins.

    from imagereward import ImageRewardScorer
    scorer = ImageRewardScorer.load("models/ImageReward")
    scores = scorer.score("a cat on a sofa", ["a.png", "b.png"])
"""

from .errors import ImageRewardError
from .scorer import ImageRewardScorer

__all__ = ["ImageRewardError", "ImageRewardScorer"]
__version__ = "0.1.0"
