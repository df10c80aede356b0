"""The before/after comparison of the learning demo: baselines from the real verifiers, standard errors, the table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import write_data_config
from triune_trl.data import ImageSizing
from triune_trl.data.make_sample import CANVAS, make_sample_dataset
from triune_trl.runs.learning import accuracies, compare, main, majority_baselines, standard_error, to_markdown


def test_standard_error_is_the_binomial_one_and_bounds_any_unit_interval_mean() -> None:
    assert standard_error(0.5, 100) == pytest.approx(0.05)
    assert standard_error(0.0, 10) == 0.0 and standard_error(1.0, 10) == 0.0
    assert math.isnan(standard_error(0.5, 0))
    scores = [0.2, 0.9, 0.4, 0.4, 1.0, 0.0, 0.7, 0.3]  # any scores in [0, 1]: variance <= p (1 - p)
    p = sum(scores) / len(scores)
    variance = sum((s - p) ** 2 for s in scores) / len(scores)
    assert math.sqrt(variance / len(scores)) <= standard_error(p, len(scores))


def test_compare_rows_differences_and_mean() -> None:
    before = {"clevr": (0.30, 100), "estvqa": (0.10, 100)}
    after = {"clevr": (0.50, 100), "estvqa": (0.10, 100), "only_after": (1.0, 5)}
    rows = compare(before, after, {"clevr": 0.25}, {"blank": {"clevr": (0.26, 100)}})
    assert set(rows) == {"clevr", "estvqa", "mean over sources"}
    assert rows["clevr"]["difference"] == pytest.approx(0.20)
    assert rows["clevr"]["difference_se"] == pytest.approx(math.hypot(standard_error(0.3, 100), 0.05))
    assert rows["clevr"]["baseline"] == 0.25 and rows["clevr"]["blank"] == 0.26 and "baseline" not in rows["estvqa"]
    assert rows["mean over sources"]["difference"] == pytest.approx(0.10)
    table = to_markdown(rows, extra=("blank",))
    assert "| clevr | 100 | 25.0 | 30.0 | 50.0 | +20.0 ± 6.8 | 26.0 |" in table
    assert "| estvqa | 100 | – | 10.0 | 10.0 | +0.0 ± 4.2 | – |" in table


def test_majority_baseline_scores_the_most_frequent_train_gold_with_each_verifier(tmp_path: Path) -> None:
    root = tmp_path / "sample"
    make_sample_dataset(root, seed=5, train_rows=40, test_rows=30)
    config = write_data_config(tmp_path / "d.yaml", root, ["train/*.parquet"], ["test/*.parquet"])
    baselines = majority_baselines(str(config), sizing=ImageSizing(28, CANVAS * CANVAS, CANVAS * CANVAS))
    assert baselines["tag_format"] == 1.0  # one gold for every row: the majority answer is always right
    assert 0.0 <= baselines["v3det_train"] < 0.5 and 0.0 <= baselines["d3"] < 0.5  # boxes move with the image
    assert 0.0 < baselines["clevr"] < 0.6 and baselines["scienceqa"] < 0.6
    assert baselines["text_math"] < 0.2  # answers spread over a wide range


def test_command_prints_the_table_from_two_eval_folders(tmp_path: Path, capsys) -> None:
    root = tmp_path / "sample"
    make_sample_dataset(root, seed=1, train_rows=4, test_rows=2)
    config = write_data_config(tmp_path / "d.yaml", root, ["train/*.parquet"], ["test/*.parquet"])
    for name, value in (("before", 0.25), ("after", 0.75)):
        (tmp_path / name).mkdir()
        payload = {"sources": {"clevr": {"reward_accuracy": value, "num_completions": 2}}}
        (tmp_path / name / "results.json").write_text(json.dumps(payload))
    assert accuracies(tmp_path / "after") == {"clevr": (0.75, 2)}
    out = tmp_path / "table.json"
    assert main(["--data-config", str(config), "--before", str(tmp_path / "before"), "--after",
                 str(tmp_path / "after"), "--out", str(out)]) == 0
    assert "| clevr | 2 |" in capsys.readouterr().out
    assert json.loads(out.read_text())["clevr"]["difference"] == 0.5
