"""Numbers written in answers: one regex-based reader shared by the counting and numeric verifiers.

Accepted: an optional sign (`-`, `+` or the Unicode minus), digits with optional thousands commas (`1,234`), an
optional decimal part and exponent (`3.5e-2`), or a leading-dot decimal (`.5`). Words such as `nan` and `inf`
are not numbers here (Python's `float()` would accept them). Reading never evaluates the text and is linear in its
length; exact values are `Decimal`s, so a 5,000-digit answer neither overflows nor hits Python's int-to-string
limit.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["NUMBER_WORDS", "is_integral", "last_number", "last_number_token", "number_tokens", "parse_number"]

_NUMBER = re.compile(
    r"(?<![\w.])[-+\u2212]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?(?![\w])"
)
NUMBER_WORDS = {
    word: index
    for index, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
NUMBER_WORDS["none"] = 0
_WORD = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE)


def parse_number(token: str) -> Decimal | None:
    """The exact value of one number token (see module docstring), or None when it is not one."""
    text = token.strip().replace(",", "").replace("\u2212", "-")
    if not _NUMBER.fullmatch(token.strip()):
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def number_tokens(text: str) -> list[str]:
    """Every number token of `text`, in order."""
    return [match.group() for match in _NUMBER.finditer(text)]


def last_number_token(text: str, words: bool = False) -> str | None:
    """The last number token of `text`; with `words`, the last number word (zero..twenty, none) when no digit."""
    last = None
    for match in _NUMBER.finditer(text):
        last = match.group()
    if last is None and words:
        for match in _WORD.finditer(text):
            last = match.group(1).lower()
    return last


def last_number(text: str, words: bool = False) -> Decimal | None:
    """The value of `last_number_token`, or None."""
    token = last_number_token(text, words)
    if token is None:
        return None
    if token in NUMBER_WORDS:
        return Decimal(NUMBER_WORDS[token])
    return parse_number(token)


def is_integral(token: str) -> bool:
    """A whole number as written: no exponent, and a decimal part (if any) of zeros only (`3`, `3.00`, `1,200`)."""
    if token in NUMBER_WORDS:
        return True
    if "e" in token or "E" in token:
        return False
    _, _, fraction = token.partition(".")
    return set(fraction) <= {"0"}
