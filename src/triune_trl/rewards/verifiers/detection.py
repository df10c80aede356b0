"""The `detection` verifier (detection and grounding rows): IoU- and mAP-based accuracy of predicted boxes.

Per sample, with P predicted and G gold boxes (gold on the 0-1000 grid; predictions mapped there from the image
as the model saw it when `det_verifier_normalized`):

- format: 1.0 iff `"\\n<answer>\\n"` occurs, `"\\n</answer>"` occurs exactly once and a valid box parses from the
  first answer block; `<think>` is not checked.
- greedy matching at a threshold tau, two strategies (`match_iou_first`, `match_label_first`);
- per tau: mean_iou = sum of matched IoU / G, miss = (G - M) / G, fa = (P - M) / P, completeness =
  1 - (miss + fa) / 2, score = mean_iou * (1 - c) + completeness * c with c = `iou_completeness`; with
  "average" the per-tau scores of the 11 thresholds are averaged;
- size penalty 0.6 ** |P - G|, applied to both IoU scores and the three mAP values;
- accuracy = sum_k r_k * S_k * penalty / sum_k r_k over k in (iou_max_iou_first, iou_max_label_first, map,
  map50, map75), 0 when the weights sum to 0.

A completion without any valid box scores accuracy 0 with every sub-score 0 (the release's values). A gold without
a valid box, or normalised coordinates without an image size, or a dynamic threshold without training progress,
make the sample unverifiable instead of guessing.

Difference from the release: its iou-first matcher shadows its loop variables, so it pairs the *last* unmatched
prediction with the *last* unmatched gold (giving them the global maximum IoU value) instead of the argmax pair.
`match_iou_first` implements the intended argmax. This changes `iou_max_iou_first` accuracy terms (never weighted
in the released data) and the `iou_first_*` report scores.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from triune_trl.rewards.boxes import Box, iou_matrix, normalize_boxes, parse_answer_boxes
from triune_trl.rewards.coco_map import coco_map
from triune_trl.rewards.iou_schedule import iou_thresholds
from triune_trl.rewards.registry import Scored, ScoringContext, Unverifiable, Verifier, register_verifier
from triune_trl.rewards.spec import DetRewardRatio, RewardSpec

__all__ = [
    "DETECTION_SUB_SCORES",
    "RELEASE_SUB_SCORE_NAMES",
    "DetectionVerifier",
    "Match",
    "ThresholdScores",
    "detection_format_reward",
    "detection_scores",
    "match_iou_first",
    "match_label_first",
    "size_penalty",
    "threshold_scores",
]

SIZE_PENALTY_BASE = 0.6
# Report thresholds of the release: iou-first at 0.5 and 0.95, label-first at 0.5, 0.75, 0.95 and 0.99.
REPORT_IOU_FIRST = (0.5, 0.95)
REPORT_LABEL_FIRST = (0.5, 0.75, 0.95, 0.99)


def _report_keys(strategy: str, taus: Sequence[float], release_strategy: str) -> dict[str, str]:
    keys = {}
    for tau in taus:
        pct = round(tau * 100)
        for ours, release in (("mean_iou", "pure"), ("precision", "precision"), ("recall", "recall")):
            keys[f"{strategy}_iou{pct}_{ours}"] = f"report_iou_{pct}_{release_strategy}_match_{release}"
    return keys


# Our sub-score name -> the release's key (its reward server adds a `_reward` suffix). The release's "pure" IoU
# scores already mix in completeness; "weighted" ones carry the size penalty. Our names say that instead.
RELEASE_SUB_SCORE_NAMES: dict[str, str] = {
    "size_penalty": "size_penalty",
    "iou_score_iou_first": "pure_iou_score_max_iou",
    "iou_score_label_first": "pure_iou_score_max_label",
    "map": "pure_map_score",
    "map50": "pure_map50_score",
    "map75": "pure_map75_score",
    "iou_score_iou_first_penalized": "weighted_iou_score_max_iou",
    "iou_score_label_first_penalized": "weighted_iou_score_max_label",
    "map_penalized": "weighted_map_score",
    "map50_penalized": "weighted_map50_score",
    "map75_penalized": "weighted_map75_score",
    **_report_keys("iou_first", REPORT_IOU_FIRST, "iou"),
    **_report_keys("label_first", REPORT_LABEL_FIRST, "label"),
}
DETECTION_SUB_SCORES: tuple[str, ...] = tuple(RELEASE_SUB_SCORE_NAMES)


@functools.lru_cache(maxsize=8)
def _answer_boxes(completion: str) -> tuple[Box, ...] | None:
    """`parse_answer_boxes`, remembered for the last few texts: the format check and the accuracy of one completion
    both need its boxes, and parsing a long answer is a large share of this verifier's time."""
    boxes = parse_answer_boxes(completion)
    return None if boxes is None else tuple(boxes)


