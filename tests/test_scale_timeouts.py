"""The Orsta recipes' collective timeout and length budget, checked through the project's own parser.

Server mode: ranks other than 0 wait in a collective while the vLLM server generates the step's rollouts, so
`ddp_timeout` must cover a whole rollout: the recipes' estimate is 8192 completions x 2048 tokens at an assumed
6,000 (7B) / 2,000 (32B) generated tokens per second on one 8-GPU server (docs/scaling.md). The length budget:
max_prompt_length + max_completion_length must fit the vLLM server's --max_model_len, or vLLM refuses the prompt
(HTTP 400) and the run stops.
"""

from __future__ import annotations

import pytest
from trl.scripts.vllm_serve import make_parser as vllm_serve_parser

from triune_trl.runs.train import check_length_budget

from .test_scale_configs import ORSTA, _check_recipe_args, _dry_run, _parse

ASSUMED_TOKENS_PER_SECOND = {"7b": 6000, "32b": 2000}
ROLLOUT_TOKENS = 1024 * 8 * 2048  # prompts x generations x max completion tokens, the worst case of one round
DEFAULT_DDP_TIMEOUT = 1800


@pytest.mark.parametrize("recipe", ORSTA, ids=lambda path: path.name)
def test_the_collective_timeout_covers_a_worst_case_rollout(recipe):
    _, args, _ = _parse(["--config", str(recipe)])
    size = "32b" if "32b" in recipe.name else "7b"
    rollout_seconds = ROLLOUT_TOKENS / ASSUMED_TOKENS_PER_SECOND[size]
    assert args.ddp_timeout > DEFAULT_DDP_TIMEOUT
    assert args.ddp_timeout >= 1.5 * rollout_seconds, f"{args.ddp_timeout} s for a {rollout_seconds:.0f} s rollout"


@pytest.mark.parametrize("recipe", ORSTA, ids=lambda path: path.name)
def test_prompt_and_completion_fit_the_vllm_server(recipe):
    script_args, args, _ = _parse(["--config", str(recipe)])
    command = _dry_run("vllm_serve.sh", {})
    server, _ = vllm_serve_parser().parse_args_and_config(args=command[2:], return_remaining_strings=True)
    assert (script_args.max_prompt_length, script_args.overlong_prompts) == (8192, "drop")
    assert script_args.max_prompt_length + args.max_completion_length <= server.max_model_len
    if args.vllm_max_model_length is not None:
        assert script_args.max_prompt_length + args.max_completion_length <= args.vllm_max_model_length
    check_length_budget(script_args, args)


def test_train_multinode_passes_ddp_timeout_to_the_recipe():
    command = _dry_run("train_multinode.sh", {"DDP_TIMEOUT": "20000"})
    recipe_args = command[command.index("recipes/grpo_triune.py") + 1:]
    assert recipe_args[recipe_args.index("--ddp_timeout") + 1] == "20000"
    _check_recipe_args(recipe_args)
    _, args, _ = _parse(recipe_args[:2] + ["--ddp_timeout", "20000"])
    assert args.ddp_timeout == 20000
    assert "--ddp_timeout" not in _dry_run("train_multinode.sh", {})  # unset: the recipe's own value
