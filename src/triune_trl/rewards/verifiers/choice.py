"""The `choice` verifier: a multiple-choice answer given by its letter or by the option's text.

The answer is read as a letter when it is one: `B`, `(b)`, `B.`, `B) 42`, `b: 42`, `Answer: B`, `option (C)`,
`\\text{B}`. A lowercase letter counts only when it stands alone or before `.`, `)` or `:`, so `a cat` is text,
not option A. Otherwise, when the row lists its `options`, an answer equal to exactly one option's text (whitespace-
collapsed, case-insensitive unless `case_sensitive`, a trailing period ignored) selects that option. With
`options`, a letter past the last option is no choice. Accuracy is 1 when the chosen letter is a gold letter.

`verifier_parm`:

| parameter | default | meaning |
|---|---|---|
| `options` | none | the option texts in order (A, B, C, ...); lets answers and golds name an option by its text |
| `case_sensitive` | false | compare option texts with case as written |
| `answer_source` | auto | where the answer is read (see `answers.py`) |

Gold: a letter (`\\boxed{B}`, `B`), with `options` an option text, or a JSON list of accepted ones. Sub-score:
`choice_answered` (1 when the answer names a valid option at all, right or wrong).
"""

from __future__ import annotations

import re
import string
from typing import Any

from triune_trl.rewards.answers import ANSWER_SOURCE_PARAM, normalize_text
from triune_trl.rewards.params import PARM_FIELD, Param
from triune_trl.rewards.registry import GOLD_FIELD, Scored, ScoringContext, Unverifiable, register_verifier
from triune_trl.rewards.textual import AnswerVerifier

__all__ = ["ChoiceVerifier", "read_choice"]

LETTERS = string.ascii_uppercase
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mathbf|mbox)\s*\{([^{}]*)\}")
_PATTERNS = (
    re.compile(r"^\(?\s*([A-Za-z])\s*\)?\s*[.:]?$"),  # B, (b), B., b:
    re.compile(r"^[(\[]\s*([A-Za-z])\s*[)\]]"),  # (b) text, [B] text
    re.compile(r"^([A-Za-z])\s*[.):]\s+\S"),  # B. text, B) text, b: text
)
_PREFIX = re.compile(r"^(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)\s*(?:is\s*)?[:\-]?\s*", re.I)
_UPPER_THEN_TEXT = re.compile(r"^([A-Z])(?:[\s,]|$)")  # after "Answer:", "B because ..."


def _letter(text: str) -> str | None:
    """The letter of `B`, `(b)`, `B. text`, or of the same after an `Answer:` / `option` prefix."""
    candidates = [(text, _PATTERNS)]
    prefix = _PREFIX.match(text)
    if prefix and prefix.end() < len(text):
        candidates.append((text[prefix.end() :], (*_PATTERNS, _UPPER_THEN_TEXT)))
    for candidate, patterns in candidates:
        for pattern in patterns:
            match = pattern.match(candidate)
            if match:
                return match.group(1).upper()
    return None


def read_choice(answer: str, options: tuple[str, ...], case_sensitive: bool = False) -> str | None:
    """The option letter an answer names, or None (see module docstring)."""
    text = answer
    for _ in range(4):  # \text{\textbf{B}}: unwrap a few levels, innermost first
        unwrapped = _LATEX_TEXT.sub(r"\1", text)
        if unwrapped == text:
            break
        text = unwrapped
    text = text.strip()
    letter = _letter(text)
    if letter is None and options:
        wanted = normalize_text(text, case_sensitive).rstrip(".").strip()
        hits = [i for i, option in enumerate(options) if normalize_text(option, case_sensitive).rstrip(".") == wanted]
        letter = LETTERS[hits[0]] if len(hits) == 1 else None
    if letter is not None and options and LETTERS.index(letter) >= len(options):
        return None
    return letter


@register_verifier("choice")
class ChoiceVerifier(AnswerVerifier):
    """Multiple-choice accuracy by option letter or option text."""

    PARAMS = (
        Param("options", "text_list", (), "the option texts in order (A, B, C, ...)"),
        Param("case_sensitive", "bool", False, "compare option texts with case as written"),
        ANSWER_SOURCE_PARAM,
    )
    SUB_SCORES = ("choice_answered",)

    def check_values(self, params: dict[str, Any]) -> None:
        if len(params["options"]) > len(LETTERS):
            raise Unverifiable(f"at most {len(LETTERS)} options (A-Z)", field=f"{PARM_FIELD}.options")

    def parse_answers(self, answers: list[str], params: dict[str, Any]) -> frozenset[str]:
        letters = set()
        for answer in answers:
            letter = read_choice(answer, params["options"], params["case_sensitive"])
            if letter is None:
                expected = "an option letter" + (" or one of the option texts" if params["options"] else " (A-Z)")
                raise Unverifiable(f"a choice gold must be {expected}, got {answer!r:.80}", field=GOLD_FIELD)
            letters.add(letter)
        return frozenset(letters)

    def compare(self, answer: str, gold: frozenset[str], params: dict[str, Any], ctx: ScoringContext) -> Scored:
        letter = read_choice(answer, params["options"], params["case_sensitive"])
        correct = letter is not None and letter in gold
        return (1.0 if correct else 0.0), {"choice_answered": 0.0 if letter is None else 1.0}
