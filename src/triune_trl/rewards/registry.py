"""Verifier registry and the types every verifier speaks: `ScoringContext` in, `VerifierOutput` out.

A verifier is a pure function of (completion, reward spec, context). The router, the reward server and the
`triune reward score` command all look verifiers up here by the spec's `verifier` name, so in-process and remote
scores are identical by construction.

Writing a verifier means implementing three small methods (`format_reward`, `parse_gold`, `accuracy`); the base
class turns them into `score`, which never raises: model output is untrusted, so any failure becomes an
*unverifiable* result with a reason (accuracy None), never an exception and never a silent 0.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, ClassVar

from triune_trl.errors import RewardSpecError
from triune_trl.rewards.spec import RewardSpec

__all__ = [
    "GOLD_FIELD",
    "PreparedGold",
    "Scored",
    "ScoringContext",
    "Unverifiable",
    "Verifier",
    "VerifierOutput",
    "available_verifiers",
    "get_verifier",
    "image_size_pair",
    "register_verifier",
]

GOLD_FIELD = "reward_model.ground_truth"


def image_size_pair(value: Any) -> tuple[float, float] | None:
    """`value` as (width, height) floats when it is two positive finite real numbers (not bools), else None.

    The one check of an image size that arrives from outside (a JSONL line, an HTTP item, a dataset column): an
    integer too large for a float counts as not finite rather than raising OverflowError.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        return None
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in value):
        return None
    try:
        pair = float(value[0]), float(value[1])
    except (OverflowError, TypeError, ValueError):
        return None
    return pair if all(math.isfinite(v) and v > 0 for v in pair) else None

Scored = tuple[float, dict[str, float]]  # (accuracy reward, sub-scores)


@dataclass(frozen=True)
class ScoringContext:
    """What a verifier may need besides the completion and the spec.

    `image_size` is (width, height) of the first image as the model saw it (after the processor's resize), or None
    for text-only rows. `step` (1-based) and `total_steps` drive the dynamic IoU threshold. `iou_threshold` is a
    float, "average" or "dynamic" (see `iou_schedule`).
    """

    image_size: tuple[int, int] | None = None
    step: int | None = None
    total_steps: int | None = None
    iou_threshold: float | str = "dynamic"


@dataclass
class VerifierOutput:
    """One completion's scores. `accuracy_reward is None` means unverifiable, and `unverifiable_reason` says why."""

    format_reward: float
    accuracy_reward: float | None
    sub_scores: dict[str, float] = field(default_factory=dict)
    unverifiable_reason: str | None = None

    @property
    def verified(self) -> bool:
        return self.accuracy_reward is not None


