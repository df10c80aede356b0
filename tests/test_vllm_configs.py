"""The vLLM settings of the Orsta recipes, in server mode and with the documented colocate overrides (parsed here:
the GPU runs themselves need GPUs)."""

from __future__ import annotations

import functools
import re
import subprocess

import pytest

from triune_trl.runs.train import check_length_budget, make_parser

from .conftest import REPO_ROOT

ORSTA = sorted((REPO_ROOT / "recipes" / "configs").glob("orsta_*.yaml"))
# the overrides each Orsta recipe documents for colocate mode
COLOCATE = ["--vllm_mode", "colocate", "--vllm_enable_sleep_mode", "true"]
# colocate tensor parallel size: a 30-35B copy (~60-70 GB in bf16, dense or MoE) needs 4 GPUs, the 7-9B models one
COLOCATE_TP = {"30b": 4, "32b": 4, "35b": 4}
CPU_ONLY = ["--bf16", "false", "--use_cpu", "true"]  # only so that GRPOConfig's checks run on this host


@functools.cache
def _parse(recipe, *overrides: str):
    return make_parser().parse_args_and_config(["--config", str(recipe), *overrides, *CPU_ONLY])


@pytest.mark.parametrize("recipe", ORSTA, ids=lambda path: path.name)
def test_orsta_vllm_context_holds_the_longest_prompt_plus_a_full_completion(recipe):
    script_args, args, _ = _parse(recipe)
    assert args.vllm_mode == "server"
    assert args.vllm_max_model_length == script_args.max_prompt_length + args.max_completion_length == 8192 + 2048
    check_length_budget(script_args, args)  # the check the run makes before loading anything


@pytest.mark.parametrize("recipe", ORSTA, ids=lambda path: path.name)
def test_orsta_recipes_run_colocate_with_their_documented_overrides(recipe):
    script_args, args, _ = _parse(recipe, *COLOCATE)
    assert args.vllm_mode == "colocate" and args.vllm_enable_sleep_mode
    size = re.search(r"_(\d+b)", recipe.name).group(1)  # orsta_7b, orsta_qwen3.5_35b_a3b, ...
    assert args.vllm_tensor_parallel_size == COLOCATE_TP.get(size, 1)
    assert 8 % args.vllm_tensor_parallel_size == 0  # TRL: the tensor parallel size divides the 8 training processes
    assert 0 < args.vllm_gpu_memory_utilization <= 0.5  # leaves the trainer most of each GPU
    check_length_budget(script_args, args)
    text = recipe.read_text()
    assert " ".join(COLOCATE) in text, "the recipe no longer documents the colocate overrides this test parses"


@pytest.mark.parametrize("recipe", ORSTA, ids=lambda path: path.name)
def test_orsta_server_and_its_launch_script_agree_on_the_context(recipe):
    _, args, _ = _parse(recipe)
    # the server command the recipe's header gives (VLLM_TP=4 for 32B; the script's default 1 otherwise)
    header = re.search(r"^#\s+(.*local_scripts/vllm_serve\.sh.*)$", recipe.read_text(), re.MULTILINE).group(1)
    tp = re.search(r"VLLM_TP=(\d+)", header).group(1) if "VLLM_TP=" in header else "1"
    command = subprocess.run(
        ["bash", str(REPO_ROOT / "local_scripts" / "vllm_serve.sh")],
        env={"TRIUNE_DRY_RUN": "1", "VLLM_TP": tp, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    ).stdout.split("\n")
    assert command[command.index("--max_model_len") + 1] == str(args.vllm_max_model_length)
    assert command[command.index("--tensor_parallel_size") + 1] == tp == str(args.vllm_tensor_parallel_size)
