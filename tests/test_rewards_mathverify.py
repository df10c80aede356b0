"""The `mathverify` verifier: format tags, math-verify accuracy, lowercasing, unverifiable gold, threads."""

from __future__ import annotations

import threading

import pytest

from triune_trl.rewards import RewardSpec, get_verifier, score_sample, validate_reward_spec
from triune_trl.rewards.verifiers.mathverify import math_format_reward


def math_spec(gold: str = "\\boxed{4}", accuracy_ratio: float = 1.0, format_ratio: float = 0.0) -> dict:
    return {
        "answer": "4",
        "ground_truth": gold,
        "accuracy_ratio": accuracy_ratio,
        "format_ratio": format_ratio,
        "verifier": "mathverify",
        "verifier_parm": {"det_verifier_normalized": None, "det_reward_ratio": None},
    }


FULL = "<think>\nreasoning\n</think>\n<answer>\n\\boxed{4}\n</answer>"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (FULL, 1.0),
        ("reasoning\n</think>\n<answer>\n\\boxed{4}\n</answer>", 0.75),  # no "<think>\n"
        ("<think>\nreasoning</think>\n<answer>\n\\boxed{4}\n</answer>", 0.75),  # no "\n</think>\n"
        ("<think>\nreasoning\n</think>\n <answer>\n\\boxed{4}\n</answer>", 0.75),  # no "\n<answer>\n"
        ("<think>\nreasoning\n</think>\n<answer>\n\\boxed{4}</answer>", 0.75),  # no "\n</answer>"
        ("<think>\n<think>\nreasoning\n</think>\n<answer>\n\\boxed{4}\n</answer>", 0.75),  # "<think>\n" twice
        ("<think>\nreasoning\n</think>\n<answer>\n4\n</answer>\n<answer>\n\\boxed{4}\n</answer>", 0.5),  # both twice
        ("\\boxed{4}", 0.0),
        ("", 0.0),
    ],
)
def test_format_gives_a_quarter_per_tag_present_exactly_once(completion, expected):
    assert math_format_reward(completion) == expected


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("so \\boxed{4}", "\\boxed{4}", 1.0),
        ("so \\boxed{5}", "\\boxed{4}", 0.0),
        ("\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", 1.0),  # math-verify compares values, not strings
        ("The answer is 4", "\\boxed{4}", 0.0),  # no \boxed and no anchor: nothing is extracted
        ("The final answer is $4$", "\\boxed{4}", 1.0),  # an anchored LaTeX answer is extracted
        ("\\boxed{4}", "4", 1.0),  # a plain gold is parsed with math-verify's default extraction
    ],
)
def test_accuracy_follows_math_verify(completion, gold, expected):
    result = score_sample(completion, math_spec(gold))
    assert result["accuracy_reward"] == expected
    assert result["unverifiable_reason"] is None


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        ("\\boxed{a}", "\\boxed{A}"),  # symbols a and A would differ without lowercasing
        ("\\BOXED{4}", "\\boxed{4}"),  # the command itself is only recognised once lowercased
    ],
)
def test_both_strings_are_lowercased_before_parsing(completion, gold):
    assert score_sample(completion, math_spec(gold))["accuracy_reward"] == 1.0


@pytest.mark.parametrize("gold", ["", "   ", "no answer here"])
def test_gold_that_parses_to_nothing_is_unverifiable_not_zero(gold):
    result = score_sample(FULL, math_spec(gold, format_ratio=0.5))
    assert result["accuracy_reward"] is None
    assert result["final_reward"] is None
    assert "math-verify extracts no answer from the gold" in result["unverifiable_reason"]
    assert result["format_reward"] == 1.0  # the format is still reported
    assert validate_reward_spec(math_spec(gold)) == [
        ("reward_model.ground_truth", f"math-verify extracts no answer from the gold {gold!r}")
    ]


def test_final_reward_mixes_accuracy_and_format():
    # a = 1, f = 0.5: correct answer but only 3 of 4 tags -> 1 * 1/1.5 + 0.75 * 0.5/1.5 = 0.9166...
    completion = "<think>\nreasoning</think>\n<answer>\n\\boxed{4}\n</answer>"
    result = score_sample(completion, math_spec(format_ratio=0.5))
    assert result["final_reward"] == pytest.approx(2 / 3 + 0.25, abs=1e-12)


def test_scoring_from_a_worker_thread_does_not_crash():
    """math-verify's signal-based timeouts only work in the main thread; elsewhere they are switched off."""
    verifier = get_verifier("mathverify")
    spec = RewardSpec.from_dict(math_spec())
    results = {}

    def work():
        results["right"] = verifier.score("\\boxed{4}", spec)
        results["wrong"] = verifier.score("\\boxed{7}", spec)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert results["right"].accuracy_reward == 1.0
    assert results["wrong"].accuracy_reward == 0.0


def test_adversarial_completions_never_raise():
    spec = RewardSpec.from_dict(math_spec())
    verifier = get_verifier("mathverify")
    for completion in ["\\boxed{", "\\boxed{\\frac{1}{0}}", "$" * 500, "\\boxed{" * 50, "\x00\\boxed{4}", "}" * 100]:
        out = verifier.score(completion, spec)
        assert out.accuracy_reward in (0.0, 1.0) or out.unverifiable_reason


def test_a_math_verify_timeout_is_unverifiable_not_wrong(monkeypatch):
    """The release lets math-verify swallow timeouts (scored 0); here "could not check" is reported as such."""
    import math_verify
    from math_verify.errors import TimeoutException

    def times_out(*args, **kwargs):
        raise TimeoutException("Operation timed out!")

    monkeypatch.setattr(math_verify, "verify", times_out)
    result = score_sample("\\boxed{4}", math_spec())
    assert result["accuracy_reward"] is None
    assert result["unverifiable_reason"] == "math-verify timed out comparing the answer with the gold"