class Unverifiable(Exception):
    """Raised inside a verifier when a sample cannot be scored; `field` is set when a spec field is at fault."""

    def __init__(self, reason: str, field: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class PreparedGold:
    """A spec's parsed gold, or why it cannot be used. Computed once per distinct spec and shared by completions."""

    value: Any = None
    reason: str | None = None


class Verifier(ABC):
    """Base class of all verifiers; subclasses register with `@register_verifier(name)`.

    `accuracy_range` is the documented range of the accuracy reward (the fuzz tests hold every verifier to it);
    the format reward always lies in [0, 1].
    """

    name: ClassVar[str] = ""
    accuracy_range: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def check_params(self, spec: RewardSpec) -> list[tuple[str, str]]:
        """Verifier-specific parameter problems as (dotted field, message); cheap, no gold parsing."""
        return []

    @abstractmethod
    def format_reward(self, completion: str, spec: RewardSpec) -> float:
        """The format reward in [0, 1]. Must not raise for any string."""

    def warm_up(self, gold: Any) -> None:
        """Load what scoring will need (data files, models) once the gold is parsed: scoring calls this when it
        resolves a spec, so the cost is not charged to the first completion's time limit. Default: nothing."""
        return None

    def format_score(self, completion: str, spec: RewardSpec, prepared: PreparedGold) -> float:
        """The format reward given the prepared gold; verifiers whose format check has parameters override this."""
        return self.format_reward(completion, spec)

    @abstractmethod
    def parse_gold(self, spec: RewardSpec) -> Any:
        """Parse `spec.ground_truth` once; raise `Unverifiable` when it cannot be scored against."""

    @abstractmethod
    def accuracy(self, completion: str, spec: RewardSpec, gold: Any, ctx: ScoringContext) -> Scored:
        """(accuracy reward, sub-scores). Raise `Unverifiable` when this sample cannot be scored."""

    # ---------------------------------------------------------------------------------------- provided

    def check_spec(self, spec: RewardSpec) -> list[tuple[str, str]]:
        """All problems that would make every completion of this spec unverifiable: parameters, then the gold."""
        problems = self.check_params(spec)
        if problems:
            return problems
        try:
            self.parse_gold(spec)
        except Unverifiable as exc:
            return [(exc.field or GOLD_FIELD, exc.reason)]
        except Exception as exc:  # a gold that crashes the parser is a gold problem, reported as such
            return [(GOLD_FIELD, f"could not be parsed: {type(exc).__name__}: {exc}")]
        return []

    def prepare(self, spec: RewardSpec) -> PreparedGold:
        """`check_params` + `parse_gold`, never raising: the router caches this per distinct spec."""
        problems = self.check_params(spec)
        if problems:
            return PreparedGold(reason="; ".join(f"{path}: {message}" for path, message in problems))
        try:
            return PreparedGold(value=self.parse_gold(spec))
        except Unverifiable as exc:
            return PreparedGold(reason=f"{exc.field or GOLD_FIELD}: {exc.reason}")
        except Exception as exc:
            return PreparedGold(reason=f"{GOLD_FIELD}: could not be parsed: {type(exc).__name__}: {exc}")

    def score(
        self,
        completion: str,
        spec: RewardSpec,
        ctx: ScoringContext | None = None,
        *,
        prepared: PreparedGold | None = None,
    ) -> VerifierOutput:
        """Score one completion. Never raises; failures come back as unverifiable with a reason."""
        ctx = ctx if ctx is not None else ScoringContext()
        if not isinstance(completion, str):
            return VerifierOutput(0.0, None, {}, f"completion is not text: {type(completion).__name__}")
        prepared = prepared if prepared is not None else self.prepare(spec)
        try:
            fmt = float(self.format_score(completion, spec, prepared))
        except Exception as exc:  # a verifier bug; the sample is not scored rather than scored 0
            return VerifierOutput(0.0, None, {}, f"{self.name} format check failed: {type(exc).__name__}: {exc}")
        if prepared.reason is not None:
            return VerifierOutput(fmt, None, {}, prepared.reason)
        try:
            acc, sub_scores = self.accuracy(completion, spec, prepared.value, ctx)
            acc = float(acc)
        except Unverifiable as exc:
            return VerifierOutput(fmt, None, {}, exc.reason)
        except Exception as exc:
            return VerifierOutput(fmt, None, {}, f"{self.name} verifier failed: {type(exc).__name__}: {exc}")
        if not math.isfinite(acc):
            return VerifierOutput(fmt, None, {}, f"{self.name} verifier produced a non-finite accuracy ({acc})")
        return VerifierOutput(fmt, acc, {key: float(value) for key, value in sub_scores.items()}, None)


_REGISTRY: dict[str, Verifier] = {}


def register_verifier(name: str) -> Callable[[type[Verifier]], type[Verifier]]:
    """Class decorator: register one (stateless) instance of the class under `name`."""

    def decorator(cls: type[Verifier]) -> type[Verifier]:
        if not (isinstance(cls, type) and issubclass(cls, Verifier)):
            raise TypeError(f"@register_verifier({name!r}) needs a Verifier subclass, got {cls!r}")
        if name in _REGISTRY and type(_REGISTRY[name]) is not cls:
            raise ValueError(f"verifier {name!r} is already registered by {type(_REGISTRY[name]).__name__}")
        cls.name = name
        _REGISTRY[name] = cls()
        return cls

    return decorator


def get_verifier(name: str) -> Verifier:
    """The verifier registered under `name`; `RewardSpecError` on the `verifier` field when there is none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise RewardSpecError(
            "reward_model.verifier", f"unknown verifier {name!r}; available: {', '.join(available_verifiers())}"
        ) from None


def available_verifiers() -> list[str]:
    """Registered verifier names, sorted."""
    return sorted(_REGISTRY)
