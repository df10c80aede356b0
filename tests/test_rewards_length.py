"""The `length` verifier: a plateau reward in [0, 1] between min_length and max_length."""

from __future__ import annotations

import pytest

from triune_trl.rewards import score_sample, validate_reward_spec
from triune_trl.rewards.verifiers.length import length_reward


def length_spec(**parm) -> dict:
    return {"ground_truth": "", "verifier": "length", "accuracy_ratio": 1.0, "format_ratio": 0.0, "verifier_parm": parm}


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 0.0), (5, 0.5), (10, 1.0), (20, 1.0), (25, 0.5), (30, 0.0), (10_000, 0.0)],
)
def test_plateau(length, expected):
    # min 10, max 20, decay 10: rising 0 -> 1 over [0, 10], flat to 20, falling to 0 at 30
    assert length_reward(length, 10, 20, 10) == pytest.approx(expected)


def test_decay_defaults_to_max_length_and_bounds_are_optional():
    assert length_reward(30, 0, 20, None) == pytest.approx(0.5)  # 10 past max over a decay of 20
    assert length_reward(10**9, 5, None, None) == 1.0  # no upper bound
    assert length_reward(1, 4, None, None) == 0.25


def test_words_chars_and_unicode():
    spec = length_spec(min_length=4, max_length=8)
    result = score_sample("one two", spec)
    assert (result["accuracy_reward"], result["answer_length"]) == (0.5, 2.0)
    chars = score_sample("ünï 数字", length_spec(min_length=12, unit="chars"))
    assert chars["answer_length"] == 6.0 and chars["accuracy_reward"] == 0.5  # code points, not bytes
    assert score_sample("", spec)["accuracy_reward"] == 0.0  # empty answer


def test_answer_source_measures_only_the_answer():
    completion = "<think>\n" + "word " * 50 + "\n</think>\n<answer>\n\\boxed{4}\n</answer>"
    whole = score_sample(completion, length_spec(max_length=10))
    boxed = score_sample(completion, length_spec(max_length=10, answer_source="boxed"))
    # 4 tags + 50 words + the box = 55 words, 45 past max 10 with decay 10
    assert whole["answer_length"] == 55.0 and whole["accuracy_reward"] == 0.0
    assert (boxed["answer_length"], boxed["accuracy_reward"]) == (1.0, 1.0)
    assert score_sample("no box", length_spec(max_length=10, answer_source="boxed"))["accuracy_reward"] == 0.0


def test_a_megabyte_completion_is_cheap_and_bounded():
    result = score_sample("x " * 500_000, length_spec(max_length=100))
    assert result["accuracy_reward"] == 0.0 and result["answer_length"] == 500_000.0


@pytest.mark.parametrize(
    ("parm", "field"),
    [
        ({}, "reward_model.verifier_parm"),
        ({"min_length": 10, "max_length": 5}, "reward_model.verifier_parm.min_length"),
        ({"max_length": 0}, "reward_model.verifier_parm.max_length"),
        ({"min_length": 3, "decay": 5}, "reward_model.verifier_parm.decay"),
        ({"max_length": 5, "unit": "tokens"}, "reward_model.verifier_parm.unit"),
        ({"max_length": float("inf")}, "reward_model.verifier_parm.max_length"),
    ],
)
def test_bad_parameters(parm, field):
    [(got, _)] = validate_reward_spec(length_spec(**parm))
    assert got == field
