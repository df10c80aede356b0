"""The `detection` verifier: box parsing, IoU, both matchers, per-tau scores, tau modes, coordinates, accuracy.

Every expected value is computed by hand in the comments next to it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from triune_trl.rewards import RewardSpec, ScoringContext, get_verifier, score_sample, validate_reward_spec
from triune_trl.rewards.boxes import (
    Box,
    answer_block,
    iou,
    iou_matrix,
    normalize_boxes,
    parse_answer_boxes,
    parse_boxes,
)
from triune_trl.rewards.iou_schedule import IOU_THRESHOLDS, dynamic_iou_threshold, iou_thresholds, parse_iou_threshold
from triune_trl.rewards.verifiers.detection import (
    DETECTION_SUB_SCORES,
    RELEASE_SUB_SCORE_NAMES,
    detection_format_reward,
    match_iou_first,
    match_label_first,
    size_penalty,
    threshold_scores,
)

REAL_ROW_RATIO = {
    "iou_max_label_first": 1.0,
    "iou_max_iou_first": 0.0,
    "iou_completeness": 0.3,
    "map": 0.0,
    "map50": 0.0,
    "map75": 0.0,
}


def ratio(**weights: float) -> dict:
    return {**dict.fromkeys(REAL_ROW_RATIO, 0.0), **weights}


def det_spec(gold_boxes: list[dict], weights: dict | None = None, normalized: bool = False, fmt: float = 0.1) -> dict:
    return {
        "answer": json.dumps(gold_boxes),
        "ground_truth": "<answer>\n" + json.dumps(gold_boxes) + "\n</answer>",
        "accuracy_ratio": 1.0,
        "format_ratio": fmt,
        "verifier": "detection",
        "verifier_parm": {"det_verifier_normalized": normalized, "det_reward_ratio": weights or REAL_ROW_RATIO},
    }


def answer(boxes: list[dict] | str) -> str:
    body = boxes if isinstance(boxes, str) else json.dumps(boxes)
    return f"<think>\nlooking\n</think>\n<answer>\n{body}\n</answer>"


def box(x1, y1, x2, y2, label="dog") -> dict:
    return {"bbox_2d": [x1, y1, x2, y2], "label": label}


# ------------------------------------------------------------------------------------------------ parsing


def test_answer_block_is_the_first_block_stripped_and_lowercased():
    text = "  <answer> [{'Label': 'DOG'}] </answer> <answer>second</answer>  "
    assert answer_block(text) == "[{'label': 'dog'}]"
    assert answer_block("no block") == ""


def test_truncated_list_is_cut_after_the_last_complete_box():
    block = "[{'bbox_2d': [1, 2, 3, 4], 'label': 'a'}, {'bbox_2d': [5, 6, 7, 8], 'label': 'b'}, {'bbox_2d': [9, 1"
    assert parse_boxes(block) == [Box(1, 2, 3, 4, "a"), Box(5, 6, 7, 8, "b")]


def test_doubled_brackets_are_collapsed():
    assert parse_boxes('[[{"bbox_2d": [[1, 2, 3, 4]], "label": "a"}]]') == [Box(1, 2, 3, 4, "a")]


def test_single_quotes_and_backslashes_are_repaired():
    assert parse_boxes("[{'bbox_2d': [1, 2, 3, 4], 'label': 'a'}]") == [Box(1, 2, 3, 4, "a")]
    assert parse_boxes('[{\\"bbox_2d\\": [1, 2, 3, 4], \\"label\\": \\"a\\"}]') == [Box(1, 2, 3, 4, "a")]


def test_duplicate_coordinates_keep_the_first_box_whatever_the_label():
    block = '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [1.0, 2, 3, 4], "label": "b"}]'
    assert parse_boxes(block) == [Box(1, 2, 3, 4, "a")]


def test_invalid_boxes_are_dropped_and_nothing_left_is_none():
    block = json.dumps(
        [
            {"bbox_2d": [5, 2, 3, 4], "label": "x1>x2"},
            {"bbox_2d": [1, 5, 3, 4], "label": "y1>y2"},
            {"bbox_2d": [1, 2, 3], "label": "three"},
            {"bbox_2d": ["1", 2, 3, 4], "label": "string coord"},
            {"bbox_2d": [1, 2, 3, 4], "label": 7},
            {"bbox_2d": [1, 2, 3, 4]},
            [1, 2, 3, 4],
        ]
    )
    assert parse_boxes(block) is None
    assert parse_boxes("[]") is None
    assert parse_boxes("") is None
    assert parse_boxes('{"bbox_2d": [1, 2, 3, 4], "label": "a"}') is None  # an object, not a list


def test_an_apostrophe_in_a_label_breaks_parsing_as_in_the_release():
    assert parse_boxes("[{'bbox_2d': [1, 2, 3, 4], 'label': \"dog's toy\"}]") is None


def test_non_finite_coordinates_are_dropped():
    assert parse_boxes('[{"bbox_2d": [0, 0, 1e999, 4], "label": "a"}, {"bbox_2d": [0, 0, 2, 2], "label": "b"}]') == [
        Box(0, 0, 2, 2, "b")
    ]


@pytest.mark.parametrize(
    "text",
    ["<answer>" + "[" * 5000 + "</answer>", "<answer>\n[{'bbox_2d': [1e400, 1, 2, 3]\n</answer>", "\x00", "<answer>"],
)
def test_parsing_never_raises(text):
    assert parse_answer_boxes(text) is None


# -------------------------------------------------------------------------------------------- IoU, coordinates


def test_iou_values():
    assert iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)  # inter 5*5, union 100+100-25
    assert iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges do not overlap
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    matrix = iou_matrix([Box(0, 0, 10, 10, "a"), Box(10, 0, 20, 10, "a")], [Box(5, 5, 15, 15, "a")])
    assert matrix.tolist() == [[25 / 175], [25 / 175]]


def test_normalisation_truncates_to_the_0_1000_grid():
    # W=640, H=480: 64/640*1000 = 100, 48/480*1000 = 100, 1/3*1000 = 333.3 -> 333
    assert normalize_boxes([Box(64, 48, 320, 240, "a")], 640, 480) == [Box(100, 100, 500, 500, "a")]
    assert normalize_boxes([Box(1, 1, 2, 2, "a")], 3, 3) == [Box(333, 333, 666, 666, "a")]


# ----------------------------------------------------------------------------------------------- matching


def test_iou_first_takes_the_global_maximum_first_and_breaks_ties_by_earliest_prediction_then_gold():
    ious = np.array([[0.8, 0.8], [0.8, 0.6]])
    matches = match_iou_first(ious, ["a", "a"], ["a", "a"], 0.5)
    assert [(m.pred, m.gold, m.iou) for m in matches] == [(0, 0, 0.8), (1, 1, 0.6)]


def test_iou_first_label_mismatch_still_consumes_the_pair():
    # pred 0 ("cat") overlaps the dog gold best (0.9): the pair is consumed and scores 0, so the correctly
    # labelled pred 1 (0.7) finds no gold left.
    ious = np.array([[0.9], [0.7]])
    matches = match_iou_first(ious, ["cat", "dog"], ["dog"], 0.5)
    assert [(m.pred, m.gold, m.iou) for m in matches] == [(0, 0, 0.0)]
    scores = threshold_scores(matches, n_pred=2, n_gold=1, completeness_weight=0.0)
    assert (scores.mean_iou, scores.recall, scores.precision) == (0.0, 1.0, 0.5)
    # label-first only considers same-label predictions and takes pred 1
    assert [(m.pred, m.iou) for m in match_label_first(ious, ["cat", "dog"], ["dog"], 0.5)] == [(1, 0.7)]


def test_the_two_strategies_differ_when_gold_order_matters():
    # iou-first: (0,1)=0.9 first, then only (1,0)=0.0 is left -> one match.
    # label-first: gold 0 takes pred 0 (0.7), gold 1 takes pred 1 (0.6) -> two matches.
    ious = np.array([[0.7, 0.9], [0.0, 0.6]])
    labels = ["a", "a"]
    assert [(m.pred, m.gold, m.iou) for m in match_iou_first(ious, labels, labels, 0.5)] == [(0, 1, 0.9)]
    assert [(m.pred, m.gold, m.iou) for m in match_label_first(ious, labels, labels, 0.5)] == [
        (0, 0, 0.7),
        (1, 1, 0.6),
    ]


def test_iou_first_stops_below_tau():
    assert match_iou_first(np.array([[0.49]]), ["a"], ["a"], 0.5) == []
    assert [m.iou for m in match_iou_first(np.array([[0.5]]), ["a"], ["a"], 0.5)] == [0.5]  # >= tau matches


def test_label_first_tie_goes_to_the_earliest_prediction():
    # gold 0 [0,0,10,10]: pred 0 [0,0,10,5] and pred 1 [0,5,10,10] both have IoU 0.5 -> pred 0 (earliest).
    # gold 1 [0,5,10,10] then takes pred 1 with IoU 1.0. Had the tie gone to pred 1, gold 1 would get IoU 0.
    preds = [Box(0, 0, 10, 5, "a"), Box(0, 5, 10, 10, "a")]
    gold = [Box(0, 0, 10, 10, "a"), Box(0, 5, 10, 10, "a")]
    matches = match_label_first(iou_matrix(preds, gold), ["a", "a"], ["a", "a"], 0.5)
    assert [(m.pred, m.gold, m.iou) for m in matches] == [(0, 0, 0.5), (1, 1, 1.0)]
    assert threshold_scores(matches, 2, 2, 0.0).mean_iou == 0.75


def test_labels_compare_case_insensitively():
    ious = np.array([[0.8]])
    assert [m.iou for m in match_label_first(ious, ["Dog"], ["dOG"], 0.5)] == [0.8]
    assert [m.iou for m in match_iou_first(ious, ["Dog"], ["dOG"], 0.5)] == [0.8]


def test_completeness_and_its_mix_with_mean_iou():
    # G=2, P=3, one match of IoU 0.8: mean_iou 0.4, miss 1/2, fa 2/3, completeness 1 - (1/2 + 2/3)/2 = 5/12
    from triune_trl.rewards.verifiers.detection import Match

    scores = threshold_scores([Match(0, 0, 0.8)], n_pred=3, n_gold=2, completeness_weight=0.3)
    assert scores.mean_iou == pytest.approx(0.4)
    assert scores.completeness == pytest.approx(5 / 12)
    assert scores.precision == pytest.approx(1 / 3)
    assert scores.recall == pytest.approx(0.5)
    assert scores.score == pytest.approx(0.4 * 0.7 + 5 / 12 * 0.3)


def test_size_penalty():
    assert size_penalty(2, 2) == 1.0
    assert size_penalty(3, 1) == pytest.approx(0.36)
    assert size_penalty(1, 4) == pytest.approx(0.216)


# ------------------------------------------------------------------------------------------------ tau modes


@pytest.mark.parametrize(
    ("step", "total", "tau"),
    [(1, 100, 0.85), (10, 100, 0.85), (11, 100, 0.95), (25, 100, 0.95), (26, 100, 0.99), (100, 100, 0.99)],
)
def test_dynamic_threshold_and_its_boundaries(step, total, tau):
    assert dynamic_iou_threshold(step, total) == tau
    assert iou_thresholds("dynamic", step, total) == [tau]


def test_threshold_settings_are_validated():
    assert iou_thresholds("average") == list(IOU_THRESHOLDS) == [
        0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99
    ]  # fmt: skip
    assert iou_thresholds(0.75) == [0.75]
    assert parse_iou_threshold("0.5") == 0.5
    assert parse_iou_threshold(" Dynamic ") == "dynamic"
    for bad in ("dynamc", 0, 1.5, -0.1, True, None, float("nan")):
        with pytest.raises(ValueError, match="iou_threshold"):
            parse_iou_threshold(bad)
    with pytest.raises(ValueError, match="step and total_steps"):
        iou_thresholds("dynamic")
    with pytest.raises(ValueError, match="total_steps > 0"):
        iou_thresholds("dynamic", 3, 0)


# A prediction with IoU 0.9 against a single gold (pred [0,0,100,90], gold [0,0,100,100]: 9000/10000).
GOLD_100 = [box(0, 0, 100, 100)]
PRED_90 = answer([box(0, 0, 100, 90)])
PURE_IOU = ratio(iou_max_label_first=1.0)  # c = 0: the accuracy is the matched mean IoU


@pytest.mark.parametrize(
    ("setting", "step", "expected"),
    [
        ("dynamic", 10, 0.9),  # progress 0.10 -> tau 0.85 <= 0.9: matched
        ("dynamic", 11, 0.0),  # progress 0.11 -> tau 0.95: unmatched
        ("dynamic", 25, 0.0),  # progress 0.25 -> tau 0.95
        (0.9, None, 0.9),
        (0.95, None, 0.0),
        ("average", None, 9 * 0.9 / 11),  # matched at 0.5 ... 0.9 (9 taus), 0 at 0.95 and 0.99
    ],
)
def test_each_threshold_mode_scores_the_same_prediction(setting, step, expected):
    result = score_sample(
        PRED_90, det_spec(GOLD_100, PURE_IOU), step=step, total_steps=100 if step else None, iou_threshold=setting
    )
    assert result["accuracy_reward"] == pytest.approx(expected, abs=1e-12)


def test_dynamic_threshold_without_progress_is_unverifiable():
    result = score_sample(PRED_90, det_spec(GOLD_100, PURE_IOU))
    assert result["accuracy_reward"] is None and result["final_reward"] is None
    assert "step and total_steps" in result["unverifiable_reason"]
    assert result["format_reward"] == 1.0


# ------------------------------------------------------------------------------------------------ coordinates


def test_normalized_coordinates_use_the_image_size_the_model_saw():
    gold = [box(100, 100, 500, 500)]
    pixels = answer([box(64, 48, 320, 240)])  # on a 640x480 image: exactly the gold on the 0-1000 grid
    spec = det_spec(gold, PURE_IOU, normalized=True)
    result = score_sample(pixels, spec, image_size=(640, 480), iou_threshold=0.99)
    assert result["accuracy_reward"] == 1.0
    # read as absolute coordinates the same pixels overlap the gold only partly:
    # IoU = 220*140 / (256*192 + 400*400 - 220*140) = 30800 / 178352 = 0.173 < 0.5
    absolute = score_sample(pixels, det_spec(gold, PURE_IOU, normalized=False), iou_threshold=0.5)
    assert absolute["accuracy_reward"] == 0.0
    assert absolute["label_first_iou50_recall"] == 0.0


def test_normalized_without_image_size_is_unverifiable():
    result = score_sample(PRED_90, det_spec(GOLD_100, PURE_IOU, normalized=True), iou_threshold=0.5)
    assert result["accuracy_reward"] is None
    assert "image size" in result["unverifiable_reason"]


def test_labels_written_in_another_case_match():
    result = score_sample(answer([box(0, 0, 100, 90, "DOG")]), det_spec(GOLD_100, PURE_IOU), iou_threshold=0.5)
    assert result["accuracy_reward"] == pytest.approx(0.9)


# ------------------------------------------------------------------------------------------------ format


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (answer([box(1, 2, 3, 4)]), 1.0),
        ("\n<answer>\n[{'bbox_2d': [1, 2, 3, 4], 'label': 'a'}]\n</answer>", 1.0),  # <think> is not checked
        ("<answer>\n[{'bbox_2d': [1, 2, 3, 4], 'label': 'a'}]\n</answer>", 0.0),  # no "\n<answer>\n"
        ("\n<answer>\n[{'bbox_2d': [1, 2, 3, 4], 'label': 'a'}]</answer>", 0.0),  # no "\n</answer>"
        ("\n<answer>\n[{'bbox_2d': [1, 2, 3, 4], 'label': 'a'}]\n</answer>\n</answer>", 0.0),  # closed twice
        ("\n<answer>\n[{'bbox_2d': [1, 2, 3, 4], 'label': 'a'}]\n</answer>\n<answer>\n", 1.0),  # opened twice: ok
        ("\n<answer>\n[]\n</answer>", 0.0),  # no valid box
        ("\n<answer>\n[{'bbox_2d': [3, 2, 1, 4], 'label': 'a'}]\n</answer>", 0.0),  # x1 > x2
    ],
)
def test_format_rule(completion, expected):
    assert detection_format_reward(completion) == expected


# ------------------------------------------------------------------------------------------------ accuracy

# Two gold boxes and two predictions: "a" with IoU 0.82 (pred [0,0,100,82]) and "b" exact (IoU 1).
# At tau 0.85 (dynamic, early): label-first matches only "b": mean_iou 1/2, miss 1/2, fa 1/2, completeness 1/2,
#   so with c = 0.3 the IoU score is 0.5 * 0.7 + 0.5 * 0.3 = 0.5; iou-first does the same (1.0 first, then 0.82
#   is below tau) -> 0.5.
# mAP: category "a" reaches AP 1 at the 7 thresholds 0.5 ... 0.8 and 0 at 0.85, 0.9, 0.95; "b" AP 1 at all 10:
#   mAP = (7 + 10) / 20 = 0.85, mAP50 = 1, mAP75 = 1 (0.82 >= 0.75).
TWO_GOLD = [box(0, 0, 100, 100, "a"), box(200, 200, 300, 300, "b")]
TWO_PRED = answer([box(0, 0, 100, 82, "a"), box(200, 200, 300, 300, "b")])


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        (REAL_ROW_RATIO, 0.5),  # the released rows: label-first only, completeness 0.3
        (ratio(iou_max_iou_first=1.0, iou_completeness=0.3), 0.5),
        (ratio(map=1.0), 0.85),
        (ratio(map50=1.0), 1.0),
        (ratio(map=1.0, map75=1.0), (0.85 + 1.0) / 2),
        (ratio(iou_max_label_first=1.0, map50=0.5), (0.5 * 1.0 + 1.0 * 0.5) / 1.5),  # c = 0: IoU score 0.5
        (ratio(iou_completeness=1.0), 0.0),  # iou_completeness is not in the denominator: 0 / 0 -> 0
    ],
)
def test_accuracy_formula(weights, expected):
    result = score_sample(TWO_PRED, det_spec(TWO_GOLD, weights), step=1, total_steps=100)
    assert result["accuracy_reward"] == pytest.approx(expected, abs=1e-12)
    assert result["map"] == pytest.approx(0.85, abs=1e-12)
    assert (result["map50"], result["map75"], result["size_penalty"]) == (pytest.approx(1.0), pytest.approx(1.0), 1.0)


def test_size_penalty_scales_every_term():
    # an extra "c" box: P=3, G=2 -> penalty 0.6. label-first: one match -> mean_iou 0.5, miss 1/2, fa 2/3,
    # completeness 5/12 -> 0.5*0.7 + 5/12*0.3 = 0.475, times 0.6 = 0.285. mAP ignores the unknown label: 0.85*0.6.
    completion = answer([box(0, 0, 100, 82, "a"), box(200, 200, 300, 300, "b"), box(500, 500, 600, 600, "c")])
    result = score_sample(completion, det_spec(TWO_GOLD, REAL_ROW_RATIO), step=1, total_steps=100)
    assert result["accuracy_reward"] == pytest.approx(0.285, abs=1e-12)
    assert result["iou_score_label_first"] == pytest.approx(0.475, abs=1e-12)
    assert result["map_penalized"] == pytest.approx(0.51, abs=1e-12)
    # final = 0.285 * 1/1.1 + 1.0 (format) * 0.1/1.1
    assert result["final_reward"] == pytest.approx((0.285 + 0.1) / 1.1, abs=1e-12)


def test_report_scores_at_fixed_thresholds():
    result = score_sample(TWO_PRED, det_spec(TWO_GOLD), step=1, total_steps=100)
    # at 0.5 and 0.75 both boxes match: mean IoU (0.82 + 1) / 2; at 0.95 and 0.99 only "b": 1 / 2
    assert result["label_first_iou50_mean_iou"] == pytest.approx(0.91)
    assert result["label_first_iou75_precision"] == 1.0
    assert result["label_first_iou95_mean_iou"] == pytest.approx(0.5)
    assert result["label_first_iou99_recall"] == 0.5
    assert result["iou_first_iou95_precision"] == 0.5
    assert set(DETECTION_SUB_SCORES) <= set(result)
    assert RELEASE_SUB_SCORE_NAMES["iou_score_label_first"] == "pure_iou_score_max_label"
    assert len(DETECTION_SUB_SCORES) == 29  # the release's 29 extra scores, one name each


def test_duplicate_predictions_are_removed_before_counting():
    # the same box written twice counts once: P=1, no size penalty
    completion = answer([box(0, 0, 100, 90), box(0, 0, 100, 90)])
    result = score_sample(completion, det_spec(GOLD_100, PURE_IOU), iou_threshold=0.5)
    assert result["size_penalty"] == 1.0
    assert result["accuracy_reward"] == pytest.approx(0.9)


def test_truncated_and_single_quoted_completion_is_scored():
    completion = "<think>\nx\n</think>\n<answer>\n[{'bbox_2d': [0, 0, 100, 90], 'label': 'dog'}, {'bbox_2d': [5"
    result = score_sample(completion, det_spec(GOLD_100, PURE_IOU), iou_threshold=0.5)
    assert result["format_reward"] == 0.0  # no closing tag
    assert result["accuracy_reward"] == 0.0  # and no <answer>...</answer> block to read boxes from
    closed = completion + "\n</answer>"
    result = score_sample(closed, det_spec(GOLD_100, PURE_IOU), iou_threshold=0.5)
    assert (result["format_reward"], result["accuracy_reward"]) == (1.0, pytest.approx(0.9))


def test_no_valid_box_scores_zero_with_zero_sub_scores():
    result = score_sample("<answer>\nI see a dog\n</answer>", det_spec(GOLD_100), step=1, total_steps=10)
    assert result["accuracy_reward"] == 0.0
    assert all(result[name] == 0.0 for name in DETECTION_SUB_SCORES)


def test_gold_without_valid_boxes_is_unverifiable_and_reported_by_validation():
    spec = det_spec(GOLD_100)
    spec["ground_truth"] = "<answer>\nnothing\n</answer>"
    result = score_sample(PRED_90, spec, step=1, total_steps=10)
    assert result["accuracy_reward"] is None
    assert "no valid box in the gold" in result["unverifiable_reason"]
    [(field, message)] = validate_reward_spec(spec)
    assert field == "reward_model.ground_truth" and "no valid box" in message


def test_detection_rows_need_reward_weights():
    spec = det_spec(GOLD_100)
    spec["verifier_parm"]["det_reward_ratio"] = None
    assert [field for field, _ in validate_reward_spec(spec)] == ["reward_model.verifier_parm.det_reward_ratio"]
    assert score_sample(PRED_90, spec, iou_threshold=0.5)["accuracy_reward"] is None


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "<answer>\n" + "[" * 10000 + "\n</answer>",
        "<answer>\n[{'bbox_2d': [1e308, 1e308, 1e308, 1e308], 'label': 'dog'}]\n</answer>",
        "<answer>\n[{'bbox_2d': [0, 0, 1.7e308, 1.7e308], 'label': 'dog'}]\n</answer>",  # overflows when scaled
        "<answer>\n[{'bbox_2d': [0, 0, 99999999999999999999999, 1], 'label': 'dog'}]\n</answer>",
        "<answer>\n[{'bbox_2d': [-5, -5, 0, 0], 'label': 'dog'}]\n</answer>",
        "<answer>\n[{'bbox_2d': [true, 0, 1, 1], 'label': 'dog'}]\n</answer>",
        "<answer>\n" + json.dumps([box(i, i, i + 10, i + 10) for i in range(300)]) + "\n</answer>",
    ],
)
@pytest.mark.parametrize("normalized", [False, True])
def test_untrusted_completions_are_scored_without_raising(completion, normalized):
    verifier = get_verifier("detection")
    spec = RewardSpec.from_dict(det_spec(GOLD_100, ratio(iou_max_label_first=1.0, map=1.0), normalized=normalized))
    out = verifier.score(completion, spec, ScoringContext(image_size=(640, 480), iou_threshold="average"))
    assert out.unverifiable_reason is None
    assert 0.0 <= out.accuracy_reward <= 1.0
