"""Answer extraction and gold answers shared by the text verifiers: `\\boxed{}`, `<answer>`, JSON lists."""

from __future__ import annotations

import time

import pytest

from triune_trl.rewards.answers import answer_tag, extract_answer, gold_answers, last_boxed, normalize_text
from triune_trl.rewards.registry import Unverifiable


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{4}", "4"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces stay inside
        ("\\boxed{1} then \\boxed{2}", "2"),  # the last one
        ("\\boxed{\\boxed{3}}", "3"),  # the one that opens last
        ("\\boxed{5} and a cut-off \\boxed{6", "5"),  # an unclosed box falls back to the balanced one
        ("\\fbox{7}", "7"),
        ("\\boxed {8}", "8"),
        ("\\boxed{}", ""),
        ("no box {here}", None),
        ("}}}\\boxed{9}{{{", "9"),
        ("\\boxed{ünïcødé 数}", "ünïcødé 数"),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_last_boxed_is_linear_on_a_megabyte_of_braces():
    started = time.perf_counter()
    assert last_boxed("\\boxed{" * 150_000) is None
    assert last_boxed("\\boxed{" + "{" * 500_000 + "}" * 500_000 + "}") == "{" * 500_000 + "}" * 500_000
    assert time.perf_counter() - started < 10  # seconds; quadratic scanning would take hours


def test_answer_tag_is_the_first_closed_block():
    assert answer_tag("<answer> B </answer><answer>C</answer>") == "B"
    assert answer_tag("<answer>unclosed") is None
    assert answer_tag("</answer><answer>x</answer>") == "x"
    assert answer_tag("<answer>" * 100_000) is None


@pytest.mark.parametrize(
    ("source", "expected"),
    [("auto", "4"), ("boxed", "4"), ("answer_tag", "it is \\boxed{4}"), ("full", "<answer>it is \\boxed{4}</answer>")],
)
def test_extract_answer_sources(source, expected):
    assert extract_answer("  <answer>it is \\boxed{4}</answer> ", source) == expected


def test_auto_falls_back_to_the_answer_block_and_then_to_no_answer():
    assert extract_answer("<answer> B </answer>", "auto") == "B"
    assert extract_answer("just text", "auto") is None
    assert extract_answer("<answer> B </answer>", "boxed") is None


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        ("\\boxed{cat}", ["cat"]),
        ("<answer>\ncat\n</answer>", ["cat"]),
        ("plain answer", ["plain answer"]),
        ('["colour", "color"]', ["colour", "color"]),
        ("\\boxed{[1, 2.5]}", ["1", "2.5"]),
        ("[1, 2", ["[1, 2"]),  # not JSON: the text itself
        ('["a", {"b": 1}]', ['["a", {"b": 1}]']),  # not a list of answers: the text itself
    ],
)
def test_gold_answers(gold, expected):
    assert gold_answers(gold) == expected


@pytest.mark.parametrize("gold", ["", "   ", "\\boxed{}", "<answer> </answer>", '["", " "]'])
def test_a_gold_without_answer_is_rejected(gold):
    with pytest.raises(Unverifiable) as caught:
        gold_answers(gold)
    assert caught.value.field == "reward_model.ground_truth"


def test_normalize_text():
    assert normalize_text("  Hello \n\t World  ") == "hello world"
    assert normalize_text("Hello", case_sensitive=True) == "Hello"
