"""The worker pool: time limits that really stop hung work, crashed workers replaced, gold once per group, dedup."""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
import time

import pytest

from tests.test_rewards_pool_verifiers import MisbehavingVerifier  # noqa: F401  (registers test_misbehave)
from triune_trl.rewards import Job, RewardRouter, ScoringContext, ScoringPool
from triune_trl.rewards.scoring import spec_key

LIMIT = 1.5


def spec(gold: str = "gold") -> dict:
    return {"ground_truth": gold, "verifier": "test_misbehave", "accuracy_ratio": 1.0, "format_ratio": 0.0}


def jobs(texts: list[str], gold: str = "gold") -> list[Job]:
    reward_model = spec(gold)
    return [Job(text, reward_model, ScoringContext(), spec_key(reward_model)) for text in texts]


@pytest.fixture(scope="module")
def pool():
    with ScoringPool(workers=2, time_limit=LIMIT) as pool:
        yield pool


@pytest.mark.parametrize("bad", ["hang", "spin", "exit", "segfault"])
def test_a_hung_or_dying_completion_is_unverifiable_and_the_rest_is_scored(pool, bad):
    texts = ["ok 0", "ok 1", f"{bad} here", "ok 3", "ok 4", "ok 5"]
    started = time.monotonic()
    results = pool.score(jobs(texts))
    elapsed = time.monotonic() - started
    assert [r.scores["accuracy_reward"] for r in results] == [1.0, 1.0, None, 1.0, 1.0, 1.0]
    bad_result = results[2]
    expected = "timeout" if bad in ("hang", "spin") else "crash"
    assert bad_result.status == expected
    assert bad_result.scores["final_reward"] is None
    if expected == "timeout":
        assert f"longer than the {LIMIT:g} s time limit" in bad_result.scores["unverifiable_reason"]
        assert LIMIT <= bad_result.seconds <= LIMIT + 1.0
    else:
        assert "worker process died" in bad_result.scores["unverifiable_reason"]
    assert elapsed < LIMIT + 10  # the call returns: no hung step
    assert len(pool._pool) == 2  # the stopped worker was replaced


def test_a_batch_budget_bounds_a_call_in_which_everything_hangs():
    with ScoringPool(workers=1, time_limit=30) as small:
        started = time.monotonic()
        results = small.score(jobs(["hang 0", "hang 1", "hang 2", "hang 3"]), budget=1.5)
        elapsed = time.monotonic() - started
        assert 1.5 <= elapsed < 1.5 + 2  # not 4 x 30 s
        assert [r.status for r in results] == ["budget"] * 4
        assert all(r.scores["final_reward"] is None for r in results)
        assert "scoring budget of 1.5 s ran out" in results[0].scores["unverifiable_reason"]
        assert small.stats.over_budget == 4
        after = small.score(jobs(["ok 0", "ok 1"]), budget=30)  # the stopped worker is replaced on the next call
        assert [r.scores["accuracy_reward"] for r in after] == [1.0, 1.0]
        with pytest.raises(ValueError, match="budget"):
            small.score(jobs(["ok"]), budget=0)


def test_a_killed_worker_is_replaced_by_a_new_process(pool):
    before = {r.scores["pid"] for r in pool.score(jobs([f"ok {i}" for i in range(8)]))}
    started = pool.stats.workers_started
    pool.score(jobs(["exit now"]))
    assert pool.stats.workers_started == started + 1
    after = {r.scores["pid"] for r in pool.score(jobs([f"ok {i}" for i in range(8)]))}
    assert after - before  # a process that did not exist before scores now
    assert all(r.status == "ok" for r in pool.score(jobs(["ok"] * 3)))


def test_a_gold_that_hangs_fails_its_whole_group_only(pool):
    hung = jobs(["ok a", "ok b"], gold="hang")
    fine = jobs(["ok c", "ok d"])
    results = pool.score(hung + fine)
    assert [r.scores["accuracy_reward"] for r in results] == [None, None, 1.0, 1.0]
    assert "parsing the gold took longer" in results[0].scores["unverifiable_reason"]


def test_counters_are_kept(pool):
    timeouts, crashes = pool.stats.timeouts, pool.stats.crashes
    pool.score(jobs(["hang", "exit", "ok"]))
    assert (pool.stats.timeouts, pool.stats.crashes) == (timeouts + 1, crashes + 1)


def test_gold_is_parsed_once_per_group_and_cached_across_calls():
    with ScoringPool(workers=1, time_limit=30) as single:
        groups = [jobs([f"ok {i}" for i in range(8)], gold=f"gold {g}") for g in range(3)]
        single.score([job for group in groups for job in group])
        assert single.stats.gold_parses == 3
        single.score(groups[0])  # the worker keeps prepared golds between calls
        assert single.stats.gold_parses == 3


