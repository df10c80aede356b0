"""The `grounding` verifier: one predicted box against one gold box, by IoU at the tau schedule or continuously.

Referring-expression grounding (D³ in the paper) asks for the single box of the described object. The release
scored it with its detection verifier; this verifier scores the one box directly:

- the box is the first `[x1, y1, x2, y2]` of the answer block: inside a Qwen2.5-VL list
  (`[{"bbox_2d": [10, 20, 110, 220], "label": "the red mug"}]`) or bare (`[10, 20, 110, 220]`); a box that is not
  four finite numbers with x1 <= x2 and y1 <= y2 is no box, and no box scores 0. Labels are not compared;
- with `det_verifier_normalized` (the Orsta field, as for detection) the predicted pixels are mapped to the gold's
  0-1000 grid with the detection verifier's rule, `int(x / W * 1000)`, using the image size the model saw;
- `mode: threshold` (default): accuracy 1 when IoU >= tau, with tau from the router's setting (fixed, "average" —
  then the share of the 11 thresholds passed — or the dynamic schedule 0.85 / 0.95 / 0.99); `mode: continuous`:
  accuracy = IoU.
- format: 1 when `"\\n<answer>\\n"` occurs, `"\\n</answer>"` occurs exactly once and a box parses from the block
  (the detection verifier's rule).

`verifier_parm`:

| parameter | default | meaning |
|---|---|---|
| `mode` | threshold | `threshold`: IoU >= tau scores 1; `continuous`: the IoU itself |
| `answer_source` | answer_tag | `answer_tag`: the first `<answer>` block; `full`: the whole completion |
| `det_verifier_normalized` | false | predicted pixels are mapped to the 0-1000 grid of the gold |

Gold: a box in the same forms (`<answer>[{'bbox_2d': [...], 'label': ...}]</answer>` or `[x1, y1, x2, y2]`).
Sub-score: `grounding_iou`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from triune_trl.rewards.answers import answer_tag
from triune_trl.rewards.boxes import Box, iou_matrix, normalize_boxes
from triune_trl.rewards.iou_schedule import iou_thresholds
from triune_trl.rewards.params import Param
from triune_trl.rewards.registry import GOLD_FIELD, Scored, ScoringContext, Unverifiable, register_verifier
from triune_trl.rewards.spec import RewardSpec
from triune_trl.rewards.textual import ParamVerifier, Prepared
from triune_trl.rewards.verifiers.detection import model_image_size

__all__ = ["GroundingVerifier", "first_box"]

_NUMBER = r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")


def first_box(text: str | None) -> Box | None:
    """The first `[x1, y1, x2, y2]` of `text` as a box, or None when it is missing or invalid."""
    if not text:
        return None
    match = _BOX.search(text)
    if match is None:
        return None
    coords = []
    for token in match.groups():
        value = float(token)
        if not math.isfinite(value):
            return None
        coords.append(int(value) if value.is_integer() and re.fullmatch(r"[-+]?\d+", token) else value)
    x1, y1, x2, y2 = coords
    if not (x1 <= x2 and y1 <= y2):
        return None
    return Box(x1, y1, x2, y2, "")


def _block(text: str, source: str) -> str | None:
    return text if source == "full" else answer_tag(text)


@register_verifier("grounding")
class GroundingVerifier(ParamVerifier):
    """Single-box IoU accuracy, thresholded by the tau schedule or continuous."""

    PARAMS = (
        Param("mode", "choice", "threshold", "threshold: IoU >= tau scores 1; continuous: the IoU",
              choices=("threshold", "continuous")),  # fmt: skip
        Param("answer_source", "choice", "answer_tag", "answer_tag: the first <answer> block; full: everything",
              choices=("answer_tag", "full")),  # fmt: skip
    )

    def format_reward(self, completion: str, spec: RewardSpec) -> float:
        if completion.count("\n<answer>\n") == 0 or completion.count("\n</answer>") != 1:
            return 0.0
        return 1.0 if first_box(answer_tag(completion.strip())) is not None else 0.0

    def gold(self, spec: RewardSpec, params: dict[str, Any]) -> Box:
        box = first_box(answer_tag(spec.ground_truth) or spec.ground_truth)
        if box is None:
            raise Unverifiable(
                f"the gold holds no valid [x1, y1, x2, y2] box: {spec.ground_truth!r:.120}", field=GOLD_FIELD
            )
        return box

    def accuracy(self, completion: str, spec: RewardSpec, gold: Any, ctx: ScoringContext) -> Scored:
        prepared: Prepared = gold
        params, target = prepared.params, prepared.gold
        try:
            taus = iou_thresholds(ctx.iou_threshold, ctx.step, ctx.total_steps) if params["mode"] == "threshold" else []
        except ValueError as exc:
            raise Unverifiable(str(exc)) from None
        box = first_box(_block(completion, params["answer_source"]))
        if box is not None and spec.verifier_parm.det_verifier_normalized:
            mapped = normalize_boxes([box], *model_image_size(ctx))
            box = mapped[0] if mapped else None
        overlap = 0.0 if box is None else float(iou_matrix([box], [target])[0, 0])
        if params["mode"] == "continuous":
            return overlap, {"grounding_iou": overlap}
        return sum(1.0 for tau in taus if overlap >= tau) / len(taus), {"grounding_iou": overlap}

