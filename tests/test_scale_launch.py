"""Multi-process launches of the real recipe on the CPU: DeepSpeed ZeRO-3 under accelerate and DDP under
torchrun, 2 processes over gloo. Each run trains 2 steps, and the test checks that the two processes formed
one job (world size 2, one RNG state per rank in the checkpoint) and that the checkpoints reload.

The first DeepSpeed launch on a machine JIT-compiles DeepSpeed's shm communication op (~46 s on 2 cores, then
cached in the torch extensions folder); later launches take ~12 s each.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from .conftest import REPO_ROOT, write_data_config

RECIPE = REPO_ROOT / "recipes" / "grpo_triune.py"
TINY_RECIPE = REPO_ROOT / "recipes" / "configs" / "tiny_cpu.yaml"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="DeepSpeed's CPU comm op needs a C++ compiler")


def _recipe_args(tmp_path: Path, tiny_model_dir: Path, sample_data_dir: Path) -> list[str]:
    # Image rows only: under ZeRO-3 every rank must run the same modules in each forward (see docs/scaling.md).
    data_config = write_data_config(
        tmp_path / "data.yaml",
        sample_data_dir,
        ["train/train_math_mmmath_*.parquet", "train/train_detection_*.parquet"],
    )
    return [
        str(RECIPE), "--config", str(TINY_RECIPE),
        "--model_name_or_path", str(tiny_model_dir), "--data_config", str(data_config),
        "--output_dir", str(tmp_path / "out"), "--use_cpu", "false",
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations", "4",
        "--max_completion_length", "16", "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "2",
    ]


def _free_port() -> int:
    """A port nobody listens on: several launches may run on one machine at once (29500 would be shared)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(command: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("TRIUNE_DISABLE_CPU_DISTRIBUTED_SHIM", None)
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert result.returncode == 0, f"launch failed ({result.returncode}):\n{output}"
    return result


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return AutoModelForImageTextToText.from_pretrained(folder).state_dict()


def _check_one_two_process_job(out: Path, tiny_model_dir: Path, distributed_type: str) -> None:
    facts = json.loads((out / "triune_run.json").read_text())
    assert facts["world_size"] == 2
    assert facts["distributed_type"] == distributed_type
    assert facts["global_step"] == 2
    checkpoint = out / "checkpoint-2"
    # each rank saves its own RNG state: two files only if the two processes were ranks of one job
    assert sorted(p.name for p in checkpoint.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2

    final, saved, initial = _weights(out), _weights(checkpoint), _weights(tiny_model_dir)
    assert final.keys() == initial.keys()
    assert all(torch.equal(final[name], saved[name]) for name in final), "checkpoint-2 and the final model differ"
    changed = [name for name in final if not torch.equal(final[name], initial[name])]
    assert changed, "no weight moved in 2 steps at lr 1e-2"
    assert all(tensor.numel() > 0 for tensor in final.values()), "ZeRO-3 saved empty (ungathered) tensors"
    AutoProcessor.from_pretrained(out)


@pytest.mark.slow
def test_accelerate_deepspeed_zero3_on_two_cpu_processes(tmp_path, tiny_model_dir, sample_data_dir):
    launcher = [
        str(BIN / "accelerate"), "launch", "--config_file", str(REPO_ROOT / "local_scripts" / "zero3.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port()),
    ]
    _launch(launcher + _recipe_args(tmp_path, tiny_model_dir, sample_data_dir))
    out = tmp_path / "out"
    _check_one_two_process_job(out, tiny_model_dir, "DEEPSPEED")
    assert json.loads((out / "triune_run.json").read_text())["zero_stage"] == 3
    assert (out / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's sharded states, for resuming


@pytest.mark.slow
def test_torchrun_ddp_on_two_cpu_processes(tmp_path, tiny_model_dir, sample_data_dir):
    launcher = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port())]
    _launch(launcher + _recipe_args(tmp_path, tiny_model_dir, sample_data_dir))
    _check_one_two_process_job(tmp_path / "out", tiny_model_dir, "MULTI_CPU")
    assert (tmp_path / "out" / "checkpoint-2" / "optimizer.pt").is_file()
