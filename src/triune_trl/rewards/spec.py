"""The per-sample reward spec: the Orsta-Data-47k `reward_model` struct, parsed and checked once.

A row's `reward_model` arrives as a dict (from parquet, where absent struct members are None, or from JSON lines),
and `verifier_parm` may also be a JSON string (the release's reward server receives it that way). Parsing it into a
frozen dataclass here means every verifier reads typed, validated fields, and every structural mistake is reported
with the dotted path of the field (`reward_model.verifier_parm.det_reward_ratio.map`) before a run starts.

What is checked here is the structure every verifier shares. Verifier-specific requirements (a detection row needs
`det_reward_ratio`; a gold that must parse) are checked by the verifier's `check_spec`.

Two forms of `verifier`:

- the Orsta single-verifier form, a name: `"verifier": "mathverify"` with the row's `verifier_parm`;
- the multi-verifier form, a list (or a JSON string holding the list, for parquet files whose `verifier` column is
  a string): `"verifier": [{"name": "detection", "weight": 1.0}, {"name": "length", "weight": 0.1,
  "verifier_parm": {"max_length": 400}}]`. Each entry names a verifier, its `weight` (>= 0, default 1.0; the
  weights must not all be 0) and optionally its own `verifier_parm`; an entry without one uses the row's
  `verifier_parm`. Names are unique within a list. How the entries' scores combine is the router's business
  (`rewards/scoring.py`).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from triune_trl.errors import RewardSpecError

__all__ = ["DET_REWARD_RATIO_KEYS", "DetRewardRatio", "RewardSpec", "VerifierEntry", "VerifierParm", "verifier_names"]

ROOT = "reward_model"
DET_REWARD_RATIO_KEYS = ("iou_max_label_first", "iou_max_iou_first", "iou_completeness", "map", "map50", "map75")


def _is_real(value: Any) -> bool:
    """A real number that is not a bool (numpy scalars included: they register with `numbers`)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _ratio(value: Any, path: str) -> float:
    """A finite, non-negative float."""
    if not _is_real(value):
        raise RewardSpecError(path, f"expected a number, got {value!r:.80}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise RewardSpecError(path, f"expected a finite number >= 0, got {number!r}")
    return number


@dataclass(frozen=True)
class DetRewardRatio:
    """Weights of the detection accuracy terms (`verifier_parm.det_reward_ratio`).

    `iou_completeness` is the mixing weight c of `mean_iou * (1 - c) + completeness * c`, not an accuracy term: it
    is not part of the accuracy's denominator. Every weight lies in [0, 1]. A key that is absent or null counts as
    0.0, which is what the release does for an absent key (it logs an error and uses 0.0); a value outside [0, 1]
    is an error here, where the release silently replaces it by 0.0.
    """

    iou_max_label_first: float = 0.0
    iou_max_iou_first: float = 0.0
    iou_completeness: float = 0.0
    map: float = 0.0
    map50: float = 0.0
    map75: float = 0.0

    @classmethod
    def from_dict(cls, value: Any, path: str) -> DetRewardRatio:
        if not isinstance(value, Mapping):
            keys = ", ".join(DET_REWARD_RATIO_KEYS)
            raise RewardSpecError(path, f"expected a struct with keys {keys}, got {value!r:.80}")
        unknown = sorted(str(key) for key in value if key not in DET_REWARD_RATIO_KEYS)
        if unknown:
            keys = ", ".join(DET_REWARD_RATIO_KEYS)
            raise RewardSpecError(f"{path}.{unknown[0]}", f"unknown key; expected one of {keys}")
        weights = {}
        for key in DET_REWARD_RATIO_KEYS:
            raw = value.get(key)
            if raw is None:
                weights[key] = 0.0
                continue
            weight = _ratio(raw, f"{path}.{key}")
            if weight > 1.0:
                raise RewardSpecError(f"{path}.{key}", f"expected a weight in [0, 1], got {weight!r}")
            weights[key] = weight
        return cls(**weights)

    @property
    def accuracy_denominator(self) -> float:
        """Sum of the accuracy-term weights, in the release's order of addition (iou_completeness excluded)."""
        return self.iou_max_iou_first + self.iou_max_label_first + self.map + self.map50 + self.map75

    def to_dict(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in DET_REWARD_RATIO_KEYS}


@dataclass(frozen=True)
class VerifierParm:
    """`reward_model.verifier_parm`: detection parameters (None on math rows) and any other keys, kept verbatim.

    `extra` keeps keys this project does not interpret (the release's server payload also carries `step`,
    `total_steps`, `image_grid_thw` there); the verifiers take progress and image size from `ScoringContext`.
    """

    det_verifier_normalized: bool | None = None
    det_reward_ratio: DetRewardRatio | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_value(cls, value: Any, path: str) -> VerifierParm:
        if value is None:
            return cls()
        if isinstance(value, (str, bytes)):
            try:
                value = json.loads(value) if value.strip() else {}
            except ValueError as exc:
                raise RewardSpecError(path, f"not valid JSON: {exc}") from None
            if value is None:
                return cls()
        if not isinstance(value, Mapping):
            raise RewardSpecError(path, f"expected a struct or a JSON object string, got {value!r:.80}")
        normalized = value.get("det_verifier_normalized")
        if normalized is not None:
            if isinstance(normalized, np.bool_):  # numpy bool from a parquet reader
                normalized = bool(normalized)
            if not isinstance(normalized, bool):
                raise RewardSpecError(f"{path}.det_verifier_normalized", f"expected true/false, got {normalized!r:.80}")
        ratio = value.get("det_reward_ratio")
        parsed_ratio = None if ratio is None else DetRewardRatio.from_dict(ratio, f"{path}.det_reward_ratio")
        extra = {k: v for k, v in value.items() if k not in ("det_verifier_normalized", "det_reward_ratio")}
        return cls(det_verifier_normalized=normalized, det_reward_ratio=parsed_ratio, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out["det_verifier_normalized"] = self.det_verifier_normalized
        out["det_reward_ratio"] = None if self.det_reward_ratio is None else self.det_reward_ratio.to_dict()
        return out


ENTRY_KEYS = ("name", "weight", "verifier_parm")


@dataclass(frozen=True)
class VerifierEntry:
    """One entry of the multi-verifier form: a verifier name, its weight and the parameters it reads.

    `own_parm` says whether the entry carried its own `verifier_parm` (else it inherited the row's): error messages
    name the field that has to be fixed.
    """

    name: str
    weight: float
    verifier_parm: VerifierParm
    own_parm: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "weight": self.weight}
        if self.own_parm:
            out["verifier_parm"] = self.verifier_parm.to_dict()
        return out


def _entry_list(value: Any, path: str) -> list[Any] | None:
    """The multi-verifier list behind a `verifier` value, None for a single name; raises on a malformed list."""
    if isinstance(value, str):
        if not value.lstrip().startswith("["):
            return None
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise RewardSpecError(path, f"looks like a JSON list of verifiers but is not valid JSON: {exc}") from None
    if isinstance(value, np.ndarray):  # a list column read through pandas
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    return None


def _parse_entries(items: list[Any], parm: VerifierParm, path: str) -> tuple[VerifierEntry, ...]:
    if not items:
        raise RewardSpecError(path, "an empty verifier list; give at least one {\"name\": ..., \"weight\": ...}")
    entries = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        if not isinstance(item, Mapping):
            raise RewardSpecError(where, f"expected {{\"name\": ..., \"weight\": ...}}, got {item!r:.80}")
        unknown = sorted(str(key) for key in item if key not in ENTRY_KEYS)
        if unknown:
            raise RewardSpecError(f"{where}.{unknown[0]}", f"unknown key; expected one of {', '.join(ENTRY_KEYS)}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RewardSpecError(f"{where}.name", f"expected a verifier name, got {name!r:.80}")
        name = name.strip()
        if name in seen:
            raise RewardSpecError(f"{where}.name", f"{name!r} is already entry {seen[name]}; names must be unique")
        seen[name] = index
        weight = 1.0 if item.get("weight") is None else _ratio(item["weight"], f"{where}.weight")
        own = item.get("verifier_parm") is not None
        entry_parm = VerifierParm.from_value(item["verifier_parm"], f"{where}.verifier_parm") if own else parm
        entries.append(VerifierEntry(name, weight, entry_parm, own))
    if sum(entry.weight for entry in entries) <= 0:
        raise RewardSpecError(path, "the verifier weights sum to 0; give at least one entry a positive weight")
    return tuple(entries)


def verifier_names(reward_model: Any) -> list[str]:
    """The verifier names a raw `reward_model` asks for, in order, without validating anything else ([] if none).

    For code that only needs the names (monitoring, prompt selection): the single form gives one name, the
    multi-verifier form one per entry.
    """
    if isinstance(reward_model, (str, bytes)):
        try:
            reward_model = json.loads(reward_model)
        except ValueError:
            return []
    if not isinstance(reward_model, Mapping):
        return []
    value = reward_model.get("verifier")
    try:
        items = _entry_list(value, f"{ROOT}.verifier")
    except RewardSpecError:
        return []
    if items is None:
        return [value.strip()] if isinstance(value, str) and value.strip() else []
    return [item["name"].strip() for item in items if isinstance(item, Mapping) and isinstance(item.get("name"), str)]


@dataclass(frozen=True)
class RewardSpec:
    """A parsed `reward_model` struct.

    `ground_truth` is the formatted gold the verifier scores against (`\\boxed{4}`, `<answer>\\n[...]\\n</answer>`);
    `answer` is the raw answer, informational only. `accuracy_ratio` a and `format_ratio` f weigh the two rewards:
    `final = acc * a / (a + f) + fmt * f / (a + f)`, so a + f must be > 0. Both are required: the release's server
    would fall back to 1.0 / 0.1 when a request lacks them, but every Orsta row carries them, and a missing ratio
    is far more likely a broken converter than an intent.

    `entries` is empty for the Orsta single-verifier form; for the multi-verifier form it holds the entries and
    `verifier` is the first (primary) entry's name.
    """

    ground_truth: str
    verifier: str
    accuracy_ratio: float
    format_ratio: float
    answer: str | None = None
    verifier_parm: VerifierParm = field(default_factory=VerifierParm)
    entries: tuple[VerifierEntry, ...] = ()

    @property
    def is_multi(self) -> bool:
        return bool(self.entries)

    @property
    def verifier_names(self) -> list[str]:
        return [entry.name for entry in self.entries] if self.entries else [self.verifier]

    def component(self, entry: VerifierEntry) -> RewardSpec:
        """The single-verifier view of one entry: what that entry's verifier reads (its name and parameters)."""
        return replace(self, verifier=entry.name, verifier_parm=entry.verifier_parm, entries=())

    @classmethod
    def from_dict(cls, reward_model: Any) -> RewardSpec:
        """Parse the struct; raises `RewardSpecError(field, message)` naming the first offending field."""
        if isinstance(reward_model, (str, bytes)):
            try:
                reward_model = json.loads(reward_model)
            except ValueError as exc:
                raise RewardSpecError(ROOT, f"not valid JSON: {exc}") from None
        if not isinstance(reward_model, Mapping):
            raise RewardSpecError(ROOT, f"expected a reward spec struct, got {reward_model!r:.80}")

        ground_truth = reward_model.get("ground_truth")
        if not isinstance(ground_truth, str):
            raise RewardSpecError(f"{ROOT}.ground_truth", f"expected a string, got {ground_truth!r:.80}")
        verifier = reward_model.get("verifier")
        items = _entry_list(verifier, f"{ROOT}.verifier")
        if items is None and (not isinstance(verifier, str) or not verifier.strip()):
            raise RewardSpecError(
                f"{ROOT}.verifier", f"expected a verifier name or a list of {{name, weight}}, got {verifier!r:.80}"
            )

        ratios = {}
        for key in ("accuracy_ratio", "format_ratio"):
            if reward_model.get(key) is None:
                raise RewardSpecError(f"{ROOT}.{key}", "missing; every Orsta row sets accuracy_ratio and format_ratio")
            ratios[key] = _ratio(reward_model[key], f"{ROOT}.{key}")
        if ratios["accuracy_ratio"] + ratios["format_ratio"] <= 0:
            raise RewardSpecError(f"{ROOT}.accuracy_ratio", "accuracy_ratio + format_ratio must be > 0")

        answer = reward_model.get("answer")
        parm = VerifierParm.from_value(reward_model.get("verifier_parm"), f"{ROOT}.verifier_parm")
        entries = () if items is None else _parse_entries(items, parm, f"{ROOT}.verifier")
        return cls(
            ground_truth=ground_truth,
            verifier=entries[0].name if entries else verifier.strip(),
            accuracy_ratio=ratios["accuracy_ratio"],
            format_ratio=ratios["format_ratio"],
            answer=None if answer is None else str(answer),
            verifier_parm=parm,
            entries=entries,
        )

    def to_dict(self) -> dict[str, Any]:
        """The Orsta struct form (what `from_dict` accepts)."""
        return {
            "answer": self.answer,
            "ground_truth": self.ground_truth,
            "accuracy_ratio": self.accuracy_ratio,
            "format_ratio": self.format_ratio,
            "verifier": [entry.to_dict() for entry in self.entries] if self.entries else self.verifier,
            "verifier_parm": self.verifier_parm.to_dict(),
        }
