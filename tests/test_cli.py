"""The `triune` console script, run as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from triune_trl.data.make_sample import DETECTION_VERIFIER_PARM

from .conftest import printed_length

TRIUNE = [str(Path(sys.executable).with_name("triune"))] if shutil.which("triune") is None else ["triune"]


def triune(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*TRIUNE, *args], capture_output=True, text=True, timeout=300, **kwargs)


def test_help_lists_every_command():
    result = triune("--help")
    assert result.returncode == 0
    for command in ("train", "tiny-model", "data", "reward"):
        assert command in result.stdout


def test_tiny_model_builds_once_then_leaves_it(tmp_path):
    out = tmp_path / "tiny"
    first = triune("tiny-model", str(out))
    assert first.returncode == 0, first.stderr
    assert (out / "config.json").is_file() and (out / "processor_config.json").is_file()
    second = triune("tiny-model", str(out))
    assert second.returncode == 0 and "already holds a model" in second.stdout


def test_make_sample_writes_orsta_named_files(tmp_path):
    result = triune("data", "make-sample", str(tmp_path / "s"), "--train-rows", "3", "--test-rows", "1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s" / "train" / "train_detection_v3det_3.parquet").is_file()
    assert (tmp_path / "s" / "test" / "test_math_mmmath_1.parquet").is_file()


MATH_SPEC = {
    "ground_truth": "\\boxed{12}",
    "answer": "12",
    "verifier": "mathverify",
    "accuracy_ratio": 1.0,
    "format_ratio": 1.0,
    "verifier_parm": None,
}
DET_SPEC = {
    "ground_truth": "<answer>\n[{'bbox_2d': [100, 100, 500, 500], 'label': 'dog'}]\n</answer>",
    "answer": "[{'bbox_2d': [100, 100, 500, 500], 'label': 'dog'}]",
    "verifier": "detection",
    "accuracy_ratio": 1.0,
    "format_ratio": 0.1,
    "verifier_parm": DETECTION_VERIFIER_PARM,  # the real Orsta detection rows' parameters
}


def test_reward_score_scores_in_order_and_reports_unverifiable(tmp_path):
    lines = [
        {"completion": "<think>\n7+5\n</think>\n<answer>\n\\boxed{12}\n</answer>", "data_source": "mm_math",
         "reward_model": MATH_SPEC},
        {"completion": "\\boxed{13}", "data_source": "mm_math", "reward_model": MATH_SPEC},
        # a box exactly on the gold in pixels of a 200x100 image: normalized to [100, 100, 500, 500]
        {"completion": "<think>\nok\n</think>\n<answer>\n[{'bbox_2d': [20, 10, 100, 50], 'label': 'Dog'}]\n</answer>",
         "data_source": "v3det_train", "reward_model": DET_SPEC, "image_size": [200, 100], "step": 5,
         "total_steps": 100},
        {"completion": "\\boxed{1}", "data_source": "broken", "reward_model": {**MATH_SPEC, "ground_truth": "???"}},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = triune("reward", "score", "--input", str(src), "--output", str(tmp_path / "out.jsonl"))
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["data_source"] for row in out] == ["mm_math", "mm_math", "v3det_train", "broken"]
    # math: final = acc * 1/2 + fmt * 1/2 with ratios 1 and 1
    assert out[0]["accuracy_reward"] == 1.0 and out[0]["format_reward"] == 1.0 and out[0]["final_reward"] == 1.0
    assert out[1]["accuracy_reward"] == 0.0 and out[1]["format_reward"] == 0.0 and out[1]["final_reward"] == 0.0
    # detection: perfect box, completeness 1 -> accuracy 1; format 1 -> final 1
    assert out[2]["accuracy_reward"] == pytest.approx(1.0) and out[2]["final_reward"] == pytest.approx(1.0)
    assert out[2]["size_penalty"] == 1.0
    # a gold that math-verify cannot parse is unverifiable, never a silent 0
    assert out[3]["accuracy_reward"] is None and out[3]["final_reward"] is None and out[3]["unverifiable_reason"]


def test_reward_score_rejects_a_malformed_line_naming_it(tmp_path):
    src = tmp_path / "in.jsonl"
    good = json.dumps({"completion": "x", "data_source": "s", "reward_model": MATH_SPEC})
    src.write_text(good + "\n" + good + "\n{not json\n")
    out = tmp_path / "out.jsonl"
    result = triune("reward", "score", "--input", str(src), "--output", str(out))
    assert result.returncode == 1
    assert f"{src}:3:" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_the_vllm_serve_ready_lines_fit_a_terminal(tmp_path):
    """`triune vllm-serve`'s ready message (the real server prints it in test_vllm_server.py) is two lines of at most
    200 characters for a tiny model under a temporary folder, the first as conftest.VLLM_READY reads it."""
    import re

    from triune_trl.generation.serve import ready_lines

    model = str(tmp_path / "tiny-qwen2.5-vl")
    lines = ready_lines("http://127.0.0.1:8000", 123456, {"id": model, "max_model_len": 1024}, "triune_http",
                        "127.0.0.1", 8000).splitlines()
    assert len(lines) == 2 and all(printed_length(line) <= 200 for line in lines), lines
    assert re.match(r"triune vllm-serve: ready at (\S+) \(pid (\d+)\)", lines[0])
    assert lines[1] == ("triune vllm-serve: train with --use_vllm true --vllm_mode server --vllm_server_host "
                        "127.0.0.1 --vllm_server_port 8000")
