"""skip_nonfinite_updates under DeepSpeed ZeRO-2 and ZeRO-3, bf16, on 2 CPU processes (`triune_trl.trainer.nonfinite`).

Each launch runs tests/nonfinite_run.py: the real recipe's trainer (`training.build_trainer`) plus a test-side
callback that turns the language model's hidden states into NaN during the training forwards of step 2, so that
step's gradients are NaN on both ranks. Before the fix the first such step crashed (`TypeError:
DeepSpeedEngine.zero_grad() got an unexpected keyword argument 'set_to_none'`). The test checks, on every rank,
from a fingerprint of the parameter storage the rank holds (its ZeRO-3 partition, or the whole bf16 weights under
ZeRO-2) taken after each optimizer step: step 1 changed the weights, step 2 changed none, step 3 changed them
again; and that `skipped_nonfinite_updates` logged 0, 1, 1.

The tiny model's rewards are all 0 at the start (no advantage, so zero gradients in steps 1 and 3); what moves the
weights there is AdamW's decoupled weight decay, set to 1.0 so that one step (lr 1e-2: a 1% shrink) is visible
in bf16. A NaN gradient reaches AdamW's moments and the weights through that same update, so an applied step 2
would show as a change (NaN weights).
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from triune_trl.errors import UsageError
from triune_trl.trainer.nonfinite import check_deepspeed_config, drop_update

from .conftest import REPO_ROOT, write_data_config
from .test_scale_launch import BIN, TINY_RECIPE, _free_port, _launch

DRIVER = REPO_ROOT / "tests" / "nonfinite_run.py"
NAN_STEP = 2


def _launch_with_nan_step(tmp_path, monkeypatch, tiny_model_dir, sample_data_dir, accelerate_config: str) -> list:
    data_config = write_data_config(
        tmp_path / "data.yaml", sample_data_dir,
        ["train/train_math_mmmath_*.parquet", "train/train_detection_*.parquet"],
    )
    reports = tmp_path / "reports"
    reports.mkdir()
    monkeypatch.setenv("TRIUNE_TEST_NAN_STEP", str(NAN_STEP))
    monkeypatch.setenv("TRIUNE_TEST_REPORT_DIR", str(reports))
    _launch([
        str(BIN / "accelerate"), "launch", "--config_file", str(REPO_ROOT / "local_scripts" / accelerate_config),
        "--num_processes", "2", "--mixed_precision", "bf16", "--main_process_port", str(_free_port()),
        str(DRIVER), "--config", str(TINY_RECIPE),
        "--model_name_or_path", str(tiny_model_dir), "--data_config", str(data_config),
        "--output_dir", str(tmp_path / "out"), "--bf16", "true", "--use_cpu", "true",
        "--learning_rate", "0.01", "--weight_decay", "1.0",
        "--max_steps", "3", "--per_device_train_batch_size", "4", "--num_generations", "4",
        "--max_completion_length", "8", "--logging_steps", "1", "--save_strategy", "no",
    ])
    return [json.loads((reports / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def _check_step_skipped(reports: list, zero_stage: int) -> None:
    for rank, report in enumerate(reports):
        assert (report["zero_stage"], report["model_dtype"]) == (zero_stage, "torch.bfloat16"), report
        prints = report["fingerprints"]
        steps = [entry for entry in report["log_history"] if "loss" in entry]
        norms = [(entry["step"], entry["grad_norm"], entry["learning_rate"]) for entry in steps]
        assert prints["1"] != prints["0"], f"rank {rank}: step 1 changed no weight; (step, grad norm, lr): {norms}"
        assert prints["2"] == prints["1"], f"rank {rank}: the NaN step {NAN_STEP} changed weights: {norms}"
        assert prints["3"] != prints["2"], f"rank {rank}: step 3 changed no weight: {norms}"
        assert report["skipped"] == 1
        assert [entry["skipped_nonfinite_updates"] for entry in steps] == [0, 1, 1]
        assert not math.isfinite(steps[1]["grad_norm"]) and math.isfinite(steps[2]["grad_norm"])


skip_without_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="DeepSpeed's CPU comm op needs g++")


@pytest.mark.slow
@skip_without_compiler
def test_zero2_bf16_skips_a_non_finite_update(tmp_path, monkeypatch, tiny_model_dir, sample_data_dir):
    reports = _launch_with_nan_step(tmp_path, monkeypatch, tiny_model_dir, sample_data_dir, "zero2.yaml")
    _check_step_skipped(reports, zero_stage=2)
    assert reports[0]["fingerprints"] == reports[1]["fingerprints"], "ZeRO-2 replicates the weights"


@pytest.mark.slow
@skip_without_compiler
def test_zero3_bf16_skips_a_non_finite_update(tmp_path, monkeypatch, tiny_model_dir, sample_data_dir):
    reports = _launch_with_nan_step(tmp_path, monkeypatch, tiny_model_dir, sample_data_dir, "zero3.yaml")
    _check_step_skipped(reports, zero_stage=3)
    assert reports[0]["fingerprints"]["0"] != reports[1]["fingerprints"]["0"], "ZeRO-3 ranks hold different shards"


def test_deepspeed_configs_that_would_apply_nan_updates_are_refused():
    check_deepspeed_config({"bf16": {"enabled": "auto"}, "zero_optimization": {"stage": 2}})
    check_deepspeed_config({})
    with pytest.raises(UsageError, match=r"bf16\.check_grad_overflow: false.*--skip_nonfinite_updates false"):
        check_deepspeed_config({"bf16": {"enabled": True, "check_grad_overflow": False}})
    with pytest.raises(UsageError, match=r"compute_grad_norm: false"):
        check_deepspeed_config({"zero_optimization": {"stage": 1, "compute_grad_norm": False}})


def test_without_deepspeed_the_gradients_are_dropped_before_the_optimizer_step():
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.0)
    before = {name: value.clone() for name, value in layer.state_dict().items()}
    (layer(torch.ones(1, 3)).sum() * math.nan).backward()
    drop_update(layer)
    optimizer.step()
    assert all(torch.equal(before[name], value) for name, value in layer.state_dict().items())
