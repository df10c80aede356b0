"""`triune preflight`: the table on the tiny recipe and on orsta_7b.yaml with a tiny Orsta-shaped data root, and
exit 1 on a bad row, on a reward server that is down and on an unreachable vLLM server (real closed ports on
127.0.0.1). No GPU and no model weights: the processor comes from the tiny model folder."""

from __future__ import annotations

import re
import socket

import pytest

from triune_trl.cli import main

from .conftest import REPO_ROOT, write_data_config
from .test_data_orsta import image_bytes, orsta_row, write_orsta

ORSTA_7B = REPO_ROOT / "recipes" / "configs" / "orsta_7b.yaml"
TINY = REPO_ROOT / "recipes" / "configs" / "tiny_cpu.yaml"
ORSTA_ROUND = 1024  # prompts per generation round of orsta_7b on 8 training processes


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def orsta_root(tmp_path_factory):
    """An Orsta-Data-47k-shaped folder: train/ and test/ parquet files, one round of orsta_7b prompts and a few."""
    root = tmp_path_factory.mktemp("orsta")
    small, wide = image_bytes(64, 48), image_bytes(120, 40)
    math = [orsta_row(f"<image>What is {i} + 1?", [small if i % 2 else wide]) for i in range(ORSTA_ROUND - 24)]
    text = [dict(orsta_row(f"What is {i} * 2?", []), data_source="text_math") for i in range(40)]
    write_orsta(root / "train" / "train_math_mmmath_1000.parquet", math)
    write_orsta(root / "train" / "train_math_textmath_40.parquet", text)
    write_orsta(root / "test" / "test_math_mmmath_4.parquet", math[:4])
    return root


def _preflight(capsys, *argv: str) -> tuple[int, str]:
    code = main(["preflight", *argv])
    return code, capsys.readouterr().out


def test_tiny_recipe(capsys, tiny_model_dir, sample_data_dir, tmp_path):
    config = write_data_config(tmp_path / "d.yaml", sample_data_dir, ["train/*.parquet"])
    code, out = _preflight(capsys, "--config", str(TINY), "--model_name_or_path", str(tiny_model_dir),
                           "--data_config", str(config), "--num-processes", "1")
    assert code == 0, out
    assert "preflight: ok" in out and "loaded, no weights: Qwen2_5_VLProcessor" in out
    for source in ("mm_math", "v3det_train", "text_math", "tag_format"):
        assert source in out
    assert "16 = 4 prompts x 4 generations" in out  # tiny_cpu: per-device 16, num_generations 4
    assert "20 (20 rounds of 4 prompts, 80 rows kept)" in out and "60 (max_steps)" in out


def test_orsta_7b_with_a_tiny_orsta_root(capsys, tiny_model_dir, orsta_root):
    code, out = _preflight(capsys, "--config", str(ORSTA_7B), "--model_name_or_path", str(tiny_model_dir),
                           "--data_root", str(orsta_root), "--use_vllm", "false")
    assert code == 0, out
    assert "8192 = 8 per device x 128 accumulation x 8" in out
    assert "8192 = 1024 prompts x 8 generations" in out and "(steps_per_generation 128)" in out
    assert "optimizer updates per rollout batch │ 1 " in out
    assert "1 (1 rounds of 1024 prompts, 1040 rows kept)" in out and "3 (3 epochs)" in out
    assert "mm_math" in out and "text_math" in out and "prompt tokens (test)" in out
    assert "buffered pixel_values of one round" in out and "bf16 under DeepSpeed; ~" in out
    assert "in fp32 without it" in out  # DDP / FSDP keep pixel_values in fp32: twice the bytes


def test_rows_over_budget_are_counted_and_stop_the_run_in_error_mode(capsys, tiny_model_dir, orsta_root):
    argv = ["--config", str(ORSTA_7B), "--model_name_or_path", str(tiny_model_dir), "--data_root", str(orsta_root),
            "--use_vllm", "false", "--max_prompt_length", "110"]  # between the shortest and longest prompts
    code, out = _preflight(capsys, *argv)
    assert code == 1 and re.search(r"steps per epoch\s*│\s*0 \(0 rounds of 1024 prompts", out), out  # too few left
    code, out = _preflight(capsys, *argv, "--num-processes", "1", "--gradient_accumulation_steps", "16")
    assert code == 0, out
    over = re.search(r"over max_prompt_length 110\s*│\s*(\d+) rows would be dropped", out)
    per_source = [int(n) for n in re.findall(r"over 110: (\d+)", out.split("prompt tokens (test)")[0])]
    assert over and len(per_source) == 2 and sum(per_source) == int(over.group(1)) < 1040, out
    code, out = _preflight(capsys, *argv, "--overlong_prompts", "error")
    assert code == 1 and "would stop the run (overlong_prompts: error)" in out, out


def test_a_bad_row_fails(capsys, tiny_model_dir, orsta_root, tmp_path):
    bad = dict(orsta_row("<image>Broken?", [image_bytes(32, 32)]))
    bad["reward_model"] = {**bad["reward_model"], "verifier": "no_such_verifier"}
    path = write_orsta(tmp_path / "bad" / "train" / "train_bad_1.parquet", [orsta_row("Fine?", []), bad])
    config = write_data_config(tmp_path / "bad.yaml", tmp_path / "bad", ["train/*.parquet"])
    code, out = _preflight(capsys, "--config", str(TINY), "--model_name_or_path", str(tiny_model_dir),
                           "--data_config", str(config), "--num-processes", "1")
    assert code == 1, out
    assert "train problems" in out and "FAIL" in out
    assert f"{path}:1: reward_model.verifier" in out


