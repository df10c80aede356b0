"""Verifier-level reward computation: reward specs, the verifier registry, the verifiers and the TRL router.

Importing the package registers the built-in verifiers: `mathverify`, `detection` and `tag` (the learnable demo
task). See docs/architecture.md for the contract and each module's docstring for the published semantics.
"""

from triune_trl.rewards import detection, mathverify, tag  # noqa: F401  (registration side effect)
from triune_trl.rewards.registry import (
    ScoringContext,
    Unverifiable,
    Verifier,
    VerifierOutput,
    available_verifiers,
    get_verifier,
    register_verifier,
)
from triune_trl.rewards.router import RewardRouter, score_sample, validate_reward_spec
from triune_trl.rewards.spec import RewardSpec

__all__ = [
    "RewardRouter",
    "RewardSpec",
    "ScoringContext",
    "Unverifiable",
    "Verifier",
    "VerifierOutput",
    "available_verifiers",
    "get_verifier",
    "register_verifier",
    "score_sample",
    "validate_reward_spec",
]
