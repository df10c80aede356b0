"""End-to-end training on the tiny model with the real TRL trainer, the real router and real parquet files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from datasets import load_dataset
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import GRPOConfig

from triune_trl.data import ImageSizing, load_data_config, load_split
from triune_trl.rewards import RewardRouter
from triune_trl.trainer import TriuneGRPOTrainer, images_for_processor
from triune_trl.trainer.callbacks import DynamicIoUCallback

from .conftest import REPO_ROOT, write_data_config

RECIPE = REPO_ROOT / "recipes" / "grpo_triune.py"
TINY_RECIPE = REPO_ROOT / "recipes" / "configs" / "tiny_cpu.yaml"


def _cpu_args(output_dir, **overrides) -> GRPOConfig:
    defaults = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=42,
        max_completion_length=16,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        epsilon_high=0.28,
    )
    defaults.update(overrides)
    return GRPOConfig(**defaults)


class RecordingRouter(RewardRouter):
    """The real router, keeping what TRL passed to it so tests can check the batch it saw."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls: list[dict] = []

    def __call__(self, *args, **kwargs):
        rewards = super().__call__(*args, **kwargs)
        state = kwargs.get("trainer_state")
        self.calls.append(
            {
                "image_counts": [len(sizes) for sizes in kwargs["image_sizes"]],
                "data_sources": list(kwargs["data_source"]),
                "global_step": state.global_step if state is not None else None,
                "progress": self.progress,
                "rewards": rewards,
            }
        )
        return rewards


def test_images_for_processor_turns_missing_images_into_empty_lists():
    image = Image.new("RGB", (8, 8))
    assert images_for_processor(None) is None
    assert images_for_processor([None, [image], [image, image]]) == [[], [image], [image, image]]


def test_one_step_on_a_batch_mixing_text_only_one_image_and_two_image_rows(tmp_path, tiny_model_dir, sample_data_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    config = write_data_config(
        tmp_path / "mixed.yaml",
        sample_data_dir,
        ["train/train_math_textmath_*.parquet", "train/train_math_mmmath_*.parquet", "train/train_puzzle_*.parquet"],
    )
    dataset = load_split(load_data_config(config), "train", ImageSizing.from_processor(processor))
    by_count = {}
    for index, sizes in enumerate(dataset["image_sizes"]):
        by_count.setdefault(len(sizes), index)
    assert set(by_count) == {0, 1, 2}, "the sample set must hold text-only, one-image and two-image rows"
    batch = dataset.select([by_count[0], by_count[1], by_count[2]])

    router = RecordingRouter()
    trainer = TriuneGRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[router],
        args=_cpu_args(tmp_path / "out", per_device_train_batch_size=6, num_generations=2, max_steps=1,
                       shuffle_dataset=False),
        train_dataset=batch,
        processing_class=processor,
        callbacks=[DynamicIoUCallback(router)],
    )
    trainer.train()
    assert trainer.state.global_step == 1
    assert sorted(router.calls[0]["image_counts"]) == [0, 0, 1, 1, 2, 2]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 1 and losses[0] == losses[0]  # a finite, logged loss (NaN != NaN)


