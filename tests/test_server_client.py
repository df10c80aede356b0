"""The remote reward router against real `triune serve-rewards` subprocesses on 127.0.0.1, over real httpx."""

from __future__ import annotations

import ast
import asyncio
import copy
import io
import json
import threading

import pyarrow.parquet as pq
import pytest
from PIL import Image
from trl.trainer.utils import is_async_callable, start_event_loop_in_daemon

from triune_trl.rewards import RewardRouter
from triune_trl.server.client import (
    RemoteRewardRouter,
    RewardServerAuthError,
    RewardServerUnavailable,
)

from .server_helpers import call_router, free_port, running_server

TOKEN = "cl-4d9e1b7a20"
MATH_SPEC = {"ground_truth": "\\boxed{4}", "verifier": "mathverify", "accuracy_ratio": 1.0, "format_ratio": 0.1}
TAG_SPEC = {"ground_truth": "<ok>", "verifier": "tag", "accuracy_ratio": 1.0, "format_ratio": 0.0}


@pytest.fixture(scope="module")
def servers():
    with running_server(workers=1) as first, running_server(workers=1) as second:
        yield first, second


@pytest.fixture(scope="module")
def token_server():
    with running_server(workers=0, token=TOKEN) as running:
        yield running


def _pixel_boxes(row: dict, size: list[int], shrink: float = 0.0) -> str:
    """The row's gold boxes (0-1000 grid) in the image's pixels, each shrunk by `shrink` of its width and height."""
    width, height = size
    boxes = []
    for box in ast.literal_eval(row["reward_model"]["answer"]):
        x1, y1, x2, y2 = box["bbox_2d"]
        x2, y2 = x2 - (x2 - x1) * shrink, y2 - (y2 - y1) * shrink
        pixels = [round(v * side / 1000) for v, side in zip((x1, y1, x2, y2), (width, height) * 2, strict=True)]
        boxes.append({"bbox_2d": pixels, "label": box["label"]})
    return json.dumps(boxes)


def _variants(row: dict, sizes: list[list[int]]) -> list[str]:
    gold = row["reward_model"]["ground_truth"]
    extra = []
    if row["reward_model"]["verifier"] == "detection":  # a right answer, and one right only at low IoU thresholds
        gold = _pixel_boxes(row, sizes[0])
        extra = [f"<think>\nclose\n</think>\n<answer>\n{_pixel_boxes(row, sizes[0], shrink=0.1)}\n</answer>"]
    return [
        gold,
        f"<think>\nlooking\n</think>\n<answer>\n{gold}\n</answer>",
        f"<think>\nlooking\n</think>\n<answer>\n{gold[: len(gold) // 2]}\n</answer>",
        "no answer at all",
        "",
        *extra,
    ]


