"""Staged pretraining of the tiny VLM on TRL's `SFTTrainer`, on rows generated on the fly (`triune pretrain`).

Why stages: a from-scratch tiny VLM trained straight on the sample tasks' answers stays at the majority baseline
(issue 19): it learns to read a cell when the output position names the cell, but not to pool over cells
silently. So the model is taught as real VLMs are, in stages, each a `--stage` of this module:

1. `describe`: dense descriptions, every object with its grid cell ("c3 red circle, c9 blue square"), and what
   is in a named cell: the vision path learns to see;
2. `bridge`: the same plus per-cell questions ("is the object in cell 7 red?") and the sample tasks with their
   grounded reasoning (below): reading turns into answering;
3. `tasks`: the Orsta-format warm start, the sample tasks only, with the prompts the GRPO recipe and `triune eval`
   read (the release's CoT instruction appended) and completions in the exact layout each verifier scores.

The tasks' completions never ask the model to pool silently: the `<think>` is a grounded enumeration of what it
reads (`make_sample.Example.reasoning`): "c3 red circle 1, c9 red square 2" before `\\boxed{2}`, so the count is a
copy of the last index; for a chart every bar's value then the asked one; for science the colour or shape read,
then its option letter; for OCR the word. The layout is `<think>\\n...\\n</think>\\n<answer>\\n\\boxed{X}\\n</answer>`,
which carries the full format reward of close-form rows and leaves the `\\boxed{}` the free-form verifier extracts.

Throughput (benchmarks/pretrain_throughput.py): rows are drawn, rendered and pre-processed (tokens, labels,
pixel patches) in a streaming `datasets.IterableDataset`, never written as PNG nor decoded; `PreprocessedCollator`
only pads. Images are 112 px for the `see` model (16 merged vision tokens, one per cell of the 4 x 4 grid).

Seeing *where* (benchmarks/results/see_pretrain.md, 2026-12-06): rows keep the processor's `mm_token_type_ids`, so
SFT runs on the same 3D mRoPE positions as GRPO, `triune eval` and vLLM (without them Qwen2.5-VL silently falls
back to 1D positions), and `--vision_lr_ratio` trains the vision tower slower than the language model (at one rate
its tokens' norm explodes and what an object looks like collapses out of them).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = [
    "STAGES",
    "PreprocessedCollator",
    "PretrainArguments",
    "grounded_target",
    "make_parser",
    "run",
    "stage_rows",
]

THINK_ANSWER = "<think>\n{reasoning}\n</think>\n<answer>\n{answer}\n</answer>"
# The sources of the learning demo (data_configs/sample_learn.yaml): two reasoning, two perception tasks.
TASK_SOURCES = ("scienceqa", "chartqapro", "clevr", "estvqa")


def grounded_target(reasoning: str, ground_truth: str) -> str:
    """The completion a task row is pretrained on: its grounded reasoning, then its gold, in the verifiers' layout."""
    return THINK_ANSWER.format(reasoning=reasoning, answer=ground_truth)


Row = tuple[list[dict[str, Any]], str, list]  # (prompt messages, completion text, images)


def _user_turn(question: str) -> list[dict[str, Any]]:
    """A make_sample question (`<image>` placeholders) as TRL conversational messages with typed parts."""
    parts: list[dict[str, Any]] = []
    pieces = question.split("<image>")
    for index, piece in enumerate(pieces):
        if index:
            parts.append({"type": "image"})
        text = piece.lstrip("\n") if index else piece
        if text:
            parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def _scene(rng: random.Random):
    """A 4 x 4 grid canvas with 1 to 8 random shapes: the describe stage's picture."""
    from ..data import make_sample as ms

    image = ms._canvas(rng)
    objects = ms._draw_objects(rng, image, ms._random_labels(rng, rng.randint(1, 8)))
    return image, sorted(objects, key=lambda obj: obj.cell)


def describe_row(rng: random.Random) -> Row:
    """Every object with its cell, in cell order (LLaVA stage-1 style dense description)."""
    image, objects = _scene(rng)
    text = ", ".join(f"c{obj.cell} {obj.label}" for obj in objects)
    return _user_turn("<image>\nList every object in the image with its cell."), text, [image]


def cell_row(rng: random.Random) -> Row:
    """What is in one named cell, or whether it holds a shape of a given colour (reading where the prompt points)."""
    from ..data import make_sample as ms

    image, objects = _scene(rng)
    by_cell = {obj.cell: obj for obj in objects}
    cell = rng.choice(list(by_cell)) if rng.random() < 0.6 else rng.randint(1, ms.GRID * ms.GRID)
    obj = by_cell.get(cell)
    if rng.random() < 0.5:
        return _user_turn(f"<image>\nWhat is in cell {cell}?"), obj.label if obj else "nothing", [image]
    colour = obj.colour if obj and rng.random() < 0.5 else rng.choice(list(ms.SHAPE_COLOURS))
    answer = "yes" if obj and obj.colour == colour else "no"
    return _user_turn(f"<image>\nIs the object in cell {cell} {colour}?"), answer, [image]


