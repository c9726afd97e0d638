"""The extension's job arguments, as they arrive from the UI (positional) or the API (positional or one dict)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from ..ensemble import EnsembleError, make_ensemble, parse_weights
from ..errors import ImageRewardError
from ..scorers.specs import ENSEMBLE, ENSEMBLE_KEY, ENSEMBLE_SCALE, SCORERS, ScoreScale, canonical_name
from ..selection import Mode, SelectionSettings

ENSEMBLE_LABEL = ENSEMBLE_KEY

MAX_CANDIDATES = 64  # the UI's slider goes as far; the API accepts the same
MIN_PREVIEW_PERCENT = 5


class ArgumentError(ImageRewardError):
    """A job argument has the wrong type or value (mostly from API callers)."""


@dataclass(frozen=True)
class JobArgs:
    """One job's ImageReward settings; the field order is the order of the UI controls and positional API args."""

    enabled: bool = False
    mode: Mode = Mode.SORT
    candidates: int = 1  # N: images generated per requested image
    k: int = 1  # images kept per group in the top-k modes
    threshold: float = 0.0
    by_prompt: bool = True  # rank only within groups of the same prompt
    clean_prompt: bool = True  # strip WebUI prompt syntax before scoring
    keep_discarded: bool = False  # save discarded images into a separate folder
    scorer: str = "imagereward"  # a name of scorers.specs.SCORERS, or "ensemble"
    weights: str = ""  # ensemble only: "imagereward=1,pickscore=2" (empty: the default members, 1 each)
    # Two phases (`phases.py`): candidates are sampled and scored first; hires fix and the per-image work run for the
    # kept ones only. `preview_percent` < 100 samples the candidates with that share of the steps (phase 2 then
    # samples the kept ones again at full steps); `check_previews` also finishes the discarded ones, to measure how
    # well the previews predicted the finished images.
    finish_kept: bool = False
    preview_percent: int = 100
    check_previews: bool = False

    @property
    def score_key(self) -> str:
        """The infotext key the ranking score is written under ("ImageReward", "PickScore", "Ensemble", ...)."""
        return score_key(self.scorer)

    def selection(self, keep_best_if_none: bool = True, per_group: bool = True) -> SelectionSettings:
        return SelectionSettings(
            mode=self.mode,
            k=self.k,
            threshold=self.threshold,
            sort=True,
            keep_best_if_none=keep_best_if_none,
            per_group=per_group,
        )

    def infotext_params(self) -> dict[str, str]:
        """The job's settings as infotext entries (they paste back into the controls)."""
        params = {"ImageReward mode": self.mode.value, "ImageReward candidates": str(self.candidates)}
        if self.mode in (Mode.TOP_K, Mode.TOP_K_ABOVE_THRESHOLD):
            params["ImageReward k"] = str(self.k)
        if self.mode in (Mode.THRESHOLD, Mode.TOP_K_ABOVE_THRESHOLD):
            params["ImageReward threshold"] = f"{self.threshold:g}"
        # Written only when not the default, so that most infotexts stay short; paste-back reads a missing key as
        # the default (see PASTE_FIELDS).
        if not self.by_prompt:
            params["ImageReward by prompt"] = "False"
        if not self.clean_prompt:
            params["ImageReward clean prompt"] = "False"
        if self.scorer != "imagereward":
            params["ImageReward scorer"] = scorer_label(self.scorer)
        if self.scorer == ENSEMBLE and self.weights:
            params["ImageReward weights"] = self.weights
        if self.finish_kept:
            params["ImageReward finish"] = "kept only"
            if self.preview_percent < 100:
                params["ImageReward preview steps"] = f"{self.preview_percent}%"
            if self.check_previews:
                params["ImageReward check previews"] = "True"
        return params


def score_key(name: str) -> str:
    return ENSEMBLE_KEY if name == ENSEMBLE else SCORERS[name].infotext_key


def score_scale(name: str) -> ScoreScale:
    return ENSEMBLE_SCALE if name == ENSEMBLE else SCORERS[name].scale


def score_decimals(name: str) -> int:
    return score_scale(name).decimals


def scorer_label(name: str) -> str:
    return ENSEMBLE_LABEL if name == ENSEMBLE else SCORERS[name].label


def threshold_update(label: str, threshold: Any) -> dict[str, Any]:
    """The threshold slider's range for the scorer chosen by `label`; its value is kept when it lies in that range
    (a pasted threshold arrives with its scorer), else it becomes the scorer's default threshold."""
    try:
        scale = score_scale(parse_scorer(label))
    except ArgumentError:
        scale = score_scale("imagereward")
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not scale.minimum <= value <= scale.maximum:
        value = scale.default_threshold
    return {"minimum": scale.minimum, "maximum": scale.maximum, "step": scale.step, "value": value}


def parse_scorer(value: Any) -> str:
    """A scorer's canonical name from a name, an alias or a label ("PickScore", "hpsv2", "Ensemble")."""
    name = canonical_name(str(value)) if isinstance(value, str) else None
    if name is None:
        choices = ", ".join([*SCORERS, ENSEMBLE])
        raise ArgumentError(f"ImageReward: scorer must be one of {choices}, got {value!r}")
    return name


def parse_weights_arg(value: Any) -> str:
    """Ensemble weights as the canonical text `name=w,...` (from that text or a mapping); "" for none."""
    if value is None or value == "":
        return ""
    if not isinstance(value, (str, Mapping)):
        raise ArgumentError(f"ImageReward: weights must be text like 'imagereward=1,pickscore=2', got {value!r}")
    try:
        parsed = parse_weights(value)
    except EnsembleError as exc:
        raise ArgumentError(f"ImageReward: {exc}") from None
    return ",".join(f"{name}={weight:g}" for name, weight in parsed.items())


