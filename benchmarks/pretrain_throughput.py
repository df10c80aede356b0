"""Samples per second of the tiny VLM's supervised training: TRL's SFTTrainer against a plain loop (issue 19).

    python benchmarks/pretrain_throughput.py [--steps 12] [--batch 16] [--threads 2] [--rounds 2]

Three ways to train the same batch size, each timed over `--steps` optimizer steps after two warm-up steps:

- `sft_parquet_224` (the warm start of issue 14): `triune_trl.runs.warm_start` on make-sample parquet rows, the learn
  model at 224 px (64 merged vision tokens), PNG decoding and the processor inside TRL's collator every step;
- `plain_loop_112`: a hand-written loop (draw rows, `pretrain.RowEncoder`, `PreprocessedCollator`, forward,
  backward, AdamW) on the `see` model at 112 px (16 vision tokens), stage `tasks` rows;
- `sft_stream_112`: `triune_trl.runs.pretrain` (SFTTrainer on the streaming pre-processed rows), same model and rows.

The rounds alternate the three so that a shared machine's load falls on all of them alike; the result is the
median per method and the ratio plain / SFTTrainer. Written to benchmarks/results/latest/.
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
RESULTS = HERE / "results" / "latest"  # git-ignored (README)
WARMUP = 2


class StepTimer:
    """TrainerCallback recording the wall time of each optimizer step's end."""

    def __init__(self):
        self.ends: list[float] = []

    def __getattr__(self, name):  # every other TrainerCallback hook is a no-op
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def _rate(ends: list[float], batch: int) -> float:
    timed = ends[WARMUP - 1:]
    return batch * (len(timed) - 1) / (timed[-1] - timed[0])


def sft_parquet_224(work: Path, steps: int, batch: int) -> float:
    from trl import ModelConfig, SFTConfig

    from triune_trl.runs.warm_start import WarmStartArguments, build_trainer

    config = work / "learn.yaml"
    config.write_text(f"root: {work / 'sample'}\ntrain:\n"
                      + "".join(f"  - path: train/train_{t}_*.parquet\n"
                                for t in ("science_scienceqa", "chart_chartqapro", "counting_clevr", "ocr_estvqa")))
    args = SFTConfig(output_dir=str(work / "out_parquet"), max_steps=steps + WARMUP, per_device_train_batch_size=batch,
                     learning_rate=1e-3, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1000,
                     dataloader_num_workers=0, gradient_checkpointing=False, disable_tqdm=True)
    trainer = build_trainer(WarmStartArguments(data_config=str(config)), args,
                            ModelConfig(model_name_or_path=str(work / "learn"), dtype="float32"))
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return _rate(timer.ends, batch)


def sft_stream_112(work: Path, steps: int, batch: int) -> float:
    from trl import ModelConfig, SFTConfig

    from triune_trl.runs.pretrain import PretrainArguments, build_trainer

    args = SFTConfig(output_dir=str(work / "out_stream"), max_steps=steps + WARMUP, per_device_train_batch_size=batch,
                     learning_rate=1e-3, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1000,
                     dataloader_num_workers=0, gradient_checkpointing=False, disable_tqdm=True)
    trainer = build_trainer(PretrainArguments(stage="tasks"), args,
                            ModelConfig(model_name_or_path=str(work / "see"), dtype="float32"))
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return _rate(timer.ends, batch)


def plain_loop_112(work: Path, steps: int, batch: int) -> float:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from triune_trl.runs.pretrain import PreprocessedCollator, RowEncoder, stage_rows

    processor = AutoProcessor.from_pretrained(work / "see")
    model = AutoModelForImageTextToText.from_pretrained(work / "see", dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    encode, collate, rows = RowEncoder(processor), PreprocessedCollator(processor.tokenizer.pad_token_id), stage_rows(
        "tasks", 0)
    model.train()
    ends = []
    for _ in range(steps + WARMUP):
        inputs = collate([encode(*next(rows)) for _ in range(batch)])
        model(**inputs).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        ends.append(time.perf_counter())
    return _rate(ends, batch)


METHODS = {"sft_parquet_224": sft_parquet_224, "plain_loop_112": plain_loop_112, "sft_stream_112": sft_stream_112}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per method and round")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from triune_trl.data.make_sample import make_sample_dataset
    from triune_trl.models.tiny import PRESETS, build_tiny_model

    rates: dict[str, list[float]] = {name: [] for name in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_tiny_model(work / "learn", PRESETS["learn"])
        build_tiny_model(work / "see", PRESETS["see"])
        make_sample_dataset(work / "sample", seed=0, train_rows=64, test_rows=1)
        for round_ in range(args.rounds):
            for name, method in METHODS.items():
                rates[name].append(method(work, args.steps, args.batch))
                print(f"round {round_}: {name} {rates[name][-1]:.1f} samples/s", flush=True)
    median = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "samples_per_second": median,
        "rounds": rates,
        "plain_over_sft_stream": median["plain_loop_112"] / median["sft_stream_112"],
        "sft_stream_over_sft_parquet": median["sft_stream_112"] / median["sft_parquet_224"],
        "batch": args.batch,
        "steps": args.steps,
        "threads": args.threads,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, shared with other jobs while measured",
        "python": sys.version.split()[0],
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrain_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| method | samples/s (median) | rounds |", "|---|---:|---|"]
    lines += [f"| {n} | {median[n]:.1f} | {', '.join(f'{v:.1f}' for v in rates[n])} |" for n in METHODS]
    lines += ["", f"plain loop / SFTTrainer streaming: {result['plain_over_sft_stream']:.2f}x; "
              f"streaming 112 px / parquet 224 px SFTTrainer: {result['sft_stream_over_sft_parquet']:.2f}x "
              f"(batch {args.batch}, {args.threads} torch threads, {result['machine']})"]
    (out / "pretrain_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
