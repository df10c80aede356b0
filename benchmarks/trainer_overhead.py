"""What TriuneGRPOTrainer's monitoring and tricks cost per step, against TRL's plain GRPOTrainer.

    python benchmarks/trainer_overhead.py [--steps 20] [--rounds 6] [--model artifacts/tiny-qwen2.5-vl]

The same tiny run (same model, seed, data, config, steps and reward function: the real `RewardRouter`, scoring in
process so that worker-pool scheduling adds no noise to the step times) is trained
with `trl.GRPOTrainer` and with `TriuneGRPOTrainer` (per-source records gathered and aggregated every step, vision
pad replacement, the non-finite grad check, the resumable sampler), `--rounds` times in ABBA order (plain, Triune,
Triune, plain, ...) so that both see the same machine load and the same position in the process's life. A step's
time is the wall time between consecutive `on_step_begin` callbacks: generation, scoring, per-source metrics,
backward, optimizer step and logging (`logging_steps=1`, the worst case for the per-log aggregation). The first
`--warmup` steps of every run are dropped. Reported: the ratio of the median step times (goal: at most 1.05),
written to benchmarks/results/latest/trainer_overhead.json.

The plain trainer gets what it needs to run at all: image-only rows (TRL 1.16 crashes on a batch mixing
text-only and image prompts) and a left-padded processor (a right-padded one crashes on image prompts of
different lengths); those are the two crashes TriuneGRPOTrainer fixes. Both trainers run on exactly that input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "latest" / "trainer_overhead.json"  # git-ignored (README)
GOAL = 1.05
BATCH = 8  # completions per step: 2 prompts x 4 generations
IMAGE_FILES = [  # every row of these sample files has one or two images
    "train/train_chart_*.parquet",
    "train/train_counting_*.parquet",
    "train/train_detection_*.parquet",
    "train/train_grounding_*.parquet",
    "train/train_math_mmmath_*.parquet",
    "train/train_ocr_*.parquet",
    "train/train_puzzle_*.parquet",
    "train/train_science_*.parquet",
]


def _ensure_inputs(model: Path, data: Path) -> None:
    from triune_trl.data.make_sample import make_sample_dataset
    from triune_trl.models.tiny import build_tiny_model, is_tiny_model_dir

    if not is_tiny_model_dir(model):
        build_tiny_model(model)
    if not (data / "train").is_dir():
        make_sample_dataset(data, seed=0)


def _step_times(trainer_cls, model: Path, dataset, processor, steps: int, out: Path) -> list[float]:
    from transformers import TrainerCallback
    from trl import GRPOConfig

    from triune_trl.rewards import RewardRouter
    from triune_trl.trainer.callbacks import DynamicIoUCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

        def on_train_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

    router, clock = RewardRouter(workers=0), StepClock()  # in-process scoring: no worker-pool noise in the timing
    args = GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, seed=42, max_steps=steps, learning_rate=1e-3,
        per_device_train_batch_size=BATCH, num_generations=4, max_completion_length=32, epsilon_high=0.28,
    )
    trainer = trainer_cls(
        model=str(model), reward_funcs=[router], args=args, train_dataset=dataset, processing_class=processor,
        callbacks=[DynamicIoUCallback(router), clock],
    )
    trainer.train()
    return [b - a for a, b in zip(clock.marks, clock.marks[1:], strict=False)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "artifacts" / "tiny-qwen2.5-vl")
    parser.add_argument("--data", type=Path, default=ROOT / "artifacts" / "sample_data")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    import transformers
    import trl
    from tqdm import tqdm
    from transformers import AutoProcessor
    from trl import GRPOTrainer

    from triune_trl.data import ImageSizing, load_data_config, load_split
    from triune_trl.trainer import TriuneGRPOTrainer

    _ensure_inputs(args.model, args.data)
    processor = AutoProcessor.from_pretrained(args.model, padding_side="left", truncation_side="left")
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "images.yaml"
        config_path.write_text(json.dumps({"root": str(args.data), "train": [{"path": p} for p in IMAGE_FILES]}))
        config = load_data_config(config_path)
        dataset = load_split(config, "train", ImageSizing.from_processor(processor))
        assert all(len(sizes) > 0 for sizes in dataset["image_sizes"]), "the plain trainer needs image-only rows"

        times: dict[str, list[float]] = {"GRPOTrainer": [], "TriuneGRPOTrainer": []}
        pair = [("GRPOTrainer", GRPOTrainer), ("TriuneGRPOTrainer", TriuneGRPOTrainer)]
        runs = [run for round_ in range(args.rounds) for run in (pair if round_ % 2 == 0 else pair[::-1])]
        run_medians: list[tuple[str, float]] = []
        for index, (name, cls) in enumerate(tqdm(runs, desc="runs", unit="run")):
            step_times = _step_times(cls, args.model, dataset, processor, args.steps, Path(tmp) / f"run{index}")
            times[name].extend(step_times[args.warmup:])
            run_medians.append((name, round(statistics.median(step_times[args.warmup:]), 4)))

    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["TriuneGRPOTrainer"] / medians["GRPOTrainer"]
    result = {
        "benchmark": "trainer_overhead",
        "ratio_median_step_time": round(ratio, 4),
        "goal": GOAL,
        "meets_goal": ratio <= GOAL,
        "median_step_seconds": {name: round(value, 4) for name, value in medians.items()},
        "steps_measured": {name: len(values) for name, values in times.items()},
        "median_step_seconds_per_run": run_medians,
        "setup": {
            "model": "tiny Qwen2.5-VL (triune tiny-model)", "rows": len(dataset), "data": "image-only sample files",
            "per_device_train_batch_size": BATCH, "num_generations": 4, "max_completion_length": 32,
            "steps_per_run": args.steps, "warmup_dropped": args.warmup, "rounds": args.rounds,
            "reward": "RewardRouter(workers=0)", "logging_steps": 1,
        },
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'trainer':<20} {'median step (s)':>16} {'steps':>6}")
    for name, value in medians.items():
        print(f"{name:<20} {value:>16.4f} {len(times[name]):>6}")
    print(f"ratio TriuneGRPOTrainer / GRPOTrainer: {ratio:.3f} (goal <= {GOAL}) -> {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
