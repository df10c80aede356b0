"""Test-only driver: a 2-process DeepSpeed ZeRO-3 run with `async_rollouts` against a running `triune vllm-serve`.

Launched by tests/test_vllm_server.py under `accelerate launch --config_file local_scripts/zero3.yaml
--num_processes 2` (CPU, gloo) with the options of `python recipes/grpo_triune.py` (the server recipe, read by the
same parser). It builds the trainer as the tests of that module do, with a reward that differs between completions
(`text_hash_reward`): the tiny model scores 0 on every real task at first, and without an advantage the weights
would not move, which would leave the log-prob gap to the generating weights unchecked.
"""

from __future__ import annotations

import sys

from transformers import AutoProcessor
from zero3_families_run import text_hash_reward

from triune_trl.data import ImageSizing, load_data_config, load_split
from triune_trl.runs.train import make_parser
from triune_trl.trainer import TriuneGRPOTrainer
from triune_trl.trainer.distributed import apply_cpu_distributed_shim


def main(argv: list[str]) -> None:
    apply_cpu_distributed_shim()
    script_args, args, model_args = make_parser().parse_args_and_config(argv)
    args.model_init_kwargs = {"dtype": "float32"}
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
    rows = load_split(load_data_config(script_args.data_config), "train", ImageSizing.from_processor(processor))
    trainer = TriuneGRPOTrainer(model=model_args.model_name_or_path, reward_funcs=[text_hash_reward], args=args,
                                train_dataset=rows, processing_class=processor)
    trainer.train()
    trainer.save_state()


if __name__ == "__main__":
    main(sys.argv[1:])