@pytest.fixture(scope="module")
def sample_batch(sample_data_dir) -> dict:
    """A batch as TRL passes it: two rows of every bundled train file (math, detection, grounding, tag, ...), five
    conversational completions a row, one repeated, and one unreadable completion."""
    keys = ("prompts", "completions", "reward_model", "image_sizes", "data_source")
    batch: dict[str, list] = {key: [] for key in keys}
    for path in sorted((sample_data_dir / "train").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist()[:2]:
            sizes = [list(Image.open(io.BytesIO(image["bytes"])).size) for image in row["images"] or []]
            for text in [*_variants(row, sizes), row["reward_model"]["ground_truth"]]:
                batch["prompts"].append(row["prompt"])
                batch["completions"].append([{"role": "assistant", "content": text}])
                batch["reward_model"].append(row["reward_model"])
                batch["image_sizes"].append(sizes)
                batch["data_source"].append(row["data_source"])
    for key in batch:
        batch[key].append(batch[key][0])
    batch["completions"][-1] = [{"role": "assistant", "content": 7}]  # unreadable: scored without a request
    return batch


_call = call_router


def _scored(server) -> int:
    return server.health()["requests"]["score"]


def test_remote_scores_equal_in_process_scores_on_every_task(servers, sample_batch):
    remote = RemoteRewardRouter([server.url for server in servers], batch_size=16)
    local = RewardRouter(workers=0)
    for router in (remote, local):
        router.set_progress(3, 10)  # detection's dynamic IoU threshold follows the run's progress
    assert is_async_callable(remote) and remote.__name__ == "triune"
    rewards, metrics = _call(remote, **sample_batch)
    assert rewards == local(**sample_batch)
    assert remote.last_scores == local.last_scores
    verified = [s for s in local.last_scores if s["accuracy_reward"] is not None]
    assert len(verified) > len(local.last_scores) // 2
    specs = sample_batch["reward_model"]
    detection = [s for s, spec in zip(local.last_scores, specs, strict=True) if spec["verifier"] == "detection"]
    assert any(s["accuracy_reward"] and s["accuracy_reward"] > 0.5 for s in detection)  # equality is not vacuous
    assert metrics["rewards/remote_failover_count"] == 0 and metrics["rewards/remote_failed_count"] == 0
    assert metrics["rewards/remote_seconds"] > 0 and "rewards/accuracy" in metrics and "rewards/map" in metrics
    assert remote.stats.completions == len(local.last_results)  # repeated completions are sent once


def test_the_routers_own_iou_threshold_is_sent_with_every_item(servers, sample_batch):
    """The servers run the dynamic schedule; a router set to 0.5 still gets 0.5 scores."""
    remote = RemoteRewardRouter([servers[0].url], iou_threshold=0.5)
    local = RewardRouter(iou_threshold=0.5, workers=0)
    assert _call(remote, **sample_batch)[0] == local(**sample_batch)
    dynamic = RewardRouter(workers=0)
    dynamic.set_progress(10, 10)
    assert dynamic(**sample_batch) != local(**sample_batch)  # the threshold matters for this batch


def test_a_batch_is_split_across_the_servers_with_a_bounded_number_in_flight(servers):
    completions = [f"<think>\n{n}\n</think>\n<answer>\n\\boxed{{{n % 7}}}\n</answer>" for n in range(48)]
    batch = {"completions": completions, "reward_model": [MATH_SPEC] * len(completions)}
    before = [_scored(server) for server in servers]
    for limit in (1, 3):
        router = RemoteRewardRouter([server.url for server in servers], batch_size=4, max_in_flight=limit)
        rewards, _ = _call(router, **batch)
        assert rewards == RewardRouter(workers=0)(**batch)
        assert router.stats.requests == 12 and router.stats.peak_in_flight == limit
        per_server = [router.stats.server_requests[server.url] for server in servers]
        if limit == 1:  # one at a time: equal in-flight counts, so the least recently used server goes next
            assert per_server == [6, 6]
        assert min(per_server) >= 2 and sum(per_server) == 12
    assert sum(_scored(server) for server in servers) - sum(before) == 24


def test_a_dead_server_is_failed_over_and_marked_down(servers, caplog):
    dead = f"http://127.0.0.1:{free_port()}"
    router = RemoteRewardRouter([dead, servers[0].url], batch_size=2, backoff=0.0)
    items = [{"completion": text, "reward_model": MATH_SPEC} for text in ("\\boxed{4}", "\\boxed{5}", "x")]
    with caplog.at_level("WARNING", logger="triune_trl.server.client"):
        scores = router.score_items(items)
    assert [s["accuracy_reward"] for s in scores] == [1.0, 0.0, 0.0]
    assert router.stats.failovers >= 1 and router.stats.failed == 0
    down, up = router.servers
    assert not down.up and "Connect" in down.last_error and up.up
    assert any("retrying" in record.getMessage() and dead in record.getMessage() for record in caplog.records)


def test_samples_whose_every_attempt_fails_are_unverifiable_and_counted_never_zero(servers):
    router = RemoteRewardRouter([server.url for server in servers], timeout=1e-4, retries=2, backoff=0.0)
    batch = {"completions": ["\\boxed{4}", "<ok>"], "reward_model": [MATH_SPEC, TAG_SPEC]}
    rewards, metrics = _call(router, **batch)
    assert rewards == [None, None]
    for scores in router.last_scores:
        reason = scores["unverifiable_reason"]
        assert "every attempt" in reason and all(server.url in reason for server in servers)
        assert "no answer within 0.0001 s" in reason
    assert metrics["rewards/remote_failed_count"] == 2 and metrics["rewards/unverifiable_count"] == 2
    assert metrics["rewards/remote_failover_count"] == 1  # one request: failed once, retried once, failed again
    assert router.stats.failed == 2


def test_a_422_leaves_those_samples_unverifiable_with_the_servers_message_and_the_server_in_use(servers):
    router = RemoteRewardRouter([servers[0].url])
    items = [
        {"completion": "\\boxed{4}", "reward_model": MATH_SPEC},
        {"completion": "\\boxed{4}", "reward_model": MATH_SPEC, "step": 1},  # total_steps missing
        {"completion": "<ok>", "reward_model": TAG_SPEC},
        {"completion": 4, "reward_model": MATH_SPEC},
    ]
    scores = router.score_items(items)
    assert [s["final_reward"] for s in scores] == [pytest.approx(1 / 1.1), None, 1.0, None]
    assert "422" in scores[1]["unverifiable_reason"] and "total_steps" in scores[1]["unverifiable_reason"]
    assert "completion" in scores[3]["unverifiable_reason"]
    assert router.stats.rejected == 2 and router.stats.failovers == 0 and router.servers[0].up


def test_image_sizes_the_server_would_reject_are_not_sent(servers, sample_batch):
    pairs = zip(sample_batch["reward_model"], sample_batch["completions"], strict=True)
    index = next(i for i, (spec, completion) in enumerate(pairs)
                 if spec["verifier"] == "detection" and completion[0]["content"].startswith("<think>"))  # fmt: skip
    batch = {key: [values[index]] * 3 for key, values in sample_batch.items()}
    batch["image_sizes"] = [[[0, 480]], [[float("nan"), 480]], [[640, 480, 3]]]
    router = RemoteRewardRouter([servers[0].url])
    router.set_progress(1, 10)
    rewards, _ = _call(router, **batch)
    assert rewards == [None, None, None]
    assert router.stats.rejected == 0 and router.last_status == {"ok": 3}
    assert all("image size" in s["unverifiable_reason"] for s in router.last_scores)


def test_a_missing_or_wrong_token_stops_at_once_naming_the_option(token_server, tmp_path):
    items = [{"completion": "<ok>", "reward_model": TAG_SPEC}]
    with pytest.raises(RewardServerAuthError, match="requires a bearer token.*--reward_server_token_file"):
        RemoteRewardRouter([token_server.url]).score_items(items)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token\n")
    with pytest.raises(RewardServerAuthError, match=f"refused the bearer token in {wrong}"):
        RemoteRewardRouter([token_server.url], token_file=wrong).score_items(items)
    right = tmp_path / "right"
    right.write_text(TOKEN + "\n")
    router = RemoteRewardRouter([token_server.url], token_file=right)
    assert router.score_items(items)[0]["final_reward"] == 1.0
    assert router.stats.failovers == 0


def test_every_server_down_past_the_grace_period_stops_the_run(caplog):
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    router = RemoteRewardRouter(urls, grace_period=0.5, health_interval=0.1, backoff=0.0, retries=5)
    with pytest.raises(RewardServerUnavailable) as stopped:
        _call(router, completions=["<ok>"], reward_model=[TAG_SPEC])
    message = str(stopped.value)
    assert isinstance(stopped.value, RuntimeError)
    assert all(url in message for url in urls) and "--reward_server_grace_period" in message
    assert "Connect" in message and "triune serve-rewards" in message
    assert all(server.failures >= 1 and not server.up for server in router.servers)


def test_trls_reward_loop_thread_owns_the_client_and_close_works_from_the_trainer_thread(servers):
    thread, loop, ready = start_event_loop_in_daemon(name="test-reward-loop")
    ready.wait()
    router = RemoteRewardRouter([servers[0].url])
    batch = {"completions": ["<ok>", "nope"], "reward_model": [TAG_SPEC, TAG_SPEC]}
    try:
        for _ in range(2):  # the same loop's client serves every call
            future = asyncio.run_coroutine_threadsafe(router(**batch), loop)
            assert future.result(timeout=60) == [1.0, 0.0]
        [state] = router._loops.values()
        assert state.loop is loop and threading.current_thread() is not thread
        router.close()
        assert state.client.is_closed and not router._loops
        assert asyncio.run_coroutine_threadsafe(router(**batch), loop).result(timeout=60) == [1.0, 0.0]
        clone = copy.deepcopy(router)  # copies carry settings and counters, not the loop's client
        assert not clone._loops and clone.stats.requests == router.stats.requests == 3
        assert clone.score_items([{"completion": "<ok>", "reward_model": TAG_SPEC}])[0]["final_reward"] == 1.0
    finally:
        router.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
