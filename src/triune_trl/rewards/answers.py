"""Where the answer is in a completion and what the gold answers are, for the verifiers that compare text.

The release's prompts ask for the final answer in `\\boxed{}` (math, puzzle, science, chart, OCR, counting rows) or
inside `<answer>...</answer>` (close-form prompts). The text verifiers (ocr, counting, numeric, choice,
text_overlap, length) share the `answer_source` parameter that picks the answer:

- `auto` (default): the last balanced `\\boxed{...}` (or `\\fbox{...}`), else the first `<answer>...</answer>`
  block, else no answer (scored as a wrong answer, never as unverifiable: not answering is the model's failure);
- `boxed`: only `\\boxed{}`; `answer_tag`: only the `<answer>` block; `full`: the whole completion, stripped.

Every function here is linear in the text's length: completions are untrusted and may be a megabyte of braces.
Nothing here evaluates text as code.
"""

from __future__ import annotations

import json
import re

from triune_trl.rewards.params import Param
from triune_trl.rewards.registry import GOLD_FIELD, Unverifiable

__all__ = [
    "ANSWER_SOURCES",
    "ANSWER_SOURCE_PARAM",
    "answer_tag",
    "extract_answer",
    "gold_answers",
    "last_boxed",
    "normalize_text",
]

ANSWER_SOURCES = ("auto", "boxed", "answer_tag", "full")
ANSWER_SOURCE_PARAM = Param(
    "answer_source",
    "choice",
    "auto",
    "where the answer is read: auto (last \\boxed{}, else the <answer> block), boxed, answer_tag or full "
    "(the whole completion)",
    choices=ANSWER_SOURCES,
)

_BRACE_TOKENS = re.compile(r"\\(?:boxed|fbox)\s*\{|\{|\}")
_WHITESPACE = re.compile(r"\s+")


def last_boxed(text: str) -> str | None:
    """Content of the balanced `\\boxed{...}` that opens last, or None.

    One pass over the braces with a stack: nested braces (`\\boxed{\\frac{1}{2}}`) stay inside the content, an
    unclosed `\\boxed{` (a cut-off answer) is skipped in favour of an earlier balanced one.
    """
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    stack: list[int] = []  # content start for a \boxed{, -1 for a plain {
    best_start, best = -1, None
    for match in _BRACE_TOKENS.finditer(text):
        token = match.group()
        if token == "}":
            if stack:
                start = stack.pop()
                if start > best_start:
                    best_start, best = start, text[start : match.start()]
        elif token == "{":
            stack.append(-1)
        else:
            stack.append(match.end())
    return best


def answer_tag(text: str) -> str | None:
    """Content of the first `<answer>...</answer>` block, stripped; None when there is none.

    The same block a lazy `<answer>(.*?)</answer>` search finds, found with two `str.find` calls.
    """
    start = text.find("<answer>")
    if start < 0:
        return None
    end = text.find("</answer>", start + len("<answer>"))
    if end < 0:
        return None
    return text[start + len("<answer>") : end].strip()


def extract_answer(text: str, source: str) -> str | None:
    """The answer text of a completion for an `answer_source` setting; None when the completion gives none."""
    if source == "full":
        return text.strip()
    if source in ("auto", "boxed"):
        boxed = last_boxed(text)
        if boxed is not None or source == "boxed":
            return None if boxed is None else boxed.strip()
    return answer_tag(text)


def normalize_text(text: str, case_sensitive: bool = False) -> str:
    """Whitespace runs collapsed to one space, stripped, lowercased unless `case_sensitive`."""
    text = _WHITESPACE.sub(" ", text).strip()
    return text if case_sensitive else text.lower()


def _json_answers(text: str) -> list[str] | None:
    """A JSON list of strings or numbers, as strings; None when `text` is not one."""
    if not text.startswith("["):
        return None
    try:
        items = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(items, list) or not items:
        return None
    if not all(isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in items):
        return None
    return [item if isinstance(item, str) else json.dumps(item) for item in items]


def gold_answers(ground_truth: str) -> list[str]:
    """The acceptable answers of a gold string; raises Unverifiable when there is none.

    Accepted forms: a JSON list of answers (`["cat", "a cat"]`, any one counts), `\\boxed{answer}`,
    `<answer>answer</answer>` (whose content may itself be a JSON list), or the plain answer text.
    """
    text = ground_truth.strip()
    answers = _json_answers(text)
    if answers is None:
        boxed = last_boxed(text)
        tagged = answer_tag(text) if boxed is None else None
        inner = boxed if boxed is not None else tagged if tagged is not None else text
        inner = inner.strip()
        answers = _json_answers(inner) or [inner]
    answers = [answer.strip() for answer in answers]
    if not any(answers):
        raise Unverifiable(f"the gold holds no answer: {ground_truth!r:.120}", field=GOLD_FIELD)
    return [answer for answer in answers if answer]
