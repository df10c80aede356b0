"""The `length` verifier: OmniRL's length reward, bounded in [0, 1] so that it cannot outweigh accuracy.

OmniRL trains with a length reward next to accuracy and format and warns that rewards of very different scales
(a length reward in the hundreds next to an accuracy in [0, 1]) slow accuracy down; it publishes no formula. This
one is a plateau: with L the answer's length,

- `L < min_length`: L / min_length (rising to 1);
- `min_length <= L <= max_length`: 1;
- `L > max_length`: `max(0, 1 - (L - max_length) / decay)` (falling to 0 over `decay` more units).

It is meant as a secondary entry of the multi-verifier form, e.g. `[{"name": "text_overlap", "weight": 1.0},
{"name": "length", "weight": 0.1, "verifier_parm": {"min_length": 20, "max_length": 300}}]`, where its weight
caps its share of the accuracy (here 0.1 / 1.1). The gold is not used. The format reward is the release's
think/answer tag format.

`verifier_parm`:

| parameter | default | meaning |
|---|---|---|
| `min_length` | 0 | shortest length with full reward (0: no lower bound) |
| `max_length` | none | longest length with full reward (none: no upper bound); one of the two bounds is needed |
| `decay` | max_length | length past `max_length` over which the reward falls to 0 |
| `unit` | words | `words` (whitespace-separated) or `chars` |
| `answer_source` | full | what is measured: `full` (the whole completion) or the answer (see `answers.py`) |

Sub-score: `answer_length` (L, in `unit`s; not bounded).
"""

from __future__ import annotations

from typing import Any

from triune_trl.rewards.answers import ANSWER_SOURCES
from triune_trl.rewards.params import PARM_FIELD, Param
from triune_trl.rewards.registry import Scored, ScoringContext, Unverifiable, register_verifier
from triune_trl.rewards.spec import RewardSpec
from triune_trl.rewards.textual import AnswerVerifier

__all__ = ["LengthVerifier", "length_reward"]


def length_reward(length: int, min_length: int, max_length: int | None, decay: int | None) -> float:
    """The plateau reward of a length (see the module docstring)."""
    if length < min_length:
        return length / min_length
    if max_length is None or length <= max_length:
        return 1.0
    return max(0.0, 1.0 - (length - max_length) / (decay or max_length))


@register_verifier("length")
class LengthVerifier(AnswerVerifier):
    """A bounded reward for an answer length inside [min_length, max_length]."""

    PARAMS = (
        Param("min_length", "integer", 0, "shortest length with full reward", low=0),
        Param("max_length", "integer", None, "longest length with full reward", low=1),
        Param("decay", "integer", None, "length past max_length over which the reward falls to 0", low=1),
        Param("unit", "choice", "words", "words or chars", choices=("words", "chars")),
        Param("answer_source", "choice", "full", "what is measured", choices=ANSWER_SOURCES),
    )
    SUB_SCORES = ("answer_length",)

    def check_values(self, params: dict[str, Any]) -> None:
        low, high = params["min_length"], params["max_length"]
        if low == 0 and high is None:
            raise Unverifiable("set min_length and/or max_length: without a bound every length scores 1", PARM_FIELD)
        if high is not None and low > high:
            raise Unverifiable(f"min_length {low} is above max_length {high}", f"{PARM_FIELD}.min_length")
        if params["decay"] is not None and high is None:
            raise Unverifiable("decay needs max_length", f"{PARM_FIELD}.decay")

    def gold(self, spec: RewardSpec, params: dict[str, Any]) -> None:
        return None  # the length reward does not depend on the gold

    def compare(self, answer: str, gold: Any, params: dict[str, Any], ctx: ScoringContext) -> Scored:
        length = len(answer.split()) if params["unit"] == "words" else len(answer)
        reward = length_reward(length, params["min_length"], params["max_length"], params["decay"])
        return reward, {"answer_length": float(length)}
