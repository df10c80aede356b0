"""The release's single-image mAP, computed the release's way: pycocotools objects built per call.

This is the reference `coco_map` (the vectorised implementation the router uses) is checked against, in the tests
and in `benchmarks/rewards.py`; keeping one copy means both measure parity against the same thing. pycocotools is
a development dependency (the `dev` extra), imported only when this function runs.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

from .coco_map import CocoMap

__all__ = ["pycocotools_map"]


def pycocotools_map(
    pred_boxes: Sequence[Sequence[float]],
    pred_labels: Sequence[str],
    gt_boxes: Sequence[Sequence[float]],
    gt_labels: Sequence[str],
) -> CocoMap:
    """The release's `pack_for_map_score`: a one-image COCO set, categories in gold order, every score 1.0.

    Same arguments as `coco_map` (boxes `[x1, y1, x2, y2]`). Predictions whose label is not a gold label are
    dropped; with none left the release returns 0 (pycocotools cannot load an empty result list).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    categories: dict[str, int] = {}
    gt_json: dict[str, Any] = {"annotations": [], "images": [{"id": 0, "file_name": "fake_image_0.jpg"}],
                               "categories": []}  # fmt: skip
    for index, ((x1, y1, x2, y2), label) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
        if label not in categories:
            categories[label] = len(categories)
            gt_json["categories"].append({"id": categories[label], "name": label})
        gt_json["annotations"].append({"id": index + 1, "image_id": 0, "category_id": categories[label],
                                       "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                       "iscrowd": 0})  # fmt: skip
    detections = [
        {"image_id": 0, "category_id": categories[label], "score": 1.0,
         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}  # fmt: skip
        for (x1, y1, x2, y2), label in zip(pred_boxes, pred_labels, strict=True)
        if label in categories
    ]
    if not detections:
        return CocoMap(0.0, 0.0, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # COCO and summarize() print, as in the release's server log
        coco_gt = COCO()
        coco_gt.dataset = gt_json
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return CocoMap(*(float(value) for value in evaluator.stats[:3]))
