"""Data config YAML: root resolution, the data_root override, globs, and errors that name the file and entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from triune_trl.data import DataConfig, ImageSizing, load_data_config, load_split
from triune_trl.errors import DataError

from .test_data_orsta import image_bytes, orsta_row, write_orsta

SIZING = ImageSizing()


def write_yaml(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """An Orsta-like layout: train/ with three files, test/ with one."""
    root = tmp_path / "Orsta-Data-47k"
    write_orsta(root / "train" / "train_math_mmmath_2.parquet", [orsta_row("q1", []), orsta_row("q2", [])])
    write_orsta(root / "train" / "train_detection_v3det_1.parquet", [orsta_row("<image>", [image_bytes(600, 500)])])
    write_orsta(root / "train" / "train_chart_chartqapro_1.parquet", [orsta_row("q3", [])])
    write_orsta(root / "test" / "test_math_megabench_1.parquet", [orsta_row("t", [])])
    return root


def test_root_is_relative_to_the_yaml_and_globs_resolve_against_it(tmp_path, data_dir):
    config = load_data_config(
        write_yaml(tmp_path / "configs" / "orsta.yaml",
                   {"root": "../Orsta-Data-47k", "train": [{"path": "train/train_*_*.parquet"}],
                    "test": ["test/test_math_megabench_1.parquet"]})
    )
    assert isinstance(config, DataConfig)
    assert [p.name for p in config.files("train")] == [
        "train_chart_chartqapro_1.parquet", "train_detection_v3det_1.parquet", "train_math_mmmath_2.parquet"
    ]
    assert [p.resolve() for p in config.files("test")] == [(data_dir / "test" / "test_math_megabench_1.parquet")]


def test_without_root_entries_resolve_against_the_yaml_folder(data_dir):
    config = load_data_config(write_yaml(data_dir / "local.yaml", {"train": [{"path": "train/*math*.parquet"}]}))
    assert [p.name for p in config.files("train")] == ["train_math_mmmath_2.parquet"]
    assert config.files("test") == []


def test_absolute_root_and_overlapping_globs(tmp_path, data_dir):
    config = load_data_config(
        write_yaml(tmp_path / "elsewhere" / "c.yaml",
                   {"root": str(data_dir), "train": ["train/*math*.parquet", "train/*.parquet"]})
    )
    assert len(config.files("train")) == 3  # de-duplicated, sorted


def test_data_root_override_wins_over_root(tmp_path, data_dir):
    path = write_yaml(tmp_path / "c.yaml", {"root": "does/not/exist", "train": [{"path": "train/*.parquet"}]})
    assert len(load_data_config(path, data_root=data_dir).files("train")) == 3
    with pytest.raises(DataError, match="matches no file"):
        load_data_config(path).files("train")


def test_unknown_keys_are_named(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"train": [{"path": "a", "wieght": 2}], "validation": []})
    with pytest.raises(DataError) as caught:
        load_data_config(path)
    message = str(caught.value)
    assert f"{path}: validation: unknown key" in message
    assert f"{path}: train[0].wieght: unknown key" in message


def test_a_glob_matching_nothing_names_the_yaml_and_the_entry(tmp_path, data_dir):
    path = write_yaml(tmp_path / "c.yaml", {"root": str(data_dir),
                                            "train": ["train/*.parquet", {"path": "train/*ocr*.parquet"}]})
    with pytest.raises(DataError) as caught:
        load_data_config(path).files("train")
    assert f"{path}: train[1].path: 'train/*ocr*.parquet' matches no file" in str(caught.value)


def test_malformed_entries_are_reported_together(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"train": [{"path": ""}, 3], "test": "test/*.parquet"})
    with pytest.raises(DataError) as caught:
        load_data_config(path)
    message = str(caught.value)
    assert f"{path}: train[0].path: expected a non-empty string" in message
    assert f"{path}: train[1]: expected {{path: glob-or-file}}" in message
    assert f"{path}: test: expected a list of entries" in message


def test_load_split_reads_the_files_and_is_none_without_entries(tmp_path, data_dir):
    config = load_data_config(write_yaml(tmp_path / "c.yaml", {"root": str(data_dir), "train": ["train/*.parquet"]}))
    train = load_split(config, "train", SIZING, cache_dir=tmp_path / "hf_cache")
    assert len(train) == 4
    assert sorted(len(sizes) for sizes in train["image_sizes"]) == [0, 0, 0, 1]
    assert load_split(config, "test", SIZING) is None
    with pytest.raises(ValueError, match="split must be one of"):
        load_split(config, "validation", SIZING)


# --- per-file options: weight, sample cap, seed; errors -----------------------------------------------------------


@pytest.fixture
def numbered(tmp_path) -> Path:
    """One file of 20 text rows whose question is their row number."""
    write_orsta(tmp_path / "d" / "train_math_n_20.parquet", [orsta_row(f"q{i}", []) for i in range(20)])
    return tmp_path / "d"


def _questions(root: Path, tmp_path: Path, entry: dict, **top) -> list[str]:
    config = load_data_config(write_yaml(root / "c.yaml", {"cot_prompts": False, **top, "train": [entry]}))
    dataset = load_split(config, "train", SIZING, cache_dir=tmp_path / "hf")
    return [row["prompt"][0]["content"][0]["text"] for row in dataset]


def test_weight_repeats_or_subsamples_reproducibly(numbered, tmp_path):
    path = "train_*.parquet"
    every = [f"q{i}" for i in range(20)]
    assert _questions(numbered, tmp_path, {"path": path}) == every
    assert _questions(numbered, tmp_path, {"path": path, "weight": 2}) == every * 2  # like the release's _x2 files
    half = _questions(numbered, tmp_path, {"path": path, "weight": 0.5})
    assert len(half) == 10 and len(set(half)) == 10 and half == sorted(half, key=lambda q: int(q[1:]))
    assert _questions(numbered, tmp_path, {"path": path, "weight": 0.5}) == half  # same seed, same rows
    assert _questions(numbered, tmp_path, {"path": path, "weight": 0.5}, seed=7) != half
    assert _questions(numbered, tmp_path, {"path": path, "weight": 0.5, "seed": 7}) == _questions(
        numbered, tmp_path, {"path": path, "weight": 0.5}, seed=7)
    one_and_half = _questions(numbered, tmp_path, {"path": path, "weight": 1.5})
    assert one_and_half[:20] == every and len(one_and_half) == 30 and set(one_and_half[20:]) < set(every)


def test_max_samples_caps_distinct_rows_before_weight(numbered, tmp_path):
    capped = _questions(numbered, tmp_path, {"path": "train_*.parquet", "max_samples": 5})
    assert len(capped) == len(set(capped)) == 5
    assert _questions(numbered, tmp_path, {"path": "train_*.parquet", "max_samples": 5, "weight": 2}) == capped * 2
    assert len(_questions(numbered, tmp_path, {"path": "train_*.parquet", "max_samples": 50})) == 20


def test_the_mix_does_not_depend_on_where_the_data_lives(numbered, tmp_path):
    import shutil

    elsewhere = tmp_path / "elsewhere" / "copy"
    shutil.copytree(numbered, elsewhere)
    entry = {"path": "train_*.parquet", "weight": 0.5}
    assert _questions(numbered, tmp_path, entry) == _questions(elsewhere, tmp_path, entry)


def test_option_errors_name_the_entry_and_key(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {
        "seed": "zero",
        "cot_prompts": "yes",
        "train": [
            {"path": "a", "weight": -1, "max_samples": 0, "format": "csv", "cot_prompts": 1},
            {"path": "b", "reward": {"verifier": "no_such_verifier"}},
            {"path": "c", "reward": {"verifier": "mathverify", "format_ratio": -0.5, "ground_truth": "\\boxed{x}"}},
            {"path": "d", "reward": {"verifier": "detection"}},
            {"path": "e", "reward": {"accuracy_ratio": 1.0, "colour": "red"}},
            {"path": "f", "reward_methods": {"iou": {"format_ratio": 0.1}, "mcq": "choice_that_does_not_exist"}},
        ],
    })
    with pytest.raises(DataError) as caught:
        load_data_config(path)
    message = str(caught.value)
    for line in [
        "seed: expected an integer, got 'zero'",
        "cot_prompts: expected true or false, got 'yes'",
        "train[0].weight: expected a number > 0, got -1",
        "train[0].max_samples: expected an int >= 1, got 0",
        "train[0].format: expected one of auto, orsta, omnirl, vlm-r1, native, got 'csv'",
        "train[0].cot_prompts: expected true or false, got 1",
        "train[1].reward.verifier: unknown verifier 'no_such_verifier'",
        "train[2].reward.format_ratio: expected a finite number >= 0",
        "train[2].reward.ground_truth: a template must contain {answer}",
        "train[3].reward.verifier_parm.det_reward_ratio: detection rows need the accuracy weights",
        "train[4].reward.colour: unknown key",
        "train[4].reward.verifier: missing",
        "train[5].reward_methods.iou.verifier: missing",
        "train[5].reward_methods.mcq.verifier: unknown verifier 'choice_that_does_not_exist'",
    ]:
        assert f"{path}: {line}" in message, line


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "data_configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_the_shipped_data_configs_parse(path):
    config = load_data_config(path)
    assert config.entries("train") and config.entries("test")
