"""Every recipe, launch config and launch script checked against the installed TRL / accelerate / torch / DeepSpeed.

The GPU-only parts are parsed, not run: recipes go through the project's own parser (with `--bf16 false
--use_cpu true`, the only CPU concessions) so GRPOConfig's batch checks run; launch scripts print their command
(`TRIUNE_DRY_RUN=1`) and that command is parsed by the launcher's own argument parser.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import launch_command_parser
from torch.distributed.run import get_args_parser as torchrun_parser
from trl.scripts.vllm_serve import build_command

from triune_trl.generation.serve import parse as parse_vllm_serve
from triune_trl.runs.pretrain import make_parser as make_pretrain_parser
from triune_trl.runs.train import make_parser
from triune_trl.runs.warm_start import make_parser as make_warm_start_parser

from .conftest import REPO_ROOT

RECIPES = sorted((REPO_ROOT / "recipes" / "configs").glob("*.yaml"))
ORSTA = [path for path in RECIPES if path.name.startswith("orsta_")]
LAUNCH_CONFIGS = sorted((REPO_ROOT / "local_scripts").glob("*.yaml"))
SCRIPTS = sorted((REPO_ROOT / "local_scripts").glob("*.sh"))
CPU_ONLY = ["--bf16", "false", "--use_cpu", "true"]


# recipes read by a command other than `triune train`, by the start of their name
OTHER_PARSERS = {"tiny_warm_start": make_warm_start_parser, "tiny_see_describe": make_pretrain_parser,
                 "tiny_see_bridge": make_pretrain_parser, "tiny_see_tasks": make_pretrain_parser}


def _parser_for(recipe: Path | None = None):
    """Warm-start recipes are read by `triune warm-start`, staged-pretraining ones by `triune pretrain` (both
    SFTConfig), every other recipe (tiny_see_rl.yaml included) by `triune train`."""
    for prefix, make in OTHER_PARSERS.items():
        if recipe is not None and recipe.name.startswith(prefix):
            return make()
    return make_parser()


def _parser_fields(recipe: Path | None = None) -> set[str]:
    return {field.name for dtype in _parser_for(recipe).dataclass_types for field in dataclasses.fields(dtype)}


def _parse(argv: list[str], recipe: Path | None = None):
    return _parser_for(recipe).parse_args_and_config(argv + CPU_ONLY)


# recipe -> (model, hub name prefix); the Qwen3 family recipes ([qwen3]) are on-policy only
ORSTA_MODELS = {
    "orsta_7b.yaml": ("Qwen/Qwen2.5-VL-7B-Instruct", "Orsta-7B-"),
    "orsta_7b_offpolicy.yaml": ("Qwen/Qwen2.5-VL-7B-Instruct", "Orsta-7B-"),
    "orsta_32b.yaml": ("Qwen/Qwen2.5-VL-32B-Instruct", "Orsta-32B-"),
    "orsta_32b_offpolicy.yaml": ("Qwen/Qwen2.5-VL-32B-Instruct", "Orsta-32B-"),
    "orsta_qwen3vl_8b.yaml": ("Qwen/Qwen3-VL-8B-Instruct", "Orsta-Qwen3VL-8B-"),
    "orsta_qwen3.5_9b.yaml": ("Qwen/Qwen3.5-9B", "Orsta-Qwen3.5-9B-"),
    "orsta_qwen3.5_35b_a3b.yaml": ("Qwen/Qwen3.5-35B-A3B", "Orsta-Qwen3.5-35B-A3B-"),
    "orsta_qwen3vl_30b_a3b.yaml": ("Qwen/Qwen3-VL-30B-A3B-Instruct", "Orsta-Qwen3VL-30B-A3B-"),
}


def test_the_orsta_recipes_exist_in_both_variants():
    assert {path.name for path in ORSTA} == set(ORSTA_MODELS)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_every_recipe_key_is_a_field_of_the_parser_dataclasses_and_parses(recipe):
    unknown = sorted(set(yaml.safe_load(recipe.read_text())) - _parser_fields(recipe))
    assert not unknown, f"{recipe.name}: not a field of its parser's dataclasses: {unknown}"
    _parse(["--config", str(recipe)], recipe)


@pytest.mark.parametrize("recipe", ORSTA, ids=lambda path: path.name)
def test_orsta_recipes_carry_the_paper_hyperparameters(recipe):
    script_args, args, model_args = _parse(["--config", str(recipe)])
    model, hub_prefix = ORSTA_MODELS[recipe.name]
    assert model_args.model_name_or_path == model
    assert script_args.data_config == "data_configs/orsta_47k.yaml" and script_args.iou_threshold == "dynamic"
    assert args.use_vllm and args.vllm_mode == "server"
    assert sorted(args.freeze_modules) == ["connector", "vit"]
    assert (args.num_generations, args.max_completion_length, args.temperature, args.top_p) == (8, 2048, 1.0, 1.0)
    assert (args.beta, args.epsilon, args.epsilon_high, args.loss_type) == (0.0, 0.2, 0.28, "dapo")
    assert args.num_iterations == 1 and args.scale_rewards == "group"
    assert args.lr_scheduler_type.value == "constant_with_warmup" and args.warmup_steps == 0.05
    assert (args.weight_decay, args.max_grad_norm, args.optim.value) == (0.01, 1.0, "adamw_torch")
    assert args.eval_strategy.value == "steps" and args.eval_greedy
    assert args.push_to_hub and args.hub_model_id.startswith(hub_prefix)
    # the file's own values are for 8 training GPUs
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * 8
    per_generation = args.per_device_train_batch_size * 8 * args.steps_per_generation
    assert per_generation == 1024 * 8, "a rollout batch is 1024 prompts x 8 completions"
    if "offpolicy" in recipe.name:
        assert args.learning_rate == 5e-7 and per_step == 128 * 8, "mini-batch of 128 prompts"
        assert args.steps_per_generation == 8 * args.gradient_accumulation_steps, "8 updates per rollout batch"
    else:
        assert args.learning_rate == 1e-6 and per_step == 1024 * 8
        assert args.steps_per_generation == args.gradient_accumulation_steps, "one update per rollout batch"


@pytest.mark.parametrize("recipe", ORSTA, ids=lambda path: path.name)
def test_the_batch_table_in_each_orsta_recipe_is_right_for_8_16_and_64_gpus(recipe):
    text = recipe.read_text()
    off_policy = "offpolicy" in recipe.name
    per_device = yaml.safe_load(text)["per_device_train_batch_size"]
    rows = re.findall(r"^#\s+(8|16|64)\s+(\d+)\s+(?:(\d+)\s+)?(\d+) x (\d+) x (\d+) = (\d+)$", text, re.MULTILINE)
    assert [int(row[0]) for row in rows] == [8, 16, 64]
    for gpus, accumulation, steps_per_generation, *product in rows:
        gpus, accumulation, total = int(gpus), int(accumulation), int(product[3])
        assert [int(value) for value in product[:3]] == [per_device, gpus, accumulation]
        assert per_device * gpus * accumulation == total == (1024 if off_policy else 8192)
        if off_policy:
            assert int(steps_per_generation) == 8 * accumulation
            args = _parse(["--config", str(recipe), "--gradient_accumulation_steps", str(accumulation),
                           "--steps_per_generation", steps_per_generation])[1]
            assert args.per_device_train_batch_size * gpus * args.steps_per_generation == 8192


@pytest.mark.parametrize("config", LAUNCH_CONFIGS, ids=lambda path: path.name)
def test_accelerate_configs_load_with_accelerates_own_loader(config):
    cluster = load_config_from_file(str(config))
    assert cluster.num_processes == 8 and not cluster.use_cpu
    expected = {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP"}.get(config.name, "DEEPSPEED")
    assert cluster.distributed_type.value == expected
    if expected == "DEEPSPEED":
        stage = int(re.search(r"zero(\d)", config.name).group(1))
        assert cluster.deepspeed_config["zero_stage"] == stage
        offload = cluster.deepspeed_config["offload_param_device"]
        assert offload == ("cpu" if "offload" in config.name else "none")


def test_the_deepspeed_json_is_a_zero3_config_that_transformers_accepts():
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    path = REPO_ROOT / "local_scripts" / "ds_zero3.json"
    config = HfDeepSpeedConfig(str(path))
    assert config.is_zero3()
    assert json.loads(path.read_text())["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_launch_scripts_have_valid_shell_syntax_and_are_executable(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert os.access(script, os.X_OK)


def _dry_run(script: str, env: dict[str, str], *args: str) -> list[str]:
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "local_scripts" / script), *args],
        env={**os.environ, **env, "TRIUNE_DRY_RUN": "1"}, capture_output=True, text=True, check=True,
    )
    return result.stdout.splitlines()


def _check_recipe_args(script_args: list[str]) -> None:
    config = Path(script_args[script_args.index("--config") + 1])
    assert (REPO_ROOT / config).is_file()
    _parse([arg if arg != str(config) else str(REPO_ROOT / config) for arg in script_args])


def test_train_multinode_builds_an_accelerate_launch_that_accelerate_parses():
    env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29600",
           "VLLM_SERVER_HOST": "node2"}
    command = _dry_run("train_multinode.sh", env, "--data_root", "/data/Orsta-Data-47k")
    assert command[:2] == ["accelerate", "launch"]
    args = launch_command_parser().parse_args(command[2:])
    assert (args.num_machines, args.num_processes, args.machine_rank) == (2, 16, 1)
    assert (args.main_process_ip, args.main_process_port) == ("node0", 29600)
    assert (REPO_ROOT / args.config_file).is_file() and args.training_script == "recipes/grpo_triune.py"
    assert args.training_script_args[-2:] == ["--data_root", "/data/Orsta-Data-47k"]
    assert "--vllm_server_host" in args.training_script_args
    _check_recipe_args(args.training_script_args)


@pytest.mark.parametrize("deepspeed_json", ["local_scripts/ds_zero3.json", "none"])
def test_train_multinode_builds_a_torchrun_command_that_torchrun_parses(deepspeed_json):
    env = {"LAUNCHER": "torchrun", "NNODES": "4", "NODE_RANK": "3", "MASTER_ADDR": "node0",
           "GPUS_PER_NODE": "8", "DEEPSPEED_JSON": deepspeed_json, "RECIPE": "recipes/configs/orsta_32b.yaml"}
    command = _dry_run("train_multinode.sh", env)
    assert command[0] == "torchrun"
    args = torchrun_parser().parse_args(command[1:])
    assert (args.nnodes, args.nproc_per_node, args.node_rank, args.master_addr) == ("4", "8", 3, "node0")
    assert args.training_script == "recipes/grpo_triune.py"
    assert ("--deepspeed" in args.training_script_args) == (deepspeed_json != "none")
    _check_recipe_args(args.training_script_args)


def test_train_multinode_rejects_an_unknown_launcher():
    result = subprocess.run(["bash", str(REPO_ROOT / "local_scripts" / "train_multinode.sh")],
                            env={**os.environ, "LAUNCHER": "mpirun", "TRIUNE_DRY_RUN": "1"},
                            capture_output=True, text=True)
    assert result.returncode == 2 and "LAUNCHER must be accelerate or torchrun" in result.stderr


def test_vllm_serve_flags_are_trl_vllm_serve_flags():
    command = _dry_run("vllm_serve.sh", {"MODEL": "Qwen/Qwen2.5-VL-32B-Instruct", "VLLM_TP": "4"})
    assert command[:2] == ["triune", "vllm-serve"]
    script_args, serve_args, forwarded = parse_vllm_serve(command[2:])
    assert forwarded == [], f"flags triune vllm-serve does not know (they would go to vllm serve as-is): {forwarded}"
    assert serve_args.weight_transfer == "auto"  # nccl on GPU hosts
    assert (script_args.model, script_args.tensor_parallel_size) == ("Qwen/Qwen2.5-VL-32B-Instruct", 4)
    assert script_args.max_model_len == 8192 + 2048
    vllm_command = build_command(script_args)
    assert vllm_command[vllm_command.index("serve") + 1] == "Qwen/Qwen2.5-VL-32B-Instruct"
    assert "--max-model-len" in vllm_command and "--weight-transfer-config" in vllm_command
