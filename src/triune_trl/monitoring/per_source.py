"""Per-`data_source` metrics of a batch of scored completions: V-Triune's source-level monitoring.

With 18 sources in one run an aggregate reward hides the task that is collapsing, so every metric is computed per
source and named `<metric>/<data_source>` (a `/` inside a source name becomes `_`, as in the release). Evaluation
metrics get TRL's `eval_` prefix: `eval_<metric>/<data_source>`.

A sample is *correct* when its accuracy reward is exactly 1 (the release's test), *wrong* when it is verified and
not correct; an unverifiable sample (accuracy None) is in neither group, so it never counts as a silent wrong answer.

| metric | over | meaning |
|---|---|---|
| `num_completions` | all | completions of the source in the window |
| `reward` | verified | mean final reward |
| `reward_format`, `reward_accuracy` | with a value | mean format / accuracy reward |
| `reward_<sub-score>` | verified | mean of each verifier sub-score (e.g. `reward_map50`) |
| `unverifiable_count` | all | completions whose reward could not be computed |
| `response_length`, `response_clip_ratio` | all | mean length in tokens; share cut at `max_completion_length` |
| `response_length_correct`, `response_clip_ratio_correct` | correct | the same over correct answers |
| `response_length_wrong`, `response_clip_ratio_wrong` | wrong | the same over wrong answers |
| `reflection_ratio` | all | share of responses containing a reflection word (see `reflection.py`) |
| `reflection_ratio_correct`, `reflection_ratio_wrong` | correct / wrong | that share among correct / wrong answers |
| `accuracy_reflection`, `accuracy_no_reflection` | verified | share correct among reflective / non-reflective answers |
| `reflection_word_<word>` | all | occurrences of each of the 15 reflection words |
| `frac_reward_zero_std` | prompt groups | share of the source's prompts whose completions all got the same reward |
| `iou_threshold` | IoU-scored | the detection IoU threshold the samples were scored with |
| `vision_pads_replaced` | all | image/video pad tokens generated inside completions and replaced before the loss |

Means over an empty group are left out (the key is absent from that log entry) rather than logged as NaN or 0; the
reflection ratios follow the release and are 0.0 on an empty denominator. Over a logging window of several steps
every metric is computed on all the window's samples together (sample-weighted, counts summed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from .reflection import REFLECTION_WORDS, reflection_ratios, word_metric_name

__all__ = [
    "PER_SOURCE_METRICS",
    "SampleRecord",
    "aggregate",
    "group_zero_std_flags",
    "metric_key",
    "source_key",
    "split_metric_key",
]

SCORE_FIELDS = frozenset({"final_reward", "format_reward", "accuracy_reward", "unverifiable_reason"})

# Fixed metric names, in log order; `reward_<sub-score>` names depend on the verifiers and are added per batch.
PER_SOURCE_METRICS: tuple[str, ...] = (
    "num_completions",
    "reward",
    "reward_format",
    "reward_accuracy",
    "unverifiable_count",
    "response_length",
    "response_clip_ratio",
    "response_length_correct",
    "response_clip_ratio_correct",
    "response_length_wrong",
    "response_clip_ratio_wrong",
    "reflection_ratio",
    "reflection_ratio_correct",
    "reflection_ratio_wrong",
    "accuracy_reflection",
    "accuracy_no_reflection",
    *(word_metric_name(word) for word in REFLECTION_WORDS),
    "frac_reward_zero_std",
    "iou_threshold",
    "vision_pads_replaced",
)


def source_key(data_source: str) -> str:
    """The source as it appears in metric names: `/` would add a level to the name, so it becomes `_`."""
    return str(data_source).replace("/", "_")


def metric_key(metric: str, data_source: str) -> str:
    """`<metric>/<data_source>`, the one naming scheme of per-source metrics."""
    return f"{metric}/{source_key(data_source)}"


def split_metric_key(key: str) -> tuple[str, str, str] | None:
    """(prefix, metric, source) of a per-source key such as `eval_reward/mm_math` -> ("eval_", "reward", "mm_math").

    None for keys that are not per-source metrics of this module (TRL's own `completions/mean_length`, ...).
    """
    prefix = "eval_" if key.startswith("eval_") else ""
    metric, sep, source = key[len(prefix) :].partition("/")
    if not sep or not source or "/" in source:
        return None
    if metric in PER_SOURCE_METRICS or metric.startswith("reward_"):
        return prefix, metric, source
    return None


@dataclass(frozen=True)
class SampleRecord:
    """What the per-source metrics need from one scored completion; small, so records can be gathered across ranks."""

    data_source: str
    final_reward: float | None
    format_reward: float | None
    accuracy_reward: float | None
    length: int
    clipped: bool
    reflection_counts: tuple[int, ...]
    sub_scores: Mapping[str, float] = field(default_factory=dict)
    iou_threshold: float | None = None
    # Set on the first completion of each prompt group once rewards are gathered, None on the group's others.
    group_zero_std: bool | None = None
    vision_pads_replaced: int = 0

    @property
    def verified(self) -> bool:
        return self.accuracy_reward is not None

    @property
    def correct(self) -> bool:
        return self.accuracy_reward == 1.0

    @property
    def wrong(self) -> bool:
        return self.verified and not self.correct

    @property
    def reflective(self) -> bool:
        return any(self.reflection_counts)


def numeric_sub_scores(score: Mapping[str, Any]) -> dict[str, float]:
    """The verifier's sub-scores of a router score dict: every numeric entry but the three fixed rewards."""
    return {
        name: float(value)
        for name, value in score.items()
        if name not in SCORE_FIELDS and isinstance(value, Real) and not isinstance(value, bool)
    }


def group_zero_std_flags(rewards: Sequence[float], group_size: int) -> list[bool]:
    """Per prompt group (consecutive `group_size` completions, TRL's layout): did all scored completions tie?

    NaN rewards (unverifiable) are ignored; a group with fewer than two scored completions has no spread to
    measure and counts as zero-std, since it gives no learning signal either.
    """
    if group_size <= 0 or len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size}")
    flags = []
    for start in range(0, len(rewards), group_size):
        scored = [r for r in rewards[start : start + group_size] if r == r]  # drop NaN
        flags.append(len(scored) < 2 or max(scored) - min(scored) <= 1e-8 * max(1.0, abs(max(scored))))
    return flags


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _source_metrics(records: list[SampleRecord]) -> dict[str, float]:
    verified = [r for r in records if r.verified]
    correct = [r for r in records if r.correct]
    wrong = [r for r in records if r.wrong]
    values: dict[str, float | None] = {
        "num_completions": float(len(records)),
        "reward": _mean([r.final_reward for r in verified if r.final_reward is not None]),
        "reward_format": _mean([r.format_reward for r in records if r.format_reward is not None]),
        "reward_accuracy": _mean([r.accuracy_reward for r in verified]),
        "unverifiable_count": float(len(records) - len(verified)),
    }
    for suffix, group in (("", records), ("_correct", correct), ("_wrong", wrong)):
        values[f"response_length{suffix}"] = _mean([float(r.length) for r in group])
        values[f"response_clip_ratio{suffix}"] = _mean([float(r.clipped) for r in group])
    values.update(reflection_ratios([r.reflective for r in verified], [r.correct for r in verified]))
    values["reflection_ratio"] = _mean([float(r.reflective) for r in records])
    for index, word in enumerate(REFLECTION_WORDS):
        values[word_metric_name(word)] = float(sum(r.reflection_counts[index] for r in records))
    groups = [r.group_zero_std for r in records if r.group_zero_std is not None]
    values["frac_reward_zero_std"] = _mean([float(flag) for flag in groups])
    values["iou_threshold"] = _mean([r.iou_threshold for r in records if r.iou_threshold is not None])
    values["vision_pads_replaced"] = float(sum(r.vision_pads_replaced for r in records))
    sub_names = dict.fromkeys(name for r in verified for name in r.sub_scores)
    for name in sub_names:
        values[f"reward_{name}"] = _mean([r.sub_scores[name] for r in verified if name in r.sub_scores])
    return {name: value for name, value in values.items() if value is not None}


def aggregate(records: Iterable[SampleRecord]) -> dict[str, float]:
    """Every per-source metric of `records`, keyed `<metric>/<data_source>`, sources in sorted order."""
    by_source: dict[str, list[SampleRecord]] = defaultdict(list)
    for record in records:
        by_source[source_key(record.data_source)].append(record)
    metrics = {}
    for source in sorted(by_source):
        for name, value in _source_metrics(by_source[source]).items():
            metrics[f"{name}/{source}"] = value
    return metrics
