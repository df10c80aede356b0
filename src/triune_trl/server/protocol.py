"""The reward server's wire format, shared by the server (`server/app.py`) and its client (`server/client.py`).

Two APIs:

- `POST /v1/score`: a JSON list of the objects `triune reward score` reads (`completion`, `reward_model`, and
  optionally `data_source`, `image_size`, `step`, `total_steps`, plus `iou_threshold`, which overrides the
  server's setting for that item so a trainer's remote scores follow the trainer's own threshold). The answer is
  the list of output objects in the same order: each input object plus `final_reward`, `format_reward`,
  `accuracy_reward`, `unverifiable_reason` and the verifier's sub-scores, exactly what `triune reward score`
  writes; with `?echo=false` only the scores (the client's mode: a completion is not sent back over the wire).
- `POST /judge`: the V-Triune release's single-sample payload (`response`, `prompt`, `answer`, `solution`,
  `data_source`, `reward_verifier`, `reward_verifier_parm` as a JSON string carrying `step`, `total_steps` and
  `image_grid_thw`, `format_ratio`, `accuracy_ratio`), answered as `{"rewards": {format_reward, accuracy_reward,
  final_reward, <sub-score>_reward...}}` with the release's sub-score names, so existing V-Triune clients work
  unchanged.

Only the structure of a request is validated here (types, ranges, pairing of `step` and `total_steps`): a problem
there is the caller's bug and gets a 422 naming the field. Whether a spec can be scored is the scorer's business,
as in training: a spec that does not parse, an unknown verifier or a detection row without progress is answered
with a null reward and its reason (`unverifiable_reason`), never a silent 0, so remote and in-process scores of
the same batch are identical.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator

from triune_trl.rewards.iou_schedule import IouThreshold, parse_iou_threshold
from triune_trl.rewards.pool import Job
from triune_trl.rewards.registry import ScoringContext, image_size_pair
from triune_trl.rewards.scoring import spec_key
from triune_trl.rewards.verifiers.detection import RELEASE_SUB_SCORE_NAMES

__all__ = [
    "DEFAULT_PORT",
    "JUDGE_ROOT_MESSAGE",
    "RELEASE_DETECTION_NAMES",
    "SCORE_FIELDS",
    "JudgePayload",
    "ScoreItem",
    "item_job",
    "judge_job",
    "judge_response",
    "loads_strict",
    "score_response",
]

DEFAULT_PORT = 8192
JUDGE_ROOT_MESSAGE = "Reward Judge Server"  # the release's `GET /` answer, which its clients check
SCORE_FIELDS = ("final_reward", "format_reward", "accuracy_reward", "unverifiable_reason")

# The release's defaults when a /judge payload leaves a ratio out (its server logs a warning and uses these).
RELEASE_DEFAULT_ACCURACY_RATIO = 1.0
RELEASE_DEFAULT_FORMAT_RATIO = 0.1
# Keys of `reward_verifier_parm` that describe the call rather than the verifier: they become the scoring context.
JUDGE_CONTEXT_KEYS = ("step", "total_steps", "image_grid_thw", "is_training", "image_path", "query", "verifier_style")

# This project's detection sub-score names -> the names the release's detection verifier reports (a /judge client
# logs `<name>_reward`); defined next to the verifier. Sub-scores without a release counterpart keep their name.
RELEASE_DETECTION_NAMES = RELEASE_SUB_SCORE_NAMES

# strict: a JSON true/false is not a number here (lax floats would take it as 1.0/0.0); JSON integers still are
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
PositiveSide = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
MAX_JSON_DEPTH = 400  # deeper bodies are refused: echoing or pickling them for a worker would exhaust the stack


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of the range of a float")
    return value


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iteratively: the value may be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def loads_strict(text: str | bytes) -> Any:
    """JSON as the server takes it; ValueError for what it refuses.

    Python's parser also accepts NaN and Infinity, turns 1e400 into inf and parses nesting that later code cannot
    echo or hand to a worker; none of these could be answered, so they are refused here (a 422, never a 500).
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value
Step = Annotated[int, Field(strict=True, ge=0)]
TotalSteps = Annotated[int, Field(strict=True, gt=0)]


def _threshold(value: Any) -> IouThreshold | None:
    if value is None:
        return None
    return parse_iou_threshold(value)  # ValueError -> a 422 naming `iou_threshold`


class ScoreItem(BaseModel):
    """One completion to score: a `triune reward score` input object (unknown extra fields are kept and echoed)."""

    model_config = ConfigDict(extra="allow")

    completion: StrictStr
    reward_model: dict[str, Any]
    data_source: StrictStr | None = None
    image_size: tuple[PositiveSide, PositiveSide] | None = None
    step: Step | None = None
    total_steps: TotalSteps | None = None
    iou_threshold: StrictStr | FiniteFloat | None = None

    @field_validator("iou_threshold")
    @classmethod
    def _known_threshold(cls, value: Any) -> Any:
        _threshold(value)
        return value

    @model_validator(mode="after")
    def _progress_pair(self) -> ScoreItem:
        if (self.step is None) != (self.total_steps is None):
            raise ValueError("'step' and 'total_steps' must be given together")
        return self


