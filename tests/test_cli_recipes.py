"""The tiny recipes beyond the generation-mode matrix (test_cli_matrix.py), each by the command its header documents.

They chain through their artifacts as `make pretrain` and `make learn` chain them (describe -> bridge -> tasks ->
RL from the warm start; SFT warm start -> RL), in a user's checkout (a temporary folder holding recipes/ and
data_configs/, the artifacts each chain starts from built as the Makefile builds them, small). Each command runs
reduced (`--max_steps 1 --save_strategy no`) but whole: the next command starts from the folder it wrote.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT, TRIUNE, run_as_user

SEE_CHAIN = (  # (documented command, the folder it writes): the `make pretrain` stages, then RL from the warm start
    (["triune", "pretrain", "--config", "recipes/configs/tiny_see_describe.yaml"], "artifacts/see_describe"),
    (["triune", "pretrain", "--config", "recipes/configs/tiny_see_bridge.yaml"], "artifacts/see_bridge"),
    (["triune", "pretrain", "--config", "recipes/configs/tiny_see_tasks.yaml"], "checkpoints/tiny-see"),
    (["triune", "train", "--config", "recipes/configs/tiny_see_rl.yaml"], "outputs/tiny_see_rl"),
)
LEARN_CHAIN = (  # `make learn`: the SFT warm start, then its RL stage (recipes/sft_warm_start.py is the same `run`)
    (["triune", "warm-start", "--config", "recipes/configs/tiny_warm_start.yaml"], "artifacts/warm_start"),
    (["triune", "train", "--config", "recipes/configs/tiny_learn.yaml"], "outputs/tiny_learn"),
)


def _as_typed(command: list[str]) -> list[str]:
    """The user's `triune` / `python` are this environment's."""
    program = {"triune": TRIUNE, "python": sys.executable}[command[0]]
    return [program, *command[1:]]


def _check_chain(chain, user_checkout: Path, reduced: list[str]) -> None:
    for command, folder in chain:
        result = run_as_user(_as_typed(command) + reduced, user_checkout)
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stderr[-4000:]}"
        assert (user_checkout / folder / "config.json").is_file(), f"{' '.join(command)} wrote no model to {folder}"


@pytest.mark.slow
def test_the_staged_pretraining_and_its_rl_recipe_run_as_documented(user_checkout):
    from triune_trl.data.make_sample import make_sample_dataset
    from triune_trl.models.tiny import PRESETS, build_tiny_model

    # what `make pretrain` builds first, and the RL recipe's data (sample_see.yaml's header), small
    build_tiny_model(user_checkout / "artifacts" / "tiny-qwen2.5-vl-see", PRESETS["see"])
    make_sample_dataset(user_checkout / "artifacts" / "sample_see", seed=0, train_rows=4, test_rows=1)
    shutil.copytree(REPO_ROOT / "checkpoints", user_checkout / "checkpoints")  # the tasks stage writes the warm start
    _check_chain(SEE_CHAIN, user_checkout, ["--max_steps", "1", "--save_strategy", "no"])


@pytest.mark.slow
def test_the_learning_pipeline_recipes_run_as_documented(user_checkout):
    from triune_trl.data.make_sample import make_sample_dataset
    from triune_trl.models.tiny import PRESETS, build_tiny_model

    build_tiny_model(user_checkout / "artifacts" / "tiny-qwen2.5-vl-learn", PRESETS["learn"])
    make_sample_dataset(user_checkout / "artifacts" / "sample_learn", seed=0, train_rows=4, test_rows=1)
    _check_chain(LEARN_CHAIN, user_checkout, ["--max_steps", "1", "--save_strategy", "no"])
