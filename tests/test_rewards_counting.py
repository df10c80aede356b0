"""The `counting` verifier: whole-number match with an optional tolerance, exact for any size of number."""

from __future__ import annotations

import pytest

from triune_trl.rewards import score_sample, validate_reward_spec


def count_spec(gold: str = "\\boxed{3}", **parm) -> dict:
    return {
        "ground_truth": gold,
        "verifier": "counting",
        "accuracy_ratio": 1.0,
        "format_ratio": 0.0,
        "verifier_parm": parm or None,
    }


def accuracy(answer: str, gold: str = "\\boxed{3}", **parm) -> float | None:
    return score_sample(f"<answer>{answer}</answer>", count_spec(gold, **parm))["accuracy_reward"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("\\boxed{3}", 1.0),
        ("3", 1.0),  # from the answer block
        ("\\boxed{4}", 0.0),
        ("\\boxed{three}", 1.0),  # number words
        ("\\boxed{Three.}", 1.0),
        ("\\boxed{3.0}", 1.0),  # a whole number written with a zero decimal part
        ("\\boxed{3.5}", 0.0),  # not a count
        ("\\boxed{-3}", 0.0),  # negative: a different number
        ("\\boxed{\u22123}", 0.0),  # the Unicode minus is a minus
        ("\\boxed{+3}", 1.0),
        ("there are 2 red and 3 blue", 1.0),  # the last number counts
        ("3 cats, 2 dogs", 0.0),
        ("\\boxed{\u0663}", 1.0),  # Arabic-Indic digit three
        ("\\boxed{3e0}", 0.0),  # scientific notation is not a count
        ("\\boxed{nan}", 0.0),
        ("\\boxed{inf}", 0.0),
        ("\\boxed{}", 0.0),  # empty answer
        ("none", 0.0),
        ("\\boxed{\\boxed{3}}", 1.0),  # nested braces: the innermost box opens last
        ("\\boxed{{3}}", 1.0),
    ],
)
def test_counts(answer, expected):
    assert accuracy(answer) == expected


def test_zero_and_none():
    assert accuracy("\\boxed{none}", "0") == 1.0
    assert accuracy("\\boxed{0}", "\\boxed{zero}") == 1.0


def test_tolerance():
    assert accuracy("\\boxed{4}", tolerance=1) == 1.0
    assert accuracy("\\boxed{2}", tolerance=1) == 1.0
    assert accuracy("\\boxed{5}", tolerance=1) == 0.0
    assert accuracy("\\boxed{-1}", "0", tolerance=1) == 1.0  # a negative answer one away from 0


def test_thousands_separators_and_huge_numbers():
    assert accuracy("\\boxed{1,204}", "1204") == 1.0
    huge = "9" * 5000  # past Python's 4300-digit int() limit
    assert accuracy(f"\\boxed{{{huge}}}", huge) == 1.0
    assert accuracy(f"\\boxed{{{huge}8}}", huge) == 0.0
    power = "1" + "0" * 4999
    assert accuracy("\\boxed{" + "1" + "0" * 4998 + "1}", power, tolerance=1) == 1.0  # 10^4999 + 1 vs 10^4999
    assert accuracy("\\boxed{" + "9" * 1_000_000 + "}", "3") == 0.0  # a megabyte of digits


def test_list_of_golds_and_exact_sub_score():
    result = score_sample("\\boxed{4}", count_spec('["3", "4"]'))
    assert (result["accuracy_reward"], result["counting_exact"]) == (1.0, 1.0)
    near = score_sample("\\boxed{4}", count_spec("3", tolerance=1))
    assert (near["accuracy_reward"], near["counting_exact"]) == (1.0, 0.0)


@pytest.mark.parametrize("gold", ["3.5", "-2", "many", "", "\\boxed{}", "1e3"])
def test_golds_that_are_not_counts_are_rejected(gold):
    [(field, message)] = validate_reward_spec(count_spec(gold))
    assert field == "reward_model.ground_truth"


@pytest.mark.parametrize("tolerance", [-1, 0.5, "1", True])
def test_bad_tolerance(tolerance):
    [(field, _)] = validate_reward_spec(count_spec("3", tolerance=tolerance))
    assert field == "reward_model.verifier_parm.tolerance"
