"""Boxes in model output: the release's lenient parsing, IoU, and coordinate normalisation.

Models write Qwen2.5-VL style answers, `[{'bbox_2d': [x1, y1, x2, y2], 'label': 'dog'}, ...]`, often with single
quotes, doubled brackets, stray backslashes or a list cut off by the length limit. The release repairs these in a
fixed order before JSON-parsing, and rewards depend on exactly what survives, so `parse_boxes` reproduces that
order step by step (see `parse_boxes`). The only deliberate difference: boxes whose coordinates are not finite
numbers (`1e999` parses to inf) are dropped here, where the release crashes on them and scores the sample 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Box",
    "answer_block",
    "boxes_to_array",
    "iou",
    "iou_matrix",
    "normalize_boxes",
    "parse_answer_boxes",
    "parse_boxes",
]

_OPEN, _CLOSE = "<answer>", "</answer>"
NORMALIZED_RANGE = 1000.0


@dataclass(frozen=True)
class Box:
    """An axis-aligned box `[x1, y1, x2, y2]` (x1 <= x2, y1 <= y2) with its label.

    Coordinates keep the type they were written with (int or float) because the release's arithmetic does too:
    areas of int boxes are exact, and `int(x / W * 1000)` truncates what was written.
    """

    x1: float
    y1: float
    x2: float
    y2: float
    label: str

    @property
    def coords(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


def answer_block(text: str) -> str:
    """Content of the first `<answer>...</answer>` block of the stripped text, stripped and lowercased; "" if none.

    The block the release's lazy `<answer>(.*?)</answer>` search finds (the first opening tag that has a closing
    tag after it, up to the nearest one), found with two `str.find` calls: the regex backtracks quadratically on a
    completion made of thousands of unclosed `<answer>` tags.
    """
    text = text.strip()
    start = text.find(_OPEN)
    if start < 0:
        return ""
    end = text.find(_CLOSE, start + len(_OPEN))
    return "" if end < 0 else text[start + len(_OPEN) : end].strip().lower()


def _is_number(value: object) -> bool:
    """What the release accepts as a coordinate (`isinstance(v, (int, float))`, so JSON true/false too), finite."""
    if not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int too large for a float
        return False


def parse_boxes(block: str) -> list[Box] | None:
    """Boxes from an answer block (already lowercased by `answer_block`); None when no valid box survives.

    Steps, in the release's order: `[[` -> `[` and `]]` -> `]`; if the text does not end with `]`, cut after the
    last complete `}` (at the last `},`) and close the list with `}]`; `'` -> `"`; drop every backslash; JSON-parse;
    keep dicts with a `bbox_2d` list of 4 numbers where x1 <= x2 and y1 <= y2 and a string `label`; drop later boxes
    whose coordinates equal an earlier one's (labels ignored). Never raises.
    """
    if not isinstance(block, str) or not block.strip():
        return None
    text = block.replace("[[", "[").replace("]]", "]")
    if not text.endswith("]"):
        text = text.rsplit("},", 1)[0] + "}]"
    text = text.replace("'", '"').replace("\\", "")
    try:
        items = json.loads(text)
    except Exception:  # ValueError for bad JSON, RecursionError for absurd nesting
        return None
    if not isinstance(items, list):
        return None
    boxes: list[Box] = []
    seen: set[tuple] = set()
    for item in items:
        if not isinstance(item, dict) or "bbox_2d" not in item or "label" not in item:
            continue
        coords, label = item["bbox_2d"], item["label"]
        if not isinstance(coords, list) or len(coords) != 4 or not all(_is_number(c) for c in coords):
            continue
        if not (coords[0] <= coords[2] and coords[1] <= coords[3]) or not isinstance(label, str):
            continue
        key = tuple(coords)  # Python equality, as the release's set: 1 == 1.0 == True
        if key in seen:
            continue
        seen.add(key)
        boxes.append(Box(coords[0], coords[1], coords[2], coords[3], label))
    return boxes or None


def parse_answer_boxes(text: str) -> list[Box] | None:
    """`parse_boxes(answer_block(text))`: boxes of the first answer block of a completion or a gold string."""
    return parse_boxes(answer_block(text))


def normalize_boxes(boxes: Sequence[Box], width: float, height: float) -> list[Box]:
    """Absolute pixels -> the 0-1000 grid of the gold: `int(x / W * 1000)`, `int(y / H * 1000)` (truncation).

    W, H are the size of the image as the model saw it. Duplicates created by the truncation are kept, as in the
    release. A box whose scaled coordinates overflow to infinity (only absurd outputs such as 1e308 do) is dropped
    like any other invalid box; the release crashes on it and scores the whole sample 0.
    """
    out = []
    for b in boxes:
        scaled = (
            b.x1 / width * NORMALIZED_RANGE,
            b.y1 / height * NORMALIZED_RANGE,
            b.x2 / width * NORMALIZED_RANGE,
            b.y2 / height * NORMALIZED_RANGE,
        )
        if all(math.isfinite(v) for v in scaled):
            out.append(Box(int(scaled[0]), int(scaled[1]), int(scaled[2]), int(scaled[3]), b.label))
    return out


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two `[x1, y1, x2, y2]` boxes; 0.0 when they do not overlap with positive area."""
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2, iy2 = min(a[2], b[2]), min(a[3], b[3])
    if ix2 <= ix1 or iy2 <= iy1:
        return 0.0
    inter = (ix2 - ix1) * (iy2 - iy1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter) / union


def boxes_to_array(boxes: Sequence[Box]) -> np.ndarray:
    """(N, 4) float64 array of `[x1, y1, x2, y2]`."""
    return np.array([b.coords for b in boxes], dtype=np.float64).reshape(-1, 4)


def iou_matrix(preds: Sequence[Box], gts: Sequence[Box]) -> np.ndarray:
    """(P, G) IoU matrix with the same float64 operations, in the same order, as `iou` (so values are identical).

    Absurd coordinates (around 1e308) can overflow to inf and make a ratio NaN; such entries are 0.0 so the
    greedy matchers never pick them.
    """
    p, g = boxes_to_array(preds), boxes_to_array(gts)
    with np.errstate(over="ignore", invalid="ignore"):
        ix1 = np.maximum(p[:, None, 0], g[None, :, 0])
        iy1 = np.maximum(p[:, None, 1], g[None, :, 1])
        ix2 = np.minimum(p[:, None, 2], g[None, :, 2])
        iy2 = np.minimum(p[:, None, 3], g[None, :, 3])
        overlap = (ix2 > ix1) & (iy2 > iy1)
        inter = (ix2 - ix1) * (iy2 - iy1)
        area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
        area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
        union = area_p[:, None] + area_g[None, :] - inter
        out = np.zeros(overlap.shape, dtype=np.float64)
        np.divide(inter, union, out=out, where=overlap)
    out[np.isnan(out)] = 0.0
    return out
