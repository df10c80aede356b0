"""Supervised warm start before V-Triune RL: TRL's `SFTTrainer` on gold answers written the way each verifier scores.

Why: RL sharpens a signal the policy already has. A randomly initialised model never samples a correct box or
count, so every group of GRPO has zero reward variance and nothing is learned. A short SFT stage on the train
split's gold answers gives partial competence (the answer formats, and answers that depend on the image), from
which RL has room to climb. The stage reads the very rows GRPO reads (`load_split`: same prompts, same random CoT
instruction per row, same image sizing), so the model is warm-started on exactly the prompts it will be trained
and evaluated on.

`sft_target` turns a row's reward spec into the completion its verifier scores highest:

- mathverify, free form (format_ratio 0): the gold itself, `\\boxed{X}`;
- mathverify, close form: `<think>\\n\\n</think>\\n<answer>\\n\\boxed{X}\\n</answer>`, each format tag once;
- detection (and grounding): the gold boxes in pixel coordinates of the image as the model saw it, inside the
  think/answer layout. Pixels are integers, so when the model's image is smaller than the drawn one the target can
  only approximate a 0-1000 gold: its IoU with the gold is then below 1 (`tests/test_warm_start.py` measures it);
  when the model sees the image at its drawn size the target maps back to the gold exactly and scores 1.0;
- tag: the tag.

The vision tower may learn at its own rate (`vision_lr_scale`): a from-scratch ViT next to a small language model
otherwise grows outputs that swamp the text embeddings.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..errors import DataError, UsageError

__all__ = ["WallTimeLimit", "WarmStartArguments", "build_sft_dataset", "make_parser", "run", "sft_target"]

logger = logging.getLogger(__name__)

THINK_ANSWER = "<think>\n\n</think>\n<answer>\n{answer}\n</answer>"
SUPPORTED_VERIFIERS = ("mathverify", "detection", "tag")


@dataclass
class WarmStartArguments:
    """Data options of the warm start; optimisation is `trl.SFTConfig`, model loading `trl.ModelConfig`."""

    data_config: str = field(
        default="data_configs/sample.yaml",
        metadata={"help": "YAML file listing the train parquet files (the same config the GRPO recipe reads)."},
    )
    data_root: str | None = field(
        default=None, metadata={"help": "Directory the data config's relative paths resolve against."}
    )
    rescale_images: bool = field(
        default=True,
        metadata={"help": "Resize images with the release's rule on reading, as the GRPO recipe and `triune eval` do."},
    )
    data_sources: str | None = field(
        default=None,
        metadata={"help": "Comma-separated data_source names to train on (default: every source of the split)."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on the first N rows only (after the data_sources filter)."}
    )
    max_train_seconds: float | None = field(
        default=None,
        metadata={
            "help": "Stop training after this many seconds of wall time (checked after every step), e.g. to give a "
            "no-RL control exactly the time an RL run took (benchmarks/learning.py)."
        },
    )
    vision_lr_scale: float = field(
        default=1.0,
        metadata={
            "help": "Learning rate of the vision tower (`model.visual`, merger included) as a multiple of "
            "--learning_rate; 0 freezes it."
        },
    )


def _boxes_in_pixels(ground_truth: str, image_size: tuple[int, int]) -> str:
    """The gold's 0-1000 boxes as the pixel boxes of the model's image that normalise back to them (or closest)."""
    from ..rewards.boxes import parse_answer_boxes

    width, height = image_size
    boxes = parse_answer_boxes(ground_truth)
    if not boxes:
        raise DataError(f"detection ground_truth holds no valid box: {ground_truth!r:.120}")

    # The verifier maps a pixel coordinate p to int(p / W * 1000); the smallest integer p with p / W * 1000 >= g is
    # ceil(g * W / 1000), which maps back to g whenever a pixel is at least one grid unit wide there.
    def pixel(value: float, side: int) -> int:
        return min(side, math.ceil(value * side / 1000 - 1e-6))

    return json.dumps(
        [
            {"bbox_2d": [pixel(b.x1, width), pixel(b.y1, height), pixel(b.x2, width), pixel(b.y2, height)],
             "label": b.label}
            for b in boxes
        ]
    )


def sft_target(reward_model: dict[str, Any], image_size: tuple[int, int] | None) -> str:
    """The completion a row's verifier scores highest: what the warm start teaches (see the module docstring)."""
    verifier = reward_model.get("verifier")
    gold = reward_model["ground_truth"]
    if verifier == "mathverify":
        return gold if not reward_model.get("format_ratio") else THINK_ANSWER.format(answer=gold)
    if verifier == "detection":
        if image_size is None:
            raise DataError("a detection row needs an image to write its gold boxes in pixels")
        return THINK_ANSWER.format(answer=_boxes_in_pixels(gold, image_size))
    if verifier == "tag":
        return gold
    raise DataError(
        f"the warm start writes targets for {', '.join(SUPPORTED_VERIFIERS)} rows, not {verifier!r}: drop those rows "
        "(--data_sources) or add its target to runs.warm_start.sft_target"
    )


