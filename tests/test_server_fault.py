"""Faults on real servers: one of two SIGKILLed in the middle of a run, and every server down until one comes back.

The client scores batch after batch on its own event loop thread, as TRL's reward loop does, while the test kills
and restarts servers underneath it. Every sample must still be scored (no None from a failure), the failovers
counted, and a server that comes back on its address used again.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter

import pytest

from triune_trl.rewards import RewardRouter
from triune_trl.server.client import RemoteRewardRouter

from .server_helpers import free_port, start_server

WAIT_S = 60.0
MATH_SPEC = {"ground_truth": "\\boxed{12}", "verifier": "mathverify", "accuracy_ratio": 1.0, "format_ratio": 0.1}
TAG_SPEC = {"ground_truth": "<ok>", "verifier": "tag", "accuracy_ratio": 1.0, "format_ratio": 0.1}
DET_SPEC = {
    "ground_truth": '<answer>\n[{"bbox_2d": [100, 100, 500, 500], "label": "dog"}]\n</answer>',
    "verifier": "detection",
    "accuracy_ratio": 1.0,
    "format_ratio": 0.1,
    "verifier_parm": {
        "det_verifier_normalized": True,
        "det_reward_ratio": {"iou_max_label_first": 1.0, "iou_completeness": 0.3},
    },
}


def _batch() -> dict:
    """48 distinct completions over three verifiers, with rewards spread between 0 and 1."""
    completions, specs, sizes = [], [], []
    for n in range(16):
        completions.append(f"<think>\nstep {n}\n</think>\n<answer>\n\\boxed{{{10 + n % 4}}}\n</answer>")
        specs.append(MATH_SPEC)
        sizes.append([])
        completions.append("<ok>" * (1 + n % 3) + f" attempt {n}")
        specs.append(TAG_SPEC)
        sizes.append([])
        boxes = json.dumps([{"bbox_2d": [100, 100, 500 + 10 * n, 500 - 5 * n], "label": "dog"}])
        completions.append(f"<think>\n{n}\n</think>\n<answer>\n{boxes}\n</answer>")
        specs.append(DET_SPEC)
        sizes.append([[1000, 1000]])
    return {"completions": completions, "reward_model": specs, "image_sizes": sizes}


class BatchLoop:
    """Scores the batch again and again on a thread of its own (one event loop, as TRL's) until stopped."""

    def __init__(self, router: RemoteRewardRouter, batch: dict):
        self.router, self.batch = router, batch
        self.records: list[tuple[list, Counter]] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        async def batches() -> None:
            try:
                while not self.stop.is_set():
                    rewards = await self.router(**self.batch)
                    self.records.append((rewards, Counter(self.router.last_status)))
            finally:
                await self.router.aclose()

        try:
            asyncio.run(batches())
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            if self.error is not None:
                raise AssertionError(f"the scoring loop stopped while waiting for {what}") from self.error
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


@pytest.fixture
def expected() -> list:
    local = RewardRouter(workers=0)
    local.set_progress(5, 10)
    rewards = local(**_batch())
    assert None not in rewards and len(set(rewards)) > 2  # every sample verifiable, rewards spread
    return rewards


def test_a_server_killed_mid_run_is_failed_over_and_used_again_when_it_is_back(expected):
    first, second = start_server(workers=1), start_server(workers=1)
    restarted = None
    try:
        router = RemoteRewardRouter([first.url, second.url], batch_size=6, max_in_flight=4, health_interval=0.2,
                                    backoff=0.05, grace_period=60.0)  # fmt: skip
        router.set_progress(5, 10)
        loop = BatchLoop(router, _batch())
        try:
            loop.wait_for(lambda: len(loop.records) >= 3 and first.health()["requests"]["score"] > 0, "3 batches")
            first.kill()
            killed_at = len(loop.records)
            loop.wait_for(lambda: len(loop.records) >= killed_at + 3, "3 batches after the kill")
            assert not router.servers[0].up and router.stats.failovers > 0

            restarted = start_server(port=first.port, workers=1)
            loop.wait_for(lambda: restarted.health()["requests"]["score"] >= 3, "requests on the restarted server")
            back_at = len(loop.records)
            loop.wait_for(lambda: len(loop.records) >= back_at + 2, "2 more batches")
        finally:
            loop.finish()
        assert len(loop.records) >= killed_at + 5
        for rewards, statuses in loop.records:
            assert rewards == expected  # every sample scored, and scored right, through the kill and the restart
            assert statuses == {"ok": len(expected)}
        assert router.stats.failed == 0 and router.stats.failovers > 0
        assert router.servers[0].up and router.servers[0].failures >= 1
        assert restarted.health()["requests"]["score"] >= 3
    finally:
        for server in (first, second, restarted):
            if server is not None:
                server.stop()


def test_with_every_server_down_requests_wait_and_resume_when_one_comes_back(expected):
    port = free_port()
    router = RemoteRewardRouter([f"http://127.0.0.1:{port}"], health_interval=0.1, backoff=0.0, grace_period=60.0)
    router.set_progress(5, 10)
    loop = BatchLoop(router, _batch())
    server = None
    try:
        loop.wait_for(lambda: router.servers[0].failures >= 1, "the first failed attempt")
        assert not loop.records  # the batch waits for a server rather than scoring anything as failed
        server = start_server(port=port, workers=1)
        loop.wait_for(lambda: len(loop.records) >= 2, "2 batches once the server is up")
    finally:
        loop.finish()
        if server is not None:
            server.stop()
    assert all(rewards == expected for rewards, _ in loop.records)
    assert router.stats.failed == 0 and router.stats.failovers == 1
