"""Resume after a hard kill: `--resume_from_checkpoint true` continues at the saved step with the same IoU
threshold schedule and the same data order as an uninterrupted run, across an epoch boundary.

Run as a script, this file is the run that gets killed: the recipe's own parsing and `build_trainer`, plus a
callback that, once step KILL_AT has trained (after checkpoint SAVED_AT was written, before step KILL_AT is
saved or logged), tells the test it is there and waits to be SIGKILLed (KILL_AT, or TRIUNE_TEST_KILL_AT).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "recipes" / "grpo_triune.py"
TINY_RECIPE = REPO_ROOT / "recipes" / "configs" / "tiny_cpu.yaml"
MAX_STEPS, SAVED_AT, KILL_AT = 6, 4, 5  # 3 steps per epoch: the resume lands inside the second epoch
MARKER = "killable"


def killable_run(argv: list[str]) -> None:
    import os

    from transformers import TrainerCallback

    from triune_trl.runs.train import build_trainer, make_parser

    kill_at = int(os.environ.get("TRIUNE_TEST_KILL_AT", KILL_AT))  # test_vllm_server's async resume kills earlier

    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)

    class WaitToBeKilled(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == kill_at:
                Path(args.output_dir, MARKER).write_text(str(state.global_step))
                time.sleep(600)

    trainer = build_trainer(script_args, training_args, model_args)
    trainer.add_callback(WaitToBeKilled())
    trainer.train()


def kill_at_its_kill_point(argv: list[str], out: Path, env: dict[str, str] | None = None) -> None:
    """Run this file as the run to kill (`argv`: the recipe's options) and SIGKILL it once it reached its kill point."""
    killed = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *argv],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    while not (out / MARKER).exists():
        assert killed.poll() is None, f"the run to kill ended early: {killed.stderr.read()[-4000:]}"
        assert time.monotonic() < deadline, "the run to kill never reached its kill point"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL


def _args(model, config, out) -> list[str]:
    return [
        "--config", str(TINY_RECIPE), "--model_name_or_path", str(model), "--data_config", str(config),
        "--output_dir", str(out), "--max_train_samples", "6", "--max_steps", str(MAX_STEPS),
        "--save_steps", str(SAVED_AT // 2), "--save_total_limit", "1", "--logging_steps", "1",
        "--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "8",
        "--log_completions", "true", "--num_completions_to_print", "0", "--iou_threshold", "dynamic",
    ]


def _recipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RECIPE), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)


def _prompts_per_step(out: Path) -> list[list[str]]:
    import pyarrow.parquet as pq

    files = sorted((out / "completions").glob("completions_*.parquet"))
    return [[json.dumps(p, sort_keys=True) for p in pq.read_table(f).column("prompt").to_pylist()] for f in files]


def _per_step(history: list[dict], key: str) -> dict[int, float]:
    return {entry["step"]: entry[key] for entry in history if key in entry}


def test_resume_true_picks_the_newest_complete_checkpoint(tmp_path):
    """A checkpoint cut mid-save (no trainer_state.json, written last) is skipped; none at all is an error."""
    from triune_trl.configs import TriuneGRPOConfig

    for step, complete in ((2, True), (10, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    args = TriuneGRPOConfig(output_dir=str(tmp_path), use_cpu=True, resume_from_checkpoint="true")
    assert args.resume_from_checkpoint == str(tmp_path / "checkpoint-10")
    explicit = TriuneGRPOConfig(output_dir=str(tmp_path), use_cpu=True, resume_from_checkpoint=str(tmp_path / "x"))
    assert explicit.resume_from_checkpoint == str(tmp_path / "x")  # a path is left as given
    with pytest.raises(ValueError, match="no complete checkpoint-N folder"):
        TriuneGRPOConfig(output_dir=str(tmp_path / "fresh"), use_cpu=True, resume_from_checkpoint="last")


@pytest.mark.slow
def test_resume_after_a_hard_kill_continues_the_schedule_and_the_data_order(
    tmp_path, tiny_model_dir, sample_data_dir
):
    from .conftest import write_data_config

    config = write_data_config(tmp_path / "det.yaml", sample_data_dir, ["train/train_grounding_*.parquet"])
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    result = _recipe(*_args(tiny_model_dir, config, reference))
    assert result.returncode == 0, result.stderr[-4000:]

    kill_at_its_kill_point(_args(tiny_model_dir, config, resumed), resumed)
    assert [p.name for p in resumed.glob("checkpoint-*")] == [f"checkpoint-{SAVED_AT}"]

    result = _recipe(*_args(tiny_model_dir, config, resumed), "--resume_from_checkpoint", "true")
    assert result.returncode == 0, result.stderr[-4000:]

    expected = json.loads((reference / "trainer_state.json").read_text())["log_history"]
    actual = json.loads((resumed / "trainer_state.json").read_text())["log_history"]
    steps = [entry["step"] for entry in actual if "loss" in entry]
    assert steps == list(range(1, MAX_STEPS + 1)), "each step once: restored up to the checkpoint, then continued"
    tau = _per_step(expected, "iou_threshold/d3")
    assert sorted(set(tau.values())) == [0.95, 0.99]  # the schedule changes within the run
    assert _per_step(actual, "iou_threshold/d3") == tau
    assert _per_step(actual, "num_completions/d3") == _per_step(expected, "num_completions/d3")
    reference_order, resumed_order = _prompts_per_step(reference), _prompts_per_step(resumed)
    assert len(reference_order) == MAX_STEPS
    assert reference_order[:3] != reference_order[3:], "each epoch is shuffled differently"
    assert resumed_order == reference_order


if __name__ == "__main__":
    killable_run(sys.argv[1:])
