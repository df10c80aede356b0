"""RL throughput on the `see` tiny VLM: prompts/s of the `triune train` trainer and where a step's time goes.

    python benchmarks/rl_throughput.py [--steps 3] [--warmup 1] [--only NAME,...] [--no-vllm]

Why (issue 24): every RL run of the learning demo so far saw 160-2,400 prompts, one to two orders of magnitude too
few to learn anything a probe calls learned, because a step of 8 prompts x 8 completions x <= 48 tokens takes
3.3-3.7 s on 2 cores. This measures what raises prompts/s: completion length (the grounded think vs a direct
answer, `triune data make-sample --answer-style direct`), prompts per step, torch threads, and vLLM colocate
generation against HF generate.

Each setting builds the trainer exactly as `triune train --config recipes/configs/tiny_see_rl.yaml` does
(`triune_trl.runs.train.parse_args` + `build_trainer`, from the shipped warm start checkpoints/tiny-see), with the
setting's overrides, in this one process, one after the other, so all settings share the machine's load. The
first `--warmup` steps of each are dropped; a step is the wall time between `on_step_begin` callbacks. Where the
time goes, by wrapping the trainer's own methods (seconds per measured step):

- generation: `_generate` (prompt processing and HF `generate`, or the vLLM engine);
- rewards: `_calculate_rewards` (the real `RewardRouter`, in its worker processes as in `triune train`);
- log-prob forward (no grad): `_get_per_token_logps_and_entropies` without autograd (old / reference log-probs;
  TRL skips them when they are not needed);
- loss forward: the same with autograd (inside the loss);
- backward: `accelerator.backward`;
- rest of scoring: `_generate_and_score_completions` minus the above (image processing, advantages, metrics);
- other: the step minus all of it (optimizer step, data loading, logging, callbacks).

Prompts/s = prompts per step / median measured step time; each prompt gets 8 completions. Written to
benchmarks/results/latest/rl_throughput.{json,md} (git-ignored); the committed summary is
benchmarks/results/rl_throughput.md. Data: `make_sample_dataset(seed=0, train_rows=300)` in both answer styles, in a
temporary folder (`--data_root`), read through data_configs/sample_see.yaml and sample_see_direct.yaml.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LATEST = HERE / "results" / "latest"  # git-ignored
RECIPE = ROOT / "recipes" / "configs" / "tiny_see_rl.yaml"
DATA_CONFIGS = {
    "think": ROOT / "data_configs" / "sample_see.yaml",
    "direct": ROOT / "data_configs" / "sample_see_direct.yaml",
}
GENERATIONS = 8
PARTS = ("generation", "rewards", "logprob_nograd", "loss_forward", "backward", "rest_of_scoring", "other")
_TIMED = ("generation", "rewards", "logprob_nograd", "loss_forward", "backward", "score_total")


@dataclass(frozen=True)
class Setting:
    """One measured configuration: answer style of the data, completion cap, prompts per step, threads, engine."""

    name: str
    style: str
    max_completion_length: int
    prompts: int
    threads: int
    vllm: bool = False
    extra: tuple[str, ...] = ()  # more `triune train` options


# One torch thread unless said: on 2 shared cores, 2 threads next to another job's threads oversubscribe the cores
# and a step can take several times longer (measured 2026-12-06: 8-31 s for 16 prompts at 2 threads with one
# other training job running, against 1.1-1.3 s for 8 prompts on a quieter machine).
SETTINGS = (
    Setting("think48-p8-t1", "think", 48, 8, 1),  # issue 24's measured baseline (it ran at 2 threads: 3.3-3.7 s)
    Setting("direct8-p8-t1", "direct", 8, 8, 1),
    Setting("direct8-p16-t1", "direct", 8, 16, 1),
    Setting("direct8-p32-t1", "direct", 8, 32, 1),
    Setting("direct8-p64-t1", "direct", 8, 64, 1),
    Setting("direct8-p32-t2", "direct", 8, 32, 2),
    Setting("direct16-p32-t1", "direct", 16, 32, 1),
    Setting("think48-p32-t1", "think", 48, 32, 1),
    Setting("vllm-direct8-p16-t1", "direct", 8, 16, 1, vllm=True),
    # bf16 autocast: this machine's CPU (AMD EPYC) has avx512_bf16, which oneDNN uses for bf16 matmuls
    Setting("direct8-p16-t1-bf16", "direct", 8, 16, 1, extra=("--bf16", "true")),
)


class PartTimer:
    """Seconds spent in named parts of the trainer, per training step (reset at each step's begin)."""

    def __init__(self):
        self.current: dict[str, float] = dict.fromkeys(_TIMED, 0.0)
        self.steps: list[dict[str, float]] = []

    def wrap(self, name_of, function):
        """`function` timed under `name_of(*args)` (a name, or a callable choosing one per call)."""

        @functools.wraps(function)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                name = name_of() if callable(name_of) else name_of
                self.current[name] += time.perf_counter() - start

        return timed

    def close_step(self, seconds: float) -> None:
        """Book the finished step: scoring's own share and the unattributed rest are derived here."""
        part = dict(self.current)
        inner = part["generation"] + part["rewards"] + part["logprob_nograd"]
        part["rest_of_scoring"] = max(0.0, part.pop("score_total", 0.0) - inner)
        part["other"] = max(0.0, seconds - inner - part["rest_of_scoring"] - part["loss_forward"] - part["backward"])
        part["step"] = seconds
        self.steps.append(part)
        self.current = dict.fromkeys(_TIMED, 0.0)


def _instrument(trainer, timer: PartTimer) -> None:
    """Wrap the trainer's generation, scoring, log-prob and backward calls with the timer (instance attributes)."""
    import torch

    trainer._generate = timer.wrap("generation", trainer._generate)
    trainer._calculate_rewards = timer.wrap("rewards", trainer._calculate_rewards)
    trainer._get_per_token_logps_and_entropies = timer.wrap(
        lambda: "loss_forward" if torch.is_grad_enabled() else "logprob_nograd",
        trainer._get_per_token_logps_and_entropies,
    )
    trainer._generate_and_score_completions = timer.wrap("score_total", trainer._generate_and_score_completions)
    trainer.accelerator.backward = timer.wrap("backward", trainer.accelerator.backward)


def _step_clock(timer: PartTimer):
    """A callback closing each step in the timer; the first step's begin starts the clock."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.last: float | None = None

        def on_step_begin(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if self.last is not None:
                timer.close_step(now - self.last)
            else:
                timer.current = dict.fromkeys(_TIMED, 0.0)  # nothing before the first step counts
            self.last = now

        def on_train_end(self, args, state, control, **kwargs):
            if self.last is not None:
                timer.close_step(time.perf_counter() - self.last)

    return StepClock()


def _argv(setting: Setting, data_root: Path, out: Path, steps: int) -> list[str]:
    """The `triune train` command line of a setting (recipe + overrides)."""
    argv = [
        "--config", str(RECIPE), "--data_config", str(DATA_CONFIGS[setting.style]), "--data_root", str(data_root),
        "--output_dir", str(out), "--max_steps", str(steps), "--num_generations", str(GENERATIONS),
        "--per_device_train_batch_size", str(setting.prompts * GENERATIONS),
        "--max_completion_length", str(setting.max_completion_length), "--logging_steps", "1",
        "--dataloader_num_workers", "0", "--disable_tqdm", "true",
    ]
    argv += list(setting.extra)
    if setting.vllm:
        argv += ["--use_vllm", "true", "--vllm_mode", "colocate", "--vllm_max_model_length", "512",
                 "--max_prompt_length", "448",
                 "--vllm_importance_sampling_correction", "true"]
    return argv


def _release_vllm(trainer, saved_environment: dict) -> None:
    """Free a colocate engine and restore the environment TRL set for it (as tests/test_vllm_colocate.py does)."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    del trainer.vllm_generation.llm
    cleanup_dist_env_and_memory()
    os.environ.clear()
    os.environ.update(saved_environment)


def measure(setting: Setting, data_root: Path, work: Path, steps: int, warmup: int) -> dict:
    """Train one setting for warmup + steps steps and return its step times, parts and completion lengths."""
    import torch

    from triune_trl.runs.train import build_trainer, parse_args

    torch.set_num_threads(setting.threads)
    saved_environment = dict(os.environ)
    script_args, training_args, model_args = parse_args(_argv(setting, data_root, work / setting.name, warmup + steps))
    started = time.perf_counter()
    trainer = build_trainer(script_args, training_args, model_args)
    build_seconds = time.perf_counter() - started
    timer = PartTimer()
    _instrument(trainer, timer)
    trainer.add_callback(_step_clock(timer))
    try:
        trainer.train()
    finally:
        logs = [entry for entry in trainer.state.log_history if "completions/mean_length" in entry]
        if setting.vllm:
            _release_vllm(trainer, saved_environment)
        router = trainer.reward_funcs[0]
        with contextlib.suppress(Exception):
            router.close()
    measured = timer.steps[warmup:]
    median = statistics.median(step["step"] for step in measured)
    return {
        "setting": asdict(setting),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other jobs on the machine while it ran
        "build_s": round(build_seconds, 2),
        "step_s": [round(step["step"], 3) for step in measured],
        "median_step_s": round(median, 3),
        "prompts_per_s": round(setting.prompts / median, 2),
        # the fastest step: what the setting does with the least interference from other jobs on a shared machine
        "best_prompts_per_s": round(setting.prompts / min(step["step"] for step in measured), 2),
        "completions_per_s": round(setting.prompts * GENERATIONS / median, 1),
        "parts_s": {part: round(statistics.mean(step[part] for step in measured), 3) for part in PARTS},
        "mean_completion_tokens": [round(entry["completions/mean_length"], 1) for entry in logs[warmup:]],
        "reward": [round(entry.get("reward", float("nan")), 3) for entry in logs[warmup:]],
    }


def _markdown(result: dict) -> str:
    """The result as the table committed in benchmarks/results/rl_throughput.md."""
    columns = ("setting", "prompts/step", "threads", "engine", "cap", "tokens", "s/step", "prompts/s", "best", *PARTS,
               "load")
    head = "| " + " | ".join(columns) + " |"
    lines = [head, "|" + "---|" * len(columns)]
    for row in result["runs"]:
        s = row["setting"]
        if "error" in row:
            lines.append(f"| {s['name']} | {s['prompts']} | {s['threads']} | {'vLLM' if s['vllm'] else 'HF'} | "
                         f"{s['max_completion_length']} | failed: {row['error'][:120]} |")
            continue
        tokens = statistics.mean(row["mean_completion_tokens"]) if row["mean_completion_tokens"] else float("nan")
        parts = " | ".join(f"{row['parts_s'][p]:.2f}" for p in PARTS)
        lines.append(f"| {s['name']} | {s['prompts']} | {s['threads']} | {'vLLM' if s['vllm'] else 'HF'} | "
                     f"{s['max_completion_length']} | {tokens:.1f} | {row['median_step_s']:.2f} | "
                     f"**{row['prompts_per_s']:.1f}** | {row['best_prompts_per_s']:.1f} | {parts} | "
                     f"{row['load_average_1min']:.1f} |")
    return "\n".join(lines) + "\n"


def _ensure_data(root: Path) -> dict[str, Path]:
    """Both answer styles of the sample set (seed 0, 300 train rows per source) under `root`."""
    from triune_trl.data.make_sample import make_sample_dataset

    folders = {}
    for style in DATA_CONFIGS:
        folder = root / style
        if not (folder / "train").is_dir():
            make_sample_dataset(folder, seed=0, train_rows=300, test_rows=1, answer_style=style)
        folders[style] = folder
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="measured steps per setting")
    parser.add_argument("--warmup", type=int, default=1, help="dropped first steps per setting")
    parser.add_argument("--only", help="comma-separated setting names (default: all)")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM colocate setting")
    parser.add_argument("--data", type=Path, help="folder for the generated data (default: a temporary one)")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM sizes its CPU KV cache from the host otherwise
    os.environ.setdefault("VLLM_CACHE_ROOT", str(ROOT / ".pytest_cache" / "vllm"))  # the compile cache survives
    names = args.only.split(",") if args.only else [s.name for s in SETTINGS]
    chosen = [s for s in SETTINGS if s.name in names and not (s.vllm and args.no_vllm)]
    with tempfile.TemporaryDirectory() as tmp:
        data = _ensure_data(args.data or Path(tmp) / "data")
        runs = []
        for setting in chosen:
            print(f"--- {setting.name}", flush=True)
            try:
                row = measure(setting, data[setting.style], Path(tmp), args.steps, args.warmup)
            except Exception as error:  # a setting that cannot run here (vLLM) is reported, not fatal
                traceback.print_exc()
                row = {"setting": asdict(setting), "error": f"{type(error).__name__}: {error}"}
            print(json.dumps(row), flush=True)
            runs.append(row)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end",
        "python": sys.version.split()[0],
        "steps": args.steps, "warmup": args.warmup, "generations": GENERATIONS,
        "runs": runs,
    }
    LATEST.mkdir(parents=True, exist_ok=True)
    (LATEST / "rl_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (LATEST / "rl_throughput.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
