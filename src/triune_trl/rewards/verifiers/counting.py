"""The `counting` verifier: the count in the answer against the gold count, exactly or within a tolerance.

The answer's count is its last number (`\\boxed{3}`, `there are 3`, `1,204`, `3.0`; number words zero..twenty
and "none" when no digit is written). A count written with a non-zero decimal part (`3.5`) or in scientific
notation is not a count and scores 0, like an answer without any number. Accuracy is 1 when
`|answer - gold| <= tolerance` for some gold, else 0. Values are exact (`Decimal`): a 5,000-digit answer is
compared, not rounded.

`verifier_parm`:

| parameter | default | meaning |
|---|---|---|
| `tolerance` | 0 | largest accepted absolute difference (a whole number >= 0) |
| `answer_source` | auto | where the answer is read (see `answers.py`) |

Gold: a whole number >= 0 (`\\boxed{4}`, `4`, `four`), or a JSON list of them. Sub-score: `counting_exact`
(1 when the count equals a gold exactly).
"""

from __future__ import annotations

from decimal import Decimal, localcontext
from typing import Any

from triune_trl.rewards.answers import ANSWER_SOURCE_PARAM
from triune_trl.rewards.numbers import NUMBER_WORDS, is_integral, last_number_token, parse_number
from triune_trl.rewards.params import Param
from triune_trl.rewards.registry import GOLD_FIELD, Scored, ScoringContext, Unverifiable, register_verifier
from triune_trl.rewards.textual import AnswerVerifier

__all__ = ["CountingVerifier", "read_count"]


def read_count(text: str) -> Decimal | None:
    """The count an answer gives: its last number if that is a whole number, else None."""
    token = last_number_token(text, words=True)
    if token is None or not is_integral(token):
        return None
    if token in NUMBER_WORDS:
        return Decimal(NUMBER_WORDS[token])
    return parse_number(token)


def within(value: Decimal, gold: Decimal, tolerance: int) -> bool:
    """`|value - gold| <= tolerance`, exactly: the bounds are computed with enough digits for the gold."""
    if value == gold:
        return True
    if tolerance == 0:
        return False
    with localcontext() as context:
        context.prec = len(gold.as_tuple().digits) + len(str(tolerance)) + 5
        return gold - tolerance <= value <= gold + tolerance


@register_verifier("counting")
class CountingVerifier(AnswerVerifier):
    """Integer match of a count, with an optional absolute tolerance."""

    PARAMS = (
        Param("tolerance", "integer", 0, "largest accepted absolute difference", low=0),
        ANSWER_SOURCE_PARAM,
    )
    SUB_SCORES = ("counting_exact",)

    def parse_answers(self, answers: list[str], params: dict[str, Any]) -> list[Decimal]:
        counts = []
        for answer in answers:
            token = answer.strip().rstrip(".").lower()
            value = Decimal(NUMBER_WORDS[token]) if token in NUMBER_WORDS else parse_number(token)
            if value is None or not is_integral(token) or value < 0:
                raise Unverifiable(f"a counting gold must be a whole number >= 0, got {answer!r:.80}", field=GOLD_FIELD)
            counts.append(value)
        return counts

    def compare(self, answer: str, gold: list[Decimal], params: dict[str, Any], ctx: ScoringContext) -> Scored:
        count = read_count(answer)
        if count is None:
            return 0.0, {"counting_exact": 0.0}
        correct = any(within(count, value, params["tolerance"]) for value in gold)
        return (1.0 if correct else 0.0), {"counting_exact": 1.0 if count in gold else 0.0}
