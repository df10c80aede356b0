"""The reward router: per sample, look up the spec's verifier, score, and combine format and accuracy.

`final = acc * a / (a + f) + fmt * f / (a + f)` with a = accuracy_ratio and f = format_ratio (the release's
formula, in its order of operations). Where the release turns every error into an all-zero reward, this router
returns None for the sample (TRL then leaves it out of the reward statistics and the loss) together with the
reason, and counts such samples: an unknown verifier, a spec that does not parse, a gold that does not parse, a
detection row without image size or training progress. A readers' pre-flight check (`validate_reward_spec`)
catches spec problems before training; this is the safety net, never a crash and never a silent 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

from triune_trl.errors import RewardSpecError
from triune_trl.rewards.iou_schedule import IouThreshold, parse_iou_threshold
from triune_trl.rewards.registry import PreparedGold, ScoringContext, Verifier, get_verifier
from triune_trl.rewards.spec import RewardSpec

__all__ = ["RewardRouter", "combine_rewards", "completion_text", "score_sample", "validate_reward_spec"]

logger = logging.getLogger(__name__)


def combine_rewards(accuracy: float, format_reward: float, accuracy_ratio: float, format_ratio: float) -> float:
    """`acc * a / (a + f) + fmt * f / (a + f)`, operation for operation as the release's server."""
    total = accuracy_ratio + format_ratio
    return accuracy * (accuracy_ratio / total) + format_reward * (format_ratio / total)


def validate_reward_spec(reward_model: Any) -> list[tuple[str, str]]:
    """Problems that would make every completion of this `reward_model` unverifiable, as (dotted field, message).

    Readers call this before training so a bad row stops the run with its file, row and field named. Empty list:
    the spec parses, its verifier exists, its parameters are valid and its gold parses.
    """
    try:
        spec = RewardSpec.from_dict(reward_model)
        verifier = get_verifier(spec.verifier)
    except RewardSpecError as exc:
        return [(exc.field, exc.message)]
    return verifier.check_spec(spec)


def _content_text(content: Any) -> str:
    """Text of a message's content: a string, or a list of parts of which the text parts are kept."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise TypeError(f"text part without a string 'text': {part!r:.80}")
                texts.append(text)
            elif not isinstance(part, Mapping):
                raise TypeError(f"unexpected content part {part!r:.80}")
        return "".join(texts)
    raise TypeError(f"unexpected message content {content!r:.80}")


def completion_text(completion: Any) -> str:
    """The text to score: a plain string, or the assistant messages of a TRL conversational completion, joined."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        messages: list[Any] = [completion]
    elif isinstance(completion, Sequence):
        messages = list(completion)
    else:
        raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")
    if not all(isinstance(message, Mapping) for message in messages):
        raise TypeError("a conversational completion must be a list of {'role', 'content'} messages")
    assistant = [message for message in messages if message.get("role") == "assistant"]
    return "".join(_content_text(message.get("content")) for message in (assistant or messages))


@dataclass(frozen=True)
class _Resolved:
    """A reward spec resolved once per call: parsed spec, its verifier and prepared gold, or why not."""

    spec: RewardSpec | None = None
    verifier: Verifier | None = None
    prepared: PreparedGold | None = None
    error: str | None = None


def _resolve(reward_model: Any) -> _Resolved:
    try:
        spec = RewardSpec.from_dict(reward_model)
    except RewardSpecError as exc:
        return _Resolved(error=f"invalid reward spec: {exc}")
    try:
        verifier = get_verifier(spec.verifier)
    except RewardSpecError as exc:
        return _Resolved(spec=spec, error=str(exc))
    return _Resolved(spec=spec, verifier=verifier, prepared=verifier.prepare(spec))


def _spec_key(reward_model: Any) -> str | None:
    """A key under which identical specs share their parsed gold; None when the spec cannot be keyed."""
    try:
        return json.dumps(reward_model, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return None


def _unverifiable(reason: str, format_reward: float | None = None) -> dict[str, Any]:
    return {
        "final_reward": None,
        "format_reward": format_reward,
        "accuracy_reward": None,
        "unverifiable_reason": reason,
    }


def _score(completion: Any, resolved: _Resolved, ctx: ScoringContext) -> dict[str, Any]:
    """One score dict: final/format/accuracy rewards, the reason when unverifiable, then the sub-scores."""
    spec, verifier = resolved.spec, resolved.verifier
    if resolved.error is not None or spec is None or verifier is None:
        return _unverifiable(resolved.error or "the reward spec could not be resolved")
    try:
        text = completion_text(completion)
    except TypeError as exc:
        return _unverifiable(f"unreadable completion: {exc}")
    out = verifier.score(text, spec, ctx, prepared=resolved.prepared)
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


def score_sample(
    completion: Any,
    reward_model: Any,
    *,
    image_size: Sequence[float] | None = None,
    step: int | None = None,
    total_steps: int | None = None,
    iou_threshold: IouThreshold | str = "dynamic",
) -> dict[str, Any]:
    """Score one completion against its `reward_model` struct.

    Returns `final_reward`, `format_reward`, `accuracy_reward` (None when unverifiable, and then `final_reward` is
    None too), `unverifiable_reason` (None when verified) and the verifier's sub-scores. `format_reward` is None
    only when no verifier could be found for the spec. Raises ValueError only for an invalid `iou_threshold` (a
    caller's setting, not a sample's problem).
    """
    ctx = ScoringContext(
        # converted when it is a pair; anything else reaches the verifier, which reports it as unverifiable
        image_size=tuple(image_size) if isinstance(image_size, Sequence) else image_size,  # type: ignore[arg-type]
        step=step,
        total_steps=total_steps,
        iou_threshold=parse_iou_threshold(iou_threshold),
    )
    return _score(completion, _resolve(reward_model), ctx)


def _first_image_size(sizes: Any) -> tuple | None:
    """The first image's [width, height] of a row's `image_sizes` (a flat [w, h] pair is accepted too)."""
    if sizes is None or isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) == 0:
        return None
    first = sizes[0]
    if isinstance(first, Real) and not isinstance(first, bool):
        return tuple(sizes)
    if isinstance(first, Sequence) and not isinstance(first, (str, bytes)):
        return tuple(first)
    return None


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