def completion_boxes(completion: str) -> list[Box] | None:
    """The boxes of a completion's first answer block (a fresh list), or None."""
    boxes = _answer_boxes(completion)
    return None if boxes is None else list(boxes)


def detection_format_reward(completion: str) -> float:
    """1.0 iff an answer opening tag is present, the closing tag occurs once, and a valid box parses."""
    if completion.count("\n<answer>\n") == 0 or completion.count("\n</answer>") != 1:
        return 0.0
    return 1.0 if _answer_boxes(completion) is not None else 0.0


def size_penalty(n_pred: int, n_gold: int) -> float:
    """0.6 ** |P - G|: 1 when the counts agree, shrinking with every missing or extra box."""
    return SIZE_PENALTY_BASE ** abs(n_pred - n_gold)


@dataclass(frozen=True)
class Match:
    """A consumed (prediction, gold) pair and the IoU it scores (0.0 for an iou-first pair whose labels differ)."""

    pred: int
    gold: int
    iou: float


def match_iou_first(
    ious: np.ndarray, pred_labels: Sequence[str], gold_labels: Sequence[str], tau: float
) -> list[Match]:
    """Greedy global matching by IoU, labels checked afterwards.

    Repeatedly take the unmatched (prediction, gold) pair with the highest IoU (ties: earliest prediction, then
    earliest gold) and stop when it is below tau. The pair is consumed whatever the labels; it scores its IoU when
    the labels agree and 0.0 otherwise, so a wrongly labelled box still blocks its gold.
    """
    remaining = np.array(ious, dtype=np.float64, copy=True)
    if remaining.size == 0:
        return []
    matches = []
    n_gold = remaining.shape[1]
    for _ in range(min(remaining.shape)):
        flat = int(np.argmax(remaining))  # row-major first maximum: earliest prediction, then earliest gold
        best = float(remaining.flat[flat])
        if best < tau or best < 0:
            break
        p, g = divmod(flat, n_gold)
        matches.append(Match(p, g, best if pred_labels[p].lower() == gold_labels[g].lower() else 0.0))
        remaining[p, :] = -1.0
        remaining[:, g] = -1.0
    return matches


def match_label_first(
    ious: np.ndarray, pred_labels: Sequence[str], gold_labels: Sequence[str], tau: float
) -> list[Match]:
    """For each gold in order, the unmatched same-label prediction with the highest IoU (ties: earliest), if >= tau."""
    taken = [False] * len(pred_labels)
    matches = []
    for g, gold_label in enumerate(gold_labels):
        label = gold_label.lower()
        candidates = [p for p, pred_label in enumerate(pred_labels) if not taken[p] and pred_label.lower() == label]
        if not candidates:
            continue
        values = ious[candidates, g]
        best = int(np.argmax(values))
        if values[best] >= tau:
            matches.append(Match(candidates[best], g, float(values[best])))
            taken[candidates[best]] = True
    return matches


@dataclass(frozen=True)
class ThresholdScores:
    """Scores of one matching at one tau."""

    mean_iou: float
    precision: float
    recall: float
    completeness: float
    score: float  # mean_iou * (1 - c) + completeness * c


def threshold_scores(matches: Sequence[Match], n_pred: int, n_gold: int, completeness_weight: float) -> ThresholdScores:
    """mean IoU, miss / false-alarm based completeness and their mix, in the release's arithmetic order."""
    mean_iou = sum(m.iou for m in matches) / n_gold if matches else 0.0
    miss = (n_gold - len(matches)) / n_gold
    false_alarm = 0.0 if n_pred == 0 else (n_pred - len(matches)) / n_pred
    completeness = 1.0 - (miss + false_alarm) / 2.0
    score = mean_iou * (1.0 - completeness_weight) + completeness * completeness_weight
    return ThresholdScores(mean_iou, 1 - false_alarm, 1 - miss, completeness, score)


_MATCHERS = {"iou_first": match_iou_first, "label_first": match_label_first}


