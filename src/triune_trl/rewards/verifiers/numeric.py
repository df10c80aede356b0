"""The `numeric` verifier: chart-QA relaxed accuracy, a number within a relative tolerance of the gold (5%).

ChartQA's relaxed accuracy, with the reading made explicit:

- a gold that is a number (after dropping thousands commas, currency signs and a `%`) is compared numerically:
  the answer's last number p is correct when `|p - g| <= max(relative_tolerance * |g|, absolute_tolerance)`, so a
  gold of 0 needs an exact 0 unless `absolute_tolerance` is set (ChartQA falls back to string equality there);
- a gold that is not a number (`"Yes"`, `"2019-2020"`) needs the answer's text to equal it (whitespace-collapsed,
  case-insensitive unless `case_sensitive`), as ChartQA does.

`nan`, `inf` and numbers beyond the float range are never numbers here: a completion cannot win with `inf`. Percent
signs: with `percent: ignore` (default) `12%` reads as 12, so a gold `12` and an answer `12%` agree; with
`percent: fraction` (ChartQA's rule) `12%` reads as 0.12 on both sides.

`verifier_parm`:

| parameter | default | meaning |
|---|---|---|
| `relative_tolerance` | 0.05 | accepted relative error, in [0, 1] |
| `absolute_tolerance` | 0.0 | accepted absolute error (>= 0), e.g. for golds of 0 |
| `percent` | ignore | `ignore`: `12%` reads 12; `fraction`: `12%` reads 0.12 |
| `case_sensitive` | false | for text golds |
| `answer_source` | auto | where the answer is read (see `answers.py`) |

Gold: one answer or a JSON list of answers (any one counts). Sub-scores: `numeric_exact` (1 when the value, or the
text, equals a gold exactly) and `numeric_relative_error` (best `|p - g| / |g|`, capped at 1; 1 without a number).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from triune_trl.rewards.answers import ANSWER_SOURCE_PARAM, normalize_text
from triune_trl.rewards.numbers import last_number_token, parse_number
from triune_trl.rewards.params import Param
from triune_trl.rewards.registry import Scored, ScoringContext, register_verifier
from triune_trl.rewards.textual import AnswerVerifier

__all__ = ["NumericGold", "NumericVerifier", "read_value"]

_LATEX_ESCAPES = re.compile(r"\\([%$])")
_CURRENCY = re.compile(r"[$€£¥]")
_PERCENT_AFTER = re.compile(r"\s*%")


@dataclass(frozen=True)
class NumericGold:
    """One gold answer: its value when it is a number, and its normalised text (always)."""

    value: float | None
    text: str


def _clean(text: str) -> str:
    """LaTeX `\\%` / `\\$` unescaped and currency signs dropped: `\\$1,200` and `1,200` read alike."""
    return _CURRENCY.sub("", _LATEX_ESCAPES.sub(r"\1", text))


def read_value(text: str, percent: str, whole: bool = False) -> float | None:
    """The number a text gives (its last number, or with `whole` the text itself), as a finite float, or None.

    With `percent="fraction"` a number followed by `%` is divided by 100.
    """
    cleaned = _clean(text).strip()
    if whole:
        cleaned = cleaned.rstrip(".").strip()
        core = _PERCENT_AFTER.sub("", cleaned) if cleaned.endswith("%") else cleaned
        token = core if parse_number(core) is not None else None
        has_percent = core != cleaned
    else:
        token = last_number_token(cleaned)
        if token is None:
            return None
        tail = cleaned[cleaned.rfind(token) + len(token) :]
        has_percent = _PERCENT_AFTER.match(tail) is not None
    if token is None:
        return None
    value = parse_number(token)
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        return None
    if has_percent and percent == "fraction":
        number /= 100.0
    return number


def _relative_error(value: float, gold: float) -> float:
    if gold == 0:
        return 0.0 if value == 0 else 1.0
    return min(1.0, abs(value - gold) / abs(gold))


@register_verifier("numeric")
class NumericVerifier(AnswerVerifier):
    """Relaxed numeric accuracy (relative tolerance) with a text fallback for non-numeric golds."""

    PARAMS = (
        Param("relative_tolerance", "number", 0.05, "accepted relative error", low=0.0, high=1.0),
        Param("absolute_tolerance", "number", 0.0, "accepted absolute error", low=0.0),
        Param("percent", "choice", "ignore", "ignore: 12% reads 12; fraction: 12% reads 0.12",
              choices=("ignore", "fraction")),  # fmt: skip
        Param("case_sensitive", "bool", False, "compare text golds with case as written"),
        ANSWER_SOURCE_PARAM,
    )
    SUB_SCORES = ("numeric_exact", "numeric_relative_error")

    def no_answer_sub_scores(self, params: dict[str, Any]) -> dict[str, float]:
        return {"numeric_exact": 0.0, "numeric_relative_error": 1.0}

    def parse_answers(self, answers: list[str], params: dict[str, Any]) -> list[NumericGold]:
        percent, case_sensitive = params["percent"], params["case_sensitive"]
        return [
            NumericGold(read_value(answer, percent, whole=True), normalize_text(answer, case_sensitive))
            for answer in answers
        ]

    def compare(self, answer: str, gold: list[NumericGold], params: dict[str, Any], ctx: ScoringContext) -> Scored:
        text = normalize_text(answer, params["case_sensitive"])
        value = read_value(answer, params["percent"])
        correct, exact, error = False, False, 1.0
        for candidate in gold:
            if candidate.value is None or value is None:
                same = candidate.value is None and text == candidate.text
                correct, exact = correct or same, exact or same
                error = min(error, 0.0 if same else 1.0)
                continue
            difference = abs(value - candidate.value)
            limit = max(params["relative_tolerance"] * abs(candidate.value), params["absolute_tolerance"])
            correct = correct or difference <= limit
            exact = exact or value == candidate.value
            error = min(error, _relative_error(value, candidate.value))
        return (1.0 if correct else 0.0), {"numeric_exact": 1.0 if exact else 0.0, "numeric_relative_error": error}