def test_a_reward_server_that_is_down_fails(capsys, tiny_model_dir, orsta_root):
    url = f"http://127.0.0.1:{_closed_port()}"
    code, out = _preflight(capsys, "--config", str(ORSTA_7B), "--model_name_or_path", str(tiny_model_dir),
                           "--data_root", str(orsta_root), "--use_vllm", "false", "--reward_server_urls", url)
    assert code == 1, out
    assert f"reward server {url}" in out and "down: ConnectError" in out


def test_an_unreachable_vllm_server_fails(capsys, tiny_model_dir, orsta_root):
    port = _closed_port()
    code, out = _preflight(capsys, "--config", str(ORSTA_7B), "--model_name_or_path", str(tiny_model_dir),
                           "--data_root", str(orsta_root), "--vllm_server_host", "127.0.0.1",
                           "--vllm_server_port", str(port))
    assert code == 1, out
    assert f"vLLM server http://127.0.0.1:{port}" in out and "unreachable" in out


def test_a_mistyped_option_is_one_line_not_a_traceback(capsys, tiny_model_dir):
    code = main(["preflight", "--config", str(TINY), "--model_name_or_path", str(tiny_model_dir),
                 "--lerning_rate", "3"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert "triune: error: unknown option --lerning_rate (did you mean --learning_rate?)" in err
    assert "`triune preflight --help` lists every option" in err


def test_a_prompt_budget_over_the_vllm_model_length_fails(capsys, tiny_model_dir, orsta_root):
    code, out = _preflight(capsys, "--config", str(ORSTA_7B), "--model_name_or_path", str(tiny_model_dir),
                           "--data_root", str(orsta_root), "--use_vllm", "true", "--vllm_mode", "colocate",
                           "--vllm_max_model_length", "9000")
    assert code == 1, out
    assert "prompt budget" in out and "8192 + max_completion_length 2048 = 10240 tokens is over" in out


def test_steps_per_epoch_count_the_rows_the_run_trains_on(capsys, tiny_model_dir, sample_data_dir, tmp_path):
    """A file's `max_samples` / `weight` and `--max_train_samples` change how many rows a run sees, so its steps."""
    import yaml

    config = tmp_path / "weighted.yaml"
    config.write_text(yaml.safe_dump({"root": str(sample_data_dir), "train": [
        {"path": "train/train_math_mmmath_*.parquet", "max_samples": 4},  # 4 of its 8 rows
        {"path": "train/train_format_*.parquet", "weight": 2},  # its 8 rows twice
    ]}))
    argv = ["--config", str(TINY), "--model_name_or_path", str(tiny_model_dir), "--data_config", str(config),
            "--num-processes", "1"]
    code, out = _preflight(capsys, *argv)
    assert code == 0, out
    assert re.search(r"train files / rows\s*│\s*2 / 16 ", out), out  # the files as they are
    assert "5 (5 rounds of 4 prompts, 20 rows kept)" in out, out  # 4 + 2 x 8 rows trained on
    code, out = _preflight(capsys, *argv, "--max_train_samples", "8")
    assert code == 0 and "2 (2 rounds of 4 prompts, 8 rows kept)" in out, out


def test_as_typed_a_cpu_recipe_is_one_process_zero_steps_fail_and_a_cached_hub_id_loads(tmp_path, tiny_model_dir,
                                                                                         sample_data_dir):
    """`triune preflight` run as a person runs it, checking three things at once: a use_cpu recipe's geometry is for
    one process (not 8) without --num-processes; 0 optimizer steps in all is a FAIL saying what to change; and a Hub
    id in the Hub cache loads from it at once when the Hub does not answer (a closed port stands for no network)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = tmp_path / "hub" / "models--someone--tiny-vl"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    config = write_data_config(tmp_path / "d.yaml", sample_data_dir, ["train/*.parquet"])
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
           "HF_HUB_CACHE": str(tmp_path / "hub")}
    triune = Path(sys.executable).with_name("triune")
    result = subprocess.run(
        [str(triune), "preflight", "--config", str(TINY), "--model_name_or_path", "someone/tiny-vl", "--data_config",
         str(config), "--max_steps", "-1", "--max_train_samples", "2"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    out, err = result.stdout, result.stderr
    assert result.returncode == 1, (out, err[-3000:])
    assert "the Hub is unreachable" in err and "loading someone/tiny-vl from the Hub cache" in err, err
    assert "Retrying" not in err and "Traceback" not in err, err
    assert "loaded, no weights: Qwen2_5_VLProcessor from someone/tiny-vl" in out, out
    assert re.search(r"training processes\s*│\s*1 \(use_cpu recipe: one process", out), out
    assert re.search(r"steps per epoch\s*│\s*0 \(0 rounds of 4 prompts, 2 rows kept\); fewer rows than", out), out
    steps = re.search(r"optimizer steps in all\s*│\s*0 \(3 epochs\): nothing would be.*?│\s*(\S+)", out, re.DOTALL)
    assert steps and steps.group(1) == "FAIL", out
    long = [line for line in (out + err).splitlines() if len(line) > 200]
    assert not long, long
