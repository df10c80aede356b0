"""The `mathverify` verifier: answers in `\\boxed{}` checked with Hugging Face math-verify, as in the release.

The release uses it for math, puzzle, science, chart, OCR and counting rows.

- format: 0.25 for each of `"<think>\\n"`, `"\\n</think>\\n"`, `"\\n<answer>\\n"`, `"\\n</answer>"` that occurs
  exactly once (rows with format_ratio 0, "free form", simply do not weigh it).
- accuracy: both strings lowercased; gold = `parse(gold, extraction_mode="first_match")` with math-verify's default
  extraction; prediction = `parse` with a single LaTeX extraction that tries `\\boxed{}` first and never extracts
  without an anchor; reward = `float(verify(gold, prediction))`, binary.

Differences from the release, both about not turning "could not check" into a 0:
- a gold that parses to nothing is unverifiable (accuracy None with a reason), where the release scores 0;
- a math-verify *timeout* (parse or comparison) is unverifiable. The release calls math-verify without
  `raise_on_error`, so timeouts silently become "no answer" / "not equal". Every other error inside math-verify is
  treated exactly as math-verify treats it without `raise_on_error` (empty parse, comparison False), so scores
  are otherwise identical.

Timeouts: math-verify bounds each parse/comparison with `signal.alarm`, which only works in the main thread of the
main interpreter (elsewhere it raises ValueError). In any other thread (a threaded reward server, an async reward
function run in an executor) the timeouts are passed as None, i.e. disabled, instead of crashing: a caller that
scores from threads must bound the time itself (the router's worker processes do: `rewards/pool.py`).

Cost: the gold is parsed once per spec (`parse_gold`, cached by the router per prompt group), and each
(gold answer, predicted answer) comparison is remembered with the parsed gold (`ParsedGold.verdicts`): the
rollouts of a group often give the same answer, and sympy's comparison of a wrong answer (milliseconds, seconds for
a deep `\\frac` tower) is the slowest step. Both are pure memoisation; the scores are math-verify's.
"""

from __future__ import annotations

import functools
import itertools
import threading
from typing import Any

from triune_trl.rewards.registry import Scored, ScoringContext, Unverifiable, Verifier, register_verifier
from triune_trl.rewards.spec import RewardSpec

__all__ = ["FORMAT_TAGS", "MathVerifyVerifier", "ParsedGold", "math_format_reward"]

FORMAT_TAGS = ("<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>")
TIMEOUT_SECONDS = 5  # math-verify's own defaults for parse and verify, which the release relies on


def math_format_reward(completion: str) -> float:
    """0.25 for each format tag present exactly once."""
    return sum(0.25 for tag in FORMAT_TAGS if completion.count(tag) == 1)


def _timeout() -> int | None:
    """math-verify's signal-based timeout where it can work (main thread), None (disabled) elsewhere."""
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=1)
def _prediction_config() -> list:
    """The release's extraction config for predictions: LaTeX only, `\\boxed{}` first, anchors required."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig

    return [
        LatexExtractionConfig(
            normalization_config=NormalizationConfig(
                nits=False, malformed_operators=False, basic_latex=True, boxed="all", units=True
            ),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        )
    ]


@functools.lru_cache(maxsize=1)
def _math_verify() -> tuple[Any, type[Exception]]:
    """(the math_verify module, its TimeoutException), imported once: an import statement in a function that runs
    per completion costs more than the rest of a cached parse."""
    import math_verify
    from math_verify.errors import TimeoutException

    return math_verify, TimeoutException


def _parse(text: str, what: str, **kwargs: Any) -> list:
    """`math_verify.parse` that reports timeouts (Unverifiable) and treats other errors as math-verify does ([])."""
    math_verify, timeout_error = _math_verify()
    try:
        return math_verify.parse(text, parsing_timeout=_timeout(), raise_on_error=True, **kwargs)
    except timeout_error:
        raise Unverifiable(f"math-verify timed out parsing the {what}") from None
    except Exception:
        return []


class ParsedGold(list):
    """A gold's parsed answers (a list, as `math_verify.parse` returns) plus the verdicts already computed against
    them: the rollouts of a prompt group often repeat an answer, and sympy's comparison of a wrong answer is the
    slowest step of this verifier. The verdicts live as long as the parsed gold (one spec, one call or one worker's
    cache), so nothing is remembered across golds."""

    __slots__ = ("verdicts",)

    def __init__(self, answers: list):
        super().__init__(answers)
        self.verdicts: dict[tuple, bool] = {}


VERDICTS_PER_GOLD = 1024


def _pair_key(gold: Any, prediction: Any) -> tuple | None:
    """A key for one comparison: the two values with their types (sympy compares and hashes expressions by
    structure, so equal keys are the same comparison); None for unhashable values (matrices), never remembered."""
    try:
        key = (type(gold), gold, type(prediction), prediction)
        hash(key)
    except TypeError:
        return None
    return key


def _verify_pair(gold: Any, prediction: Any, verdicts: dict[tuple, bool] | None) -> bool:
    """`math_verify.verify` of one pair, remembered in `verdicts` when given. Timeouts and errors are not."""
    key = None if verdicts is None else _pair_key(gold, prediction)
    if key is not None and key in verdicts:
        return verdicts[key]
    math_verify, _ = _math_verify()
    result = bool(math_verify.verify(gold, prediction, timeout_seconds=_timeout(), raise_on_error=True))
    if key is not None and len(verdicts) < VERDICTS_PER_GOLD:
        verdicts[key] = result
    return result


def _verify(gold: list, prediction: list) -> bool:
    """`math_verify.verify(gold, prediction)` pair by pair, so a timeout can be told apart from "not equal"."""
    _, timeout_error = _math_verify()
    verdicts = getattr(gold, "verdicts", None)
    timed_out = False
    for g, p in itertools.product(gold, prediction):
        try:
            if _verify_pair(g, p, verdicts):
                return True
        except timeout_error:
            timed_out = True
        except Exception:
            continue
    if timed_out:
        raise Unverifiable("math-verify timed out comparing the answer with the gold")
    return False


@register_verifier("mathverify")
class MathVerifyVerifier(Verifier):
    """Binary accuracy of a `\\boxed{}` answer against a LaTeX gold; format from the think/answer tags."""

    def format_reward(self, completion: str, spec: RewardSpec) -> float:
        return math_format_reward(completion)

    def parse_gold(self, spec: RewardSpec) -> list:
        gold = _parse(spec.ground_truth.lower(), "gold", extraction_mode="first_match")
        if not gold:
            raise Unverifiable(f"math-verify extracts no answer from the gold {spec.ground_truth!r:.120}")
        return ParsedGold(gold)

    def accuracy(self, completion: str, spec: RewardSpec, gold: Any, ctx: ScoringContext) -> Scored:
        prediction = _parse(
            completion.lower(), "completion", extraction_config=_prediction_config(), extraction_mode="first_match"
        )
        return (1.0 if _verify(gold, prediction) else 0.0), {}
