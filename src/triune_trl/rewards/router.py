"""The reward router: the TRL reward function that scores every row with its own verifier(s), in worker processes.

Per sample, the spec's verifier scores the completion and the router combines format and accuracy with the row's
ratios (`rewards/scoring.py`: the Orsta single-verifier form `final = acc * a / (a + f) + fmt * f / (a + f)`, the
release's formula, or the multi-verifier form's weighted accuracy). Where the release turns every error into an
all-zero reward, this router returns None for the sample (TRL then leaves it out of the reward statistics and the
loss) together with the reason, and counts such samples: an unknown verifier, a spec or gold that does not parse,
a detection row without image size or progress, a completion whose scoring ran past the time limit or killed its
worker. A reader's pre-flight check (`validate_reward_spec`) catches spec problems before training; this is the
safety net, never a crash, never a hung step and never a silent 0.

Speed, per call: identical (spec, image size, completion) triples are scored once; completions are sent to the
workers grouped by spec, so each prompt group's gold is parsed once; the workers (`workers`, default 2) score in
parallel, each completion bounded by `time_limit` seconds (`rewards/pool.py`). `workers=0` scores in this process,
with no time limit beyond math-verify's own (for debugging).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

from triune_trl.rewards.iou_schedule import IouThreshold, parse_iou_threshold
from triune_trl.rewards.pool import Job, JobResult, ScoringPool, score_jobs_in_process
from triune_trl.rewards.registry import ScoringContext
from triune_trl.rewards.scoring import check_reward_spec, combine_rewards, resolve, score_text, spec_key, unverifiable

__all__ = [
    "DEFAULT_TIME_LIMIT",
    "DEFAULT_WORKERS",
    "RewardRouter",
    "combine_rewards",
    "completion_text",
    "score_sample",
    "validate_reward_spec",
]

logger = logging.getLogger(__name__)

DEFAULT_WORKERS = 2
DEFAULT_TIME_LIMIT = 10.0


def validate_reward_spec(reward_model: Any) -> list[tuple[str, str]]:
    """Problems that would make every completion of this `reward_model` unverifiable, as (dotted field, message).

    Readers call this before training so a bad row stops the run with its file, row and field named. Empty list:
    the spec parses (either form), its verifiers exist, their parameters are valid and the gold parses for each.
    """
    return check_reward_spec(reward_model)


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

    This scores in the calling process, without a time limit beyond math-verify's own (main thread only): for
    model output in volume use `RewardRouter` or a `ScoringPool`, which score in worker processes.
    """
    ctx = ScoringContext(
        # converted when it is a pair; anything else reaches the verifier, which reports it as unverifiable
        image_size=tuple(image_size) if isinstance(image_size, Sequence) else image_size,  # type: ignore[arg-type]
        step=step,
        total_steps=total_steps,
        iou_threshold=parse_iou_threshold(iou_threshold),
    )
    try:
        text = completion_text(completion)
    except TypeError as exc:
        return unverifiable(f"unreadable completion: {exc}")
    return score_text(text, resolve(reward_model), ctx)


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
    """The TRL reward function (`__name__ == "triune"`) that scores every row with its own verifier(s).

    Called by `GRPOTrainer` with the batch's completions and dataset columns; returns one float, or None for an
    unverifiable sample, per completion. Training progress for the dynamic IoU threshold comes from
    `set_progress` (driven by `DynamicIoUCallback`), else from `trainer_state` (`global_step + 1`, `max_steps`).
    Each call logs through `log_metric` the batch means of `rewards/format`, `rewards/accuracy` and
    `rewards/<sub-score>` (over verified samples), `rewards/unverifiable_count` / `_fraction`, and, with workers,
    `rewards/timeout_count`, `rewards/worker_crash_count` and `rewards/scoring_seconds`; it keeps the per-sample
    score dicts on `last_scores`.

    `workers` worker processes (0: score in this process) score with a per-sample `time_limit` in seconds, and
    with `batch_time_limit` a whole call is bounded too: completions not scored when it runs out are unverifiable
    (status `budget`, logged as `rewards/over_budget_count`). The workers start on the first call and stop with
    `close()`, when the router is garbage-collected, or at exit.

    `completion_prefix` is prepended to every completion before scoring: the opening tag a chat template pre-fills
    in the assistant turn (`<think>\n` for Qwen3.5's thinking template, "" otherwise; set by `TriuneGRPOTrainer`
    from `triune_trl.models.prefill.completion_prefill`), so the verifiers see the whole turn (docs/rewards.md).
    """

    completion_prefix: str = ""

    def __init__(
        self,
        iou_threshold: IouThreshold | str = "dynamic",
        *,
        workers: int = DEFAULT_WORKERS,
        time_limit: float = DEFAULT_TIME_LIMIT,
        batch_time_limit: float | None = None,
    ):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
        if isinstance(time_limit, bool) or not isinstance(time_limit, Real) or not time_limit > 0:
            raise ValueError(f"time_limit must be a number of seconds > 0, got {time_limit!r}")
        if batch_time_limit is not None and (
            isinstance(batch_time_limit, bool) or not isinstance(batch_time_limit, Real) or not batch_time_limit > 0
        ):
            raise ValueError(f"batch_time_limit must be a number of seconds > 0 or None, got {batch_time_limit!r}")
        self.__name__ = "triune"
        self.iou_threshold = parse_iou_threshold(iou_threshold)
        self.workers = workers
        self.time_limit = float(time_limit)
        self.batch_time_limit = None if batch_time_limit is None else float(batch_time_limit)
        self._progress: tuple[int, int] | None = None
        self._pool: ScoringPool | None = None
        self.last_scores: list[dict[str, Any]] = []
        self.last_results: list[JobResult] = []  # per distinct (spec, image size, completion) of the last call
        self.last_status: Counter[str] = Counter()

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles carry the settings, not the worker processes (a copy starts its own)."""
        state = dict(self.__dict__)
        state["_pool"] = None
        return state

    @property
    def pool(self) -> ScoringPool | None:
        """The worker pool (None with `workers=0`); started on first use."""
        if self.workers == 0:
            return None
        if self._pool is None:
            self._pool = ScoringPool(self.workers, self.time_limit)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

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

    def score_jobs(self, jobs: Sequence[Job]) -> list[JobResult]:
        """Score jobs in the workers (or in process with `workers=0`); one result per job, in order."""
        pool = self.pool
        return score_jobs_in_process(jobs) if pool is None else pool.score(jobs, budget=self.batch_time_limit)

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
        started = time.perf_counter()
        jobs, slots = self.build_jobs(completions, reward_model, image_sizes, trainer_state)
        return self.finish_call(self.score_jobs(jobs), slots, log_metric, started)

    def build_jobs(
        self,
        completions: Sequence[Any] | None,
        reward_model: Sequence[Any] | None,
        image_sizes: Sequence[Any] | None = None,
        trainer_state: Any = None,
    ) -> tuple[list[Job], list[int | dict[str, Any]]]:
        """The distinct jobs of a call and, per row, the index of its job or the score dict of an unreadable row.

        Shared with the remote router (`server/client.py`), which scores the same jobs over HTTP.
        """
        if completions is None:
            raise ValueError("RewardRouter needs `completions`")
        if reward_model is None:
            raise ValueError("RewardRouter needs the dataset's `reward_model` column (the Orsta reward spec)")
        if len(reward_model) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(reward_model)} reward_model entries")
        if image_sizes is not None and len(image_sizes) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(image_sizes)} image_sizes entries")
        step, total_steps = self._call_progress(trainer_state)

        jobs: list[Job] = []
        seen: dict[tuple, int] = {}
        slots: list[int | dict[str, Any]] = []
        for index, completion in enumerate(completions):
            try:
                text = self.completion_prefix + completion_text(completion)
            except TypeError as exc:
                slots.append(unverifiable(f"unreadable completion: {exc}"))
                continue
            size = _first_image_size(image_sizes[index]) if image_sizes is not None else None
            ctx = ScoringContext(image_size=size, step=step, total_steps=total_steps, iou_threshold=self.iou_threshold)
            key = spec_key(reward_model[index])
            identity = None if key is None else (key, _hashable(size), text)
            if identity is not None and identity in seen:
                slots.append(seen[identity])
                continue
            if identity is not None:
                seen[identity] = len(jobs)
            slots.append(len(jobs))
            jobs.append(Job(text, reward_model[index], ctx, key))
        return jobs, slots

    def finish_call(
        self,
        results: list[JobResult],
        slots: list[int | dict[str, Any]],
        log_metric: Callable[[str, float], None] | None,
        started: float,
    ) -> list[float | None]:
        """Per-row scores from the jobs' results: kept on `last_scores`, reported, and returned as rewards."""
        self.last_results = results
        self.last_status = Counter(result.status for result in results)
        scores = [dict(slot) if isinstance(slot, dict) else dict(results[slot].scores) for slot in slots]
        self.last_scores = scores
        self._report(scores, log_metric, time.perf_counter() - started)
        return [score["final_reward"] for score in scores]

    def _report(
        self, scores: list[dict[str, Any]], log_metric: Callable[[str, float], None] | None, seconds: float
    ) -> None:
        unverifiable_scores = [score for score in scores if score["accuracy_reward"] is None]
        if unverifiable_scores:
            logger.warning(
                "%d of %d completions are unverifiable (reward None); first reason: %s",
                len(unverifiable_scores),
                len(scores),
                unverifiable_scores[0]["unverifiable_reason"],
            )
        if self.last_status["budget"]:
            logger.warning(
                "reward scoring: the batch time limit of %g s ran out; %d completion(s) were not scored",
                self.batch_time_limit,
                self.last_status["budget"],
            )
        if self.last_status["timeout"] or self.last_status["crash"]:
            logger.warning(
                "reward scoring: %d completion(s) ran past the %g s time limit, %d killed their worker",
                self.last_status["timeout"],
                self.time_limit,
                self.last_status["crash"],
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
        log_metric("rewards/unverifiable_count", float(len(unverifiable_scores)))
        log_metric("rewards/unverifiable_fraction", len(unverifiable_scores) / len(scores))
        if self.workers:
            log_metric("rewards/timeout_count", float(self.last_status["timeout"]))
            log_metric("rewards/worker_crash_count", float(self.last_status["crash"]))
            if self.batch_time_limit is not None:
                log_metric("rewards/over_budget_count", float(self.last_status["budget"]))
        log_metric("rewards/scoring_seconds", seconds)


def _hashable(value: Any) -> Any:
    """A hashable stand-in for an image size (a tuple of numbers, or its repr for anything odd)."""
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)
