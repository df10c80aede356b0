"""The `ocr` verifier: ANLS, the normalised edit similarity of ST-VQA / DocVQA, with a threshold.

For an answer a and each gold answer g (both whitespace-collapsed, stripped and, by default, lowercased):
`nl = levenshtein(a, g) / max(len(a), len(g))`; the score is `1 - nl` when `nl < threshold`, else 0; the accuracy
is the best score over the gold answers. So an exact reading scores 1, a reading with a typo scores a little less,
and a reading that shares less than half its characters with every gold (default threshold 0.5) scores 0.

`verifier_parm`:

| parameter | default | meaning |
|---|---|---|
| `threshold` | 0.5 | ANLS's tau in (0, 1]: normalised distances at or above it score 0 |
| `case_sensitive` | false | compare case as written |
| `answer_source` | auto | where the answer is read (see `answers.py`) |

Gold: `\\boxed{text}`, `<answer>text</answer>`, plain text, or a JSON list of acceptable readings.
Sub-scores: `ocr_similarity` (best `1 - nl` without the threshold) and `ocr_exact` (1 when a gold matches exactly).
The edit distance is rapidfuzz's (C++, bit-parallel), so a megabyte-long answer costs milliseconds.
"""

from __future__ import annotations

from typing import Any

from rapidfuzz.distance import Levenshtein

from triune_trl.rewards.answers import ANSWER_SOURCE_PARAM, normalize_text
from triune_trl.rewards.params import PARM_FIELD, Param
from triune_trl.rewards.registry import Scored, ScoringContext, Unverifiable, register_verifier
from triune_trl.rewards.textual import AnswerVerifier

__all__ = ["OcrVerifier", "anls"]


def anls(answer: str, gold: str, threshold: float) -> tuple[float, float]:
    """(thresholded ANLS score, raw similarity `1 - nl`) of two already normalised strings."""
    longest = max(len(answer), len(gold))
    if longest == 0:
        return 1.0, 1.0
    distance = Levenshtein.distance(answer, gold) / longest
    similarity = 1.0 - distance
    return (similarity if distance < threshold else 0.0), similarity


@register_verifier("ocr")
class OcrVerifier(AnswerVerifier):
    """Average-normalised-Levenshtein-similarity accuracy of a text reading."""

    PARAMS = (
        Param("threshold", "number", 0.5, "ANLS threshold tau in (0, 1]", low=0.0, high=1.0),
        Param("case_sensitive", "bool", False, "compare case as written"),
        ANSWER_SOURCE_PARAM,
    )
    SUB_SCORES = ("ocr_similarity", "ocr_exact")

    def check_values(self, params: dict[str, Any]) -> None:
        if params["threshold"] <= 0:
            raise Unverifiable("must be > 0 (a threshold of 0 scores every answer 0)", field=f"{PARM_FIELD}.threshold")

    def parse_answers(self, answers: list[str], params: dict[str, Any]) -> list[str]:
        return [normalize_text(answer, params["case_sensitive"]) for answer in answers]

    def compare(self, answer: str, gold: list[str], params: dict[str, Any], ctx: ScoringContext) -> Scored:
        reading = normalize_text(answer, params["case_sensitive"])
        scores = [anls(reading, candidate, params["threshold"]) for candidate in gold]
        best = max(score for score, _ in scores)
        return best, {
            "ocr_similarity": max(similarity for _, similarity in scores),
            "ocr_exact": 1.0 if reading in gold else 0.0,
        }