def item_job(item: ScoreItem, default_threshold: IouThreshold) -> Job:
    """The scoring job of one /v1/score item (the item's own `iou_threshold` wins over the server's)."""
    threshold = _threshold(item.iou_threshold)
    ctx = ScoringContext(
        image_size=item.image_size,
        step=item.step,
        total_steps=item.total_steps,
        iou_threshold=default_threshold if threshold is None else threshold,
    )
    return Job(item.completion, item.reward_model, ctx, spec_key(item.reward_model))


def score_response(raw_item: Mapping[str, Any] | None, scores: Mapping[str, Any]) -> dict[str, Any]:
    """A /v1/score output object: the input object as sent (None: scores only) plus every score."""
    return {**raw_item, **scores} if raw_item is not None else dict(scores)


class JudgePayload(BaseModel):
    """The release's single-sample /judge payload (fields the release requires are required here too)."""

    model_config = ConfigDict(extra="allow")

    response: StrictStr
    prompt: StrictStr
    answer: StrictStr
    solution: StrictStr
    data_source: StrictStr
    reward_verifier: StrictStr
    reward_verifier_parm: StrictStr
    format_ratio: FiniteFloat | None = None
    accuracy_ratio: FiniteFloat | None = None
    fmt_ratio: FiniteFloat | None = None  # the name later release versions send instead of format_ratio

    @field_validator("reward_verifier_parm")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = loads_strict(value)
        except ValueError as exc:
            raise ValueError(f"must be a JSON string holding an object: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"must be a JSON string holding an object, got {type(parsed).__name__}")
        return value


def _grid_image_size(grid: Any) -> tuple[float, float] | None:
    """(width, height) of the first image from the release's `image_grid_thw`, which its trainer fills with the
    image's height and width in pixels (`[[t, h * patch, w * patch], ...]`), read as the release's verifier does."""
    if not isinstance(grid, Sequence) or isinstance(grid, str) or not grid:
        return None
    first = grid[0]
    if not isinstance(first, Sequence) or isinstance(first, str) or len(first) != 3:
        return None
    return image_size_pair((first[2], first[1]))  # [t, height, width]


def _int_or_none(value: Any) -> int | None:
    """A step count as the release's verifier reads it (`float(step)`): an int, a whole float or a numeric string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return int(number) if math.isfinite(number) and number.is_integer() else None
    return None


def judge_job(payload: JudgePayload, default_threshold: IouThreshold) -> Job:
    """The scoring job of a /judge payload: the release's fields mapped onto an Orsta `reward_model` struct.

    The gold is `solution` (the formatted ground truth the release's verifiers compare with); ratios missing from
    the payload take the release server's defaults (accuracy 1.0, format 0.1); the IoU threshold is the server's
    (`--iou-threshold`, the release's DET_IOU_THRESHOLD), with `step` and `total_steps` from the parameters.
    """
    parm = loads_strict(payload.reward_verifier_parm)
    format_ratio = payload.format_ratio if payload.format_ratio is not None else payload.fmt_ratio
    reward_model = {
        "answer": payload.answer,
        "ground_truth": payload.solution,
        "verifier": payload.reward_verifier,
        "verifier_parm": {key: value for key, value in parm.items() if key not in JUDGE_CONTEXT_KEYS},
        "accuracy_ratio": RELEASE_DEFAULT_ACCURACY_RATIO if payload.accuracy_ratio is None else payload.accuracy_ratio,
        "format_ratio": RELEASE_DEFAULT_FORMAT_RATIO if format_ratio is None else format_ratio,
    }
    step, total = _int_or_none(parm.get("step")), _int_or_none(parm.get("total_steps"))
    if total is not None and total <= 0:  # the release's trainer sends 0 when it does not know: no progress
        step = total = None
    ctx = ScoringContext(
        image_size=_grid_image_size(parm.get("image_grid_thw")),
        step=step if total is not None else None,
        total_steps=total if step is not None else None,
        iou_threshold=default_threshold,
    )
    return Job(payload.response, reward_model, ctx, spec_key(reward_model))


def judge_response(scores: Mapping[str, Any], verifier: str) -> dict[str, Any]:
    """The release's /judge answer: `{"rewards": {...}}`; sub-scores as `<release name>_reward`.

    An unverifiable sample answers `null` rewards and says why in `unverifiable_reason` (next to `rewards`, so a
    client that logs every key of `rewards` as a number is not handed a string) where the release answered 0.
    """
    rewards: dict[str, Any] = {
        "format_reward": scores.get("format_reward"),
        "accuracy_reward": scores.get("accuracy_reward"),
        "final_reward": scores.get("final_reward"),
    }
    names = RELEASE_DETECTION_NAMES if verifier == "detection" else {}
    for key, value in scores.items():
        if key in SCORE_FIELDS:
            continue
        name = names.get(key, key)
        rewards[name if name.endswith("_reward") else f"{name}_reward"] = value
    answer: dict[str, Any] = {"rewards": rewards}
    if scores.get("unverifiable_reason") is not None:
        answer["unverifiable_reason"] = scores["unverifiable_reason"]
    return answer