FIELD_NAMES = tuple(f.name for f in fields(JobArgs))
_ALIASES = {"n": "candidates", "top_k": "k", "clean": "clean_prompt", "enable": "enabled"}


def parse_mode(value: Any) -> Mode:
    if isinstance(value, Mode):
        return value

    def key(text: str) -> str:  # "Top-k above threshold", "top_k_above_threshold", "TOP K ABOVE THRESHOLD" alike
        return "".join(ch for ch in text.lower() if ch.isalnum())

    for mode in Mode:
        if key(str(value)) == key(mode.value):
            return mode
    choices = ", ".join(repr(m.value) for m in Mode)
    raise ArgumentError(f"ImageReward: mode must be one of {choices}, got {value!r}")


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise ArgumentError(f"ImageReward: {name} must be true or false, got {value!r}")


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ArgumentError(f"ImageReward: {name} must be a whole number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ArgumentError(f"ImageReward: {name} must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise ArgumentError(f"ImageReward: {name} must be a whole number, got {value!r}")
    if not low <= number <= high:
        raise ArgumentError(f"ImageReward: {name} must be between {low} and {high}, got {value!r}")
    return int(number)


def _float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"ImageReward: {name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ArgumentError(f"ImageReward: {name} must be a finite number, got {value!r}")
    return number


def validate(values: Mapping[str, Any]) -> JobArgs:
    """JobArgs from a mapping of field names (aliases allowed); unknown keys are an error, missing keys default."""
    unknown = [key for key in values if _ALIASES.get(key, key) not in FIELD_NAMES]
    if unknown:
        raise ArgumentError(f"ImageReward: unknown argument(s) {unknown}; known: {', '.join(FIELD_NAMES)}")
    data = {_ALIASES.get(key, key): value for key, value in values.items()}
    defaults = JobArgs()
    get = lambda name: data.get(name, getattr(defaults, name))  # noqa: E731
    args = JobArgs(
        enabled=_bool("enabled", get("enabled")),
        mode=parse_mode(get("mode")),
        candidates=_int("candidates", get("candidates"), 1, MAX_CANDIDATES),
        k=_int("k", get("k"), 1, MAX_CANDIDATES),
        threshold=_float("threshold", get("threshold")),
        by_prompt=_bool("by_prompt", get("by_prompt")),
        clean_prompt=_bool("clean_prompt", get("clean_prompt")),
        keep_discarded=_bool("keep_discarded", get("keep_discarded")),
        scorer=parse_scorer(get("scorer")),
        weights=parse_weights_arg(get("weights")),
        finish_kept=_bool("finish_kept", get("finish_kept")),
        preview_percent=_int("preview_percent", get("preview_percent"), MIN_PREVIEW_PERCENT, 100),
        check_previews=_bool("check_previews", get("check_previews")),
    )
    if args.scorer == ENSEMBLE:  # a member without a standardisation fails now, before anything is generated
        try:
            make_ensemble([ENSEMBLE], args.weights)
        except EnsembleError as exc:
            raise ArgumentError(f"ImageReward: {exc}") from None
    elif args.weights:  # the UI keeps the hidden weights box's text when another scorer is chosen: not an error
        args = replace(args, weights="")
    return args


def from_script_args(args: Sequence[Any]) -> JobArgs:
    """The script's `*args`: either the UI's positional values, or a dict in first place (API callers), in which case
    the remaining positional values (the UI defaults the WebUI fills in) are ignored."""
    if not args:
        return JobArgs()
    if isinstance(args[0], Mapping):
        return validate(args[0])
    if len(args) > len(FIELD_NAMES):
        raise ArgumentError(f"ImageReward: expected at most {len(FIELD_NAMES)} arguments ({', '.join(FIELD_NAMES)})")
    return validate(dict(zip(FIELD_NAMES, args, strict=False)))


def _pasted_percent(value: Any) -> int:
    """ "25%" -> 25; missing or unreadable: 100 (full steps)."""
    try:
        number = int(float(str(value).strip().rstrip("%")))
    except (TypeError, ValueError):
        return 100
    return min(100, max(MIN_PREVIEW_PERCENT, number))


def _pasted_flag(key: str) -> Any:
    """Paste-back of a flag written only when off: a missing key means the default (on)."""
    return lambda params: str(params.get(key, "True")).strip().lower() != "false"


# Paste-back: UI field name -> the infotext key it comes from (or a function of all the pasted entries).
PASTE_FIELDS: tuple[tuple[str, Any], ...] = (
    ("enabled", lambda params: "ImageReward mode" in params),
    ("mode", "ImageReward mode"),
    ("candidates", "ImageReward candidates"),
    ("k", "ImageReward k"),
    ("threshold", "ImageReward threshold"),
    ("by_prompt", _pasted_flag("ImageReward by prompt")),
    ("clean_prompt", _pasted_flag("ImageReward clean prompt")),
    # Written only when not ImageReward: a missing key pastes back the default (older images, ImageReward jobs).
    ("scorer", lambda params: params.get("ImageReward scorer", "ImageReward")),
    ("weights", lambda params: params.get("ImageReward weights", "")),
    ("finish_kept", lambda params: params.get("ImageReward finish") == "kept only"),
    ("preview_percent", lambda params: _pasted_percent(params.get("ImageReward preview steps"))),
    ("check_previews", lambda params: str(params.get("ImageReward check previews", "")).lower() == "true"),
)
