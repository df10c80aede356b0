"""Two CPU processes (torchrun, DDP over gloo): both ranks log the same per-source keys, with no hang, although
each rank sees only one of the two sources. Run as a script, this file is the torchrun worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SOURCES = ("text_math", "mm_math")
STEPS = 2


def worker(model_dir: str, data_dir: str, out_dir: str) -> None:
    """One rank: train 2 steps and evaluate once on data laid out so that each rank's shard holds one source."""
    from transformers import AutoProcessor, TrainerCallback

    from triune_trl.configs import TriuneGRPOConfig
    from triune_trl.data import ImageSizing, load_data_config, load_split
    from triune_trl.rewards import RewardRouter
    from triune_trl.trainer import TriuneGRPOTrainer
    from triune_trl.trainer.callbacks import DynamicIoUCallback

    class SeenSources(RewardRouter):
        """The real router, noting which sources this rank scored."""

        def __init__(self):
            super().__init__()
            self.seen = []

        def __call__(self, *args, **kwargs):
            self.seen.append(sorted(set(kwargs["data_source"])))
            return super().__call__(*args, **kwargs)

    class DumpLogs(TrainerCallback):
        """Every rank records what it logged (the Trainer calls on_log on all ranks; only rank 0 writes files)."""

        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs))

        def on_train_end(self, args, state, control, **kwargs):
            record = {"logs": self.logs, "seen": router.seen}
            Path(out_dir, f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))

    processor = AutoProcessor.from_pretrained(model_dir)
    config = load_data_config(Path(data_dir) / "ddp.yaml")
    sizing = ImageSizing.from_processor(processor)
    train, test = load_split(config, "train", sizing), load_split(config, "test", sizing)

    def interleaved(dataset, count):
        by_source = {s: [i for i, x in enumerate(dataset["data_source"]) if x == s] for s in SOURCES}
        return dataset.select([by_source[s][i] for i in range(count) for s in SOURCES])

    # Unshuffled, 2 prompts per step x 2 generations over 2 ranks: rank 0 gets text_math, rank 1 mm_math.
    train, test = interleaved(train, STEPS), interleaved(test, 1)
    router = SeenSources()
    dump = DumpLogs()
    trainer = TriuneGRPOTrainer(
        model=model_dir,
        reward_funcs=[router],
        args=TriuneGRPOConfig(
            output_dir=str(Path(out_dir) / "run"), use_cpu=True, bf16=False, gradient_checkpointing=False,
            report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=42,
            max_completion_length=8, per_device_train_batch_size=2, num_generations=2, max_steps=STEPS,
            shuffle_dataset=False, eval_strategy="steps", eval_steps=STEPS, per_device_eval_batch_size=1,
        ),
        train_dataset=train,
        eval_dataset=test,
        processing_class=processor,
        callbacks=[DynamicIoUCallback(router), dump],
    )
    trainer.train()


@pytest.mark.slow
def test_two_ranks_log_the_same_per_source_keys(tmp_path, tiny_model_dir, sample_data_dir):
    from .conftest import write_data_config

    write_data_config(
        tmp_path / "ddp.yaml",
        sample_data_dir,
        [f"train/train_math_{name}_*.parquet" for name in ("textmath", "mmmath")],
        [f"test/test_math_{name}_*.parquet" for name in ("textmath", "mmmath")],
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(Path(__file__).resolve()), str(tiny_model_dir), str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,  # a hang (a one-sided collective) ends here
    )
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    # the layout worked: every scored batch (2 train steps, 1 eval batch) held one source, a different one per rank
    assert records[0]["seen"] == [["text_math"]] * 3 and records[1]["seen"] == [["mm_math"]] * 3
    rank0, rank1 = records[0]["logs"], records[1]["logs"]
    assert [sorted(entry) for entry in rank0] == [sorted(entry) for entry in rank1]
    train_logs = [(a, b) for a, b in zip(rank0, rank1, strict=True) if "loss" in a]
    eval_logs = [(a, b) for a, b in zip(rank0, rank1, strict=True) if "eval_loss" in a]
    assert len(train_logs) == STEPS and len(eval_logs) == 1
    for a, b in train_logs:
        for source in SOURCES:  # each rank saw one source only, both log both, with the same values
            assert a[f"num_completions/{source}"] == b[f"num_completions/{source}"] == 2
            assert a[f"response_length/{source}"] == b[f"response_length/{source}"]
    [(a, b)] = eval_logs
    for source in SOURCES:
        assert a[f"eval_num_completions/{source}"] == b[f"eval_num_completions/{source}"] == 1


if __name__ == "__main__":
    worker(*sys.argv[1:4])