class RewardRouter:
    """The TRL reward function (`__name__ == "triune"`) that scores every row with its own verifier.

    Called by `GRPOTrainer` with the batch's completions and dataset columns; returns one float, or None for an
    unverifiable sample, per completion. Training progress for the dynamic IoU threshold comes from
    `set_progress` (driven by `DynamicIoUCallback`), else from `trainer_state` (`global_step + 1`, `max_steps`).
    Each call logs through `log_metric` the batch means of `rewards/format`, `rewards/accuracy` and
    `rewards/<sub-score>` (over verified samples) plus `rewards/unverifiable_count` / `_fraction`, and keeps the
    per-sample score dicts on `last_scores`.
    """

    def __init__(self, iou_threshold: IouThreshold | str = "dynamic"):
        self.__name__ = "triune"
        self.iou_threshold = parse_iou_threshold(iou_threshold)
        self._progress: tuple[int, int] | None = None
        self.last_scores: list[dict[str, Any]] = []

    @property
    def progress(self) -> tuple[int, int] | None:
        """(step, total_steps) as last set by `set_progress`, or None."""
        return self._progress

    def set_progress(self, step: int, total_steps: int) -> None:
        """The optimizer step being trained (1-based) and the run's total steps."""
        self._progress = (int(step), int(total_steps))

    def _call_progress(self, trainer_state: Any) -> tuple[int | None, int | None]:
        if self._progress is not None:
            return self._progress
        global_step = getattr(trainer_state, "global_step", None)
        max_steps = getattr(trainer_state, "max_steps", None)
        if isinstance(global_step, int) and isinstance(max_steps, int) and max_steps > 0:
            return global_step + 1, max_steps
        return None, None

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        reward_model: Sequence[Any] | None = None,
        image_sizes: Sequence[Any] | None = None,
        data_source: Sequence[str] | None = None,
        trainer_state: Any = None,
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        if completions is None:
            raise ValueError("RewardRouter needs `completions`")
        if reward_model is None:
            raise ValueError("RewardRouter needs the dataset's `reward_model` column (the Orsta reward spec)")
        if len(reward_model) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(reward_model)} reward_model entries")
        if image_sizes is not None and len(image_sizes) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(image_sizes)} image_sizes entries")
        step, total_steps = self._call_progress(trainer_state)

        resolved: dict[str, _Resolved] = {}
        scores = []
        for index, completion in enumerate(completions):
            key = _spec_key(reward_model[index])
            if key is None:
                spec = _resolve(reward_model[index])
            else:
                if key not in resolved:
                    resolved[key] = _resolve(reward_model[index])
                spec = resolved[key]
            ctx = ScoringContext(
                image_size=_first_image_size(image_sizes[index]) if image_sizes is not None else None,
                step=step,
                total_steps=total_steps,
                iou_threshold=self.iou_threshold,
            )
            scores.append(_score(completion, spec, ctx))

        self.last_scores = scores
        self._report(scores, log_metric)
        return [score["final_reward"] for score in scores]

    @staticmethod
    def _report(scores: list[dict[str, Any]], log_metric: Callable[[str, float], None] | None) -> None:
        unverifiable = [score for score in scores if score["accuracy_reward"] is None]
        if unverifiable:
            logger.warning(
                "%d of %d completions are unverifiable (reward None); first reason: %s",
                len(unverifiable),
                len(scores),
                unverifiable[0]["unverifiable_reason"],
            )
        if log_metric is None or not scores:
            return
        verified = [score for score in scores if score["accuracy_reward"] is not None]
        formats = [score["format_reward"] for score in scores if score["format_reward"] is not None]
        if formats:
            log_metric("rewards/format", _mean(formats))
        if verified:
            log_metric("rewards/accuracy", _mean([score["accuracy_reward"] for score in verified]))
        fixed = {"final_reward", "format_reward", "accuracy_reward", "unverifiable_reason"}
        sub_names = dict.fromkeys(key for score in verified for key in score if key not in fixed)
        for name in sub_names:
            values = [score[name] for score in verified if name in score]
            log_metric(f"rewards/{name}", _mean(values))
        log_metric("rewards/unverifiable_count", float(len(unverifiable)))
        log_metric("rewards/unverifiable_fraction", len(unverifiable) / len(scores))
