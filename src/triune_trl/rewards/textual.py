"""The shared shape of the verifiers that compare an extracted answer with gold answers.

ocr, counting, numeric, choice and text_overlap all: read declared parameters (`PARAMS`), parse the gold once into
something cheap to compare against, pick the answer out of the completion (`answer_source`), and compare. The
format reward is the release's think/answer tag format (0.25 per tag present exactly once), because the release
scored these tasks with its mathverify verifier, whose format reward that is.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from triune_trl.rewards.answers import extract_answer, gold_answers
from triune_trl.rewards.params import Param, read_params
from triune_trl.rewards.registry import Scored, ScoringContext, Unverifiable, Verifier
from triune_trl.rewards.spec import RewardSpec
from triune_trl.rewards.verifiers.mathverify import math_format_reward

__all__ = ["AnswerVerifier", "ParamVerifier", "Prepared"]


@dataclass(frozen=True)
class Prepared:
    """What `parse_gold` keeps per distinct spec: the typed parameters and the parsed gold."""

    params: dict[str, Any]
    gold: Any


class ParamVerifier(Verifier):
    """A verifier with declared `verifier_parm` parameters: `check_params` and `parse_gold` read them once."""

    PARAMS: ClassVar[tuple[Param, ...]] = ()

    def read(self, spec: RewardSpec) -> dict[str, Any]:
        """The spec's parameters with defaults; raises Unverifiable naming the field."""
        params = read_params(spec, self.PARAMS, self.name)
        self.check_values(params)
        return params

    def check_values(self, params: dict[str, Any]) -> None:
        """Problems between parameters (raise Unverifiable with the field); single values are checked by Param."""

    def check_params(self, spec: RewardSpec) -> list[tuple[str, str]]:
        try:
            self.read(spec)
        except Unverifiable as exc:
            return [(exc.field or "reward_model.verifier_parm", exc.reason)]
        return []

    def parse_gold(self, spec: RewardSpec) -> Prepared:
        params = self.read(spec)
        return Prepared(params, self.gold(spec, params))

    def gold(self, spec: RewardSpec, params: dict[str, Any]) -> Any:
        """The parsed gold; raise Unverifiable(field=GOLD_FIELD) when it cannot be scored against."""
        return None


class AnswerVerifier(ParamVerifier):
    """Compare the completion's answer (see `answers.extract_answer`) with the gold answers."""

    #: the verifier's sub-scores (all 0.0 when the completion gives no answer, unless overridden)
    SUB_SCORES: ClassVar[tuple[str, ...]] = ()

    def no_answer_sub_scores(self, params: dict[str, Any]) -> dict[str, float]:
        """Sub-scores of a completion that gives no answer at all."""
        return dict.fromkeys(self.SUB_SCORES, 0.0)

    def format_reward(self, completion: str, spec: RewardSpec) -> float:
        return math_format_reward(completion)

    def gold(self, spec: RewardSpec, params: dict[str, Any]) -> Any:
        return self.parse_answers(gold_answers(spec.ground_truth), params)

    def parse_answers(self, answers: list[str], params: dict[str, Any]) -> Any:
        """Turn the gold answer strings into what `compare` takes; raise Unverifiable when none is usable."""
        return answers

    def accuracy(self, completion: str, spec: RewardSpec, gold: Any, ctx: ScoringContext) -> Scored:
        prepared: Prepared = gold
        answer = extract_answer(completion, prepared.params["answer_source"])
        if answer is None:
            return 0.0, self.no_answer_sub_scores(prepared.params)
        return self.compare(answer, prepared.gold, prepared.params, ctx)

    @abstractmethod
    def compare(self, answer: str, gold: Any, params: dict[str, Any], ctx: ScoringContext) -> Scored:
        """(accuracy, sub-scores) of one extracted answer."""
