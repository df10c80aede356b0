"""The `triune` command.

    triune train --config recipes/configs/tiny_cpu.yaml [--max_steps 10 ...]
    triune tiny-model OUT
    triune data make-sample OUT
    triune reward score --input IN.jsonl --output OUT.jsonl

Heavy imports (torch, transformers, TRL) happen inside each command so `triune --help` answers at once. Errors
this package raises on purpose (bad data, bad input lines) end the command with their message and exit code 1,
without a traceback: the message already names the file, row and field.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import TriuneError


def _cmd_train(argv: list[str]) -> int:
    from .training import make_parser, run

    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    run(script_args, training_args, model_args)
    return 0


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from .tiny import build_tiny_model, is_tiny_model_dir

    if is_tiny_model_dir(args.out) and not args.force:
        print(f"{args.out} already holds a model; pass --force to rebuild it")
        return 0
    out = build_tiny_model(args.out)
    print(f"tiny Qwen2.5-VL (model + processor) written to {out}")
    return 0


def _cmd_make_sample(args: argparse.Namespace) -> int:
    from .data.make_sample import make_sample_dataset

    files = make_sample_dataset(Path(args.out), seed=args.seed, train_rows=args.train_rows, test_rows=args.test_rows)
    for path in files:
        print(path)
    print(f"{len(files)} parquet files written under {args.out}")
    return 0


def _cmd_reward_score(args: argparse.Namespace) -> int:
    from .rewards.score_file import score_jsonl

    threshold = args.iou_threshold
    if threshold not in ("dynamic", "average"):
        threshold = float(threshold)
    count = score_jsonl(args.input, args.output, iou_threshold=threshold)
    print(f"scored {count} completions -> {args.output}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triune", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser(
        "train",
        help="run GRPO training from a YAML recipe (all TRL GRPOConfig/ModelConfig flags accepted)",
        add_help=False,
    )

    tiny = commands.add_parser("tiny-model", help="build the tiny offline Qwen2.5-VL (model + processor)")
    tiny.add_argument("out", help="output folder")
    tiny.add_argument("--force", action="store_true", help="rebuild even if OUT already holds a model")

    data = commands.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    sample = data.add_parser("make-sample", help="write the bundled multi-task sample set in the Orsta-Data-47k schema")
    sample.add_argument("out", help="output folder (train/ and test/ are created inside)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--train-rows", type=int, default=24, help="rows per train file")
    sample.add_argument("--test-rows", type=int, default=4, help="rows per test file")

    reward = commands.add_parser("reward", help="reward tools").add_subparsers(dest="reward_command", required=True)
    score = reward.add_parser("score", help="score completions offline through the same router as training")
    score.add_argument("--input", required=True, help="JSONL: completion, data_source, reward_model, ...")
    score.add_argument("--output", required=True, help="JSONL with the input fields plus every reward")
    score.add_argument(
        "--iou-threshold",
        default="dynamic",
        help="'dynamic' (uses each line's step/total_steps), 'average' or a number",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "train":
            return _cmd_train(argv[1:])
        args = build_parser().parse_args(argv)
        if args.command == "tiny-model":
            return _cmd_tiny_model(args)
        if args.command == "data":
            return _cmd_make_sample(args)
        return _cmd_reward_score(args)
    except TriuneError as error:
        print(f"triune: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
