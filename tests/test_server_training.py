"""A real tiny GRPO run whose rewards are scored on a real reward server: recipe options -> build_trainer -> train."""

from __future__ import annotations

import pytest

from triune_trl.server.client import RemoteRewardRouter

from .conftest import REPO_ROOT, write_data_config
from .server_helpers import running_server

TINY_RECIPE = REPO_ROOT / "recipes" / "configs" / "tiny_cpu.yaml"


@pytest.mark.slow
def test_a_tiny_run_scores_its_rewards_on_a_reward_server(tmp_path, tiny_model_dir, sample_data_dir, monkeypatch):
    from triune_trl.runs.train import build_trainer, make_parser

    monkeypatch.delenv("REMOTE_REWARD_JOB_ID", raising=False)
    config = write_data_config(
        tmp_path / "data.yaml",
        sample_data_dir,
        ["train/train_detection_*.parquet", "train/train_format_*.parquet", "train/train_math_textmath_*.parquet"],
    )
    with running_server(workers=1) as server:
        argv = [
            "--config", str(TINY_RECIPE), "--model_name_or_path", str(tiny_model_dir), "--data_config", str(config),
            "--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--save_strategy", "no", "--logging_steps", "1",
            "--per_device_train_batch_size", "8", "--num_generations", "4", "--max_completion_length", "16",
            "--reward_server_urls", server.url, "--reward_server_batch_size", "8", "--disable_tqdm", "true",
        ]  # fmt: skip
        script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
        trainer = build_trainer(script_args, training_args, model_args)
        [router] = trainer.reward_funcs
        assert isinstance(router, RemoteRewardRouter) and router.urls == [server.url]
        trainer.train()
        served = server.health()
        router.close()

    assert trainer.state.global_step == 2 and router.progress == (2, 2)  # DynamicIoUCallback drove the remote router
    steps = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(steps) == 2
    for entry in steps:
        assert entry["rewards/remote_failover_count"] == 0 and entry["rewards/remote_failed_count"] == 0
        assert entry["rewards/remote_seconds"] > 0 and "rewards/accuracy" in entry and "rewards/format" in entry
    # 2 steps x 8 completions, each request of at most 8: every completion went over HTTP, none failed
    assert router.stats.requests >= 2 and router.stats.failed == 0 and router.stats.failovers == 0
    assert served["requests"]["score"] == router.stats.requests and served["scored"] == router.stats.completions
    assert len(router.last_scores) == 8
