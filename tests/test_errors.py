"""Common mistakes end in one line that names the option and the fix, with a non-zero exit and no traceback.

Each case runs the command as a person does (`triune ...`, the recipe, `accelerate launch`); the checks run before
any model or data is loaded (`triune_trl/checks.py`), and every line they print is at most 200 characters
(`one_line_error`). A folder that does not exist is reported before TRL is imported and before anything asks the Hub
(which retried it for minutes): those cases run in a fresh clone's layout (the recipes and data configs, no
artifacts/), as a person meets them before `make demo`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from triune_trl.errors import BUILDERS

from .conftest import REPO_ROOT, printed_length

BIN = Path(sys.executable).parent
TRIUNE = str(BIN / "triune") if (BIN / "triune").exists() else shutil.which("triune")
TINY_RECIPE = str(REPO_ROOT / "recipes" / "configs" / "tiny_cpu.yaml")
MAX_LINE = 200  # the longest line an error may print


def run(*command: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=600, cwd=cwd, env={**os.environ, **(env or {})}
    )


def assert_short_lines(output: str) -> None:
    """No line of what the command printed is over MAX_LINE characters (an error is read in a terminal)."""
    long = [line for line in output.splitlines() if printed_length(line) > MAX_LINE]
    assert not long, long


def one_line_error(result: subprocess.CompletedProcess, prefix: str = "triune: error: ") -> str:
    """The error line, after checking the exit code, that it is the last line, that no traceback was printed and that
    no printed line is over MAX_LINE characters."""
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(prefix), result.stderr[-3000:]
    assert_short_lines(result.stdout + result.stderr)
    return last[len(prefix) :]


def train(*args: str, **kwargs) -> str:
    return one_line_error(run(TRIUNE, "train", "--config", TINY_RECIPE, *args, **kwargs))


@pytest.fixture(scope="module")
def present(tiny_model_dir, sample_data_dir) -> list[str]:
    """Options naming a model and data that exist, for the cases about another option: missing folders are reported
    first (before TRL is imported), and a fresh clone has neither the tiny model nor the sample set."""
    return ["--model_name_or_path", str(tiny_model_dir), "--data_root", str(sample_data_dir)]


def test_an_unknown_option_names_the_closest_known_one(present):
    message = train(*present, "--lerning_rate", "1e-3")
    assert message.startswith("unknown option --lerning_rate (did you mean --learning_rate?)")
    assert message.endswith("`triune train --help` lists every option")


def test_an_unknown_recipe_key_names_the_file_and_the_closest_key(tmp_path, present):
    recipe = yaml.safe_load(Path(TINY_RECIPE).read_text()) | {"per_device_batch_size": 4}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    message = one_line_error(run(TRIUNE, "train", "--config", str(path), *present))
    assert message.startswith(f"{path}: unknown key per_device_batch_size (did you mean per_device_")


def test_the_recipe_script_answers_the_same_way():
    # (argparse takes an unambiguous prefix such as --max_step as --max_steps: a misspelling is needed)
    recipe = str(REPO_ROOT / "recipes" / "grpo_triune.py")
    result = run(sys.executable, recipe, "--config", TINY_RECIPE, "--max_stpes", "2")
    message = one_line_error(result, prefix="grpo_triune: error: ")
    assert message.startswith("unknown option --max_stpes (did you mean --max_steps?)")
    assert message.endswith("`python recipes/grpo_triune.py --help` lists every option")


def test_a_model_path_that_is_neither_a_folder_nor_a_hub_id(tmp_path):
    missing = tmp_path / "no" / "such-model"
    message = train("--model_name_or_path", str(missing))
    assert message in {  # the path twice when the line has room for it (a short temporary folder), else once
        f"--model_name_or_path {missing}: no such folder (a local path, not a Hub id like Qwen/Qwen2.5-VL-7B-Instruct);"
        f" build a tiny offline model there with `triune tiny-model {missing}`, or fix the path",
        f"--model_name_or_path {missing}: no such folder; fix the path, or build a tiny model there with triune "
        "tiny-model",
    }, message


def test_a_hub_id_that_cannot_be_loaded_offline(tmp_path):
    message = train("--model_name_or_path", "nobody-here/no-such-model", env={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert message.startswith("--model_name_or_path nobody-here/no-such-model: not a local folder, and it could not")
    assert "HF_HUB_OFFLINE is set" in message and "triune tiny-model nobody-here/no-such-model" in message


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.is_bf16_supported(), reason="this machine has bf16")
def test_bf16_on_a_machine_without_bf16_support(present):
    message = train(*present, "--use_cpu", "false", "--bf16", "true")
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
    base = f"--model {run_dir}: the folder holds no model (no config.json); pass "
    assert message in {  # the longest wording that fits on a line, as the temporary folder's length allows
        f"{base}a run's output_dir or one of its checkpoint-N folders; it holds {checkpoint}: pass that",
        f"{base}its complete checkpoint-4 (its newest): {checkpoint}",
        f"{base}its newest complete checkpoint, checkpoint-4 in it",
    }, message


def test_eval_of_an_empty_folder(tmp_path):
    message = one_line_error(run(TRIUNE, "eval", "--model", str(tmp_path), "--data-config", "data_configs/sample.yaml"))
    assert message.endswith("holds no model (no config.json); pass a run's output_dir or one of its checkpoint-N folders")  # noqa: E501


@pytest.mark.slow
def test_an_accelerate_deepspeed_launch_whose_mixed_precision_disagrees_with_the_recipe(tmp_path, tiny_model_dir):
    """local_scripts/zero3.yaml says `mixed_precision: bf16`; the tiny CPU recipe trains in fp32 (bf16: false).

    Two ranks meet the same mistake: the line is printed once (local rank 0), and the launcher ends on the signal
    that rank sends it, without torch elastic's ChildFailedError traceback (~50 lines), and with a non-zero status."""
    result = run(
        str(BIN / "accelerate"), "launch", "--config_file", str(REPO_ROOT / "local_scripts" / "zero3.yaml"),
        "--num_processes", "2", str(REPO_ROOT / "recipes" / "grpo_triune.py"), "--config", TINY_RECIPE,
        "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "run"),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("grpo_triune: error: ")]
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr, result.stderr[-3000:]
    assert line == (
        "grpo_triune: error: accelerate launch's mixed precision 'bf16' is not the recipe's fp32; DeepSpeed refuses "
        "that: pass --mixed_precision no to accelerate launch or --bf16 true to the recipe"
    )
    assert len(line) <= MAX_LINE
    # after it only elastic's shutdown notes ("Received 15 death signal, shutting down workers", one per rank);
    # before it the launcher's and the libraries' start-up notes
    after = result.stderr[result.stderr.index(line) + len(line):].strip().splitlines()
    assert len(after) <= 3 and all("torch/distributed/elastic" in note for note in after), result.stderr
    assert len(result.stderr.splitlines()) <= 30, result.stderr


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
    assert_short_lines(result.stdout + result.stderr)


WARM_START_RECIPE = str(REPO_ROOT / "recipes" / "configs" / "tiny_warm_start.yaml")


def test_the_warm_start_commands_name_the_closest_option(present):
    for command, prefix in (
        ([TRIUNE, "warm-start"], "triune: error: "),
        ([sys.executable, str(REPO_ROOT / "recipes" / "sft_warm_start.py")], "sft_warm_start: error: "),
    ):
        message = one_line_error(
            run(*command, "--config", WARM_START_RECIPE, *present, "--lerning_rate", "1e-3"), prefix
        )
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


# --- a fresh clone: the folders the recipes name do not exist yet ------------------------------------------------


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    """The repository's recipes, data configs and Makefile without artifacts/: a checkout before `make demo`."""
    root = tmp_path_factory.mktemp("fresh")
    for folder in ("recipes", "data_configs"):
        shutil.copytree(REPO_ROOT / folder, root / folder)
    shutil.copy(REPO_ROOT / "Makefile", root / "Makefile")
    return root


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The Hub is unreachable at once (a closed port on 127.0.0.1), whether or not this machine has a network.
UNREACHABLE_HUB = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("train --config recipes/configs/tiny_cpu.yaml",
         "--model_name_or_path artifacts/tiny-qwen2.5-vl: no such folder; build it: `triune tiny-model "
         "artifacts/tiny-qwen2.5-vl`"),
        ("train --config recipes/configs/tiny_learn.yaml",
         "--model_name_or_path artifacts/warm_start: no such folder; build it: `triune warm-start --config "
         "recipes/configs/tiny_warm_start.yaml` (`make learn` runs it first)"),
        ("preflight --config recipes/configs/tiny_learn.yaml",
         "--model_name_or_path artifacts/warm_start: no such folder; build it: `triune warm-start --config "
         "recipes/configs/tiny_warm_start.yaml` (`make learn` runs it first)"),
        ("warm-start --config recipes/configs/tiny_warm_start.yaml",
         "--model_name_or_path artifacts/tiny-qwen2.5-vl-learn: no such folder; build it: `triune tiny-model "
         "artifacts/tiny-qwen2.5-vl-learn --preset learn`"),
        ("pretrain --config recipes/configs/tiny_see_describe.yaml",
         "--model_name_or_path artifacts/tiny-qwen2.5-vl-see: no such folder; build it: `triune tiny-model "
         "artifacts/tiny-qwen2.5-vl-see --preset see`"),
        ("pretrain --config recipes/configs/tiny_see_bridge.yaml",
         "--model_name_or_path artifacts/see_describe: no such folder; build it: `triune pretrain --config "
         "recipes/configs/tiny_see_describe.yaml`"),
        ("vllm-serve --model artifacts/nope",
         "--model artifacts/nope: no such folder (a local path, not a Hub id like Qwen/Qwen2.5-VL-7B-Instruct); fix "
         "the path, or pass a checkpoint folder or a Hub id"),
        ("eval --model outputs/tiny_cpu --data-config data_configs/sample.yaml",
         "--model outputs/tiny_cpu: no such folder (a local path, not a Hub id like Qwen/Qwen2.5-VL-7B-Instruct); fix "
         "the path, or pass a checkpoint folder or a Hub id"),
        ("data stats --data-config data_configs/sample.yaml",
         "data_configs/sample.yaml: root artifacts/sample_data: no such folder, so each train path matches no file; "
         "build it: `triune data make-sample artifacts/sample_data`"),
        ("preflight --config recipes/configs/orsta_7b.yaml --data_root /no/such/Orsta-Data-47k",
         "--data_root /no/such/Orsta-Data-47k: no such folder; pass the folder your data config's relative paths "
         "start from (e.g. the downloaded Orsta-Data-47k), or leave it out"),
        ("train --config recipes/configs/nope.yaml",
         "--config recipes/configs/nope.yaml: no such file; the recipes are in recipes/configs/"),
    ],
)  # fmt: skip
def test_a_missing_folder_is_one_line_naming_what_builds_it(fresh_clone, command, expected):
    """Before any Hub request (each was retried for minutes: tiny_cpu.yaml took 2.5 minutes to say so) and before TRL
    is imported. The Hub is unreachable here, as on a machine without network."""
    result = run(TRIUNE, *command.split(), cwd=fresh_clone, env=UNREACHABLE_HUB)
    assert one_line_error(result) == expected
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no retry lines, no library warnings