def test_scoring_from_a_thread_keeps_the_time_limit(pool):
    """math-verify's own timeout needs the main thread; the pool's does not."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("results", pool.score(jobs(["ok", "hang"]))))
    thread.start()
    thread.join(timeout=60)
    assert [r.status for r in out["results"]] == ["ok", "timeout"]


# ----------------------------------------------------------------------------------------------- the router


def test_router_scores_identical_completions_once_and_counts_failures():
    logged: dict[str, float] = {}
    router = RewardRouter(workers=2, time_limit=LIMIT)
    completions = ["ok", "ok", "hang", "ok", "other", "other", "exit"]
    try:
        rewards = router(
            prompts=["p"] * 7,
            completions=completions,
            reward_model=[spec()] * 7,
            log_metric=lambda name, value: logged.__setitem__(name, value),
        )
        assert rewards == [1.0, 1.0, None, 1.0, 1.0, 1.0, None]
        assert len(router.last_results) == 4  # "ok", "hang", "other", "exit"
        assert router.pool.stats.gold_parses <= 2  # one group, split at most across the two workers
        assert logged["rewards/timeout_count"] == 1.0
        assert logged["rewards/worker_crash_count"] == 1.0
        assert logged["rewards/unverifiable_count"] == 2.0
        assert router.last_scores[0] is not router.last_scores[1]  # rows get their own dicts
    finally:
        router.close()


def test_router_batch_time_limit_bounds_a_call_and_is_logged():
    logged: dict[str, float] = {}
    router = RewardRouter(workers=1, time_limit=30, batch_time_limit=1.0)
    try:
        started = time.monotonic()
        rewards = router(
            prompts=["p"] * 3,
            completions=["hang a", "hang b", "hang c"],
            reward_model=[spec()] * 3,
            log_metric=lambda name, value: logged.__setitem__(name, value),
        )
        assert time.monotonic() - started < 1.0 + 2
        assert rewards == [None, None, None]
        assert logged["rewards/over_budget_count"] == 3.0 and logged["rewards/unverifiable_count"] == 3.0
    finally:
        router.close()
    with pytest.raises(ValueError, match="batch_time_limit"):
        RewardRouter(batch_time_limit=0)


def test_in_process_and_worker_scores_are_identical():
    specs = [
        {"ground_truth": "\\boxed{4}", "verifier": "mathverify", "accuracy_ratio": 1.0, "format_ratio": 0.5},
        {"ground_truth": "\\boxed{12}", "verifier": "numeric", "accuracy_ratio": 1.0, "format_ratio": 0.0},
        {"ground_truth": "hello world", "verifier": "ocr", "accuracy_ratio": 1.0, "format_ratio": 0.0},
    ]
    completions = ["<think>\nx\n</think>\n<answer>\n\\boxed{4}\n</answer>", "\\boxed{12.4}", "\\boxed{helo world}"]
    every_pair = {"completions": completions * 3, "reward_model": [s for s in specs for _ in range(3)]}
    kwargs = {"prompts": ["p"] * 9, **every_pair}
    pooled = RewardRouter(workers=2)
    try:
        assert pooled(**kwargs) == RewardRouter(workers=0)(**kwargs)
    finally:
        pooled.close()


def test_a_router_copy_does_not_share_worker_processes():
    router = RewardRouter(workers=1, time_limit=5)
    try:
        router(prompts=["p"], completions=["ok"], reward_model=[spec()])
        clone = copy.deepcopy(router)
        assert clone._pool is None and (clone.workers, clone.time_limit) == (1, 5.0)
        assert clone(prompts=["p"], completions=["ok"], reward_model=[spec()]) == [1.0]
        clone.close()
    finally:
        router.close()


@pytest.mark.parametrize("kwargs", [{"workers": -1}, {"workers": 1.5}, {"time_limit": 0}, {"time_limit": "fast"}])
def test_invalid_pool_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        RewardRouter(**kwargs)


def test_workers_do_not_import_the_programs_main_module(tmp_path):
    """A training script's imports (torch, TRL) would cost every worker seconds; a script needs no main guard."""
    marker = tmp_path / "imports.log"
    script = tmp_path / "score.py"
    script.write_text(
        "import os\n"
        f"open({str(marker)!r}, 'a').write(str(os.getpid()) + '\\n')\n"
        "from triune_trl.rewards import RewardRouter\n"
        "router = RewardRouter(workers=2)\n"
        "spec = {'ground_truth': '<ok>', 'verifier': 'tag', 'accuracy_ratio': 1.0, 'format_ratio': 0.0}\n"
        "print(router(prompts=['p'] * 2, completions=['<ok>', 'no'], reward_model=[spec] * 2))\n"
        "router.close()\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1.0, 0.0]"
    assert len(marker.read_text().split()) == 1  # imported once, by the script itself
