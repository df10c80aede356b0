"""`coco_map` equals pycocotools run the way the release's reward server runs it, and hand-computed cases."""

from __future__ import annotations

import random

import pytest

from triune_trl.rewards.coco_map import coco_map
from triune_trl.rewards.coco_reference import pycocotools_map

pytest.importorskip("pycocotools")


def release_map(preds: list[tuple[list[float], str]], gold: list[tuple[list[float], str]]) -> tuple[float, ...]:
    """The release's recipe (pycocotools per call) on (box, label) pairs."""
    result = pycocotools_map(
        [b for b, _ in preds], [label for _, label in preds], [b for b, _ in gold], [lb for _, lb in gold]
    )
    return (result.map, result.map50, result.map75)


def ours(preds, gold) -> tuple[float, ...]:
    result = coco_map(
        [b for b, _ in preds], [label for _, label in preds], [b for b, _ in gold], [lb for _, lb in gold]
    )
    return (result.map, result.map50, result.map75)


def _random_box(rng: random.Random, integer: bool) -> list[float]:
    x1 = rng.randint(0, 900) if integer else rng.uniform(0, 900)
    y1 = rng.randint(0, 900) if integer else rng.uniform(0, 900)
    w = rng.choice([0, 1, 2, rng.randint(0, 300)])  # includes degenerate and tiny boxes
    h = rng.choice([0, 1, 2, rng.randint(0, 300)])
    return [x1, y1, x1 + w, y1 + h]


def _random_case(rng: random.Random):
    labels = ["a", "b", "c"][: rng.randint(1, 3)]
    integer = rng.random() < 0.7
    gold = [(_random_box(rng, integer), rng.choice(labels)) for _ in range(rng.randint(1, 8))]
    preds = []
    for _ in range(rng.choice([0, 0, rng.randint(1, 4), rng.randint(1, 14)])):
        draw = rng.random()
        if draw < 0.45:  # near a gold box, usually with its label
            (x1, y1, x2, y2), label = rng.choice(gold)
            jitter = [v + rng.randint(-15, 15) for v in (x1, y1, x2, y2)]
            box = [
                min(jitter[0], jitter[2]),
                min(jitter[1], jitter[3]),
                max(jitter[0], jitter[2]),
                max(jitter[1], jitter[3]),
            ]
            preds.append((box, label if rng.random() < 0.8 else rng.choice(labels + ["zebra"])))
        elif draw < 0.6 and preds:  # an exact duplicate of an earlier prediction
            preds.append(rng.choice(preds))
        elif draw < 0.7:  # an exact copy of a gold box
            preds.append(rng.choice(gold))
        else:
            preds.append((_random_box(rng, integer), rng.choice(labels + ["zebra"])))
    return preds, gold


def test_equals_pycocotools_on_300_random_single_image_cases():
    rng = random.Random(20250531)
    empty = 0
    for case in range(300):
        preds, gold = _random_case(rng)
        empty += not preds
        expected, got = release_map(preds, gold), ours(preds, gold)
        assert got == pytest.approx(expected, abs=1e-9), f"case {case}: preds={preds} gold={gold}"
    assert empty >= 20  # the no-prediction path is exercised


def test_equals_pycocotools_with_ignored_gold_and_more_than_100_detections():
    """Gold with area > 1e10 is 'ignored' by COCO's area range; only the first 100 detections count."""
    rng = random.Random(7)
    for case in range(40):
        gold = [([0, 0, 200000, 200000], "a") if rng.random() < 0.4 else (_random_box(rng, True), "a")]
        gold += [(_random_box(rng, True), rng.choice("ab")) for _ in range(rng.randint(0, 3))]
        preds = [([0, 0, 200000, 200000], "a")] if rng.random() < 0.5 else []
        preds += [(_random_box(rng, True), rng.choice("ab")) for _ in range(rng.randint(0, 130))]
        preds += [gold[0]] * rng.randint(0, 2)
        assert ours(preds, gold) == pytest.approx(release_map(preds, gold), abs=1e-9), f"case {case}"


GOLD = [([0, 0, 100, 100], "dog")]


def test_perfect_prediction():
    assert ours(GOLD, GOLD) == pytest.approx((1.0, 1.0, 1.0))


def test_no_prediction_or_only_unknown_labels_scores_zero():
    assert ours([], GOLD) == (0.0, 0.0, 0.0)
    assert ours([([0, 0, 100, 100], "cat")], GOLD) == (0.0, 0.0, 0.0)


def test_written_order_decides_which_duplicate_is_the_true_positive():
    # d0 has IoU 0.6 (pred [0,0,100,60]), d1 IoU 1.0. All scores are 1.0, so d0 is evaluated first.
    # t in {.5,.55,.6}: d0 TP, d1 FP -> precision 1 up to recall 1 -> AP 1.
    # t in {.65 ... .95} (7 thresholds): d0 FP, d1 TP -> precision envelope 0.5 everywhere -> AP 0.5.
    # mAP = (3 * 1 + 7 * 0.5) / 10 = 0.65; mAP50 = 1; mAP75 = 0.5.
    d0, d1 = ([0, 0, 100, 60], "dog"), ([0, 0, 100, 100], "dog")
    assert ours([d0, d1], GOLD) == pytest.approx((0.65, 1.0, 0.5), abs=1e-12)
    # the other way round d1 is the TP at every threshold and d0 comes after recall 1: AP 1.
    assert ours([d1, d0], GOLD) == pytest.approx((1.0, 1.0, 1.0), abs=1e-12)


def test_only_the_first_100_detections_per_category_count():
    misses = [([1000 + 10 * i, 0, 1005 + 10 * i, 5], "dog") for i in range(100)]
    assert ours(misses + GOLD, GOLD) == (0.0, 0.0, 0.0)  # the exact box is the 101st
    assert ours(GOLD + misses, GOLD) == pytest.approx((1.0, 1.0, 1.0))  # first: TP at recall 1 right away


def test_mean_runs_over_categories():
    # "dog" found exactly (AP 1), "cat" missed (AP 0): mAP 0.5
    gold = GOLD + [([200, 200, 300, 300], "cat")]
    assert ours(GOLD, gold) == pytest.approx((0.5, 0.5, 0.5))


def test_only_ignored_gold_is_undefined_like_pycocotools():
    huge = [([0, 0, 200000, 200000], "dog")]  # area 4e10 is outside COCO's "all" range [0, 1e10]
    assert ours(huge, huge) == (-1.0, -1.0, -1.0)
    assert release_map(huge, huge) == (-1.0, -1.0, -1.0)
