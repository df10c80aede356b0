"""Turns each scored batch into per-sample records and keeps them, per mode, until the next log.

`TriuneGRPOTrainer` calls `local_records` right after the reward functions ran (it has the batch's dataset rows,
completions and completion ids, and the router has just left its per-sample score dicts on `last_scores`), gathers
the records of all ranks, then calls `add`. Because every rank holds the same gathered records, every rank computes
the same metrics with the same keys, including for a source that is absent from its own shard, and no collective
operation depends on which sources a rank saw (which could otherwise hang a distributed run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..rewards.iou_schedule import iou_thresholds
from ..rewards.router import completion_text
from ..rewards.spec import verifier_names
from .per_source import SampleRecord, aggregate, group_zero_std_flags, numeric_sub_scores
from .reflection import reflection_counts

__all__ = ["IOU_VERIFIERS", "SourceMonitor", "current_iou_threshold"]

# Verifiers whose accuracy can depend on the IoU threshold; `iou_threshold/<source>` is logged for their rows.
IOU_VERIFIERS = frozenset({"detection", "grounding"})


def current_iou_threshold(router: Any, trainer_state: Any = None) -> float | None:
    """The IoU threshold the router applies now: its fixed value, the dynamic schedule's, or the mean of "average".

    Progress comes from the router (set by `DynamicIoUCallback`), else from `trainer_state` as the router itself
    falls back; None when the router has no threshold or a dynamic one has no progress to follow.
    """
    setting = getattr(router, "iou_threshold", None)
    if setting is None:
        return None
    progress = getattr(router, "progress", None)
    if progress is None and trainer_state is not None and getattr(trainer_state, "max_steps", 0) > 0:
        progress = (trainer_state.global_step + 1, trainer_state.max_steps)
    try:
        taus = iou_thresholds(setting, *(progress or (None, None)))
    except ValueError:
        return None
    return sum(taus) / len(taus)


def _uses_iou(reward_model: Any) -> bool:
    """Whether any verifier of the row (single or multi-verifier form) scores boxes against an IoU threshold."""
    return any(name in IOU_VERIFIERS for name in verifier_names(reward_model))


def _text(completion: Any) -> str:
    try:
        return completion_text(completion)
    except TypeError:
        return ""


class SourceMonitor:
    """The records of the current logging window, for training and for evaluation separately."""

    def __init__(self) -> None:
        self._records: dict[str, list[SampleRecord]] = {"train": [], "eval": []}

    @staticmethod
    def local_records(
        inputs: Sequence[Mapping[str, Any]],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        scores: Sequence[Mapping[str, Any]],
        *,
        stop_token_ids: Sequence[int],
        iou_threshold: float | None = None,
        vision_pads_replaced: Sequence[int] | None = None,
    ) -> list[SampleRecord]:
        """One record per completion of this rank. `scores` are the router's per-sample dicts (same order).

        A completion is clipped when it does not end with one of `stop_token_ids` (EOS or pad), i.e. generation
        stopped at `max_completion_length`: TRL's own `completions/clipped_ratio` test, which the release's
        `length == max` equals except for an answer that ends with EOS exactly at the limit.
        """
        sizes = {len(inputs), len(completions), len(completion_ids), len(scores)}
        if len(sizes) != 1:
            raise ValueError(
                f"per-source monitoring got {len(inputs)} rows, {len(completions)} completions, "
                f"{len(completion_ids)} completion id lists and {len(scores)} score dicts; they must match"
            )
        stops = set(stop_token_ids)
        records = []
        rows = zip(inputs, completions, completion_ids, scores, strict=True)
        for index, (row, completion, ids, score) in enumerate(rows):
            uses_iou = _uses_iou(row.get("reward_model"))
            records.append(
                SampleRecord(
                    data_source=str(row.get("data_source", "unknown")),
                    final_reward=score.get("final_reward"),
                    format_reward=score.get("format_reward"),
                    accuracy_reward=score.get("accuracy_reward"),
                    length=len(ids),
                    clipped=bool(len(ids)) and ids[-1] not in stops,
                    reflection_counts=reflection_counts(_text(completion)),
                    sub_scores=numeric_sub_scores(score),
                    iou_threshold=iou_threshold if uses_iou else None,
                    vision_pads_replaced=vision_pads_replaced[index] if vision_pads_replaced else 0,
                )
            )
        return records

    def add(self, mode: str, records: Sequence[SampleRecord], rewards: Sequence[float], group_size: int) -> None:
        """Keep the records of all ranks, in TRL's gathered order, with the prompt-group zero-std flags attached.

        `rewards` are the combined rewards TRL normalises per group (NaN for an unscorable completion), in the same
        order; consecutive `group_size` completions share a prompt.
        """
        if len(records) != len(rewards):
            raise ValueError(f"{len(records)} gathered records but {len(rewards)} gathered rewards")
        flags = group_zero_std_flags(list(rewards), group_size)
        self._records[mode].extend(
            replace(record, group_zero_std=flags[index // group_size] if index % group_size == 0 else None)
            for index, record in enumerate(records)
        )

    def flush(self, mode: str) -> dict[str, float]:
        """The window's per-source metrics (`<metric>/<data_source>`); the window starts over."""
        records, self._records[mode] = self._records[mode], []
        return aggregate(records)
