"""Recipes are read by TrlParser: YAML first, command-line flags override it."""


import pytest

from triune_trl.configs import TriuneScriptArguments
from triune_trl.runs.train import make_parser

from .conftest import REPO_ROOT

TINY_RECIPE = REPO_ROOT / "recipes" / "configs" / "tiny_cpu.yaml"


def test_tiny_recipe_parses_with_cli_overrides():
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        ["--config", str(TINY_RECIPE), "--max_steps", "3", "--output_dir", "/tmp/x", "--iou_threshold", "0.75"]
    )
    assert training_args.max_steps == 3 and training_args.output_dir == "/tmp/x"
    assert script_args.iou_threshold_value == 0.75
    assert script_args.data_config == "data_configs/sample.yaml"
    assert model_args.model_name_or_path == "artifacts/tiny-qwen2.5-vl"
    assert training_args.bf16 is False and training_args.gradient_checkpointing is False
    assert training_args.beta == 0.0 and training_args.epsilon_high == 0.28


@pytest.mark.parametrize("bad", ["sometimes", "0", "1.5", "-0.2"])
def test_iou_threshold_is_validated(bad):
    with pytest.raises(ValueError, match="iou_threshold"):
        TriuneScriptArguments(iou_threshold=bad)


def test_named_schedules_pass_through():
    assert TriuneScriptArguments(iou_threshold="average").iou_threshold_value == "average"
    assert TriuneScriptArguments().iou_threshold_value == "dynamic"


def test_training_summary_reports_reward_movement(tmp_path):
    from triune_trl.runs.train import training_summary

    history = [{"reward": r, "step": i} for i, r in enumerate([0.0, 0.0, 0.1, 0.5, 0.9, 1.0])] + [{"train_loss": 0}]
    text = training_summary(history, tmp_path)
    assert "0.033 over the first 3 logged steps -> 0.800 over the last 3" in text
    assert str(tmp_path) in text
