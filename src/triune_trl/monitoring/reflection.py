"""Reflection metrics: how often answers contain "re-check / wait / verify"-style words, and whether it pays off.

The V-Triune release (verl/trainer/ppo/metric_utils.py) watches these 15 lowercase substrings per data source.
Definitions, kept exactly:

- a response is *reflective* when its lowercased text contains any of the words (substring match, so "yet" also
  matches "yeti");
- `reflection_ratio`: reflective responses / responses;
- `reflection_ratio_correct` / `reflection_ratio_wrong`: the same share among correct (accuracy == 1) and among
  wrong answers;
- `accuracy_reflection` / `accuracy_no_reflection`: the share of correct answers among reflective and among
  non-reflective responses;
- each of these is 0.0 when its denominator is empty (the release's convention);
- `reflection_word_<word>`: total occurrences of the word over all responses (`str.count`, so repeats count).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["REFLECTION_WORDS", "reflection_counts", "reflection_ratios", "word_metric_name"]

REFLECTION_WORDS: tuple[str, ...] = (
    "re-check",
    "re-evaluate",
    "re-examine",
    "re-think",
    "recheck",
    "reevaluate",
    "reexamine",
    "reevaluation",
    "rethink",
    "check again",
    "think again",
    "try again",
    "verify",
    "wait",
    "yet",
)


def word_metric_name(word: str) -> str:
    """`reflection_word_check_again` for "check again": metric names carry no spaces."""
    return "reflection_word_" + word.replace(" ", "_")


def reflection_counts(text: str) -> tuple[int, ...]:
    """Occurrences of each of `REFLECTION_WORDS` in the lowercased `text`, in the words' order."""
    lowered = text.lower()
    return tuple(lowered.count(word) for word in REFLECTION_WORDS)


def _share(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def reflection_ratios(reflective: Sequence[bool], correct: Sequence[bool]) -> dict[str, float]:
    """The release's five ratios for one group of responses (see the module docstring)."""
    if len(reflective) != len(correct):
        raise ValueError(f"{len(reflective)} reflection flags but {len(correct)} correctness flags")
    pairs = list(zip(reflective, correct, strict=True))
    n_correct = sum(1 for _, ok in pairs if ok)
    n_reflective = sum(1 for has, _ in pairs if has)
    return {
        "reflection_ratio": _share(n_reflective, len(pairs)),
        "reflection_ratio_correct": _share(sum(1 for has, ok in pairs if has and ok), n_correct),
        "reflection_ratio_wrong": _share(sum(1 for has, ok in pairs if has and not ok), len(pairs) - n_correct),
        "accuracy_reflection": _share(sum(1 for has, ok in pairs if has and ok), n_reflective),
        "accuracy_no_reflection": _share(sum(1 for has, ok in pairs if not has and ok), len(pairs) - n_reflective),
    }
