"""The multi-verifier form: `"verifier": [{"name", "weight", "verifier_parm"}, ...]`, checked and combined."""

from __future__ import annotations

import json

import numpy as np
import pytest

from triune_trl.errors import RewardSpecError
from triune_trl.rewards import RewardRouter, RewardSpec, score_sample, validate_reward_spec, verifier_names

RATIO = {
    "iou_max_label_first": 1.0,
    "iou_max_iou_first": 0.0,
    "iou_completeness": 0.0,
    "map": 0.0,
    "map50": 0.0,
    "map75": 0.0,
}
DETECTION_PLUS_LENGTH = {
    "ground_truth": '<answer>\n[{"bbox_2d": [0, 0, 100, 100], "label": "dog"}]\n</answer>',
    "accuracy_ratio": 1.0,
    "format_ratio": 0.1,
    "verifier": [
        {"name": "detection", "weight": 1.0},
        {"name": "length", "weight": 0.1, "verifier_parm": {"max_length": 20}},
    ],
    "verifier_parm": {"det_verifier_normalized": True, "det_reward_ratio": RATIO},  # the detection entry's
}
PRED_90 = '<think>\nthere\n</think>\n<answer>\n[{"bbox_2d": [0, 0, 100, 90], "label": "dog"}]\n</answer>'


def count_plus_length(**row) -> dict:
    return {
        "ground_truth": "\\boxed{3}",
        "accuracy_ratio": 1.0,
        "format_ratio": 0.5,
        "verifier": [
            {"name": "counting", "weight": 1},
            {"name": "length", "weight": 0.1, "verifier_parm": {"max_length": 3}},
        ],
        **row,
    }


def test_weighted_accuracy_first_entry_format_and_prefixed_sub_scores():
    completion = "<think>\nx\n</think>\n<answer>\n\\boxed{3}\n</answer>"  # 6 words: length 0 (3 past 3, decay 3)
    result = score_sample(completion, count_plus_length())
    assert result["accuracy_reward"] == pytest.approx((1.0 * 1 + 0.1 * 0) / 1.1)
    assert result["format_reward"] == 1.0  # counting's (the release tag format), all four tags once
    assert result["final_reward"] == pytest.approx((1 / 1.1) * (1 / 1.5) + 1.0 * (0.5 / 1.5))
    assert result["counting_accuracy"] == 1.0 and result["length_accuracy"] == 0.0
    assert result["counting_exact"] == 1.0  # already prefixed by its verifier: not doubled
    assert result["length_answer_length"] == 6.0
    assert result["counting_format"] == 1.0 and result["length_format"] == 1.0


def test_an_unverifiable_entry_makes_the_sample_unverifiable():
    spec = count_plus_length(ground_truth="\\boxed{many}")  # not a count
    result = score_sample("\\boxed{3}", spec)
    assert result["final_reward"] is None and result["accuracy_reward"] is None
    assert result["unverifiable_reason"].startswith("counting: ")
    assert result["format_reward"] == 0.0  # still reported


def test_detection_plus_length_through_the_router_workers():
    router = RewardRouter(iou_threshold=0.85, workers=2)
    try:
        rewards = router(
            prompts=["p"] * 2,
            completions=[PRED_90, "no boxes"],
            reward_model=[DETECTION_PLUS_LENGTH] * 2,
            image_sizes=[[[1000, 1000]]] * 2,
        )
    finally:
        router.close()
    # detection accuracy 0.9 (IoU 0.9 label-first at tau 0.85), length 1 (8 words <= 20): (0.9 + 0.1) / 1.1
    accuracy = (0.9 + 0.1) / 1.1
    assert rewards[0] == pytest.approx(accuracy / 1.1 + 1.0 * 0.1 / 1.1)
    assert router.last_scores[0]["detection_size_penalty"] == 1.0
    assert router.last_scores[0]["detection_label_first_iou50_mean_iou"] == pytest.approx(0.9)
    # no boxes: detection 0, format 0, length 1 ("no boxes" is 2 words)
    assert rewards[1] == pytest.approx((0.1 / 1.1) / 1.1)