def build_sft_dataset(dataset, rescale, data_sources: list[str] | None = None):
    """`load_split` rows -> TRL prompt-completion rows (`prompt`, `completion`, `images`), images decoded lazily.

    `rescale` is the resize `load_split` was given, applied again when images are decoded.
    """
    from ..data.loader import RowDecoder

    raw = dataset.with_format(None)
    if data_sources:
        wanted = set(data_sources)
        unknown = wanted - set(raw.unique("data_source"))
        if unknown:
            raise DataError(f"--data_sources names sources the split does not have: {', '.join(sorted(unknown))}")
        raw = raw.filter(lambda source: source in wanted, input_columns="data_source")
    sizes = raw["image_sizes"]
    specs = [json.loads(value) for value in raw["reward_model"]]
    completions = [
        json.dumps([{"role": "assistant", "content": sft_target(spec, tuple(size[0]) if size else None)}])
        for spec, size in zip(specs, sizes, strict=True)
    ]
    raw = raw.add_column("completion", completions).select_columns(["prompt", "completion", "images"])
    decode = RowDecoder(rescale)

    def transform(batch: dict[str, list]) -> dict[str, list]:
        out = decode(batch)
        if "completion" in batch:
            out["completion"] = [json.loads(value) for value in batch["completion"]]
        return out

    return raw.with_transform(transform)


def vision_param_groups(model, learning_rate: float, weight_decay: float, vision_lr_scale: float) -> list[dict]:
    """AdamW groups: (vision | rest) x (decay | no decay); the vision groups learn at `vision_lr_scale` times."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        vision = ".visual." in f".{name}" or name.startswith("visual.")
        decay = param.ndim >= 2 and "norm" not in name
        groups.setdefault((vision, decay), []).append(param)
    return [
        {
            "params": params,
            "lr": learning_rate * (vision_lr_scale if vision else 1.0),
            "weight_decay": weight_decay if decay else 0.0,
        }
        for (vision, decay), params in groups.items()
    ]


class WallTimeLimit(TrainerCallback):
    """Ends training once `seconds` of wall time have passed since training began (checked after every step)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._start: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None and time.monotonic() - self._start >= self.seconds:
            control.should_training_stop = True
        return control


def make_parser():
    """`TrlParser` over (WarmStartArguments, SFTConfig, ModelConfig): YAML via --config, CLI flags override it."""
    from trl import ModelConfig, SFTConfig, TrlParser

    return TrlParser((WarmStartArguments, SFTConfig, ModelConfig))


def build_trainer(script_args: WarmStartArguments, training_args, model_args):
    """Load processor, model and the SFT rows; return a ready `SFTTrainer`."""
    import torch
    from transformers import AutoModelForImageTextToText, set_seed
    from trl import SFTTrainer

    from ..checks import check_data_root, check_model_path, load_processor
    from ..data import ImageSizing, load_data_config, load_split, make_image_resize

    if not model_args.model_name_or_path:
        raise UsageError("--model_name_or_path is required (e.g. artifacts/tiny-qwen2.5-vl-learn)")
    check_model_path(model_args.model_name_or_path, "--model_name_or_path", revision=model_args.model_revision)
    check_data_root(script_args.data_root, "--data_root")
    set_seed(training_args.seed)
    processor = load_processor(model_args.model_name_or_path, "--model_name_or_path",
                               revision=model_args.model_revision)
    rescale = make_image_resize("release" if script_args.rescale_images else "none")
    config = load_data_config(script_args.data_config, data_root=script_args.data_root)
    rows = load_split(config, "train", ImageSizing.from_processor(processor), rescale=rescale)
    if rows is None:
        raise DataError(f"{script_args.data_config}: the data config lists no train files")
    sources = [s.strip() for s in script_args.data_sources.split(",")] if script_args.data_sources else None
    dataset = build_sft_dataset(rows, rescale, sources)
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = AutoModelForImageTextToText.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, dtype=dtype
    )
    training_args.remove_unused_columns = False  # the collator needs `images`, which the model's forward lacks
    optimizer = torch.optim.AdamW(
        vision_param_groups(
            model, training_args.learning_rate, training_args.weight_decay, script_args.vision_lr_scale
        ),
        lr=training_args.learning_rate,
        betas=(training_args.adam_beta1, training_args.adam_beta2),
        eps=training_args.adam_epsilon,
    )
    callbacks = [WallTimeLimit(script_args.max_train_seconds)] if script_args.max_train_seconds else None
    return SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        optimizers=(optimizer, None),
        callbacks=callbacks,
    )


def run(script_args: WarmStartArguments, training_args, model_args) -> Path:
    """Warm-start, save model and processor to `output_dir` (reloads with `from_pretrained`); return it."""
    trainer = build_trainer(script_args, training_args, model_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    trainer.save_state()
    if trainer.accelerator.is_main_process:
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        if losses:
            print(f"warm start: loss {losses[0]:.3f} -> {losses[-1]:.3f} over {trainer.state.global_step} steps")
        print(f"warm-started model and processor saved to {output_dir} (reload with from_pretrained)")
    return output_dir
