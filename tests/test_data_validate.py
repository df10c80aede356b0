"""Validation before training and `triune data validate`: every rule with one bad row each, every problem reported
as `FILE:ROW: field: message`, exit codes, nothing rewritten."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import triune_trl.rewards
from triune_trl.cli import main
from triune_trl.data import FileOptions, FileSpec, ImageSizing, RewardDefaults, load_files, validate_files

from .test_data_orsta import DET_KEYS, image_bytes, orsta_row, write_orsta

SIZING = ImageSizing()
TRIUNE = str(Path(sys.executable).with_name("triune"))


def detection_row(gold: str = "<answer>\n[{'bbox_2d': [10, 10, 500, 500], 'label': 'dog'}]\n</answer>",
                  ratios: dict | None = None) -> dict:
    row = orsta_row("<image>Find the dog.", [image_bytes(600, 500)], verifier="detection")
    row["data_source"], row["ability"] = "v3det_train", "cv_detection"
    weights = ratios or {"iou_max_label_first": 1.0, "iou_max_iou_first": 0.0, "iou_completeness": 0.3,
                         "map": 0.0, "map50": 0.0, "map75": 0.0}
    row["reward_model"].update(ground_truth=gold, answer=gold, format_ratio=0.1,
                               verifier_parm={"det_verifier_normalized": True, "det_reward_ratio": weights})
    return row


def with_spec(row: dict, **changes) -> dict:
    row = copy.deepcopy(row)
    row["reward_model"].update(changes)
    return row


GOOD = orsta_row("<image>What is 2+2?", [image_bytes(600, 500)])
# One bad row per rule: (row, the field its problem names, a piece of the message).
BAD_ROWS = [
    (with_spec(GOOD, verifier="no_such_verifier"), "reward_model.verifier", "unknown verifier 'no_such_verifier'"),
    (with_spec(GOOD, ground_truth=""), "reward_model.ground_truth", "math-verify extracts no answer"),
    (with_spec(GOOD, ground_truth="\\boxed{}"), "reward_model.ground_truth", "math-verify extracts no answer"),
    (with_spec(orsta_row("say it", [], verifier="tag"), ground_truth="   "), "reward_model.ground_truth",
     "is empty"),
    (detection_row(gold="<answer>\nno boxes here\n</answer>"), "reward_model.ground_truth",
     "no valid box in the gold"),
    (with_spec(GOOD, accuracy_ratio=-1.0), "reward_model.accuracy_ratio", "expected a finite number >= 0"),
    (with_spec(GOOD, accuracy_ratio=0.0, format_ratio=0.0), "reward_model.accuracy_ratio",
     "accuracy_ratio + format_ratio must be > 0"),
    (detection_row(ratios=dict.fromkeys(DET_KEYS, 0.0)), "reward_model.verifier_parm.det_reward_ratio",
     "every accuracy weight"),
    (orsta_row("<image>", [b"these bytes are no image"]), "images[0]", "cannot read the image"),
    (orsta_row("<image><image> two placeholders", [image_bytes(600, 500)]), "prompt",
     "has 2 <image> placeholder(s) but the row has 1 image(s)"),
    (orsta_row("<image>no user", [image_bytes(600, 500)], role="assistant"), "prompt", "has no user turn"),
    ({**GOOD, "data_source": ""}, "data_source", "expected a non-empty string"),
]


@pytest.fixture
def bad_file(tmp_path) -> Path:
    """Row 0 good, then one bad row per rule, then a good detection row."""
    return write_orsta(tmp_path / "train_mix_bad_14.parquet", [GOOD, *[row for row, _, _ in BAD_ROWS],
                                                              detection_row()])


def test_every_rule_reports_its_row_and_field_and_nothing_else(bad_file):
    report = validate_files([FileSpec(bad_file)], sizing=SIZING)
    got = {(p.row, p.problem.field) for p in report.problems}
    expected = {(i + 1, field) for i, (_, field, _) in enumerate(BAD_ROWS)}
    assert got == expected
    for i, (_, field, message) in enumerate(BAD_ROWS):
        line = next(str(p) for p in report.problems if p.row == i + 1)
        assert line.startswith(f"{bad_file}:{i + 1}: {field}: ") and message in line, line
    assert report.rows == len(BAD_ROWS) + 2 and report.bad_rows == len(BAD_ROWS)


def test_loading_raises_the_same_lines_before_anything_trains(bad_file, tmp_path):
    with pytest.raises(Exception) as caught:
        load_files([FileSpec(bad_file)], sizing=SIZING, cache_dir=tmp_path / "hf")
    lines = str(caught.value).splitlines()
    assert len(lines) == len(BAD_ROWS) + 1 and lines[-1].startswith(f"{len(BAD_ROWS)} problem(s).")


def test_json_formats_report_line_numbers_and_their_own_fields(tmp_path):
    path = tmp_path / "omni.jsonl"
    path.write_text("\n".join([
        json.dumps({"problem": "ok", "solution": "1"}),
        json.dumps({"problem": "no solution"}),
        "{broken json",
        json.dumps({"problem": "", "solution": "2"}),
        json.dumps({"problem": "q", "solution": "<answer> </answer>"}),
        json.dumps({"problem": "q", "solution": "3", "image": ["missing.png"]}),
    ]) + "\n")
    vlm = tmp_path / "vlm.jsonl"
    vlm.write_text(json.dumps({"image": [], "conversations": [{"from": "gpt", "value": "1"}]}) + "\n")
    options = FileOptions(reward=RewardDefaults(verifier="mathverify"))
    report = validate_files([FileSpec(path, options), FileSpec(vlm, options)], sizing=SIZING)
    got = {(Path(p.source).name, p.row, p.problem.field) for p in report.problems}
    assert got == {
        ("omni.jsonl", 2, "solution"),
        ("omni.jsonl", 3, "line"),
        ("omni.jsonl", 4, "problem"),
        ("omni.jsonl", 5, "solution"),
        ("omni.jsonl", 6, "images[0]"),
        ("vlm.jsonl", 1, "prompt"),  # nothing before the gpt turn: no user turn to prompt with
    }


def test_identical_reward_specs_are_checked_once(tmp_path, monkeypatch):
    calls = []
    real = triune_trl.rewards.validate_reward_spec
    monkeypatch.setattr(triune_trl.rewards, "validate_reward_spec", lambda spec: calls.append(1) or real(spec))
    rows = [with_spec(GOOD, ground_truth=f"\\boxed{{{i % 3}}}") for i in range(12)]
    path = write_orsta(tmp_path / "f.parquet", rows)
    report = validate_files([FileSpec(path), FileSpec(path)], sizing=SIZING)
    assert report.problems == [] and report.rows == 24
    assert len(calls) == report.distinct_specs == 3


def _digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_triune_data_validate_exits_0_on_good_files_and_1_on_a_bad_one_and_writes_nothing(
    tmp_path, sample_data_dir
):
    """The console script as a user runs it; it writes nothing, not even a datasets cache."""
    bad = write_orsta(tmp_path / "bad" / "bad.parquet", [GOOD, BAD_ROWS[0][0], GOOD, BAD_ROWS[0][0]])
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf_cache"), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    before = _digest(tmp_path) | _digest(sample_data_dir)

    good = subprocess.run([TRIUNE, "data", "validate", *map(str, sorted(sample_data_dir.rglob("*.parquet")))],
                          capture_output=True, text=True, env=env, timeout=300)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout == "" and "no problems" in good.stderr

    result = subprocess.run([TRIUNE, "data", "validate", str(bad)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 1
    assert [line.split(": ")[:2] for line in result.stdout.splitlines()] == [
        [f"{bad}:1", "reward_model.verifier"], [f"{bad}:3", "reward_model.verifier"]]
    assert "2 problem(s) in 2 row(s); nothing was changed" in result.stderr and "Traceback" not in result.stderr
    assert _digest(tmp_path) | _digest(sample_data_dir) == before
    assert not (tmp_path / "hf_cache").exists()


@pytest.mark.parametrize(("index"), range(len(BAD_ROWS)), ids=[field for _, field, _ in BAD_ROWS])
def test_validate_command_exits_1_on_each_bad_file_listing_every_bad_row(tmp_path, capsys, index):
    row, field, message = BAD_ROWS[index]
    path = write_orsta(tmp_path / f"bad_{index}.parquet", [GOOD, row, row, GOOD])
    assert main(["data", "validate", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{path}:1", f"{path}:2"]
    assert all(line.startswith(f"{path}:") and f": {field}: " in line and message in line for line in lines)


def test_validate_takes_every_file_of_a_data_config_with_its_options(tmp_path, capsys):
    (tmp_path / "o.json").write_text(json.dumps([{"problem": "p", "solution": "1"}]))
    write_orsta(tmp_path / "train_math_x_1.parquet", [GOOD])
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  - train_*.parquet\n  - {path: o.json, reward: {verifier: mathverify}}\n")
    assert main(["data", "validate", "--data-config", str(config)]) == 0
    assert "2 file(s), 2 row(s)" in capsys.readouterr().err
    # the same file without the config has no reward spec: one problem per row, named
    assert main(["data", "validate", str(tmp_path / "o.json")]) == 1
    assert f"{tmp_path / 'o.json'}:0: reward_model: this format carries no reward spec" in capsys.readouterr().out
    assert main(["data", "validate", str(tmp_path / "o.json"), "--verifier", "mathverify"]) == 0
