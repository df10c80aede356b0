"""`triune data inspect`, `stats` and `convert`, run through the CLI entry point on files the tests write."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import yaml

from triune_trl.cli import main
from triune_trl.data import FileOptions, FileSpec, ImageSizing, RewardDefaults, load_files
from triune_trl.data.make_sample import ORSTA_FEATURES

from .test_data_orsta import image_bytes, orsta_row, write_orsta
from .test_data_readers import DET_PARM, write_jsonl, write_png
from .test_data_validate import detection_row

SIZING = ImageSizing()


def _omnirl(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    write_png(images / "a.png", 600, 500)
    write_png(images / "sub" / "b.png", 100, 50)
    rows = [
        {"problem": "What is 2+2?", "solution": "4"},
        {"problem": "<image>How many?", "solution": "3", "image": ["a.png"]},
        {"problem": "Compare them.", "solution": "B", "image": ["a.png", "sub/b.png", "a.png"]},
    ]
    path = tmp_path / "omni.json"
    path.write_text(json.dumps(rows))
    return path


def test_inspect_shows_format_schema_counts_and_rows(tmp_path, capsys):
    path = write_orsta(tmp_path / "train_detection_v3det_3.parquet",
                       [detection_row(), detection_row(), orsta_row("<image>Q", [image_bytes(600, 500)])])
    assert main(["data", "inspect", str(path), "--rows", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{path}: orsta format, 3 row(s), 0 problem(s)" in out
    assert "  reward_model: struct<answer: string, ground_truth: string" in out
    assert "data sources: v3det_train=2, mm_math=1" in out and "verifiers: detection=2, mathverify=1" in out
    assert "row 0: data_source='v3det_train'" in out and "row 1:" in out and "row 2:" not in out
    assert "  user: <image 1: 588x504 as the model sees it>Find the dog." in out

    omni = _omnirl(tmp_path)
    images = str(tmp_path / "images")
    assert main(["data", "inspect", str(omni), "--verifier", "mathverify", "--image-root", images, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "omnirl" and info["rows"] == 3 and info["problems"] == 0
    assert info["images_per_row"] == {"0": 1, "1": 1, "3": 1}
    assert "image: list (2 of 3 rows)" in info["schema"]


def test_stats_counts_rows_as_trained_per_task_and_source(tmp_path, capsys):
    write_orsta(tmp_path / "train_math_mmmath_2.parquet",
                [orsta_row("<image>a", [image_bytes(600, 500)]), orsta_row("b", [])])
    write_orsta(tmp_path / "train_detection_v3det_1.parquet", [detection_row()])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"cot_prompts": False, "train": [
        {"path": "train_math_*.parquet", "weight": 2}, "train_detection_*.parquet"]}))
    assert main(["data", "stats", "--data-config", str(config), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == 5 and stats["distinct_rows"] == 3 and stats["files"] == 2
    assert stats["per_task_source"] == [
        {"task": "detection", "data_source": "v3det_train", "rows": 1, "share": 0.2},
        {"task": "math", "data_source": "mm_math", "rows": 4, "share": 0.8},
    ]
    assert stats["images_per_row"] == {"0": 2, "1": 3}
    assert stats["image_width"]["count"] == 3 and stats["image_width"]["max"] == 588.0
    assert stats["image_tokens"]["min"] == 588 * 504 // 28 ** 2
    # "a" and "b" twice each (weight 2), "Find the dog." once
    assert stats["prompt_chars"] == {"count": 5, "mean": 3.4, "min": 1.0, "p10": 1.0, "p50": 1.0, "p90": 8.2,
                                     "p99": 12.5, "max": 13.0}
    assert main(["data", "stats", "--data-config", str(config)]) == 0
    table = capsys.readouterr().out
    assert "5 rows as trained (3 distinct)" in table and "mm_math" in table and "80.0%" in table


def test_convert_writes_orsta_parquet_that_loads_to_the_same_rows(tmp_path, capsys):
    omni = _omnirl(tmp_path)
    out = tmp_path / "out" / "train_math_omni_3.parquet"
    assert main(["data", "convert", str(omni), "--to", "orsta", str(out), "--verifier", "mathverify",
                 "--data-source", "omni", "--image-root", str(tmp_path / "images")]) == 0
    assert "3 row(s) written" in capsys.readouterr().out
    assert datasets.Features.from_arrow_schema(pq.read_schema(out)) == ORSTA_FEATURES
    stored = pq.read_table(out).to_pylist()
    assert stored[2]["prompt"] == [{"content": "<image><image><image>Compare them.", "role": "user"}]
    assert [image["path"] for image in stored[2]["images"]] == ["a.png", "sub/b.png", "a.png"]
    assert stored[2]["images"][1]["bytes"] == (tmp_path / "images" / "sub" / "b.png").read_bytes()
    assert stored[1]["extra_info"] == {"id": "omni.json:1", "image_path": "a.png"}

    options = FileOptions(reward=RewardDefaults(verifier="mathverify"), data_source="omni",
                          image_root=tmp_path / "images")
    direct = load_files([FileSpec(omni, options)], sizing=SIZING, cache_dir=tmp_path / "hf")
    converted = load_files([FileSpec(out)], sizing=SIZING, cache_dir=tmp_path / "hf")
    for a, b in zip(direct, converted, strict=True):
        assert a["prompt"] == b["prompt"] and a["image_sizes"] == b["image_sizes"]
        assert (a["data_source"], a["ability"]) == (b["data_source"], b["ability"])
        assert {k: v for k, v in a["reward_model"].items() if k != "verifier_parm"} == {
            k: v for k, v in b["reward_model"].items() if k != "verifier_parm"}
        assert [im.tobytes() for im in a["images"]] == [im.tobytes() for im in b["images"]]


def test_convert_keeps_detection_parameters_and_refuses_bad_files(tmp_path, capsys):
    write_png(tmp_path / "d.png", 600, 500)
    vlm = write_jsonl(tmp_path / "rec.jsonl", [
        {"image": "d.png", "accu_reward_method": "iou", "conversations": [
            {"from": "human", "value": "<image>Find the dog."},
            {"from": "gpt", "value": "[{'bbox_2d': [1, 2, 300, 400], 'label': 'dog'}]"}]}])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"train": [{"path": "rec.jsonl", "reward": "mathverify", "reward_methods": {
        "iou": {"verifier": "detection", "format_ratio": 0.1, "verifier_parm": DET_PARM}}}]}))
    out = tmp_path / "rec.parquet"
    assert main(["data", "convert", str(vlm), "--to", "orsta", str(out), "--data-config", str(config)]) == 0
    (row,) = pq.read_table(out).to_pylist()
    assert row["reward_model"]["verifier"] == "detection" and row["reward_model"]["verifier_parm"] == DET_PARM
    assert main(["data", "validate", str(out)]) == 0
    capsys.readouterr()

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "p", "solution": "1"}, {"problem": "p"}])
    target = tmp_path / "bad.parquet"
    assert main(["data", "convert", str(bad), "--to", "orsta", str(target), "--verifier", "mathverify"]) == 1
    assert f"{bad}:2: solution: expected the answer" in capsys.readouterr().err
    assert not target.exists() and not list(tmp_path.glob("bad.parquet*"))


def test_convert_widens_verifier_parm_to_the_union_of_the_rows_parameters(tmp_path, capsys):
    choice = {"answer": "B", "ground_truth": "B", "accuracy_ratio": 1.0, "format_ratio": 0.0, "verifier": "choice",
              "verifier_parm": {"options": ["red", "blue"]}}
    math = {"answer": "4", "ground_truth": "\\boxed{4}", "accuracy_ratio": 1.0, "format_ratio": 0.0,
            "verifier": "mathverify", "verifier_parm": None}
    native = write_jsonl(tmp_path / "n.jsonl", [
        {"prompt": [{"role": "user", "content": "Pick a colour: A) red B) blue"}], "data_source": "c",
         "reward_model": choice},
        {"prompt": [{"role": "user", "content": "2+2?"}], "data_source": "m", "reward_model": math},
    ])
    out = tmp_path / "n.parquet"
    assert main(["data", "convert", str(native), "--to", "orsta", str(out)]) == 0
    first, second = (row["reward_model"]["verifier_parm"] for row in pq.read_table(out).to_pylist())
    assert first == {"options": ["red", "blue"], "det_verifier_normalized": None, "det_reward_ratio": None}
    assert second == {"options": None, "det_verifier_normalized": None, "det_reward_ratio": None}
    assert main(["data", "validate", str(out)]) == 0
    rows = load_files([FileSpec(out)], sizing=SIZING, cache_dir=tmp_path / "hf")
    assert rows[0]["reward_model"]["verifier_parm"]["options"] == ["red", "blue"]


def test_a_missing_file_or_glob_is_one_line_naming_the_flag_as_spelled(tmp_path):
    """As typed (subprocesses): `data inspect` on a file that is not there answers with the file and what to do, not
    pyarrow's FileNotFoundError traceback; a data config whose paths match nothing names `--data-root`, the flag the
    data tools spell that way (the recipes' `--data_root`)."""
    import subprocess
    import sys

    triune = str(Path(sys.executable).with_name("triune"))
    missing = tmp_path / "no" / "train_math_x_1.parquet"
    result = subprocess.run([triune, "data", "inspect", str(missing)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"triune: error: {missing}: no such file; check the path; `triune data make-sample DIR` writes a sample set "
        "to try"
    ]
    (tmp_path / "data").mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"root": "data", "train": ["train/*.parquet"]}))
    result = subprocess.run([triune, "data", "stats", "--data-config", str(config)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Fix the paths or `root`, or pass --data-root to point elsewhere."
    assert "data_root" not in result.stderr
    for line in (result.stdout + result.stderr).splitlines():
        assert len(line) <= 200, line
