"""`RewardSpec.from_dict` and `validate_reward_spec`: Orsta structs in, typed specs or dotted-path errors out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from triune_trl.errors import RewardSpecError
from triune_trl.rewards import RewardSpec, available_verifiers, validate_reward_spec
from triune_trl.rewards.spec import DetRewardRatio

RATIO = {
    "iou_max_label_first": 1.0,
    "iou_max_iou_first": 0.0,
    "iou_completeness": 0.3,
    "map": 0.0,
    "map50": 0.0,
    "map75": 0.0,
}
DETECTION = {
    "answer": "[]",
    "ground_truth": "<answer>\n[{'bbox_2d': [1, 2, 3, 4], 'label': 'dog'}]\n</answer>",
    "accuracy_ratio": 1.0,
    "format_ratio": 0.1,
    "verifier": "detection",
    "verifier_parm": {"det_verifier_normalized": True, "det_reward_ratio": RATIO},
}
MATH = {
    "answer": "4",
    "ground_truth": "\\boxed{4}",
    "accuracy_ratio": 1.0,
    "format_ratio": 0.0,
    "verifier": "mathverify",
    "verifier_parm": {"det_verifier_normalized": None, "det_reward_ratio": None},
}


def test_real_rows_parse():
    det = RewardSpec.from_dict(DETECTION)
    assert det.verifier_parm.det_verifier_normalized is True
    assert det.verifier_parm.det_reward_ratio == DetRewardRatio(iou_max_label_first=1.0, iou_completeness=0.3)
    assert det.verifier_parm.det_reward_ratio.accuracy_denominator == 1.0
    math = RewardSpec.from_dict(MATH)
    assert (math.verifier_parm.det_verifier_normalized, math.verifier_parm.det_reward_ratio) == (None, None)
    assert RewardSpec.from_dict(math.to_dict()) == math
    assert validate_reward_spec(DETECTION) == [] and validate_reward_spec(MATH) == []
    assert {"mathverify", "detection", "tag"} <= set(available_verifiers())


def test_verifier_parm_as_json_string_and_numpy_scalars():
    spec = RewardSpec.from_dict({**DETECTION, "verifier_parm": json.dumps(DETECTION["verifier_parm"])})
    assert spec == RewardSpec.from_dict(DETECTION)
    numpy_row = {
        **DETECTION,
        "accuracy_ratio": np.float32(1.0),
        "verifier_parm": {"det_verifier_normalized": np.bool_(True), "det_reward_ratio": RATIO},
    }
    assert RewardSpec.from_dict(numpy_row).accuracy_ratio == 1.0
    assert RewardSpec.from_dict({**MATH, "verifier_parm": None}).verifier_parm.det_reward_ratio is None


def test_missing_or_null_weights_count_as_zero():
    parm = {"det_verifier_normalized": True, "det_reward_ratio": {"iou_max_label_first": 1.0, "map": None}}
    ratio = RewardSpec.from_dict({**DETECTION, "verifier_parm": parm}).verifier_parm.det_reward_ratio
    assert ratio == DetRewardRatio(iou_max_label_first=1.0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ground_truth": None}, "reward_model.ground_truth"),
        ({"verifier": ""}, "reward_model.verifier"),
        ({"accuracy_ratio": None}, "reward_model.accuracy_ratio"),
        ({"format_ratio": True}, "reward_model.format_ratio"),
        ({"format_ratio": -0.1}, "reward_model.format_ratio"),
        ({"accuracy_ratio": 0.0, "format_ratio": 0.0}, "reward_model.accuracy_ratio"),
        ({"verifier_parm": "{not json"}, "reward_model.verifier_parm"),
        ({"verifier_parm": [1]}, "reward_model.verifier_parm"),
        (
            {"verifier_parm": {"det_verifier_normalized": "yes", "det_reward_ratio": RATIO}},
            "reward_model.verifier_parm.det_verifier_normalized",
        ),
        (
            {"verifier_parm": {"det_verifier_normalized": True, "det_reward_ratio": {**RATIO, "map": 1.5}}},
            "reward_model.verifier_parm.det_reward_ratio.map",
        ),
        (
            {"verifier_parm": {"det_verifier_normalized": True, "det_reward_ratio": {**RATIO, "map50": "x"}}},
            "reward_model.verifier_parm.det_reward_ratio.map50",
        ),
        (
            {"verifier_parm": {"det_verifier_normalized": True, "det_reward_ratio": {**RATIO, "map_50": 0.1}}},
            "reward_model.verifier_parm.det_reward_ratio.map_50",
        ),
        (
            {"verifier_parm": {"det_verifier_normalized": True, "det_reward_ratio": [1.0]}},
            "reward_model.verifier_parm.det_reward_ratio",
        ),
    ],
)
def test_errors_name_the_dotted_field(change, field):
    with pytest.raises(RewardSpecError) as caught:
        RewardSpec.from_dict({**DETECTION, **change})
    assert caught.value.field == field
    assert validate_reward_spec({**DETECTION, **change}) == [(field, caught.value.message)]


def test_not_a_struct():
    with pytest.raises(RewardSpecError) as caught:
        RewardSpec.from_dict(["not", "a", "dict"])
    assert caught.value.field == "reward_model"


def test_validation_reports_unknown_verifiers_and_bad_gold():
    [(field, message)] = validate_reward_spec({**MATH, "verifier": "no_such_verifier"})
    assert field == "reward_model.verifier" and "no_such_verifier" in message and "mathverify" in message
    [(field, _)] = validate_reward_spec({**MATH, "ground_truth": "no answer"})
    assert field == "reward_model.ground_truth"