def _train_with_router(tmp_path, tiny_model_dir, sample_data_dir, patterns: list[str], **args):
    """Train the tiny model with a RecordingRouter on the sample files matching `patterns`."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    config = write_data_config(tmp_path / "data.yaml", sample_data_dir, patterns)
    dataset = load_split(load_data_config(config), "train", ImageSizing.from_processor(processor))
    router = RecordingRouter()
    trainer = TriuneGRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[router],
        args=_cpu_args(tmp_path / "out", **args),
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[DynamicIoUCallback(router)],
    )
    trainer.train()
    return trainer, router


@pytest.mark.slow
def test_tiny_model_learns_the_tag_task_through_the_router(tmp_path, tiny_model_dir, sample_data_dir):
    trainer, router = _train_with_router(
        tmp_path, tiny_model_dir, sample_data_dir, ["train/train_format_tagformat_*.parquet"],
        per_device_train_batch_size=16, num_generations=4, max_steps=40, learning_rate=3e-3,
    )
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    assert len(rewards) == 40
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last >= first + 0.5, f"mean reward did not rise: first 10 steps {first:.2f}, last 10 steps {last:.2f}"
    assert all(call["data_sources"] == ["tag_format"] * 16 for call in router.calls)


def test_router_sees_the_step_being_trained(tmp_path, tiny_model_dir, sample_data_dir):
    _, router = _train_with_router(
        tmp_path, tiny_model_dir, sample_data_dir, ["train/train_detection_*.parquet"],
        per_device_train_batch_size=4, num_generations=2, max_steps=3,
    )
    assert [call["progress"] for call in router.calls] == [(1, 3), (2, 3), (3, 3)]
    assert [call["global_step"] for call in router.calls] == [0, 1, 2]


def _run_recipe(*args: str, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RECIPE), "--config", str(TINY_RECIPE), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_recipe_with_cli_overrides_trains_all_tasks_and_saves_a_reloadable_checkpoint(
    tmp_path, tiny_model_dir, sample_data_dir
):
    config = write_data_config(tmp_path / "all.yaml", sample_data_dir, ["train/*.parquet"], ["test/*.parquet"])
    out = tmp_path / "run"
    result = _run_recipe(
        "--model_name_or_path", str(tiny_model_dir),
        "--data_config", str(config),
        "--output_dir", str(out),
        "--max_steps", "4",
        "--save_steps", "2",
        "--logging_steps", "1",
        "--per_device_train_batch_size", "8",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["max_steps"] == 4
    assert len([entry for entry in state["log_history"] if "reward" in entry]) == 4

    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count the shapes."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[Image.new("RGB", (160, 120), "green")], text=[text], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=6)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_a_bad_reward_spec_stops_the_run_before_training(tmp_path, tiny_model_dir, sample_data_dir):
    source = next((sample_data_dir / "train").glob("train_detection_*.parquet"))
    rows = load_dataset("parquet", data_files=str(source), split="train")
    bad_row = 3

    def corrupt(row, index):
        if index == bad_row:
            row["reward_model"]["verifier"] = "no_such_verifier"
        return row

    broken_dir = tmp_path / "broken" / "train"
    broken_dir.mkdir(parents=True)
    broken_file = broken_dir / source.name
    rows.map(corrupt, with_indices=True).to_parquet(str(broken_file))
    config = write_data_config(tmp_path / "broken.yaml", tmp_path / "broken", ["train/*.parquet"])

    result = _run_recipe(
        "--model_name_or_path", str(tiny_model_dir),
        "--data_config", str(config),
        "--output_dir", str(tmp_path / "run"),
        "--max_steps", "2",
    )
    assert result.returncode == 1
    assert f"{broken_file}:{bad_row}: reward_model.verifier" in result.stderr
    assert not (tmp_path / "run" / "checkpoint-2").exists()


def test_a_right_padded_processor_still_trains_on_image_prompts_of_different_lengths(
    tmp_path, tiny_model_dir, sample_data_dir
):
    """TRL left-pads prompt ids but takes mm_token_type_ids from the processor: both must pad on the same side."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir, padding_side="right")
    config = write_data_config(
        tmp_path / "lengths.yaml",
        sample_data_dir,
        ["train/train_detection_*.parquet", "train/train_math_mmmath_*.parquet", "train/train_ocr_*.parquet"],
    )
    dataset = load_split(load_data_config(config), "train", ImageSizing.from_processor(processor))
    lengths = {len(json.dumps(row["prompt"])) for row in dataset.select(range(len(dataset)))}
    assert len(lengths) > 1 and all(dataset["image_sizes"]), "needs image prompts of different lengths"
    trainer = TriuneGRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[RewardRouter()],
        args=_cpu_args(tmp_path / "out", per_device_train_batch_size=16, num_generations=2, max_steps=2),
        train_dataset=dataset,
        processing_class=processor,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert processor.tokenizer.padding_side == "left"
