"""Scoring one completion against one reward spec, in either form; the one code path of router, pool and file scorer.

`resolve(reward_model)` parses the spec, looks up its verifier(s) and parses the gold once (`Resolved`); then
`score_text(text, resolved, ctx)` scores a completion into the router's score dict. Worker processes and the
in-process router call exactly these two functions, so scores cannot depend on where they were computed.

Combination:

- Orsta single-verifier form (`"verifier": "mathverify"`): `final = acc * a / (a + f) + fmt * f / (a + f)`, the
  release's formula, with the verifier's own sub-scores (unchanged semantics);
- multi-verifier form (`"verifier": [{"name": ..., "weight": w}, ...]`): the accuracy is the weighted mean of the
  entries' accuracies, `acc = sum(w_i * acc_i) / sum(w_i)`; the format reward is the *first* entry's (the primary
  verifier defines the expected layout; later entries add accuracy terms); `final` mixes them with the row's
  ratios as above. The score dict carries `<name>_accuracy` and `<name>_format` per entry and every entry's
  sub-scores prefixed with `<name>_` (unless already so named, as `counting_exact`). If any entry is
  unverifiable the sample is unverifiable (never scored as if that term were 0), with the entry named in the reason.

Weighted means keep every documented range: when each entry's accuracy lies in [lo, hi], so does the mix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from triune_trl.errors import RewardSpecError
from triune_trl.rewards.registry import PreparedGold, ScoringContext, Verifier, VerifierOutput, get_verifier
from triune_trl.rewards.spec import RewardSpec, VerifierEntry

__all__ = [
    "Component",
    "Resolved",
    "check_reward_spec",
    "combine_rewards",
    "resolve",
    "score_text",
    "spec_key",
    "unverifiable",
]

PARM_PREFIX = "reward_model.verifier_parm"


def combine_rewards(accuracy: float, format_reward: float, accuracy_ratio: float, format_ratio: float) -> float:
    """`acc * a / (a + f) + fmt * f / (a + f)`, operation for operation as the release's server."""
    total = accuracy_ratio + format_ratio
    return accuracy * (accuracy_ratio / total) + format_reward * (format_ratio / total)


@dataclass(frozen=True)
class Component:
    """One verifier of a spec: the entry (None for the single form), its single-form view, verifier and gold."""

    entry: VerifierEntry | None
    spec: RewardSpec
    verifier: Verifier
    prepared: PreparedGold


@dataclass(frozen=True)
class Resolved:
    """A reward spec resolved once: the parsed spec and its components, or why it cannot be scored."""

    spec: RewardSpec | None = None
    components: tuple[Component, ...] = ()
    error: str | None = None


def _entry_field(field: str, index: int, entry: VerifierEntry) -> str:
    """A verifier's field path, re-rooted at the entry's own `verifier_parm` when it has one."""
    if entry.own_parm and (field == PARM_PREFIX or field.startswith(PARM_PREFIX + ".")):
        return f"reward_model.verifier[{index}].verifier_parm" + field[len(PARM_PREFIX) :]
    return field


def check_reward_spec(reward_model: Any) -> list[tuple[str, str]]:
    """Every problem that would make all completions of this spec unverifiable, as (dotted field, message)."""
    try:
        spec = RewardSpec.from_dict(reward_model)
        if not spec.is_multi:
            return get_verifier(spec.verifier).check_spec(spec)
        verifiers = []
        for index, entry in enumerate(spec.entries):
            try:
                verifiers.append(get_verifier(entry.name))
            except RewardSpecError as exc:
                raise RewardSpecError(f"reward_model.verifier[{index}].name", exc.message) from None
    except RewardSpecError as exc:
        return [(exc.field, exc.message)]
    problems = []
    for index, (entry, verifier) in enumerate(zip(spec.entries, verifiers, strict=True)):
        for field, message in verifier.check_spec(spec.component(entry)):
            problem = (_entry_field(field, index, entry), f"{entry.name}: {message}")
            if problem not in problems:
                problems.append(problem)
    return problems


