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
    path = write_yaml(tmp_path / "c.yaml", {"train": [{"path": "a", "weight": 2}], "validation": []})
    with pytest.raises(DataError) as caught:
        load_data_config(path)
    message = str(caught.value)
    assert f"{path}: validation: unknown key" in message
    assert f"{path}: train[0].weight: unknown key" in message


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
