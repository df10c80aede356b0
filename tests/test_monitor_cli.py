"""`triune eval`: a checkpoint scored greedily per source, written as markdown and JSON tables and every answer as
completions.jsonl."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq

from triune_trl.data import load_data_config

from .conftest import write_data_config
from .test_cli import triune


def test_triune_eval_writes_a_per_source_table(tmp_path, tiny_model_dir, sample_data_dir):
    config = write_data_config(tmp_path / "d.yaml", sample_data_dir, ["train/train_math_*.parquet"],
                               ["test/test_math_*.parquet", "test/test_detection_*.parquet"])
    out = tmp_path / "eval"
    result = triune("eval", "--model", str(tiny_model_dir), "--data-config", str(config), "--split", "test",
                    "--out", str(out), "--max-completion-length", "8", "--batch-size", "4")
    assert result.returncode == 0, result.stderr[-4000:]

    payload = json.loads((out / "results.json").read_text())
    assert payload["split"] == "test" and payload["decoding"] == "greedy" and payload["iou_threshold"] == "average"
    sources = payload["sources"]
    assert set(sources) == {"mm_math", "text_math", "v3det_train"}
    assert sum(row["num_completions"] for row in sources.values()) == payload["rows"] == 6  # 2 test rows each, 1 answer
    for row in sources.values():
        assert row["response_length"] <= 8 and 0.0 <= row["reward"] <= 1.0
        assert row["unverifiable_count"] == 0
    assert "reward_map50" in sources["v3det_train"] and "iou_threshold" in sources["v3det_train"]
    assert payload["mean_over_sources"]["num_completions"] == 6

    markdown = (out / "results.md").read_text()
    assert markdown.strip() in result.stdout  # the table is also printed
    for source in sources:
        assert f"| {source} | 2 |" in markdown
    assert "| **mean over sources** | 6 |" in markdown

    # every answer, readable: one line per row of the split, with its gold answer and the scores the table averages
    lines = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert sorted(line["row"] for line in lines) == list(range(6))
    split_files = [spec.path for spec in load_data_config(config).file_specs("test")]  # the order the split loads
    split_rows = [row for path in split_files for row in pq.read_table(path).to_pylist()]
    for line in lines:
        row = split_rows[line["row"]]
        assert line["data_source"] == row["data_source"]
        assert line["gold"] == row["reward_model"]["ground_truth"]
        assert line["images"] == len(row["images"] or [])
        assert line["prompt"].count("<image>") == line["images"]
        assert line["prompt"].startswith("user: ") and "{'type'" not in line["prompt"]
        assert isinstance(line["completion"], str) and line["unverifiable"] is False
        assert 0.0 <= line["accuracy"] <= 1.0 and 0.0 <= line["format"] <= 1.0
    assert any(line["images"] for line in lines) and any(not line["images"] for line in lines)
    for source, row in sources.items():
        rewards = [line["reward"] for line in lines if line["data_source"] == source]
        assert math.isclose(sum(rewards) / len(rewards), row["reward"], abs_tol=1e-6)


def test_triune_eval_names_a_missing_split(tmp_path, tiny_model_dir, sample_data_dir):
    config = write_data_config(tmp_path / "d.yaml", sample_data_dir, ["train/train_math_*.parquet"])
    result = triune("eval", "--model", str(tiny_model_dir), "--data-config", str(config), "--split", "test",
                    "--out", str(tmp_path / "eval"))
    assert result.returncode == 1
    assert f"{config}: the data config lists no 'test' files" in result.stderr


def test_triune_eval_rejects_a_dynamic_iou_threshold(tmp_path, tiny_model_dir):
    result = triune("eval", "--model", str(tiny_model_dir), "--data-config", "x.yaml", "--iou-threshold", "dynamic")
    assert result.returncode == 2 and "follows training progress" in result.stderr