def detection_scores(
    preds: Sequence[Box], gold: Sequence[Box], ratio: DetRewardRatio, taus: Sequence[float]
) -> tuple[float, dict[str, float]]:
    """(accuracy, sub-scores) of predicted boxes (already on the gold's grid) at the given taus (averaged)."""
    if not preds:
        return 0.0, dict.fromkeys(DETECTION_SUB_SCORES, 0.0)
    ious = iou_matrix(preds, gold)
    pred_labels, gold_labels = [b.label for b in preds], [b.label for b in gold]
    c = ratio.iou_completeness
    cache: dict[tuple[str, float], ThresholdScores] = {}

    def at(strategy: str, tau: float) -> ThresholdScores:
        if (strategy, tau) not in cache:
            matches = _MATCHERS[strategy](ious, pred_labels, gold_labels, tau)
            cache[strategy, tau] = threshold_scores(matches, len(preds), len(gold), c)
        return cache[strategy, tau]

    def averaged(strategy: str) -> float:
        return sum(at(strategy, tau).score for tau in taus) / len(taus)

    penalty = size_penalty(len(preds), len(gold))
    maps = coco_map([b.coords for b in preds], pred_labels, [b.coords for b in gold], gold_labels)
    subs: dict[str, float] = {
        "size_penalty": penalty,
        "iou_score_iou_first": averaged("iou_first"),
        "iou_score_label_first": averaged("label_first"),
        "map": maps.map,
        "map50": maps.map50,
        "map75": maps.map75,
    }
    for key in ("iou_score_iou_first", "iou_score_label_first", "map", "map50", "map75"):
        subs[f"{key}_penalized"] = subs[key] * penalty
    for strategy, report_taus in (("iou_first", REPORT_IOU_FIRST), ("label_first", REPORT_LABEL_FIRST)):
        for tau in report_taus:
            scores, pct = at(strategy, tau), round(tau * 100)
            subs[f"{strategy}_iou{pct}_mean_iou"] = scores.mean_iou
            subs[f"{strategy}_iou{pct}_precision"] = scores.precision
            subs[f"{strategy}_iou{pct}_recall"] = scores.recall

    denominator = ratio.accuracy_denominator
    if denominator > 0:
        numerator = (
            subs["iou_score_iou_first_penalized"] * ratio.iou_max_iou_first
            + subs["iou_score_label_first_penalized"] * ratio.iou_max_label_first
            + subs["map_penalized"] * ratio.map
            + subs["map50_penalized"] * ratio.map50
            + subs["map75_penalized"] * ratio.map75
        )
        accuracy = numerator / denominator
    else:
        accuracy = 0.0
    return accuracy, {key: subs[key] for key in DETECTION_SUB_SCORES}


def model_image_size(ctx: ScoringContext) -> tuple[float, float]:
    """(width, height) of the image as the model saw it, or Unverifiable when the context has no usable size."""
    size = ctx.image_size
    if size is None:
        raise Unverifiable(
            "det_verifier_normalized is true but the image size the model saw is unknown (text-only row or "
            "image_sizes missing), so predicted pixels cannot be mapped to the 0-1000 gold grid"
        )
    try:
        width, height = (float(v) for v in size)
    except (TypeError, ValueError):
        raise Unverifiable(f"image size must be (width, height), got {size!r:.80}") from None
    if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
        raise Unverifiable(f"image size must be two positive numbers, got {size!r:.80}")
    return width, height


@register_verifier("detection")
class DetectionVerifier(Verifier):
    """Boxes in the `<answer>` block scored against the gold boxes (see the module docstring)."""

    def check_params(self, spec: RewardSpec) -> list[tuple[str, str]]:
        if spec.verifier_parm.det_reward_ratio is None:
            return [
                (
                    "reward_model.verifier_parm.det_reward_ratio",
                    "detection rows need the accuracy weights {iou_max_label_first, iou_max_iou_first, "
                    "iou_completeness, map, map50, map75}",
                )
            ]
        return []

    def format_reward(self, completion: str, spec: RewardSpec) -> float:
        return detection_format_reward(completion)

    def parse_gold(self, spec: RewardSpec) -> list[Box]:
        gold = parse_answer_boxes(spec.ground_truth)
        if gold is None:
            raise Unverifiable(f"no valid box in the gold's <answer> block: {spec.ground_truth!r:.120}")
        return gold

    def accuracy(self, completion: str, spec: RewardSpec, gold: Any, ctx: ScoringContext) -> Scored:
        ratio = spec.verifier_parm.det_reward_ratio
        if ratio is None:  # prepare() has already reported this; kept for direct callers
            raise Unverifiable("reward_model.verifier_parm.det_reward_ratio is missing")
        preds = completion_boxes(completion)
        if preds is None:
            return detection_scores([], gold, ratio, [])
        if spec.verifier_parm.det_verifier_normalized:  # None counts as false, the release's default
            preds = normalize_boxes(preds, *model_image_size(ctx))
            if not preds:
                return detection_scores([], gold, ratio, [])
        try:
            taus = iou_thresholds(ctx.iou_threshold, ctx.step, ctx.total_steps)
        except ValueError as exc:
            raise Unverifiable(str(exc)) from None
        return detection_scores(preds, gold, ratio, taus)
