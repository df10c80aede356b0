"""Staged pretraining (triune_trl.runs.pretrain): grounded targets score full marks, rows stream pre-processed, and a
real SFTTrainer stage trains, saves and reloads."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from triune_trl.data.make_sample import SAMPLE_SOURCES
from triune_trl.rewards import score_sample
from triune_trl.runs.pretrain import (
    STAGES,
    TASK_SOURCES,
    PreprocessedCollator,
    RowEncoder,
    grounded_target,
    make_parser,
    stage_rows,
)

CONFIGS = REPO_ROOT / "recipes" / "configs"


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_grounded_targets_score_full_marks_with_each_verifier(seed: int) -> None:
    rng = random.Random(seed)
    for source in SAMPLE_SOURCES:
        if source.data_source not in TASK_SOURCES:
            continue
        spec = {"ground_truth": "", "verifier": source.verifier, "accuracy_ratio": 1.0,
                "format_ratio": source.format_ratio}
        for _ in range(25):
            example = source.build(rng)
            spec["ground_truth"] = example.ground_truth
            score = score_sample(grounded_target(example.reasoning, example.ground_truth), spec)
            assert score["accuracy_reward"] == 1.0, (source.data_source, example.reasoning)
            assert score["format_reward"] == 1.0 or source.format_ratio == 0


def test_counting_reasoning_enumerates_the_counted_objects_and_ends_on_the_count() -> None:
    counting = next(s for s in SAMPLE_SOURCES if s.data_source == "clevr")
    rng = random.Random(3)
    for _ in range(100):
        example = counting.build(rng)
        items = example.reasoning.split(", ")
        assert len(items) == int(example.answer)
        assert [int(item.rsplit(" ", 1)[1]) for item in items] == list(range(1, len(items) + 1))
        cells = [int(re.match(r"c(\d+) ", item).group(1)) for item in items]
        assert cells == sorted(cells) and all(1 <= c <= 16 for c in cells)


def test_every_stage_streams_rows_with_images_and_a_completion() -> None:
    for stage in STAGES:
        rows = stage_rows(stage, seed=1)
        for _ in range(10):
            messages, completion, images = next(rows)
            parts = messages[0]["content"]
            assert sum(part["type"] == "image" for part in parts) == len(images) == 1
            assert completion


def test_rows_are_preprocessed_and_only_the_completion_is_learned(tiny_model_dir: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    encode = RowEncoder(processor)
    rows = [encode(*row) for row, _ in zip(stage_rows("tasks", seed=2), range(3), strict=False)]
    batch = PreprocessedCollator(processor.tokenizer.pad_token_id)(rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["image_grid_thw"].shape[0] == 3
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(dim=1).sum())
    first = rows[0]
    learned = [t for t, label in zip(first["input_ids"], first["labels"], strict=True) if label != -100]
    text = processor.tokenizer.decode(learned)
    assert text.startswith("<think>") and text.endswith("</answer><|im_end|>\n")


def test_rows_carry_the_image_token_types_so_sft_trains_on_3d_mrope_positions(tiny_model_dir: Path) -> None:
    """Without `mm_token_type_ids` Qwen2.5-VL falls back to 1D positions, which GRPO, eval and vLLM never use."""
    from transformers import AutoConfig, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    image_token = AutoConfig.from_pretrained(tiny_model_dir).image_token_id
    encode = RowEncoder(processor)
    rows = [encode(*row) for row, _ in zip(stage_rows("describe", seed=3), range(3), strict=False)]
    batch = PreprocessedCollator(processor.tokenizer.pad_token_id)(rows)
    assert batch["mm_token_type_ids"].shape == batch["input_ids"].shape
    assert batch["mm_token_type_ids"].tolist() == (batch["input_ids"] == image_token).long().tolist()


def test_the_vision_tower_gets_its_own_learning_rate(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText

    from triune_trl.runs.pretrain import _scale_vision_lr

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": params[::2], "weight_decay": 0.01},
                                   {"params": params[1::2], "weight_decay": 0.0}], lr=1e-3)
    _scale_vision_lr(optimizer, model, 0.1)
    visual = {id(p) for name, p in model.named_parameters() if "visual." in name}
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len(params) and {id(p) for p in grouped} == {id(p) for p in params}
    for group in optimizer.param_groups:
        in_vision = {id(p) in visual for p in group["params"]}
        assert len(in_vision) == 1
        assert group["lr"] == pytest.approx(1e-4 if in_vision.pop() else 1e-3)


def test_the_see_preset_rotates_image_rows_and_columns_apart() -> None:
    """Qwen2.5-VL's mRoPE gives height and width its lowest frequencies: at base 10000 a 4 x 4 image's columns would
    rotate by < 0.01 rad and the model could not tell cells apart (see_pretrain.md)."""
    from triune_trl.models.tiny import PRESETS, build_config, build_tokenizer

    spec = PRESETS["see"]
    rope = build_config(build_tokenizer(spec), spec).text_config.rope_parameters
    assert rope["rope_theta"] == 4.0 and rope["mrope_section"] == [2, 7, 7]
    head_dim = spec.hidden_size // spec.num_heads
    slowest = rope["rope_theta"] ** (-(head_dim - 2) / head_dim)  # the width section's lowest frequency
    assert 3 * slowest > 0.5  # radians between the first and the last column


def test_stage_recipes_parse_with_overrides() -> None:
    for stage, name in zip(STAGES, ("describe", "bridge", "tasks"), strict=True):
        script, training, model = make_parser().parse_args_and_config(
            ["--config", str(CONFIGS / f"tiny_see_{name}.yaml"), "--max_steps", "3"]
        )[:3]
        assert script.stage == stage and training.max_steps == 3 and model.model_name_or_path


@pytest.mark.slow
def test_a_stage_trains_on_sftrainer_saves_and_reloads(tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText
    from trl import ModelConfig, SFTConfig

    from triune_trl.models.tiny import PRESETS, build_tiny_model
    from triune_trl.runs.pretrain import PretrainArguments, run

    model_dir = build_tiny_model(tmp_path / "see", PRESETS["see"])
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, use_cpu=True,
                     report_to="none", save_strategy="no", logging_steps=1, learning_rate=1e-3)
    script = PretrainArguments(stage="bridge", vision_lr_ratio=0.1)
    out = run(script, args, ModelConfig(model_name_or_path=str(model_dir)))
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert model.config.vision_config.out_hidden_size == PRESETS["see"].hidden_size
    assert (out / "model.safetensors").is_file()


def test_the_shipped_warm_start_reloads_and_stays_small() -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    shipped = REPO_ROOT / "checkpoints" / "tiny-see"
    assert sum(path.stat().st_size for path in shipped.iterdir()) < 20 * 2**20
    processor = AutoProcessor.from_pretrained(shipped)
    model = AutoModelForImageTextToText.from_pretrained(shipped)
    assert model.config.vision_config.out_hidden_size == model.config.text_config.hidden_size
    assert processor.image_processor.size["longest_edge"] == 28 * 28 * 16  # 112 px: 16 merged vision tokens
    assert model.config.text_config.rope_parameters["mrope_section"] == [2, 7, 7]