def task_row_factory(data_source: str, cot: bool = True) -> Callable[[random.Random], Row]:
    """Rows of one sample source with the prompt GRPO reads (CoT instruction appended) and a grounded target."""
    from ..data import make_sample as ms
    from ..data.cot_prompts import cot_instruction

    source = next((s for s in ms.SAMPLE_SOURCES if s.data_source == data_source), None)
    if source is None:
        raise UsageError(f"unknown sample data_source {data_source!r}; known: {', '.join(TASK_SOURCES)}")
    spec = {"verifier": source.verifier, "format_ratio": source.format_ratio}

    def row(rng: random.Random) -> Row:
        example = source.build(rng)
        question = example.question + ((cot_instruction(spec, rng) or "") if cot else "")
        return _user_turn(question), grounded_target(example.reasoning, example.ground_truth), list(example.images)

    return row


def _stage_mix(stage: str) -> dict[str, tuple[Callable[[random.Random], Row], float]]:
    tasks = {source: (task_row_factory(source), 1.0) for source in TASK_SOURCES}
    if stage == "describe":
        return {"describe": (describe_row, 2.0), "cell": (cell_row, 1.0)}
    if stage == "bridge":
        return {"describe": (describe_row, 1.0), "cell": (cell_row, 1.0), **tasks}
    if stage == "tasks":
        return tasks
    raise UsageError(f"--stage {stage!r} is not a stage; choose one of {', '.join(STAGES)}")


STAGES = ("describe", "bridge", "tasks")


def stage_rows(stage: str, seed: int) -> Iterator[Row]:
    """An endless stream of (messages, completion, images) rows of one stage, mixed by the stage's weights."""
    mix = _stage_mix(stage)
    names = list(mix)
    weights = [mix[name][1] for name in names]
    rng = random.Random(f"triune-pretrain:{stage}:{seed}")
    while True:
        yield mix[rng.choices(names, weights)[0]][0](rng)


class RowEncoder:
    """(messages, completion, images) -> one pre-processed row: token ids, labels (completion only), pixel patches.

    The chat template renders the prompt once; the completion is appended with the turn's end, as TRL's collator
    does for prompt-completion rows, and only the completion (with `<|im_end|>`) is learned.
    """

    def __init__(self, processor):
        self.processor = processor
        self.end = "<|im_end|>\n"

    def __call__(self, messages, completion: str, images: list) -> dict[str, Any]:
        processor = self.processor
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        encoded = processor(text=[prompt], images=images or None, return_tensors="np")
        completion_ids = processor.tokenizer(completion + self.end, add_special_tokens=False)["input_ids"]
        prompt_ids = encoded["input_ids"][0].tolist()
        row = {
            "input_ids": prompt_ids + completion_ids,
            "labels": [-100] * len(prompt_ids) + completion_ids,
        }
        if images:
            row["pixel_values"] = encoded["pixel_values"]
            row["image_grid_thw"] = encoded["image_grid_thw"]
        if "mm_token_type_ids" in encoded:
            # Qwen2.5-VL builds its 3D mRoPE positions (image tokens at (t, row, column)) only when given these;
            # without them it falls back to 1D positions, which GRPO, `triune eval` and vLLM never use.
            row["mm_token_type_ids"] = encoded["mm_token_type_ids"][0].tolist() + [0] * len(completion_ids)
        return row


@dataclass
class PreprocessedCollator:
    """Pads pre-processed rows (right side) and concatenates their pixel patches: no processor work per batch."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import numpy as np
        import torch

        length = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.as_tensor(row["input_ids"])
            labels[i, :n] = torch.as_tensor(row["labels"])
            attention[i, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        if any("mm_token_type_ids" in row for row in rows):
            types = torch.zeros((len(rows), length), dtype=torch.long)
            for i, row in enumerate(rows):
                if "mm_token_type_ids" in row:
                    types[i, : len(row["mm_token_type_ids"])] = torch.as_tensor(row["mm_token_type_ids"])
            batch["mm_token_type_ids"] = types
        with_images = [row for row in rows if row.get("pixel_values") is not None]
        if with_images:
            pixels = [np.asarray(r["pixel_values"]) for r in with_images]
            batch["pixel_values"] = torch.from_numpy(np.concatenate(pixels))
            batch["image_grid_thw"] = torch.from_numpy(
                np.concatenate([np.asarray(r["image_grid_thw"]) for r in with_images])
            )
        return batch


def streaming_dataset(stage: str, seed: int, processor):
    """The stage's rows, pre-processed, as an endless `datasets.IterableDataset` (fresh rows every step)."""
    import datasets

    def generate(stage: str, seed: int):
        encode = RowEncoder(processor)
        for messages, completion, images in stage_rows(stage, seed):
            yield encode(messages, completion, images)

    return datasets.IterableDataset.from_generator(generate, gen_kwargs={"stage": stage, "seed": seed})


