"""The store's score columns: one per scorer, named by the scorer's label, each with a record of what made it.

    ImageReward, CLIP, Aesthetic, BLIP, PickScore, HPSv2.1, Ensemble                       float64, null: not scored
    ImageReward weights, CLIP weights, …, Ensemble weights                                string, null with its score

Why these names: a score column carries the very name the WebUI writes in the infotext and shows on the gallery's
badges (the spec's `label`), so one name means one score everywhere (``df["HPSv2.1"]`` in pandas,
``"HPSv2.1"`` in SQL: a label with a dot must be quoted there, like any other identifier with one). Its record is
the same name with `` weights`` appended, so the two sort and read side by side and take the same quoting
(``select "ImageReward", "ImageReward weights" from …``). Every part holds every column (unused ones are null), so
any Parquet reader sees one schema whichever scorers a run used.

A record is `weights_id`'s hash of the files the scorer was loaded from (ImageReward: the hash of its reward head
that the `model` column held before scorers had their own columns, so a store scored earlier keeps its scores); for
the ensemble, its members with their weights and records (``imagereward=1@3f2a…,hpsv2.1=1@9c1e…``). A score counts
as done for a run when its record equals the run's.

Stores written before these columns had ``score`` (ImageReward's) and ``model`` (ImageReward's record): they are
read as ``ImageReward`` and ``ImageReward weights`` (`legacy_columns`).
"""

from __future__ import annotations

from ..errors import ImageRewardError
from ..scorers.specs import ENSEMBLE, ENSEMBLE_KEY, SCORERS, canonical_name

#: Canonical scorer names with a column, in column order (the ensemble last).
NAMES: tuple[str, ...] = (*SCORERS, ENSEMBLE)
#: Column suffix of a score's record.
WEIGHTS_SUFFIX = " weights"
#: The columns of stores written before the per-scorer columns: ImageReward's score and record.
LEGACY_SCORE, LEGACY_MODEL = "score", "model"


class UnknownColumnError(ImageRewardError):
    """A scorer named for selection that the store has no column for."""


def label(name: str) -> str:
    """The column of a canonical scorer name: its label ("hpsv2.1" -> "HPSv2.1", "ensemble" -> "Ensemble")."""
    return ENSEMBLE_KEY if name == ENSEMBLE else SCORERS[name].label


def weights_column(column: str) -> str:
    return column + WEIGHTS_SUFFIX


#: Every score column, in order, and every record column.
SCORE_COLUMNS: tuple[str, ...] = tuple(label(name) for name in NAMES)
WEIGHTS_COLUMNS: tuple[str, ...] = tuple(weights_column(column) for column in SCORE_COLUMNS)


def column_of(text: str) -> str:
    """The score column a user names by label ("HPSv2.1", any case) or by scorer name or alias ("hps")."""
    wanted = text.strip()
    for column in SCORE_COLUMNS:
        if column.lower() == wanted.lower():
            return column
    name = canonical_name(wanted)
    if name is None:
        raise UnknownColumnError(f"{text!r} is not a scorer; choose from {', '.join(SCORE_COLUMNS)}")
    return label(name)


def pick_column(by: str | None, present: list[str]) -> str:
    """The score column to select and sort by: `by` (a label or scorer name), else the first column holding scores.
    One line when the store has no such scores."""
    if by is None or not by.strip():
        return present[0] if present else SCORE_COLUMNS[0]
    column = column_of(by)
    if column not in present:
        held = ", ".join(present) if present else "none yet"
        raise UnknownColumnError(
            f"the store holds no {column} scores (it holds: {held}); score it with that scorer first"
        )
    return column
