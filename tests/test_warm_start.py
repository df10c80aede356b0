"""The warm-start stage: SFT targets each verifier scores at its maximum, TrlParser config, a real SFTTrainer run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO_ROOT, write_data_config
from triune_trl.data import ImageSizing, load_data_config, load_split, make_image_resize
from triune_trl.data.ablation import BLANK_COLOUR, blank_image_copy
from triune_trl.data.make_sample import CANVAS, SAMPLE_SOURCES, make_sample_dataset
from triune_trl.errors import DataError
from triune_trl.models.tiny import LEARN_SPEC, TinySpec
from triune_trl.rewards import score_sample
from triune_trl.runs.warm_start import build_sft_dataset, make_parser, sft_target

RECIPE = REPO_ROOT / "recipes" / "configs" / "tiny_warm_start.yaml"


def sample_rows(root: Path, spec: TinySpec):
    config = load_data_config(write_data_config(root / "data.yaml", root, ["train/*.parquet"]))
    sizing = ImageSizing(factor=28, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
    rows = load_split(config, "train", sizing, rescale=make_image_resize("release"))
    return rows, rows.with_format(None)


def scored_targets(rows) -> list[tuple[str, dict, dict]]:
    out = []
    for spec_json, sizes, source in zip(rows["reward_model"], rows["image_sizes"], rows["data_source"], strict=True):
        spec = json.loads(spec_json)
        size = tuple(sizes[0]) if sizes else None
        target = sft_target(spec, size)
        out.append((source, spec, score_sample(target, spec, image_size=size, iou_threshold=0.99)))
    return out


def without_images(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "images"}


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("warm") / "sample"
    make_sample_dataset(root, seed=3, train_rows=6, test_rows=1)
    return root


def test_every_target_scores_full_marks_when_the_model_sees_the_drawn_size(sample_root: Path) -> None:
    """The learn model sees the 224 px canvas as drawn: every target, detection included, scores exactly 1."""
    assert LEARN_SPEC.min_pixels == LEARN_SPEC.max_pixels == CANVAS * CANVAS
    _, raw = sample_rows(sample_root, LEARN_SPEC)
    results = scored_targets(raw)
    assert {source for source, _, _ in results} == {s.data_source for s in SAMPLE_SOURCES}
    for source, spec, score in results:
        assert score["accuracy_reward"] == 1.0, (source, score)
        if spec["format_ratio"]:
            assert score["format_reward"] == 1.0, (source, score)
        assert score["final_reward"] == 1.0, (source, score)


def test_detection_targets_on_a_smaller_model_image_are_capped_by_pixel_rounding(sample_root: Path) -> None:
    """At 112 px (the test tiny model) a pixel is ~9 grid units: targets stay close to the gold, not exact.

    The documented cap: IoU-based accuracy at the strict 0.99 threshold may drop to 0, at 0.5 it stays >= 0.8.
    """
    _, raw = sample_rows(sample_root, TinySpec())
    detection = 0
    for spec_json, sizes in zip(raw["reward_model"], raw["image_sizes"], strict=True):
        spec = json.loads(spec_json)
        if spec["verifier"] != "detection":
            assert score_sample(sft_target(spec, tuple(sizes[0]) if sizes else None), spec)["accuracy_reward"] == 1.0
            continue
        size = tuple(sizes[0])
        assert max(size) < CANVAS
        score = score_sample(sft_target(spec, size), spec, image_size=size, iou_threshold=0.5)
        assert 0.8 <= score["accuracy_reward"] <= 1.0, score
        assert score["format_reward"] == 1.0
        detection += 1
    assert detection == 12


def test_targets_use_each_verifiers_layout() -> None:
    math = {"verifier": "mathverify", "ground_truth": "\\boxed{7}", "format_ratio": 0.0}
    assert sft_target(math, (224, 224)) == "\\boxed{7}"
    close = {**math, "format_ratio": 0.1}
    assert sft_target(close, None) == "<think>\n\n</think>\n<answer>\n\\boxed{7}\n</answer>"
    gold = "<answer>\n[{'bbox_2d': [250, 500, 446, 696], 'label': 'red circle'}]\n</answer>"
    box = {"verifier": "detection", "ground_truth": gold}
    assert json.loads(sft_target(box, (224, 224)).split("<answer>\n")[1].split("\n</answer>")[0]) == [
        {"bbox_2d": [56, 112, 100, 156], "label": "red circle"}
    ]
    with pytest.raises(DataError, match="needs an image"):
        sft_target(box, None)
    with pytest.raises(DataError, match="'ocr'"):
        sft_target({"verifier": "ocr", "ground_truth": "x"}, None)


def test_sft_rows_are_prompt_completion_with_images_and_filter_by_source(sample_root: Path) -> None:
    rows, _ = sample_rows(sample_root, LEARN_SPEC)
    dataset = build_sft_dataset(rows, make_image_resize("release"), ["clevr", "tag_format"])
    assert len(dataset) == 12 and set(dataset.column_names) == {"prompt", "completion", "images"}
    item = dataset[0]
    assert item["prompt"][0]["role"] == "user" and item["completion"][0]["role"] == "assistant"
    assert len(item["images"]) == 1 and isinstance(item["images"][0], Image.Image)
    assert item["completion"][0]["content"].startswith("\\boxed{")
    with pytest.raises(DataError, match="nosuch"):
        build_sft_dataset(rows, None, ["nosuch"])


def test_config_parses_with_command_line_overrides() -> None:
    script_args, sft_args, model_args = make_parser().parse_args_and_config(
        ["--config", str(RECIPE), "--learning_rate", "3e-4", "--vision_lr_scale", "0.5", "--output_dir", "x/y"]
    )
    assert sft_args.learning_rate == 3e-4 and sft_args.output_dir == "x/y"
    assert script_args.vision_lr_scale == 0.5
    assert script_args.data_config == "data_configs/sample_learn.yaml"
    assert model_args.model_name_or_path == "artifacts/tiny-qwen2.5-vl-learn"
    assert sft_args.num_train_epochs > 0 and sft_args.use_cpu


def test_a_warm_start_trains_saves_and_reloads(tiny_model_dir: Path, sample_data_dir: Path, tmp_path: Path) -> None:
    """A real SFTTrainer run through `triune warm-start`; a frozen vision tower (vision_lr_scale 0) stays as it was."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from triune_trl.cli import main

    config = write_data_config(tmp_path / "data.yaml", sample_data_dir, ["train/*.parquet"])
    out = tmp_path / "ws"
    assert main(
        ["warm-start", "--config", str(RECIPE), "--model_name_or_path", str(tiny_model_dir), "--data_config",
         str(config), "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4",
         "--vision_lr_scale", "0", "--learning_rate", "1e-2", "--warmup_steps", "0", "--logging_steps", "1"]
    ) == 0
    before = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    after = AutoModelForImageTextToText.from_pretrained(out)
    AutoProcessor.from_pretrained(out)
    old, new = dict(before.named_parameters()), dict(after.named_parameters())
    assert old.keys() == new.keys()
    vision = [name for name in old if "visual" in name]
    assert vision and all(torch.equal(old[name], new[name]) for name in vision)
    assert any(not torch.equal(old[name], new[name]) for name in old if "visual" not in name)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and all("loss" in entry for entry in state["log_history"][:3])


