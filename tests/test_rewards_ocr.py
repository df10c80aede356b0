"""The `ocr` verifier: ANLS with a threshold. Every expected value is worked out in the comment next to it."""

from __future__ import annotations

import pytest

from triune_trl.rewards import score_sample, validate_reward_spec


def ocr_spec(gold: str = "\\boxed{hello world}", **parm) -> dict:
    return {
        "ground_truth": gold,
        "verifier": "ocr",
        "accuracy_ratio": 1.0,
        "format_ratio": 0.0,
        "verifier_parm": parm or None,
    }


def accuracy(completion: str, gold: str = "\\boxed{hello world}", **parm) -> float | None:
    return score_sample(completion, ocr_spec(gold, **parm))["accuracy_reward"]


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("Hello World", "hello world", 1.0),  # case-insensitive by default
        ("hello   world\n", "hello world", 1.0),  # whitespace collapsed
        ("helo world", "hello world", 1 - 1 / 11),  # one deletion over max length 11
        ("cut", "cat", 1 - 1 / 3),  # one substitution over 3
        ("cot!", "cat", 0.0),  # distance 2 over 4 = 0.5: not below the 0.5 threshold
        ("dog", "cat", 0.0),  # distance 3 over 3
        ("", "cat", 0.0),  # empty answer: distance 3 over 3
        ("Straße", "strasse", 1 - 2 / 7),  # unicode: ß -> s plus one insertion, over 7
        ("你好世界", "你好世界", 1.0),
        ("你好", "你好世界", 0.0),  # distance 2 over 4 = 0.5
        ("-1e999", "-1e999", 1.0),  # just text
        ("nan", "inf", 0.0),
    ],
)
def test_anls_values(answer, gold, expected):
    assert accuracy(f"\\boxed{{{answer}}}", f"\\boxed{{{gold}}}") == pytest.approx(expected, abs=1e-12)


def test_threshold_and_case_sensitivity():
    assert accuracy("\\boxed{cot!}", "cat", threshold=0.6) == pytest.approx(0.5)  # 0.5 < 0.6 now passes
    assert accuracy("\\boxed{Cat}", "cat", case_sensitive=True) == pytest.approx(2 / 3)


def test_best_gold_of_a_list_and_sub_scores():
    result = score_sample("\\boxed{color}", ocr_spec('["colour", "color"]'))
    assert (result["accuracy_reward"], result["ocr_exact"], result["ocr_similarity"]) == (1.0, 1.0, 1.0)
    below = score_sample("\\boxed{dog}", ocr_spec("cat"))
    assert (below["accuracy_reward"], below["ocr_similarity"], below["ocr_exact"]) == (0.0, 0.0, 0.0)


def test_nested_braces_are_read_whole():
    assert accuracy("\\boxed{\\text{A{B}C}}", "\\boxed{\\text{A{B}C}}") == 1.0


def test_no_answer_and_a_megabyte_answer_score_zero():
    assert accuracy("I cannot read it") == 0.0
    assert accuracy("\\boxed{" + "x" * 1_000_000 + "}") == 0.0


def test_format_is_the_release_tag_format():
    result = score_sample("<think>\nr\n</think>\n<answer>\n\\boxed{hello world}\n</answer>", ocr_spec())
    assert result["format_reward"] == 1.0


@pytest.mark.parametrize(
    ("parm", "gold", "field"),
    [
        ({"threshold": 0}, "x", "reward_model.verifier_parm.threshold"),
        ({"threshold": 1.5}, "x", "reward_model.verifier_parm.threshold"),
        ({"threshold": "high"}, "x", "reward_model.verifier_parm.threshold"),
        ({"case_sensitive": "yes"}, "x", "reward_model.verifier_parm.case_sensitive"),
        ({"answer_source": "anywhere"}, "x", "reward_model.verifier_parm.answer_source"),
        ({"treshold": 0.5}, "x", "reward_model.verifier_parm.treshold"),
        ({}, "\\boxed{ }", "reward_model.ground_truth"),
    ],
)
def test_invalid_specs_name_the_field(parm, gold, field):
    [(got, _)] = validate_reward_spec(ocr_spec(gold, **parm))
    assert got == field
    assert score_sample("\\boxed{x}", ocr_spec(gold, **parm))["accuracy_reward"] is None


def test_null_parameters_mean_defaults():
    """A parquet struct column holds every verifier's keys, null where unused."""
    assert validate_reward_spec(ocr_spec("x", threshold=None, det_reward_ratio=None, max_length=None)) == []
