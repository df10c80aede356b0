"""The `choice` verifier: multiple choice by option letter or option text."""

from __future__ import annotations

import pytest

from triune_trl.rewards import score_sample, validate_reward_spec
from triune_trl.rewards.verifiers.choice import read_choice

OPTIONS = ("red", "blue", "green", "Café au lait")


def choice_spec(gold: str = "B", **parm) -> dict:
    return {
        "ground_truth": gold,
        "verifier": "choice",
        "accuracy_ratio": 1.0,
        "format_ratio": 0.0,
        "verifier_parm": parm or None,
    }


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", "B"),
        ("b", "B"),
        ("(b)", "B"),
        ("B.", "B"),
        ("B) blue", "B"),
        ("b: blue", "B"),
        ("[C] green", "C"),
        ("Answer: C", "C"),
        ("The correct answer is (d).", "D"),
        ("option C because", "C"),
        ("\\text{B}", "B"),
        ("a cat", None),  # a lowercase word is not option A
        ("The answer is a cat", None),
        ("blue", "B"),  # option text
        ("Blue.", "B"),
        ("CAFÉ AU LAIT", "D"),  # unicode option text, case-insensitive
        ("E", None),  # past the last option
        ("", None),  # empty answer
        ("nan", None),
        ("purple", None),
    ],
)
def test_read_choice_with_options(answer, expected):
    assert read_choice(answer, OPTIONS) == expected


def test_without_options_only_letters_count():
    assert read_choice("Z", ()) == "Z"
    assert read_choice("blue", ()) is None


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("\\boxed{B}", "B", 1.0),
        ("\\boxed{C}", "B", 0.0),
        ("<answer>(b) blue</answer>", "\\boxed{B}", 1.0),
        ("\\boxed{blue}", "blue", 1.0),  # gold given as option text
        ("\\boxed{B}", '["B", "C"]', 1.0),  # several accepted
        ("\\boxed{\\text{\\textbf{B}}}", "B", 1.0),  # nested braces: LaTeX text wrappers are unwrapped
        ("no answer", "B", 0.0),
    ],
)
def test_accuracy(completion, gold, expected):
    result = score_sample(completion, choice_spec(gold, options=list(OPTIONS)))
    assert result["accuracy_reward"] == expected


def test_answered_sub_score():
    wrong = score_sample("\\boxed{C}", choice_spec("B"))
    assert (wrong["accuracy_reward"], wrong["choice_answered"]) == (0.0, 1.0)
    vague = score_sample("\\boxed{maybe}", choice_spec("B"))
    assert (vague["accuracy_reward"], vague["choice_answered"]) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("gold", "parm", "field"),
    [
        ("purple", {"options": list(OPTIONS)}, "reward_model.ground_truth"),
        ("E", {"options": list(OPTIONS)}, "reward_model.ground_truth"),
        ("blue", {}, "reward_model.ground_truth"),  # text gold without options
        ("B", {"options": "red, blue"}, "reward_model.verifier_parm.options"),
        ("B", {"options": ["red", 2]}, "reward_model.verifier_parm.options[1]"),
        ("B", {"options": [str(i) for i in range(27)]}, "reward_model.verifier_parm.options"),
    ],
)
def test_bad_specs(gold, parm, field):
    [(got, _)] = validate_reward_spec(choice_spec(gold, **parm))
    assert got == field
