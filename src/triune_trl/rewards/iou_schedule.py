"""The IoU threshold tau of the detection reward: fixed, averaged, or following training progress.

V-Triune's dynamic schedule starts lenient and tightens as training goes on, so early rollouts get a learning
signal from rough boxes and late ones are pushed to precise boxes:
progress = step / total_steps; tau = 0.85 while progress <= 0.10, 0.95 while <= 0.25, else 0.99.
"average" scores every tau of 0.5:0.05:0.95 plus 0.99 and averages the per-tau scores (what the release does:
it averages each strategy's completeness-weighted score over the 11 thresholds).
"""

from __future__ import annotations

import math
import numbers
from typing import Literal

__all__ = [
    "IOU_THRESHOLDS",
    "IouThreshold",
    "dynamic_iou_threshold",
    "iou_thresholds",
    "parse_iou_threshold",
]

IouThreshold = float | Literal["average", "dynamic"]

# The release's thresholds, written as literals so that a fixed tau compares equal to the release's dict keys.
IOU_THRESHOLDS: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)
MODES = ("average", "dynamic")


def parse_iou_threshold(value: object) -> IouThreshold:
    """Validate a threshold setting: "average", "dynamic", or a number in (0, 1] (a numeric string is accepted).

    A number within 1e-9 of one of the release's 11 thresholds is snapped to it. Other numbers in (0, 1] are
    accepted too (the release only knows its 11 values and falls back to "average" for anything else).
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in MODES:
            return text  # type: ignore[return-value]
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"iou_threshold must be 'dynamic', 'average' or a number in (0, 1], got {value!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"iou_threshold must be 'dynamic', 'average' or a number in (0, 1], got {value!r}")
    tau = float(value)
    if not math.isfinite(tau) or not 0.0 < tau <= 1.0:
        raise ValueError(f"iou_threshold must lie in (0, 1], got {tau!r}")
    for known in IOU_THRESHOLDS:
        if abs(tau - known) <= 1e-9:
            return known
    return tau


def dynamic_iou_threshold(step: int | None, total_steps: int | None) -> float:
    """The dynamic schedule's tau for `step` (1-based) of `total_steps`; ValueError when progress is unknown."""
    if step is None or total_steps is None:
        raise ValueError("the dynamic IoU threshold needs the training step and total_steps, and none was given")
    if isinstance(step, bool) or isinstance(total_steps, bool) or total_steps <= 0:
        raise ValueError(
            f"the dynamic IoU threshold needs total_steps > 0, got step={step!r}, total_steps={total_steps!r}"
        )
    progress = float(step) / float(total_steps)
    if progress <= 0.1:
        return 0.85
    if progress <= 0.25:
        return 0.95
    return 0.99


def iou_thresholds(mode: object, step: int | None = None, total_steps: int | None = None) -> list[float]:
    """The taus whose scores are averaged: one tau for a fixed or dynamic setting, all 11 for "average"."""
    parsed = parse_iou_threshold(mode)
    if parsed == "average":
        return list(IOU_THRESHOLDS)
    if parsed == "dynamic":
        return [dynamic_iou_threshold(step, total_steps)]
    return [float(parsed)]
