"""The `numeric` verifier: chart-QA relaxed accuracy (5% relative tolerance) with a text fallback."""

from __future__ import annotations

import pytest

from triune_trl.rewards import score_sample, validate_reward_spec


def num_spec(gold: str = "\\boxed{12}", **parm) -> dict:
    return {
        "ground_truth": gold,
        "verifier": "numeric",
        "accuracy_ratio": 1.0,
        "format_ratio": 0.0,
        "verifier_parm": parm or None,
    }


def score(answer: str, gold: str = "\\boxed{12}", **parm) -> dict:
    return score_sample(f"\\boxed{{{answer}}}", num_spec(gold, **parm))


def accuracy(answer: str, gold: str = "\\boxed{12}", **parm) -> float | None:
    return score(answer, gold, **parm)["accuracy_reward"]


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("12", "12", 1.0),
        ("12.5", "12", 1.0),  # 0.5 / 12 = 4.2% <= 5%
        ("12.7", "12", 0.0),  # 5.8%
        ("11.4", "12", 1.0),  # exactly 5%: 0.6 / 12 = 0.05
        ("-12", "12", 0.0),
        ("-5.2", "-5", 1.0),  # negatives: 0.2 / 5 = 4%
        ("0", "0", 1.0),
        ("0.0", "0", 1.0),
        ("0.001", "0", 0.0),  # a gold of 0 needs 0 (no relative tolerance around 0)
        ("1,200", "1200", 1.0),
        ("\\$1,200", "1200", 1.0),  # LaTeX-escaped currency
        ("45\\%", "45", 1.0),  # percent ignored by default
        ("about 12 million", "12", 1.0),  # the last number of the answer
        ("1.04e300", "1e300", 1.0),  # huge but finite
        ("1e400", "12", 0.0),  # beyond the float range: not a number
        ("inf", "12", 0.0),
        ("nan", "12", 0.0),
        ("", "12", 0.0),  # empty answer
        ("Yes", "yes", 1.0),  # a text gold: whitespace-collapsed, case-insensitive equality
        ("no", "yes", 0.0),
        ("２０１９", "2019", 1.0),  # full-width digits are digits
    ],
)
def test_relaxed_accuracy(answer, gold, expected):
    assert accuracy(answer, gold) == expected


def test_tolerances_and_percent_modes():
    assert accuracy("12.7", relative_tolerance=0.1) == 1.0
    assert accuracy("12.7", relative_tolerance=0.0) == 0.0
    assert accuracy("0.001", "0", absolute_tolerance=0.01) == 1.0
    assert accuracy("12%", "0.12", percent="fraction") == 1.0  # ChartQA: 12% reads 0.12
    assert accuracy("12%", "12", percent="fraction") == 0.0
    assert accuracy("12%", "12") == 1.0


def test_sub_scores():
    near = score("12.5")
    assert near["numeric_exact"] == 0.0 and near["numeric_relative_error"] == pytest.approx(0.5 / 12)
    far = score("1000")
    assert far["numeric_relative_error"] == 1.0  # capped
    missing = score_sample("no answer at all", num_spec())
    assert (missing["accuracy_reward"], missing["numeric_relative_error"]) == (0.0, 1.0)
    best = score("20", '["12", "20"]')
    assert (best["accuracy_reward"], best["numeric_exact"], best["numeric_relative_error"]) == (1.0, 1.0, 0.0)


def test_nested_braces():
    assert accuracy("\\frac{1}{2} = 0.5", "0.5") == 1.0


@pytest.mark.parametrize(
    ("parm", "field"),
    [
        ({"relative_tolerance": 2}, "relative_tolerance"),
        ({"relative_tolerance": float("nan")}, "relative_tolerance"),
        ({"absolute_tolerance": -1}, "absolute_tolerance"),
        ({"absolute_tolerance": float("inf")}, "absolute_tolerance"),
        ({"percent": "divide"}, "percent"),
    ],
)
def test_bad_parameters(parm, field):
    [(got, _)] = validate_reward_spec(num_spec("12", **parm))
    assert got == f"reward_model.verifier_parm.{field}"
