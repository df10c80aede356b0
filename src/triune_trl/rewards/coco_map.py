"""Single-image COCO bbox mAP, mAP50 and mAP75 in numpy, equal to what the release gets from pycocotools.

The release builds a one-image COCO dataset per completion and runs `COCOeval(..., "bbox")` (a vendored copy whose
only change is evaluating the "all" area range alone). Doing that in the trainer costs object construction, index
building and summary printing for every completion; pycocotools is also not a runtime dependency here. This module
computes the same numbers directly, about 7x faster per image (`benchmarks/rewards.py`), and is tested against
pycocotools to 1e-9 on 1,300 random cases: IoUs, the precision envelope and the recall lookup are numpy arrays over
the 10 IoU thresholds; the greedy matching is pycocotools' own loop over plain Python floats (for one image's few
boxes that beats one numpy call per detection, and NaN comparisons behave identically):

- categories are the gold labels; predictions with any other label are dropped; every prediction has score 1.0,
  so the stable (mergesort) score sort keeps the written order; at most 100 detections per category (maxDets);
- IoU is pycocotools' `bbIou` on `[x, y, w, h]`: `min(x+w) - max(x)` etc. in float64, 0 unless both overlaps > 0;
- greedy matching per threshold t in `linspace(.5, .95, 10)`: each detection, in order, takes the unmatched gold
  with the highest IoU >= min(t, 1 - 1e-10), ties going to the *later* gold; gold boxes with area outside
  [0, 1e10] are "ignored": matched last, and a detection matched to one (or unmatched and itself outside the
  range) counts neither as TP nor FP;
- precision envelope (running max from the right), 101 recall thresholds via `searchsorted(..., "left")`,
  precision 0 beyond the last reached recall; a category without any non-ignored gold stays -1 and is left out
  of the mean; if every category is -1 the result is -1 (pycocotools' "undefined");
- mAP = mean over (threshold, recall, category); mAP50 / mAP75 the same at t = .5 / .75.

As in the release, when no prediction carries a gold label the result is 0.0 for all three without evaluating
(pycocotools cannot load an empty result list).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CocoMap", "coco_map"]

# Built with the same calls as pycocotools' Params so that the float values are bit-identical.
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_ALL = (0.0**2, 1e5**2)
MAX_DETS = 100
_T50 = np.where(IOU_THRS == 0.5)[0]
_T75 = np.where(IOU_THRS == 0.75)[0]
_MATCH_THRS_LIST = np.minimum(IOU_THRS, 1 - 1e-10).tolist()
_EPS = np.spacing(1)


@dataclass(frozen=True)
class CocoMap:
    """COCO AP@[.5:.95], AP@.5 and AP@.75 of one image (area "all", maxDets 100); -1.0 means undefined."""

    map: float
    map50: float
    map75: float


def _to_xywh(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """`[x1, y1, x2, y2]` -> `[x, y, w, h]` float64, as the release converts before handing boxes to COCO."""
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([arr[:, 0], arr[:, 1], arr[:, 2] - arr[:, 0], arr[:, 3] - arr[:, 1]], axis=1)


def _bb_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(D, G) IoU, pycocotools' `bbIou` for non-crowd gold, operation for operation."""
    w = np.minimum(dt[:, None, 2] + dt[:, None, 0], gt[None, :, 2] + gt[None, :, 0]) - np.maximum(
        dt[:, None, 0], gt[None, :, 0]
    )
    h = np.minimum(dt[:, None, 3] + dt[:, None, 1], gt[None, :, 3] + gt[None, :, 1]) - np.maximum(
        dt[:, None, 1], gt[None, :, 1]
    )
    overlap = (w > 0) & (h > 0)
    inter = w * h
    union = (dt[:, 2] * dt[:, 3])[:, None] + (gt[:, 2] * gt[:, 3])[None, :] - inter
    out = np.zeros(overlap.shape, dtype=np.float64)
    np.divide(inter, union, out=out, where=overlap)
    return out