@dataclass
class PretrainArguments:
    """The stage to train; optimisation is `trl.SFTConfig`, model loading `trl.ModelConfig`."""

    stage: str = field(
        default="describe",
        metadata={"help": f"Which stage's rows to stream: {', '.join(STAGES)} (see triune_trl.runs.pretrain)."},
    )
    rows_seed: int = field(default=0, metadata={"help": "Seed of the generated rows (held-out seeds stay unseen)."})
    vision_lr_ratio: float = field(
        default=1.0,
        metadata={"help": "The vision tower's (model.visual) learning rate as a fraction of --learning_rate."},
    )


def make_parser():
    """`TrlParser` over (PretrainArguments, SFTConfig, ModelConfig): YAML via --config, CLI flags override it."""
    from trl import ModelConfig, SFTConfig, TrlParser

    return TrlParser((PretrainArguments, SFTConfig, ModelConfig))


def _scale_vision_lr(optimizer, model, ratio: float) -> None:
    """Move the vision tower's parameters into their own groups at `ratio` x each group's learning rate.

    Why (issue 19, benchmarks/results/see_pretrain.md): at one learning rate for the whole tiny model, the vision
    tower's merged tokens grow from norm ~1 to hundreds within 50 steps and their colour/shape content collapses to
    one "something here" direction; the single-cell colour probe stays at chance. With the vision tower at 1/10 of
    the language model's rate it reads the object's colour (100% by step 200).
    """
    from ..trainer.grpo_trainer import module_group

    visual = {id(p) for name, p in model.named_parameters() if module_group(name) in ("vit", "connector")}
    for group in list(optimizer.param_groups):
        vision = [p for p in group["params"] if id(p) in visual]
        if not vision:
            continue
        group["params"] = [p for p in group["params"] if id(p) not in visual]
        optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": vision,
                                   "lr": group["lr"] * ratio})


def build_trainer(script_args: PretrainArguments, training_args, model_args):
    """Model, processor and the stage's streaming rows in a ready `SFTTrainer`."""
    import torch
    from transformers import AutoModelForImageTextToText, set_seed
    from trl import SFTTrainer

    from ..checks import check_model_path, load_processor

    if not model_args.model_name_or_path:
        raise UsageError("--model_name_or_path is required (e.g. artifacts/tiny-qwen2.5-vl-see)")
    if script_args.stage not in STAGES:
        raise UsageError(f"--stage {script_args.stage!r} is not a stage; choose one of {', '.join(STAGES)}")
    if training_args.max_steps is None or training_args.max_steps <= 0:
        raise UsageError("--max_steps must be set: the rows are an endless stream")
    check_model_path(model_args.model_name_or_path, "--model_name_or_path", revision=model_args.model_revision)
    set_seed(training_args.seed)
    processor = load_processor(model_args.model_name_or_path, "--model_name_or_path")
    model = AutoModelForImageTextToText.from_pretrained(model_args.model_name_or_path, dtype=torch.float32)
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {"skip_prepare_dataset": True}
    ratio = script_args.vision_lr_ratio

    class _Trainer(SFTTrainer):
        def create_optimizer(self, model=None):
            new = self.optimizer is None  # Trainer returns the optimizer it already made on later calls
            optimizer = super().create_optimizer(model)
            if new and ratio != 1.0:
                _scale_vision_lr(optimizer, self.model if model is None else model, ratio)
            return optimizer

    return _Trainer(
        model=model,
        args=training_args,
        train_dataset=streaming_dataset(script_args.stage, script_args.rows_seed, processor),
        processing_class=processor,
        data_collator=PreprocessedCollator(processor.tokenizer.pad_token_id),
    )


def run(script_args: PretrainArguments, training_args, model_args) -> Path:
    """Train one stage and save model and processor to `output_dir` (safetensors; reloads with from_pretrained)."""
    trainer = build_trainer(script_args, training_args, model_args)
    trainer.train()
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    (output_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle: not needed to reload, not shipped
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if losses:
        print(f"pretrain {script_args.stage}: loss {losses[0]:.3f} -> {losses[-1]:.3f} "
              f"over {trainer.state.global_step} steps; saved to {output_dir}")
    return output_dir
