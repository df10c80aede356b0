"""Prompt lengths in tokens before training (`triune_trl.data.prompt_length`): equal to what the processor produces
for the decoded rows, image tokens included; rows over max_prompt_length dropped and counted per data source, or
reported as FILE:ROW errors; the run's check against vLLM's max model length."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoProcessor
from trl.data_utils import apply_chat_template

from triune_trl.configs import TriuneScriptArguments
from triune_trl.data import FileSpec, ImageSizing, load_data_config, load_files, load_split
from triune_trl.data.loader import prompt_tokens, scan_files
from triune_trl.data.prompt_length import PromptLimit, PromptTokenCounter
from triune_trl.errors import DataError, UsageError
from triune_trl.runs.train import check_length_budget

from .conftest import write_data_config
from .test_data_orsta import image_bytes, orsta_row, write_orsta

# A processor that keeps images up to 1024² pixels, so grids are Orsta-like rather than the tiny model's 112².
LARGE_IMAGES = {"shortest_edge": 56 * 56, "longest_edge": 1024 * 1024}


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return AutoProcessor.from_pretrained(tiny_model_dir, size=LARGE_IMAGES)


def _mixed_file(tmp_path):
    """Text-only, one-image and two-image rows with images of several sizes and aspect ratios."""
    rows = [
        orsta_row("What is 2 + 2?", []),
        orsta_row("<image>How many sides?", [image_bytes(640, 480)]),
        orsta_row("Compare <image> and <image>: which is larger?", [image_bytes(300, 900), image_bytes(1500, 1000)]),
        orsta_row("<image>" + " word" * 200, [image_bytes(2048, 2048)]),
    ]
    return write_orsta(tmp_path / "train" / "mixed.parquet", rows)


def test_counts_equal_what_the_processor_produces(tmp_path, processor):
    path = _mixed_file(tmp_path)
    sizing = ImageSizing.from_processor(processor)
    counts = prompt_tokens(scan_files([FileSpec(path)], sizing=sizing, rescale=None), PromptTokenCounter(processor))[0]
    dataset = load_files([FileSpec(path)], sizing=sizing, rescale=None, cache_dir=tmp_path / "cache")
    assert len(counts) == len(dataset) == 4
    for row, tokens in zip(dataset, counts, strict=True):
        text = apply_chat_template({"prompt": row["prompt"]}, processor)["prompt"]
        inputs = processor(images=[row["images"]] if row["images"] else None, text=[text], return_tensors="pt")
        assert inputs["input_ids"].shape[1] == tokens.total
        pad = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        assert int((inputs["input_ids"] == pad).sum()) == tokens.image
    assert counts[0].image == 0 and counts[2].image > counts[1].image > 0
    assert counts[3].total > 1300  # a 1024² image (the processor's limit) is 1,296 tokens


def _sources_config(tmp_path):
    """Two data sources: short text-only prompts, and long image prompts."""
    short = [dict(orsta_row(f"Question {i}?", []), data_source="short_text") for i in range(3)]
    long = [dict(orsta_row(f"<image>Question {i}?", [image_bytes(1024, 1024)]), data_source="big_image")
            for i in range(2)]
    mixed = [dict(orsta_row("<image>Small?", [image_bytes(64, 64)]), data_source="big_image")]
    write_orsta(tmp_path / "data" / "short.parquet", short)
    write_orsta(tmp_path / "data" / "long.parquet", long + mixed)
    return write_data_config(tmp_path / "data.yaml", tmp_path / "data", ["*.parquet"])


def test_overlong_rows_are_dropped_and_counted_per_source(tmp_path, processor, capsys):
    config = load_data_config(_sources_config(tmp_path))
    limit = PromptLimit(PromptTokenCounter(processor), max_length=600)
    dataset = load_split(config, "train", ImageSizing.from_processor(processor), rescale=None, prompt_limit=limit,
                         cache_dir=tmp_path / "cache")
    assert sorted(dataset["data_source"]) == ["big_image", "short_text", "short_text", "short_text"]
    assert [len(images) for images, source in zip(dataset["images"], dataset["data_source"], strict=True)
            if source == "big_image"] == [1]  # the small-image row stays
    printed = capsys.readouterr().out
    assert "dropped 2 row(s) whose prompt is over max_prompt_length 600" in printed
    assert "big_image: 2 of 3 rows" in printed and "short_text" not in printed


def test_error_mode_names_file_and_row(tmp_path, processor):
    config = load_data_config(_sources_config(tmp_path))
    limit = PromptLimit(PromptTokenCounter(processor), max_length=600, overlong="error")
    with pytest.raises(DataError) as error:
        load_split(config, "train", ImageSizing.from_processor(processor), rescale=None, prompt_limit=limit)
    lines = str(error.value).splitlines()
    long_file = tmp_path / "data" / "long.parquet"
    assert lines[0].startswith(f"{long_file}:0: prompt: 1") and "is over max_prompt_length 600" in lines[0]
    assert lines[1].startswith(f"{long_file}:1: prompt: ") and "2 problem(s)" in lines[2]


def test_every_row_over_the_limit_stops_the_run(tmp_path, processor):
    config = load_data_config(_sources_config(tmp_path))
    limit = PromptLimit(PromptTokenCounter(processor), max_length=5)
    with pytest.raises(DataError, match="every row is over max_prompt_length 5"):
        load_split(config, "train", ImageSizing.from_processor(processor), rescale=None, prompt_limit=limit)


def test_options_and_the_vllm_length_check():
    with pytest.raises(ValueError, match="--overlong_prompts must be one of drop, error"):
        TriuneScriptArguments(overlong_prompts="truncate")
    with pytest.raises(ValueError, match="--max_prompt_length must be >= 1"):
        TriuneScriptArguments(max_prompt_length=0)
    script = TriuneScriptArguments(max_prompt_length=8192)
    fits = SimpleNamespace(use_vllm=True, vllm_max_model_length=10240, max_completion_length=2048)
    check_length_budget(script, fits)
    with pytest.raises(UsageError, match="8192 \\+ max_completion_length 4096 = 12288 tokens is over vllm_max_model"):
        check_length_budget(script, SimpleNamespace(use_vllm=True, vllm_max_model_length=10240,
                                                    max_completion_length=4096))


def test_a_budget_over_the_vllm_model_length_stops_triune_train_in_one_line(capsys, tiny_model_dir, tmp_path):
    from triune_trl.cli import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "tiny_cpu_vllm.yaml"
    code = main(["train", "--config", str(recipe), "--model_name_or_path", str(tiny_model_dir),
                 "--output_dir", str(tmp_path / "out"), "--max_prompt_length", "1000",
                 "--vllm_max_model_length", "512"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("triune: error: max_prompt_length 1000 + max_completion_length 32 = 1032 tokens is over")