def _greedy_match(ious: list[list[float]], gt_ignored: list[bool]) -> tuple[list[list[bool]], list[list[bool]]]:
    """pycocotools' `evaluateImg` matching loop, statement for statement, for every threshold.

    Per threshold t, each detection in order takes the not yet matched gold with the highest IoU >= min(t, 1-1e-10)
    (ties to the later gold); once it holds a regular gold it stops at the first ignored one (gold is sorted
    regular first). Returns (matched, matched-to-an-ignored-gold) per threshold and detection. Written as plain
    loops over Python floats: for the few boxes of one image this is several times faster than numpy calls per
    detection, and comparisons with NaN behave exactly as in pycocotools.
    """
    n_gt = len(gt_ignored)
    matched_all, ignored_all = [], []
    for threshold in _MATCH_THRS_LIST:
        taken = [False] * n_gt
        matched, ignored = [], []
        for row in ious:
            best, m = threshold, -1
            for g in range(n_gt):
                if taken[g]:
                    continue
                if m > -1 and not gt_ignored[m] and gt_ignored[g]:
                    break
                if row[g] < best:
                    continue
                best, m = row[g], g
            if m == -1:
                matched.append(False)
                ignored.append(False)
                continue
            taken[m] = True
            matched.append(True)
            ignored.append(gt_ignored[m])
        matched_all.append(matched)
        ignored_all.append(ignored)
    return matched_all, ignored_all


def _category_precision(dt: np.ndarray, gt: np.ndarray) -> np.ndarray | None:
    """(T, R) interpolated precision of one category, or None when it has no non-ignored gold (pycocotools' -1)."""
    dt = dt[:MAX_DETS]
    gt_area = gt[:, 2] * gt[:, 3]
    gt_ignored = (gt_area < AREA_ALL[0]) | (gt_area > AREA_ALL[1])
    order = np.argsort(gt_ignored, kind="mergesort")  # ignored gold last, stable
    gt, gt_ignored = gt[order], gt_ignored[order]
    n_valid_gt = int(np.count_nonzero(~gt_ignored))
    if n_valid_gt == 0:
        return None
    n_thr, n_dt = len(IOU_THRS), dt.shape[0]
    precision = np.zeros((n_thr, len(REC_THRS)))
    if n_dt == 0:
        return precision
    dt_area = dt[:, 2] * dt[:, 3]
    dt_outside = (dt_area < AREA_ALL[0]) | (dt_area > AREA_ALL[1])
    matched_list, ignored_list = _greedy_match(_bb_iou(dt, gt).tolist(), gt_ignored.tolist())
    dt_matched = np.array(matched_list, dtype=bool).reshape(n_thr, n_dt)
    dt_ignored = np.array(ignored_list, dtype=bool).reshape(n_thr, n_dt)
    dt_ignored |= ~dt_matched & dt_outside[None, :]

    tp = np.cumsum(dt_matched & ~dt_ignored, axis=1).astype(float)
    fp = np.cumsum(~dt_matched & ~dt_ignored, axis=1).astype(float)
    recall = tp / n_valid_gt
    pr = tp / (fp + tp + _EPS)
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    for t in range(n_thr):
        idx = np.searchsorted(recall[t], REC_THRS, side="left")
        reached = idx < n_dt
        precision[t, reached] = pr[t, idx[reached]]
    return precision


def _mean_defined(values: np.ndarray) -> float:
    """pycocotools' summary: mean of the entries > -1, or -1 when there are none."""
    defined = values[values > -1]
    return -1.0 if defined.size == 0 else float(np.mean(defined))


def coco_map(
    pred_boxes: Sequence[Sequence[float]],
    pred_labels: Sequence[str],
    gt_boxes: Sequence[Sequence[float]],
    gt_labels: Sequence[str],
) -> CocoMap:
    """COCO bbox mAP / mAP50 / mAP75 of one image; boxes are `[x1, y1, x2, y2]`, every prediction scores 1.0."""
    if len(pred_boxes) != len(pred_labels) or len(gt_boxes) != len(gt_labels):
        raise ValueError("each box needs exactly one label")
    categories = list(dict.fromkeys(gt_labels))  # ids in first-appearance order, as the release assigns them
    known = set(categories)
    kept = [i for i, label in enumerate(pred_labels) if label in known]
    if not kept:
        return CocoMap(0.0, 0.0, 0.0)
    dt_all = _to_xywh([pred_boxes[i] for i in kept])
    dt_labels = [pred_labels[i] for i in kept]
    gt_all = _to_xywh(gt_boxes)

    precision = -np.ones((len(IOU_THRS), len(REC_THRS), len(categories)))
    with np.errstate(over="ignore", invalid="ignore"):  # absurd coordinates: inf/NaN compare like in pycocotools
        for k, category in enumerate(categories):
            dt = dt_all[[i for i, label in enumerate(dt_labels) if label == category]]
            gt = gt_all[[i for i, label in enumerate(gt_labels) if label == category]]
            result = _category_precision(dt.reshape(-1, 4), gt.reshape(-1, 4))
            if result is not None:
                precision[:, :, k] = result
    return CocoMap(
        map=_mean_defined(precision),
        map50=_mean_defined(precision[_T50]),
        map75=_mean_defined(precision[_T75]),
    )