def resolve(reward_model: Any) -> Resolved:
    """Parse the spec, find its verifier(s) and prepare their gold. Never raises."""
    try:
        spec = RewardSpec.from_dict(reward_model)
    except RewardSpecError as exc:
        return Resolved(error=f"invalid reward spec: {exc}")
    except Exception as exc:  # a reward_model so odd that parsing it crashes is still only this sample's problem
        return Resolved(error=f"invalid reward spec: {type(exc).__name__}: {exc}")
    components = []
    entries: list[VerifierEntry | None] = list(spec.entries) if spec.is_multi else [None]
    for entry in entries:
        view = spec if entry is None else spec.component(entry)
        try:
            verifier = get_verifier(view.verifier)
        except RewardSpecError as exc:
            return Resolved(spec=spec, error=str(exc))
        prepared = verifier.prepare(view)
        if prepared.reason is None:
            try:
                verifier.warm_up(prepared.value)
            except Exception as exc:
                prepared = PreparedGold(reason=f"{view.verifier} could not load what it needs: {exc}")
        components.append(Component(entry, view, verifier, prepared))
    return Resolved(spec=spec, components=tuple(components))


def _key_part(value: Any) -> Any:
    """numpy values by content (`tolist`): their repr elides long arrays, so two different arrays would share a key."""
    return value.tolist() if hasattr(value, "tolist") else repr(value)


def spec_key(reward_model: Any) -> str | None:
    """A key under which identical specs share their parsed gold; None when the spec cannot be keyed."""
    try:
        return json.dumps(reward_model, sort_keys=True, default=_key_part)
    except (TypeError, ValueError, RecursionError):
        return None


def unverifiable(reason: str, format_reward: float | None = None) -> dict[str, Any]:
    """The score dict of a sample that cannot be scored: every reward None but the format when it is known."""
    return {
        "final_reward": None,
        "format_reward": format_reward,
        "accuracy_reward": None,
        "unverifiable_reason": reason,
    }


def _single(out: VerifierOutput, spec: RewardSpec) -> dict[str, Any]:
    final = None
    if out.accuracy_reward is not None:
        final = combine_rewards(out.accuracy_reward, out.format_reward, spec.accuracy_ratio, spec.format_ratio)
    return {
        "final_reward": final,
        "format_reward": out.format_reward,
        "accuracy_reward": out.accuracy_reward,
        "unverifiable_reason": out.unverifiable_reason,
        **out.sub_scores,
    }


def _prefixed(name: str, key: str) -> str:
    """`<name>_<key>`, unless the verifier already prefixes its sub-scores with its name (`counting_exact`)."""
    return key if key.startswith(f"{name}_") else f"{name}_{key}"


def _multi(outputs: list[tuple[Component, VerifierOutput]], spec: RewardSpec) -> dict[str, Any]:
    format_reward = outputs[0][1].format_reward
    for component, out in outputs:
        if out.accuracy_reward is None:
            name = component.spec.verifier
            return unverifiable(f"{name}: {out.unverifiable_reason}", format_reward)
    weights = [component.entry.weight for component, _ in outputs if component.entry is not None]
    accuracy = sum(w * out.accuracy_reward for w, (_, out) in zip(weights, outputs, strict=True)) / sum(weights)
    scores: dict[str, Any] = {
        "final_reward": combine_rewards(accuracy, format_reward, spec.accuracy_ratio, spec.format_ratio),
        "format_reward": format_reward,
        "accuracy_reward": accuracy,
        "unverifiable_reason": None,
    }
    for component, out in outputs:
        name = component.spec.verifier
        scores[f"{name}_accuracy"] = out.accuracy_reward
        scores[f"{name}_format"] = out.format_reward
        scores.update({_prefixed(name, key): value for key, value in out.sub_scores.items()})
    return scores


def score_text(text: str, resolved: Resolved, ctx: ScoringContext) -> dict[str, Any]:
    """The score dict of one completion text: final/format/accuracy rewards, the reason, then the sub-scores."""
    spec = resolved.spec
    if resolved.error is not None or spec is None or not resolved.components:
        return unverifiable(resolved.error or "the reward spec could not be resolved")
    outputs = [(c, c.verifier.score(text, c.spec, ctx, prepared=c.prepared)) for c in resolved.components]
    if not spec.is_multi:
        return _single(outputs[0][1], spec)
    return _multi(outputs, spec)
