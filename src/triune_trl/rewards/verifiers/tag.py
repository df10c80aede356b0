"""The `tag` verifier: the demo task a randomly initialised tiny model can learn in a few dozen steps.

Real V-Triune rewards (a correct `\\boxed{}` answer, a well-placed box) are out of reach of the tiny offline model
the tests and the CPU recipe train, so a run on them shows no learning. This verifier gives a signal such a model
can climb: accuracy 1.0 iff the completion contains the gold string `ground_truth` (exact, case-sensitive
substring), format 1.0 iff it occurs exactly once. It is not part of the release.
"""

from __future__ import annotations

from typing import Any

from triune_trl.rewards.registry import GOLD_FIELD, Scored, ScoringContext, Unverifiable, Verifier, register_verifier
from triune_trl.rewards.spec import RewardSpec

__all__ = ["TagVerifier"]


@register_verifier("tag")
class TagVerifier(Verifier):
    """Exact-substring reward for the learnable demo task."""

    def format_reward(self, completion: str, spec: RewardSpec) -> float:
        tag = spec.ground_truth
        return 1.0 if tag and completion.count(tag) == 1 else 0.0

    def parse_gold(self, spec: RewardSpec) -> str:
        if not spec.ground_truth:
            raise Unverifiable("the tag verifier needs a non-empty ground_truth string", field=GOLD_FIELD)
        return spec.ground_truth

    def accuracy(self, completion: str, spec: RewardSpec, gold: Any, ctx: ScoringContext) -> Scored:
        return (1.0 if gold in completion else 0.0), {}
