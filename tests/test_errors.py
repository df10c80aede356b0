"""Common mistakes end in one line that names the option and the fix, with a non-zero exit and no traceback.

Each case runs the command as a person does (`triune ...`, the recipe, `accelerate launch`); the checks run before
any model or data is loaded (`triune_trl/checks.py`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from .conftest import REPO_ROOT

BIN = Path(sys.executable).parent
TRIUNE = str(BIN / "triune") if (BIN / "triune").exists() else shutil.which("triune")
TINY_RECIPE = str(REPO_ROOT / "recipes" / "configs" / "tiny_cpu.yaml")


def run(*command: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=600, cwd=cwd, env={**os.environ, **(env or {})}
    )


def one_line_error(result: subprocess.CompletedProcess, prefix: str = "triune: error: ") -> str:
    """The error line, after checking the exit code, that it is the last line and that no traceback was printed."""
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(prefix), result.stderr[-3000:]
    return last[len(prefix) :]


def train(*args: str, **kwargs) -> str:
    return one_line_error(run(TRIUNE, "train", "--config", TINY_RECIPE, *args, **kwargs))


def test_an_unknown_option_names_the_closest_known_one():
    message = train("--lerning_rate", "1e-3")
    assert message.startswith("unknown option --lerning_rate (did you mean --learning_rate?)")
    assert message.endswith("`triune train --help` lists every option")


def test_an_unknown_recipe_key_names_the_file_and_the_closest_key(tmp_path):
    recipe = yaml.safe_load(Path(TINY_RECIPE).read_text()) | {"per_device_batch_size": 4}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    message = one_line_error(run(TRIUNE, "train", "--config", str(path)))
    assert message.startswith(f"{path}: unknown key per_device_batch_size (did you mean per_device_")


def test_the_recipe_script_answers_the_same_way():
    # (argparse takes an unambiguous prefix such as --max_step as --max_steps: a misspelling is needed)
    recipe = str(REPO_ROOT / "recipes" / "grpo_triune.py")
    result = run(sys.executable, recipe, "--config", TINY_RECIPE, "--max_stpes", "2")
    message = one_line_error(result, prefix="grpo_triune: error: ")
    assert message.startswith("unknown option --max_stpes (did you mean --max_steps?)")
    assert message.endswith("`python recipes/grpo_triune.py --help` lists every option")


def test_a_model_path_that_is_neither_a_folder_nor_a_hub_id(tmp_path):
    message = train("--model_name_or_path", str(tmp_path / "no" / "such-model"))
    assert message == (
        f"--model_name_or_path {tmp_path / 'no' / 'such-model'}: no such folder, and not a Hub id (like "
        f"Qwen/Qwen2.5-VL-7B-Instruct); build the tiny offline model with `triune tiny-model {tmp_path}/no/such-model`"
    )


def test_a_hub_id_that_cannot_be_loaded_offline(tmp_path):
    message = train("--model_name_or_path", "nobody-here/no-such-model", env={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert message.startswith("--model_name_or_path nobody-here/no-such-model: not a local folder, and it could not")
    assert "HF_HUB_OFFLINE is set" in message and "triune tiny-model nobody-here/no-such-model" in message


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.is_bf16_supported(), reason="this machine has bf16")
def test_bf16_on_a_machine_without_bf16_support():
    message = train("--use_cpu", "false", "--bf16", "true")
    assert message.startswith("bf16: this machine has no GPU with bf16 support; pass --bf16 false")


def test_a_data_root_that_does_not_exist(tmp_path, tiny_model_dir):
    missing = tmp_path / "Orsta-Data-47k"
    message = train("--model_name_or_path", str(tiny_model_dir), "--data_root", str(missing))
    assert message.startswith(f"--data_root {missing}: no such folder; pass the folder your data config's relative")


def test_triune_eval_on_a_folder_that_is_not_a_checkpoint(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoint-4"
    shutil.copytree(tiny_model_dir, checkpoint)
    (checkpoint / "trainer_state.json").write_text("{}")  # a complete checkpoint, as the Trainer writes it last
    message = one_line_error(run(TRIUNE, "eval", "--model", str(run_dir), "--data-config", "data_configs/sample.yaml"))
    assert message == (
        f"--model {run_dir}: the folder holds no model (no config.json); pass a run's output_dir or one of its "
        f"checkpoint-N folders; it holds {checkpoint}: pass that"
    )


def test_eval_of_an_empty_folder(tmp_path):
    message = one_line_error(run(TRIUNE, "eval", "--model", str(tmp_path), "--data-config", "data_configs/sample.yaml"))
    assert message.endswith("holds no model (no config.json); pass a run's output_dir or one of its checkpoint-N folders")  # noqa: E501


@pytest.mark.slow
def test_an_accelerate_deepspeed_launch_whose_mixed_precision_disagrees_with_the_recipe(tmp_path, tiny_model_dir):
    """local_scripts/zero3.yaml says `mixed_precision: bf16`; the tiny CPU recipe trains in fp32 (bf16: false)."""
    result = run(
        str(BIN / "accelerate"), "launch", "--config_file", str(REPO_ROOT / "local_scripts" / "zero3.yaml"),
        "--num_processes", "1", str(REPO_ROOT / "recipes" / "grpo_triune.py"), "--config", TINY_RECIPE,
        "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "run"),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("grpo_triune: error: ")]
    # the script printed no traceback; torchrun's launcher then reports the failed child in its own words
    assert "Traceback" not in result.stderr[: result.stderr.index(line)], result.stderr[-3000:]
    assert line == (
        "grpo_triune: error: accelerate launch runs DeepSpeed with mixed precision 'bf16' (its --config_file or "
        "--mixed_precision) but the recipe trains with fp32 (bf16: false); DeepSpeed refuses the mismatch: add "
        "--mixed_precision no to accelerate launch (before the script), or pass --bf16 true to the recipe"
    )


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["eval", "--modle", "m", "--data-config", "d.yaml"],
         "triune eval: error: the following arguments are required: --model; unknown option --modle (did you mean "
         "--model?)"),
        (["plot", "run", "--outt", "x.png"],
         "triune plot: error: unrecognized arguments: --outt x.png; unknown option --outt (did you mean --out?)"),
    ],
)  # fmt: skip
def test_the_other_subcommands_name_the_closest_option_too(command, expected):
    result = run(TRIUNE, *command)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == expected


WARM_START_RECIPE = str(REPO_ROOT / "recipes" / "configs" / "tiny_warm_start.yaml")


def test_the_warm_start_commands_name_the_closest_option():
    for command, prefix in (
        ([TRIUNE, "warm-start"], "triune: error: "),
        ([sys.executable, str(REPO_ROOT / "recipes" / "sft_warm_start.py")], "sft_warm_start: error: "),
    ):
        message = one_line_error(run(*command, "--config", WARM_START_RECIPE, "--lerning_rate", "1e-3"), prefix)
        assert message.startswith("unknown option --lerning_rate (did you mean --learning_rate?)"), message


def test_the_warm_start_names_a_model_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "no-such-model"
    message = one_line_error(run(TRIUNE, "warm-start", "--config", WARM_START_RECIPE,
                                 "--model_name_or_path", str(missing)))
    assert message.startswith(f"--model_name_or_path {missing}"), message


def test_a_data_config_without_train_files_is_one_line(tmp_path, tiny_model_dir):
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"root": str(tmp_path), "test": []}))
    message = train("--model_name_or_path", str(tiny_model_dir), "--data_config", str(config))
    assert message == f"{config}: the data config lists no train files; add a `train:` section", message
