"""Images decoded once per generation round (`triune_trl.data.deferred_images`), and a round's image tensors
buffered in host memory (`triune_trl.trainer.image_buffers`).

The training test runs the real trainer with steps_per_generation 4: TRL's DataLoader then hands the trainer the
whole generation batch at each of the 4 micro-steps of a round. It counts the images the loader's decode function
decodes (the real function, counted as it is called) and checks that each optimizer step decoded exactly the
distinct images of its round, where it used to decode them once per micro-step.
"""

from __future__ import annotations

import torch
from transformers import AutoProcessor, TrainerCallback

import triune_trl.data.loader as loader
from triune_trl.configs import TriuneGRPOConfig
from triune_trl.data import ImageSizing, load_data_config, load_split
from triune_trl.data.deferred_images import DeferredImageDataset, ImageRef, resolve_images
from triune_trl.trainer import TriuneGRPOTrainer
from triune_trl.trainer.image_buffers import move_image_tensors, offload

from .conftest import write_data_config

IMAGE_FILES = ["train/train_math_mmmath_*.parquet", "train/train_detection_*.parquet"]


def _dataset(tmp_path, tiny_model_dir, sample_data_dir, files=IMAGE_FILES):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    config = load_data_config(write_data_config(tmp_path / "d.yaml", sample_data_dir, files))
    return processor, load_split(config, "train", ImageSizing.from_processor(processor))


def test_rows_carry_references_and_resolve_to_the_same_images(tmp_path, tiny_model_dir, sample_data_dir):
    _, dataset = _dataset(tmp_path, tiny_model_dir, sample_data_dir)
    deferred = DeferredImageDataset(dataset)
    rows = deferred.__getitems__([3, 3, 0])
    assert [row["images"] for row in rows] == [ImageRef(3), ImageRef(3), ImageRef(0)]
    assert rows[0]["prompt"] == dataset[3]["prompt"] and rows[0]["reward_model"] == dataset[3]["reward_model"]
    resolved = resolve_images(rows, deferred)
    assert resolved[0]["images"] is resolved[1]["images"], "the rows of one prompt share its decoded images"
    for row, index in zip(resolved, [3, 3, 0], strict=True):
        expected = dataset[index]["images"]
        assert [image.tobytes() for image in row["images"]] == [image.tobytes() for image in expected]
    assert all(isinstance(row["images"], ImageRef) for row in rows), "the loader's rows are left as they were"


class _DecodesPerStep(TrainerCallback):
    """Images decoded during each optimizer step, from a count kept by the (real) decode function."""

    def __init__(self, count: list[int]):
        self.count, self.per_step, self.at_begin = count, [], 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.at_begin = self.count[0]

    def on_step_end(self, args, state, control, **kwargs):
        self.per_step.append(self.count[0] - self.at_begin)


def test_each_round_decodes_its_images_once(tmp_path, tiny_model_dir, sample_data_dir, monkeypatch):
    processor, dataset = _dataset(tmp_path, tiny_model_dir, sample_data_dir)
    count = [0]
    real_load_image = loader.load_image

    def counting_load_image(*args, **kwargs):
        count[0] += 1
        return real_load_image(*args, **kwargs)

    monkeypatch.setattr(loader, "load_image", counting_load_image)
    args = TriuneGRPOConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=0, max_completion_length=8, max_steps=2,
        per_device_train_batch_size=2, gradient_accumulation_steps=4, num_generations=2,  # 4 prompts per round
    )
    assert args.steps_per_generation == 4
    trainer = TriuneGRPOTrainer(
        model=str(tiny_model_dir), reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=args,
        train_dataset=dataset, processing_class=processor,
    )
    decodes = _DecodesPerStep(count)
    trainer.add_callback(decodes)
    trainer.train()
    # every prompt of these files has one image, and a round holds 4 distinct prompts (8 rows: 2 generations each)
    assert decodes.per_step == [4, 4], f"images decoded per optimizer step: {decodes.per_step}"
    assert trainer.state.global_step == 2


def test_image_tensors_move_and_nothing_else(tmp_path):
    batch = {"pixel_values": torch.ones(4, 3), "image_grid_thw": torch.ones(1, 3), "advantages": [1.0]}
    moved = move_image_tensors(batch, "meta")
    assert moved["pixel_values"].device.type == "meta"
    assert moved["image_grid_thw"] is batch["image_grid_thw"] and moved["advantages"] is batch["advantages"]
    assert batch["pixel_values"].device.type == "cpu", "the input batch is left as it was"
    offloaded = offload([batch, {"completion_ids": torch.ones(2)}])
    assert offloaded[0]["pixel_values"].device.type == "cpu" and offloaded[0] is not batch
    assert offloaded[1]["completion_ids"] is not None and "pixel_values" not in offloaded[1]
