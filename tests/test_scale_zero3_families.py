"""A 2-process DeepSpeed ZeRO-3 GRPO step for every model family, all in one launch (tests/zero3_families_run.py).

In each family's first step one rank's micro-batch is text-only while the other's has an image, and in the second
step the other way round: the text-only rank runs the vision tower on a dummy image (for Qwen3-VL through its
deepstack too) so both ranks gather the same modules. Without it the step aborts (gloo "Received data size doesn't
match expected size"), and a dummy whose backward differs from an image rank's stops the next step ("Detected a
disagreement on list length between rank0 and rank1"): two steps per family, and a final gather, check both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from triune_trl.models.tiny import FAMILIES

from .conftest import REPO_ROOT, write_data_config
from .test_expert_layout import assert_saved_experts_in_released_layout
from .test_scale_launch import BIN, _free_port, _launch

DRIVER = REPO_ROOT / "tests" / "zero3_families_run.py"
FILES = ["train/train_math_textmath_*.parquet", "train/train_math_mmmath_*.parquet"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("g++") is None, reason="DeepSpeed's CPU comm op needs g++"),
]


def test_zero3_step_with_text_and_image_ranks_for_every_family(tmp_path, tiny_family_model, sample_data_dir,
                                                               monkeypatch):
    families = {family: str(tiny_family_model(family)) for family in FAMILIES}
    data_config = write_data_config(tmp_path / "data.yaml", sample_data_dir, FILES)
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    launcher = [
        str(BIN / "accelerate"), "launch", "--config_file", str(REPO_ROOT / "local_scripts" / "zero3.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port()), str(DRIVER),
    ]
    monkeypatch.setenv("TRIUNE_TEST_FAMILIES", json.dumps(families))
    monkeypatch.setenv("TRIUNE_TEST_DATA_CONFIG", str(data_config))
    monkeypatch.setenv("TRIUNE_TEST_REPORT_DIR", str(report_dir))
    _launch(launcher)
    ranks = [json.loads((report_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for family in FAMILIES:
        reports = [rank[family] for rank in ranks]
        for report in reports:
            assert (report["world_size"], report["zero_stage"], report["global_step"]) == (2, 3, 2), family
            assert report["weights_finite"] and report["weights_moved"], family
            assert len(report["losses"]) == 2 and len(report["grad_norms"]) == 2, family
        # step 1: rank 0 text-only, rank 1 one image per row; step 2 the other way round
        assert reports[0]["images_per_gradient_forward"] == [0, 2], (family, reports)
        assert reports[1]["images_per_gradient_forward"] == [2, 0], (family, reports)
        # each rank ran the dummy vision pass for its text-only step (log-prob scoring and the training forward)
        assert all(report["dummy_forwards"] and report["dummy_forwards"] > 0 for report in reports), family
        _check_final_folder(family, Path(reports[0]["final_folder"]))


def _check_final_folder(family: str, folder: Path) -> None:
    """The final folder of a ZeRO-3 run reloads whole; Qwen3-VL-MoE's experts are in the released layout in it."""
    model = AutoModelForImageTextToText.from_pretrained(folder)
    assert all(bool(torch.isfinite(parameter).all()) for parameter in model.parameters()), family
    if family == "qwen3-vl-moe":
        assert_saved_experts_in_released_layout(folder, model.config.text_config)
