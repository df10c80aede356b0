"""Verifier-level reward computation: reward specs, the verifier registry, the verifiers and the TRL router.

Importing the package registers the built-in verifiers: the release's `mathverify` and `detection`, the tasks the
paper names that the release scored with those two (`ocr`, `counting`, `numeric`, `choice`, `grounding`), OmniRL's
`text_overlap` and `length`, `format`, and `tag` (the learnable demo task), one module each in `verifiers/`. See
docs/rewards.md for every verifier's parameters and each module's docstring for its semantics.

May import: `errors` only. It is the bottom of the package: data, monitoring and the reward server build on it.
"""

from triune_trl.rewards import verifiers  # noqa: F401  (registration side effect)
from triune_trl.rewards.pool import Job, JobResult, ScoringPool
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
from triune_trl.rewards.spec import RewardSpec, verifier_names

__all__ = [
    "Job",
    "JobResult",
    "RewardRouter",
    "RewardSpec",
    "ScoringContext",
    "ScoringPool",
    "Unverifiable",
    "Verifier",
    "VerifierOutput",
    "available_verifiers",
    "get_verifier",
    "register_verifier",
    "score_sample",
    "validate_reward_spec",
    "verifier_names",
]
