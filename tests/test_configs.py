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


SERVER_RECIPE = REPO_ROOT / "recipes" / "configs" / "tiny_cpu_vllm_server.yaml"


@pytest.mark.parametrize(
    ("recipe", "options", "error"),
    [
        ("tiny_cpu.yaml", [], "--async_rollouts true needs a vLLM server"),
        ("tiny_cpu_vllm.yaml", [], "--async_rollouts true needs a vLLM server"),
        ("tiny_cpu_vllm_server.yaml", ["--max_staleness", "2"], "--max_staleness 2: 0 (synchronous) or 1"),
        ("tiny_cpu_vllm_server.yaml", ["--vllm_importance_sampling_correction", "false"],
         "--async_rollouts true needs --vllm_importance_sampling_correction true"),
        ("tiny_cpu_vllm_server.yaml", ["--vllm_importance_sampling_mode", "sequence_mask"],
         "--async_rollouts true needs --vllm_importance_sampling_mode token_truncate (or token_mask), not "
         "sequence_mask"),
    ],
)
def test_async_rollouts_options_are_refused_in_one_line_where_they_cannot_work(recipe, options, error):
    config = REPO_ROOT / "recipes" / "configs" / recipe
    with pytest.raises(ValueError) as raised:
        make_parser().parse_args_and_config(args=["--config", str(config), "--async_rollouts", "true", *options])
    message = str(raised.value)
    assert message.startswith(error) and "\n" not in message


def test_preflight_names_the_generation_mode():
    from triune_trl.runs.preflight import generation_mode

    def mode(*options: str) -> str:
        _, args, _ = make_parser().parse_args_and_config(args=["--config", str(SERVER_RECIPE), *options])
        return generation_mode(args)

    assert mode() == "vLLM server mode, synchronous (generation, then the update)"
    assert mode("--async_rollouts", "true", "--max_staleness", "0").endswith("max_staleness 0: synchronous")
    assert mode("--async_rollouts", "true", "--vllm_importance_sampling_mode", "token_truncate") == (
        "vLLM server mode, asynchronous: the next batch generates during the update, with the weights one step older "
        "(importance sampling: token_truncate)")