def test_blank_image_copy_keeps_sizes_and_everything_but_the_pixels(sample_root: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    written = blank_image_copy(sample_root / "train", tmp_path / "blank")
    originals = sorted((sample_root / "train").glob("*.parquet"))
    assert [p.name for p in written] == [p.name for p in originals]
    for original, copy in zip(originals, written, strict=True):
        a, b = pq.read_table(original), pq.read_table(copy)
        assert a.schema == b.schema and a.num_rows == b.num_rows
        for row_a, row_b in zip(a.to_pylist(), b.to_pylist(), strict=True):
            assert without_images(row_a) == without_images(row_b)
            for image_a, image_b in zip(row_a["images"], row_b["images"], strict=True):
                pixels_a = Image.open(io.BytesIO(image_a["bytes"])).convert("RGB")
                pixels_b = Image.open(io.BytesIO(image_b["bytes"])).convert("RGB")
                assert pixels_a.size == pixels_b.size and image_a["path"] == image_b["path"]
                assert pixels_b.getcolors() == [(pixels_b.width * pixels_b.height, BLANK_COLOUR)]
                assert len(pixels_a.getcolors()) > 1


def test_max_train_seconds_ends_training_after_the_step_that_ran_out(
    tiny_model_dir: Path, sample_data_dir: Path, tmp_path: Path
) -> None:
    from triune_trl.runs.warm_start import run

    config = write_data_config(tmp_path / "data.yaml", sample_data_dir, ["train/*.parquet"])
    args = make_parser().parse_args_and_config(
        ["--config", str(RECIPE), "--model_name_or_path", str(tiny_model_dir), "--data_config", str(config),
         "--output_dir", str(tmp_path / "ws"), "--max_steps", "50", "--per_device_train_batch_size", "2",
         "--max_train_seconds", "1e-6", "--data_sources", "tag_format"]
    )
    out = run(*args)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1


def test_learn_preset_sees_the_sample_canvas_as_64_tokens_with_short_prompts() -> None:
    """The learn model's processor keeps a 224 px image at 8 x 8 merged tokens; its BPE knows the task prompts."""
    import random

    from triune_trl.models.tiny import build_processor

    learn, test = build_processor(LEARN_SPEC), build_processor(TinySpec())
    image = Image.new("RGB", (CANVAS, CANVAS), (255, 255, 255))
    grid = learn.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0].tolist()
    assert grid == [1, 16, 16]  # 16 x 16 patches of 14 px, merged 2 x 2: 64 tokens
    question = next(s for s in SAMPLE_SOURCES if s.data_source == "v3det_train").build(random.Random(0)).question
    assert len(learn.tokenizer(question)["input_ids"]) < 0.7 * len(test.tokenizer(question)["input_ids"])