def test_entries_inherit_the_row_parameters_unless_they_have_their_own():
    spec = RewardSpec.from_dict(DETECTION_PLUS_LENGTH)
    detection, length = spec.entries
    assert detection.verifier_parm.det_reward_ratio is not None and not detection.own_parm
    assert length.verifier_parm.extra == {"max_length": 20} and length.own_parm
    assert spec.verifier == "detection" and spec.verifier_names == ["detection", "length"]
    assert RewardSpec.from_dict(spec.to_dict()) == spec


def test_json_string_and_numpy_lists_are_accepted():
    """A parquet `verifier` column is a string; a list column read through pandas is a numpy array."""
    as_string = {**DETECTION_PLUS_LENGTH, "verifier": json.dumps(DETECTION_PLUS_LENGTH["verifier"])}
    as_array = {**DETECTION_PLUS_LENGTH, "verifier": np.array(DETECTION_PLUS_LENGTH["verifier"], dtype=object)}
    expected = RewardSpec.from_dict(DETECTION_PLUS_LENGTH)
    assert RewardSpec.from_dict(as_string) == expected == RewardSpec.from_dict(as_array)
    assert validate_reward_spec(as_string) == []


def test_verifier_names_helper():
    assert verifier_names(DETECTION_PLUS_LENGTH) == ["detection", "length"]
    assert verifier_names({"verifier": "mathverify"}) == ["mathverify"]
    assert verifier_names({"verifier": "[broken"}) == [] and verifier_names(None) == []


@pytest.mark.parametrize(
    ("verifier", "field"),
    [
        ([], "reward_model.verifier"),
        ("[not json", "reward_model.verifier"),
        ([{"name": "counting", "weight": 0}, {"name": "length", "weight": 0}], "reward_model.verifier"),
        (["counting"], "reward_model.verifier[0]"),
        ([{"weight": 1}], "reward_model.verifier[0].name"),
        ([{"name": "counting"}, {"name": "counting"}], "reward_model.verifier[1].name"),
        ([{"name": "counting", "weight": -1}], "reward_model.verifier[0].weight"),
        ([{"name": "counting", "weight": float("nan")}], "reward_model.verifier[0].weight"),
        ([{"name": "counting", "wieght": 1}], "reward_model.verifier[0].wieght"),
        ([{"name": "counting", "verifier_parm": "{bad"}], "reward_model.verifier[0].verifier_parm"),
    ],
)
def test_malformed_lists_name_the_field(verifier, field):
    spec = {**count_plus_length(), "verifier": verifier}
    with pytest.raises(RewardSpecError) as caught:
        RewardSpec.from_dict(spec)
    assert caught.value.field == field
    assert validate_reward_spec(spec) == [(field, caught.value.message)]
    assert score_sample("\\boxed{3}", spec)["final_reward"] is None


def test_an_unknown_verifier_in_the_list_names_its_entry():
    spec = {**count_plus_length(), "verifier": [{"name": "counting"}, {"name": "no_such"}]}
    [(field, message)] = validate_reward_spec(spec)
    assert field == "reward_model.verifier[1].name" and "unknown verifier 'no_such'" in message
    assert "no_such" in score_sample("\\boxed{3}", spec)["unverifiable_reason"]


def test_entry_parameter_problems_name_the_entry_or_the_row():
    own = count_plus_length()
    own["verifier"][1]["verifier_parm"] = {"max_length": 0}
    [(field, message)] = validate_reward_spec(own)
    assert (field, message) == ("reward_model.verifier[1].verifier_parm.max_length", "length: must be >= 1, got 0")
    inherited = {**count_plus_length(), "verifier_parm": {"tolerance": -1}}
    [(field, message)] = validate_reward_spec(inherited)
    assert field == "reward_model.verifier_parm.tolerance" and message.startswith("counting: ")
