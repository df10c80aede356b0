"""Reflection metrics: the release's 15 words and its five ratios, including its 0.0-on-empty convention."""

from __future__ import annotations

import pytest

from triune_trl.monitoring.reflection import (
    REFLECTION_WORDS,
    reflection_counts,
    reflection_ratios,
    word_metric_name,
)


def test_the_fifteen_words_of_the_release_in_its_order():
    assert REFLECTION_WORDS == (
        "re-check", "re-evaluate", "re-examine", "re-think", "recheck", "reevaluate", "reexamine", "reevaluation",
        "rethink", "check again", "think again", "try again", "verify", "wait", "yet",
    )


def test_counts_are_lowercase_substring_occurrences():
    counts = dict(zip(REFLECTION_WORDS, reflection_counts("Wait, WAIT. Let me Re-Check. Not yet; the yeti waits."),
                      strict=True))
    assert counts["wait"] == 3  # "Wait", "WAIT" and inside "waits"
    assert counts["yet"] == 2  # "yet" and inside "yeti": substring matching, as the release does
    assert counts["re-check"] == 1
    assert counts["recheck"] == 0  # the hyphen matters
    assert sum(counts.values()) == 6


def test_overlapping_words_are_each_counted():
    counts = dict(zip(REFLECTION_WORDS, reflection_counts("reevaluation"), strict=True))
    assert counts["reevaluation"] == 1 and counts["reevaluate"] == 0  # "reevaluat-ion" does not contain "reevaluate"
    counts = dict(zip(REFLECTION_WORDS, reflection_counts("let me rethink and think again"), strict=True))
    assert counts["rethink"] == 1 and counts["think again"] == 1


def test_ratios_match_hand_computed_values():
    reflective = [True, True, False, False, True]
    correct = [True, False, True, False, False]
    ratios = reflection_ratios(reflective, correct)
    assert ratios == pytest.approx({
        "reflection_ratio": 3 / 5,
        "reflection_ratio_correct": 1 / 2,  # of the 2 correct answers, 1 reflects
        "reflection_ratio_wrong": 2 / 3,  # of the 3 wrong answers, 2 reflect
        "accuracy_reflection": 1 / 3,  # of the 3 reflective answers, 1 is correct
        "accuracy_no_reflection": 1 / 2,  # of the 2 non-reflective answers, 1 is correct
    })


def test_empty_denominators_give_zero_as_in_the_release():
    ratios = reflection_ratios([False, False], [False, False])
    assert ratios == {
        "reflection_ratio": 0.0,
        "reflection_ratio_correct": 0.0,  # no correct answers
        "reflection_ratio_wrong": 0.0,
        "accuracy_reflection": 0.0,  # no reflective answers
        "accuracy_no_reflection": 0.0,
    }
    assert reflection_ratios([], []) == dict.fromkeys(ratios, 0.0)


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="2 reflection flags but 1"):
        reflection_ratios([True, False], [True])


def test_metric_names_have_no_spaces():
    assert word_metric_name("check again") == "reflection_word_check_again"
    assert all(" " not in word_metric_name(word) for word in REFLECTION_WORDS)
