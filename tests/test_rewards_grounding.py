"""The `grounding` verifier: single-box IoU at the tau schedule, or continuous. IoUs worked out in the comments."""

from __future__ import annotations

import pytest

from triune_trl.rewards import score_sample, validate_reward_spec
from triune_trl.rewards.verifiers.grounding import first_box

GOLD = "<answer>\n[{'bbox_2d': [0, 0, 100, 100], 'label': 'the red mug'}]\n</answer>"


def ground_spec(gold: str = GOLD, normalized: bool | None = None, **parm) -> dict:
    return {
        "ground_truth": gold,
        "verifier": "grounding",
        "accuracy_ratio": 1.0,
        "format_ratio": 0.1,
        "verifier_parm": {"det_verifier_normalized": normalized, **parm},
    }


def answer(box: str) -> str:
    return f"<think>\nthere\n</think>\n<answer>\n{box}\n</answer>"


IOU_90 = answer('[{"bbox_2d": [0, 0, 100, 90], "label": "mug"}]')  # 9000 / 10000


def test_threshold_mode_follows_a_fixed_tau():
    assert score_sample(IOU_90, ground_spec(), iou_threshold=0.85)["accuracy_reward"] == 1.0
    assert score_sample(IOU_90, ground_spec(), iou_threshold=0.95)["accuracy_reward"] == 0.0


def test_dynamic_schedule_and_average():
    early = score_sample(IOU_90, ground_spec(), step=10, total_steps=100)  # progress 0.10 -> tau 0.85
    late = score_sample(IOU_90, ground_spec(), step=30, total_steps=100)  # progress 0.30 -> tau 0.99
    assert (early["accuracy_reward"], late["accuracy_reward"]) == (1.0, 0.0)
    # average: IoU 0.9 passes 0.5, 0.55, ..., 0.9 (9 of the 11 thresholds)
    assert score_sample(IOU_90, ground_spec(), iou_threshold="average")["accuracy_reward"] == pytest.approx(9 / 11)
    missing = score_sample(IOU_90, ground_spec())
    assert missing["accuracy_reward"] is None and "step and total_steps" in missing["unverifiable_reason"]


def test_continuous_mode_needs_no_progress():
    result = score_sample(IOU_90, ground_spec(mode="continuous"))
    assert result["accuracy_reward"] == pytest.approx(0.9)
    assert result["grounding_iou"] == pytest.approx(0.9)
    assert result["final_reward"] == pytest.approx(0.9 / 1.1 + 1.0 * 0.1 / 1.1)  # format 1


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ("[0, 0, 100, 100]", 1.0),  # a bare list
        ('{"bbox_2d": [0, 0, 100, 100]}', 1.0),  # no label needed
        ("[-10, -10, 50, 50]", 2500 / 11100),  # negatives: inter 50*50, union 60*60 + 100*100 - 2500
        ("[0.0, 0.0, 50.5, 100]", 0.505),
        ("[100, 0, 0, 100]", 0.0),  # x1 > x2: no box
        ("[nan, 0, 10, 10]", 0.0),  # not a number
        ("[0, 0, 1e999, 100]", 0.0),  # infinite coordinate: no box
        ("[0, 0, 1e308, 1e308]", 0.0),  # finite but absurd: the IoU is 1e4 / 1e616 -> 0
        ("[0, 0, 100]", 0.0),  # three numbers
        ("", 0.0),  # empty answer
        ("[[[[[[", 0.0),
    ],
)
def test_boxes(box, expected):
    result = score_sample(answer(box), ground_spec(mode="continuous"))
    assert result["accuracy_reward"] == pytest.approx(expected)


def test_first_box_of_several_and_labels_ignored():
    two = answer('[{"bbox_2d": [0, 0, 100, 100], "label": "cup"}, {"bbox_2d": [500, 500, 600, 600], "label": "x"}]')
    assert score_sample(two, ground_spec(mode="continuous"))["accuracy_reward"] == 1.0
    unicode_label = answer('[{"bbox_2d": [0, 0, 100, 100], "label": "红色杯子"}]')
    assert score_sample(unicode_label, ground_spec(mode="continuous"))["accuracy_reward"] == 1.0


def test_normalized_coordinates_use_the_image_size():
    # pixels [0, 0, 200, 200] on a 2000x2000 image -> grid [0, 0, 100, 100]
    pixels = answer("[0, 0, 200, 200]")
    spec = ground_spec(normalized=True, mode="continuous")
    assert score_sample(pixels, spec, image_size=[2000, 2000])["accuracy_reward"] == 1.0
    assert score_sample(pixels, spec, image_size=[1000, 1000])["accuracy_reward"] == pytest.approx(0.25)
    assert score_sample(pixels, spec)["accuracy_reward"] is None  # no image size: cannot map


def test_format_reward():
    assert score_sample(IOU_90, ground_spec(mode="continuous"))["format_reward"] == 1.0
    no_box = score_sample(answer("a mug"), ground_spec(mode="continuous"))
    assert (no_box["format_reward"], no_box["accuracy_reward"]) == (0.0, 0.0)
    assert score_sample("[0, 0, 100, 100]", ground_spec(mode="continuous"))["format_reward"] == 0.0
    full = score_sample("[0, 0, 100, 100]", ground_spec(mode="continuous", answer_source="full"))
    assert full["accuracy_reward"] == 1.0


def test_first_box_parser():
    assert first_box("[1, 2, 3, 4]").coords == (1, 2, 3, 4)
    assert first_box("[ 1.5 ,2,3e1, 4 ]").coords == (1.5, 2, 30.0, 4)
    assert first_box("x" * 1_000_000) is None


@pytest.mark.parametrize(
    ("gold", "parm", "field"),
    [
        ("<answer>nothing</answer>", {}, "reward_model.ground_truth"),
        ("[10, 10, 0, 0]", {}, "reward_model.ground_truth"),
        (GOLD, {"mode": "soft"}, "reward_model.verifier_parm.mode"),
        (GOLD, {"answer_source": "boxed"}, "reward_model.verifier_parm.answer_source"),
    ],
)
def test_bad_specs(gold, parm, field):
    [(got, _)] = validate_reward_spec(ground_spec(gold, **parm))
    assert got == field
