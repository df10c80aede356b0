"""The `format` verifier: a configurable tag layout, or a regular expression."""

from __future__ import annotations

import pytest

from triune_trl.rewards import score_sample, validate_reward_spec


def format_spec(**parm) -> dict:
    return {"ground_truth": "", "verifier": "format", "accuracy_ratio": 0.0, "format_ratio": 1.0, "verifier_parm": parm}


@pytest.mark.parametrize(
    ("completion", "expected", "share"),
    [
        ("<think>r</think><answer>a</answer>", 1.0, 1.0),
        ("  <think>\nr\n</think>\n\n<answer> a </answer>\n", 1.0, 1.0),
        ("<answer>a</answer><think>r</think>", 0.0, 1.0),  # wrong order
        ("<think>r</think> text <answer>a</answer>", 0.0, 1.0),  # text between blocks
        ("intro <think>r</think><answer>a</answer>", 0.0, 1.0),
        ("<think>r</think><answer>a</answer> outro", 0.0, 1.0),
        ("<think>r</think><think>r</think><answer>a</answer>", 0.0, 0.5),  # a tag twice
        ("<think>r<answer>a</answer></think>", 0.0, 1.0),  # nested, not in sequence
        ("<think>{{}}</think><answer>\\boxed{\\frac{1}{2}}</answer>", 1.0, 1.0),  # braces are content
        ("<think>思考</think><answer>答案</answer>", 1.0, 1.0),
        ("", 0.0, 0.0),
    ],
)
def test_tag_layout(completion, expected, share):
    result = score_sample(completion, format_spec())
    assert (result["accuracy_reward"], result["format_reward"], result["format_tags_once"]) == (
        expected,
        expected,
        share,
    )
    assert result["final_reward"] == expected  # format_ratio only


def test_newlines_is_the_release_layout():
    release = "<think>\nreasoning\n</think>\n<answer>\n\\boxed{4}\n</answer>"
    assert score_sample(release, format_spec(newlines=True))["accuracy_reward"] == 1.0
    tight = "<think>reasoning</think>\n<answer>\n4\n</answer>"
    assert score_sample(tight, format_spec(newlines=True))["accuracy_reward"] == 0.0


def test_custom_tags_and_pattern():
    assert score_sample("<answer>4</answer>", format_spec(tags=["answer"]))["accuracy_reward"] == 1.0
    pattern = format_spec(pattern=r"<think>.+</think>\s*\\boxed\{\d+\}")
    assert score_sample("<think>\nx\n</think> \\boxed{42}", pattern)["accuracy_reward"] == 1.0
    assert score_sample("<think>x</think> \\boxed{4.2}", pattern)["accuracy_reward"] == 0.0
    assert "format_tags_once" not in score_sample("x", pattern)


def test_a_megabyte_of_tags_is_cheap():
    result = score_sample("<think>" * 150_000, format_spec())
    assert (result["accuracy_reward"], result["format_tags_once"]) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("parm", "field"),
    [
        ({"pattern": "(unclosed"}, "reward_model.verifier_parm.pattern"),
        ({"tags": []}, "reward_model.verifier_parm.tags"),
        ({"tags": ["think", "an swer"]}, "reward_model.verifier_parm.tags[1]"),
        ({"newlines": 1}, "reward_model.verifier_parm.newlines"),
    ],
)
def test_bad_parameters(parm, field):
    [(got, _)] = validate_reward_spec(format_spec(**parm))
    assert got == field
    assert score_sample("<think>x</think><answer>y</answer>", format_spec(**parm))["final_reward"] is None
