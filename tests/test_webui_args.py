from __future__ import annotations

import pytest

from imagereward.selection import Mode
from imagereward.webui.args import FIELD_NAMES, PASTE_FIELDS, ArgumentError, JobArgs, from_script_args, validate


def test_positional_args_in_ui_order() -> None:
    args = from_script_args((True, "top-k", 4, 2, 0.5, False, True, True))
    assert args == JobArgs(True, Mode.TOP_K, 4, 2, 0.5, False, True, True)


def test_short_positional_list_keeps_defaults() -> None:
    assert from_script_args((True,)) == JobArgs(enabled=True)
    assert from_script_args(()) == JobArgs()


def test_dict_argument_from_the_api_wins_over_ui_defaults() -> None:
    ui_defaults = (False, "sort", 1, 1, 0.0, True, True, False)
    args = from_script_args(
        ({"enabled": True, "mode": "top k above threshold", "n": "8", "k": 2.0, "threshold": -0.5}, *ui_defaults[1:])
    )
    assert args.enabled and args.mode is Mode.TOP_K_ABOVE_THRESHOLD
    assert (args.candidates, args.k, args.threshold) == (8, 2, -0.5)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "best"}, "mode must be one of"),
        ({"candidates": 0}, "candidates must be between 1 and 64"),
        ({"candidates": 2.5}, "candidates must be a whole number"),
        ({"k": True}, "k must be a whole number"),
        ({"threshold": "high"}, "threshold must be a number"),
        ({"threshold": float("nan")}, "threshold must be a finite number"),
        ({"enabled": "maybe"}, "enabled must be true or false"),
        ({"colour": 1}, "unknown argument(s) ['colour']"),
    ],
)
def test_bad_values_get_clear_messages(values: dict, message: str) -> None:
    with pytest.raises(ArgumentError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        from_script_args((values,))


def test_too_many_positional_args() -> None:
    with pytest.raises(ArgumentError, match=f"at most {len(FIELD_NAMES)} arguments"):
        from_script_args(tuple(range(len(FIELD_NAMES) + 1)))


def test_infotext_params_name_only_what_the_mode_uses() -> None:
    assert JobArgs(mode=Mode.SORT, candidates=3).infotext_params() == {
        "ImageReward mode": "sort",
        "ImageReward candidates": "3",
    }
    params = JobArgs(mode=Mode.TOP_K_ABOVE_THRESHOLD, candidates=4, k=2, threshold=0.25).infotext_params()
    assert params["ImageReward k"] == "2" and params["ImageReward threshold"] == "0.25"


def test_scorer_and_weights_are_validated_and_made_canonical() -> None:
    args = validate({"enabled": True, "scorer": "PickScore"})
    assert args.scorer == "pickscore" and args.score_key == "PickScore"
    assert validate({"scorer": "hpsv2"}).scorer == "hpsv2.1"
    ensemble = validate({"scorer": "Ensemble", "weights": {"HPSv2": 2, "image-reward": "1"}})
    assert ensemble.scorer == "ensemble" and ensemble.weights == "hpsv2.1=2,imagereward=1"
    assert ensemble.score_key == "Ensemble"
    with pytest.raises(ArgumentError, match="scorer must be one of"):
        validate({"scorer": "dalle-judge"})
    with pytest.raises(ArgumentError, match="unknown scorer"):
        validate({"scorer": "ensemble", "weights": "hpsv2.1=1,nonsense=2"})
    with pytest.raises(ArgumentError, match=">= 0"):
        validate({"scorer": "ensemble", "weights": "pickscore=-1"})
    # refused before anything is generated (found in the real WebUI: the job used to fail at scoring time)
    with pytest.raises(ArgumentError, match="PickScore cannot join the ensemble"):
        validate({"scorer": "ensemble", "weights": "pickscore=1"})
    assert validate({"scorer": "pickscore", "weights": "imagereward=1"}).weights == ""  # the hidden box's leftover


def test_scorer_choice_is_written_and_pasted_back() -> None:
    params = JobArgs(enabled=True, scorer="ensemble", weights="imagereward=1,hpsv2.1=2").infotext_params()
    assert params["ImageReward scorer"] == "Ensemble" and params["ImageReward weights"] == "imagereward=1,hpsv2.1=2"
    assert "ImageReward scorer" not in JobArgs(enabled=True).infotext_params()  # the default is not written
    fields = dict(PASTE_FIELDS)
    assert validate({"scorer": fields["scorer"](params)}).scorer == "ensemble"
    pasted = validate({"scorer": "ensemble", "weights": fields["weights"](params)})
    assert pasted.weights == "imagereward=1,hpsv2.1=2"
    older = {"ImageReward mode": "sort"}  # an image made before scorers could be chosen
    assert validate({"scorer": fields["scorer"](older)}).scorer == "imagereward"