def test_a_hub_id_while_the_hub_is_unreachable(fresh_clone, tiny_model_dir, sample_data_dir):
    """No minute of retries per file: a 3-second probe says the Hub does not answer, and the id is not in the cache."""
    result = run(TRIUNE, "train", "--config", "recipes/configs/tiny_cpu.yaml", "--data_root", str(sample_data_dir),
                 "--model_name_or_path", "Qwen/Qwen2.5-VL-7B-Instruct", cwd=fresh_clone,
                 env={**UNREACHABLE_HUB, "HF_HUB_CACHE": str(fresh_clone / "empty-hub-cache")})
    message = one_line_error(result)
    assert message.startswith("--model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct: the Hub ") and "unreachable" in message
    assert "Retrying" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_builders_are_the_makefile_and_recipe_commands():
    """Each `errors.BUILDERS` command is what the Makefile runs for that folder, or a recipe whose output_dir it is;
    every folder a tiny recipe reads has one."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^([A-Z_]+) :?= (.+)$", makefile, flags=re.MULTILINE))
    expanded = re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m.group(1), m.group(0)), makefile)
    expanded = expanded.replace("$(BIN)/", "")
    recipes = {path.name: yaml.safe_load(path.read_text())
               for path in (REPO_ROOT / "recipes" / "configs").glob("*.yaml")}
    for folder, command in BUILDERS.items():
        command = command.format(path=folder)
        config = re.search(r"--config recipes/configs/(\S+)", command)
        if config:
            assert recipes[config.group(1)]["output_dir"] == folder, (folder, command)
        elif command.startswith("triune "):
            assert command.replace("--seed 0", "--seed $(SEED)") in expanded, (folder, command)
        else:
            assert command.startswith("make ") and f"\n{command.split()[1]}:" in expanded, (folder, command)
    for name, recipe in recipes.items():
        model = recipe.get("model_name_or_path", "")
        if model.startswith(("artifacts/", "checkpoints/")):
            assert model in BUILDERS, (name, model)
