"""The ensemble score: a weighted mean of several scorers' standardised scores.

Each member's score is put on a common scale with its own mean and standard deviation (`specs.Standardisation`,
whose source each entry states), then the weighted mean of those z-scores is taken. Torch-free: the WebUI and the
command line both use it on plain lists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import ImageRewardError
from .scorers.specs import ENSEMBLE, SCORERS, canonical_name

#: The members when the user names none besides `ensemble`: the preference models whose standardisation is known.
DEFAULT_MEMBERS = ("imagereward", "hpsv2.1")
#: The largest weight. Weights are relative, so a million to one already means one member alone; larger numbers
#: only risk overflow (1e308 + 1e308 is inf, and the mean becomes NaN).
MAX_WEIGHT = 1_000_000.0


class EnsembleError(ImageRewardError):
    """An ensemble that cannot be formed (unknown member, bad weight)."""


@dataclass(frozen=True)
class Ensemble:
    members: tuple[str, ...]
    weights: tuple[float, ...]

    def combine(self, table: Mapping[str, Sequence[float]]) -> list[float]:
        """Each image's ensemble score from the members' raw scores (`{name: [score per image]}`)."""
        total = sum(self.weights)
        shares = [weight / total for weight in self.weights]  # each in [0, 1]: no overflow whatever the weights
        columns = [table[name] for name in self.members]
        count = len(columns[0]) if columns else 0
        result = []
        for i in range(count):
            value = 0.0
            for name, share, column in zip(self.members, shares, columns, strict=True):
                if share:
                    value += share * standardise(name, column[i])
            result.append(value)
        return result


def standardise(name: str, value: float) -> float:
    """(value - mean) / std with the scorer's stated standardisation; NaN stays NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    scale = SCORERS[name].standardisation
    assert scale.mean is not None and scale.std is not None  # members are checked by make_ensemble
    return (float(value) - scale.mean) / scale.std


def parse_weights(text: str | Mapping[str, float] | None) -> dict[str, float]:
    """`"pickscore=2, hpsv2.1=1"` (or a mapping) -> `{"pickscore": 2.0, "hpsv2.1": 1.0}`, names made canonical."""
    if not text:
        return {}
    items = text.items() if isinstance(text, Mapping) else (_split_pair(p) for p in text.split(",") if p.strip())
    weights: dict[str, float] = {}
    for raw_name, raw_weight in items:
        name = canonical_name(str(raw_name))
        if name is None or name == ENSEMBLE:
            raise EnsembleError(f"ensemble weight for unknown scorer {raw_name!r}; choose from {', '.join(SCORERS)}")
        try:
            weight = float(raw_weight)
        except (TypeError, ValueError):
            raise EnsembleError(f"ensemble weight {raw_weight!r} for {name} is not a number") from None
        if not math.isfinite(weight) or not 0 <= weight <= MAX_WEIGHT:
            raise EnsembleError(
                f"ensemble weight for {name} must be a finite number >= 0 and at most {MAX_WEIGHT:,.0f}, got "
                f"{raw_weight!r} (weights are relative: 2 and 1 weigh the same as 2000 and 1000)"
            )
        weights[name] = weight
    return weights


def _split_pair(part: str) -> tuple[str, str]:
    name, sep, weight = part.partition("=")
    if not sep:
        raise EnsembleError(f"ensemble weights are written name=weight, separated by commas; got {part.strip()!r}")
    return name.strip(), weight.strip()


def make_ensemble(named: Sequence[str], weights: str | Mapping[str, float] | None = None) -> Ensemble:
    """The ensemble of the scorers named beside it (or of those given weights, or the default three)."""
    parsed = parse_weights(weights)
    members = [n for n in named if n != ENSEMBLE]
    if not members:
        members = list(parsed) or list(DEFAULT_MEMBERS)
    for name in parsed:
        if name not in members:
            members.append(name)
    unknown = [SCORERS[name].label for name in members if not SCORERS[name].standardisation.known]
    if unknown:
        raise EnsembleError(
            f"{', '.join(unknown)} cannot join the ensemble: no published mean and standard deviation to standardise "
            "it with (see the README's scorer table); rank by it alone, or choose other members"
        )
    chosen = tuple(members)
    values = tuple(parsed.get(name, 1.0) for name in chosen)
    if sum(values) <= 0:
        raise EnsembleError("the ensemble's weights add up to 0: give at least one member a positive weight")
    return Ensemble(chosen, values)
