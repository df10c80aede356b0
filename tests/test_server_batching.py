"""The scoring thread that merges requests: order, dedup across requests, and survival of abandoned requests."""

from __future__ import annotations

import threading
import time

import pytest

from triune_trl.rewards.pool import Job, score_jobs_in_process
from triune_trl.rewards.registry import ScoringContext
from triune_trl.rewards.scoring import spec_key
from triune_trl.server.batching import BatchScorer

SPEC = {"ground_truth": "\\boxed{4}", "verifier": "mathverify", "accuracy_ratio": 1.0, "format_ratio": 0.0}


def _jobs(texts: list[str]) -> list[Job]:
    return [Job(text, SPEC, ScoringContext(), spec_key(SPEC)) for text in texts]


def test_requests_waiting_together_are_scored_in_one_batch_with_duplicates_once():
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def score(jobs, budget=None):
        calls.append(len(jobs))
        entered.set()
        release.wait(10)  # hold the first batch so the next requests queue up behind it
        return score_jobs_in_process(jobs)

    scorer = BatchScorer(score)
    try:
        first = scorer.submit(_jobs(["\\boxed{4}"]))
        assert entered.wait(10)
        later = [scorer.submit(_jobs(["\\boxed{4}", f"\\boxed{{{n}}}"])) for n in range(5)]
        release.set()
        assert [r.scores["accuracy_reward"] for r in first.result(10)] == [1.0]
        for n, future in enumerate(later):
            assert [r.scores["accuracy_reward"] for r in future.result(10)] == [1.0, 1.0 if n == 4 else 0.0]
        assert calls == [1, 5]  # the five waiting requests in one batch; "\boxed{4}" once for all of them
        assert scorer.stats.requests == 6 and scorer.stats.completions == 11 and scorer.stats.distinct_completions == 6
    finally:
        scorer.close()


def test_a_request_abandoned_by_its_caller_does_not_stop_the_scoring_thread():
    release = threading.Event()

    def score(jobs, budget=None):
        release.wait(10)
        return score_jobs_in_process(jobs)

    scorer = BatchScorer(score)
    try:
        running = scorer.submit(_jobs(["\\boxed{4}"]))
        abandoned = scorer.submit(_jobs(["\\boxed{5}"]))
        assert abandoned.cancel()  # a client that disconnected: its future is cancelled while it waits
        running.cancel()  # even the batch being scored right now
        release.set()
        after = scorer.submit(_jobs(["\\boxed{4}"]))
        assert after.result(10)[0].scores["accuracy_reward"] == 1.0
    finally:
        scorer.close()


def test_a_failing_scorer_fails_the_requests_not_the_thread():
    attempts = []

    def score(jobs, budget=None):
        attempts.append(len(jobs))
        if len(attempts) <= 2:
            raise RuntimeError("no worker could start")
        return score_jobs_in_process(jobs)

    entered, release = threading.Event(), threading.Event()

    def held(jobs, budget=None):
        entered.set()
        release.wait(10)
        return score(jobs)

    scorer = BatchScorer(held)
    try:
        failed = scorer.submit(_jobs(["\\boxed{4}"]))
        assert entered.wait(10)
        assert failed.cancel()  # its caller gave up while the batch was being scored, and then the batch fails
        release.set()
        failed = scorer.submit(_jobs(["\\boxed{4}"]))
        try:
            failed.result(10)
        except RuntimeError as exc:
            assert "no worker could start" in str(exc)
        else:
            raise AssertionError("the request should have failed")
        assert scorer.submit(_jobs(["\\boxed{4}"])).result(10)[0].scores["accuracy_reward"] == 1.0
    finally:
        scorer.close()


def test_a_request_queued_behind_a_slow_batch_gets_what_is_left_of_its_budget():
    entered, release = threading.Event(), threading.Event()
    budgets: list[float | None] = []

    def score(jobs, budget=None):
        budgets.append(budget)
        if len(budgets) == 1:
            entered.set()
            release.wait(10)
        return score_jobs_in_process(jobs)

    scorer = BatchScorer(score, budget=2.0)
    try:
        first = scorer.submit(_jobs(["\\boxed{4}"]))
        assert entered.wait(10)
        queued = scorer.submit(_jobs(["\\boxed{5}"]))
        time.sleep(0.5)  # the queued request waits while the first batch is scored
        release.set()
        first.result(10), queued.result(10)
        assert budgets[0] == pytest.approx(2.0, abs=0.2)
        assert budgets[1] <= 2.0 - 0.5  # counted from its arrival, not from when its batch started
    finally:
        scorer.close()
