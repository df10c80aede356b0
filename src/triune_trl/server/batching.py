"""One scoring thread that merges concurrent requests into batches for the worker pool.

A server answers many clients at once (every training rank sends its share of a step's completions), but the
worker pool scores one call at a time. Handing it each request separately would leave workers idle at the end
of every small request; instead every request's jobs go into one queue, and a single thread takes everything
waiting (up to `max_batch` jobs), drops duplicates across requests, scores the lot in one pool call and hands
each request its own results. Requests never wait for each other longer than one batch.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from triune_trl.rewards.pool import Job, JobResult

__all__ = ["BatchScorer", "ScorerStats", "job_identity"]

MIN_BUDGET_S = 0.01


def job_identity(job: Job) -> tuple | None:
    """Jobs with equal identities have equal scores (same spec, completion and scoring context)."""
    if job.key is None:
        return None
    try:
        hash(job.ctx)
    except TypeError:
        return None
    return (job.key, job.text, job.ctx)


def _settle(future: Future, *, result: Any = None, exception: BaseException | None = None) -> None:
    """Resolve a request's future unless its caller gave up on it (a client that disconnected cancels it, at any
    moment, even between a check and the call): the scoring thread must outlive every request."""
    with contextlib.suppress(InvalidStateError):
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)


@dataclass
class ScorerStats:
    """What the scoring thread has done and has waiting; read by /health."""

    requests: int = 0
    completions: int = 0
    distinct_completions: int = 0
    batches: int = 0
    busy_seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)


@dataclass
class _Request:
    jobs: Sequence[Job]
    future: Future
    queued_at: float = field(default_factory=time.monotonic)


class BatchScorer:
    """Scores job lists submitted from any thread, batching whatever waits; `submit` returns a Future.

    `score(jobs, budget)` does the work; `budget` (seconds, or None) is what is left of `budget` here for the
    batch's oldest request, counted from when it was submitted: a request queued behind a slow batch is answered
    within one budget of its arrival, not after that batch's budget and then its own.
    """

    def __init__(
        self,
        score: Callable[[list[Job], float | None], list[JobResult]],
        *,
        max_batch: int = 2048,
        budget: float | None = None,
    ):
        self._score = score
        self.max_batch = max(1, int(max_batch))
        self.budget = budget
        self.stats = ScorerStats()
        self._waiting: deque[_Request] = deque()
        self._queued_jobs = 0
        self._in_progress = 0
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="triune-reward-batcher", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> tuple[int, int]:
        """(requests, completions) waiting for the scoring thread."""
        with self._condition:
            return len(self._waiting), self._queued_jobs

    @property
    def in_progress(self) -> int:
        """Completions in the batch being scored now."""
        return self._in_progress

    def submit(self, jobs: Sequence[Job]) -> Future:
        """Queue the jobs; the Future resolves to one JobResult per job, in order."""
        future: Future = Future()
        if not jobs:
            future.set_result([])
            return future
        with self._condition:
            if self._closed:
                raise RuntimeError("the reward scorer is shut down")
            self._waiting.append(_Request(list(jobs), future))
            self._queued_jobs += len(jobs)
            self._condition.notify()
        return future

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking requests; fail those still waiting; wait for the batch in progress."""
        with self._condition:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            self._queued_jobs = 0
            self._condition.notify_all()
        for request in waiting:
            _settle(request.future, exception=RuntimeError("the reward server is shutting down"))
        self._thread.join(timeout)

    def _take(self) -> list[_Request] | None:
        with self._condition:
            while not self._waiting and not self._closed:
                self._condition.wait()
            if self._closed:
                return None
            taken, count = [], 0
            while self._waiting and (not taken or count + len(self._waiting[0].jobs) <= self.max_batch):
                request = self._waiting.popleft()
                taken.append(request)
                count += len(request.jobs)
            self._queued_jobs -= count
            return taken

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            self._score_batch(taken)

    def _score_batch(self, taken: list[_Request]) -> None:
        distinct: list[Job] = []
        seen: dict[tuple, int] = {}
        slots: list[list[int]] = []
        for request in taken:
            request_slots = []
            for job in request.jobs:
                identity = job_identity(job)
                if identity is not None and identity in seen:
                    request_slots.append(seen[identity])
                    continue
                if identity is not None:
                    seen[identity] = len(distinct)
                request_slots.append(len(distinct))
                distinct.append(job)
            slots.append(request_slots)
        self._in_progress = len(distinct)
        started = time.perf_counter()
        budget = None
        if self.budget is not None:  # never 0: the pool then fails what it has not scored at once
            budget = max(MIN_BUDGET_S, min(r.queued_at for r in taken) + self.budget - time.monotonic())
        try:
            results = self._score(distinct, budget)
        except BaseException as exc:  # the pool failed as a whole (it could not start workers): tell every caller
            for request in taken:
                _settle(request.future, exception=exc)
            return
        finally:
            self._in_progress = 0
            self.stats.busy_seconds += time.perf_counter() - started
        self.stats.batches += 1
        self.stats.requests += len(taken)
        self.stats.completions += sum(len(request.jobs) for request in taken)
        self.stats.distinct_completions += len(distinct)
        for result in results:
            self.stats.statuses[result.status] = self.stats.statuses.get(result.status, 0) + 1
        for request, request_slots in zip(taken, slots, strict=True):
            _settle(request.future, result=[results[slot] for slot in request_slots])
