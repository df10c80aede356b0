"""The `triune` command.

    triune train --config recipes/configs/tiny_cpu.yaml [--max_steps 10 ...]
    triune preflight --config recipes/configs/orsta_7b.yaml [--num-processes 8] [overrides]
    triune tiny-model OUT [--preset learn] [--family qwen3-vl]
    triune warm-start --config recipes/configs/tiny_warm_start.yaml
    triune pretrain --config recipes/configs/tiny_see_describe.yaml (one stage; make pretrain runs all three)
    triune data make-sample OUT
    triune reward score --input IN.jsonl --output OUT.jsonl
    triune serve-rewards --port 8192 --workers 4 [--token-file F]
    triune vllm-serve --model MODEL [--port 8000 --max_model_len 10240 ...]

Each package registers its own subcommands (`server/cli.py`, `monitoring/cli.py`, and `runs/` for the rest);
this module only assembles them.
Heavy imports (torch, transformers, TRL) happen inside each command so `triune --help` answers at once, and the
recipe commands check the paths they name first (`checks.check_recipe_paths`), so a missing model or data folder is
one line in about a second. Errors this package raises on purpose (bad data, bad input lines) end the command with
their message and exit code 1, without a traceback: the message already names the file, row and field.
"""

from __future__ import annotations

import argparse
import sys

from .checks import SuggestingArgumentParser, end_launched_run
from .errors import TriuneError
from .monitoring.notices import install as quiet_known_notices


def _train(argv: list[str]) -> int:
    from .checks import check_recipe_paths

    check_recipe_paths(argv)  # a missing model or data folder: one line before TRL is imported
    from .runs.train import parse_args, run

    script_args, training_args, model_args = parse_args(argv)
    run(script_args, training_args, model_args)
    return 0


def _warm_start(argv: list[str]) -> int:
    from .checks import check_recipe_paths, parse_recipe_args

    check_recipe_paths(argv)
    from .runs.warm_start import make_parser, run

    script_args, training_args, model_args = parse_recipe_args(make_parser(), argv, "triune warm-start")
    run(script_args, training_args, model_args)
    return 0


def _pretrain(argv: list[str]) -> int:
    from .checks import check_recipe_paths, parse_recipe_args

    check_recipe_paths(argv, roots=())  # the rows are generated: no data root
    from .runs.pretrain import make_parser, run

    script_args, training_args, model_args = parse_recipe_args(make_parser(), argv, "triune pretrain")
    run(script_args, training_args, model_args)
    return 0


def _preflight(argv: list[str]) -> int:
    from .runs.preflight import run_preflight

    return run_preflight(argv)


def _tiny_model(args: argparse.Namespace) -> int:
    from .models.tiny import PRESETS, build_tiny_model, is_tiny_model_dir

    if is_tiny_model_dir(args.out) and not args.force:
        print(f"{args.out} already holds a model; pass --force to rebuild it")
        return 0
    out = build_tiny_model(args.out, PRESETS[args.preset], family=args.family)
    print(f"tiny {args.family} (model + processor) written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .generation.serve import register as register_vllm_serve
    from .monitoring.cli import register as register_monitoring
    from .runs.data_tools import register as register_data
    from .runs.evaluate import register as register_evaluation
    from .runs.score_file import register as register_rewards
    from .server.cli import register as register_server

    parser = SuggestingArgumentParser(prog="triune", description="V-Triune on TRL: train, data, rewards, tiny model.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "train",
        help="GRPO training from a YAML recipe; every TriuneScriptArguments/GRPOConfig/ModelConfig flag is accepted "
        "(`triune train --help` lists them)",
        add_help=False,
    )
    commands.add_parser(
        "pretrain",
        help="one stage of the tiny VLM's staged pretraining (TRL SFTTrainer on rows generated on the fly) from a "
        "YAML recipe; every PretrainArguments/SFTConfig/ModelConfig flag is accepted",
        add_help=False,
    )
    commands.add_parser(
        "warm-start",
        help="supervised warm start (TRL SFTTrainer) from a YAML recipe; every WarmStartArguments/SFTConfig/"
        "ModelConfig flag is accepted",
        add_help=False,
    )
    commands.add_parser(
        "preflight",
        help="check a recipe before renting the cluster: data, prompt tokens per source, batch geometry, host memory "
        "for images, reward and vLLM servers; exit 1 on anything that would stop the run (no GPU, no weights)",
        add_help=False,
    )
    from .models.tiny import DEFAULT_FAMILY, FAMILIES

    tiny = commands.add_parser(
        "tiny-model", help="build a tiny offline Qwen VLM (model + processor), Qwen2.5-VL unless --family says"
    )
    tiny.add_argument("out", help="output folder")
    tiny.add_argument("--force", action="store_true", help="rebuild even if OUT already holds a model")
    tiny.add_argument(
        "--preset",
        choices=("test", "learn", "see"),
        default="test",
        help="test: ~0.6M parameters, 4-16 vision tokens (tests, tiny_cpu.yaml); learn: the larger model of issue 14, "
        "64 vision tokens per image; see: the learn sizes at 112 px, 16 vision tokens (make pretrain)",
    )
    tiny.add_argument(
        "--family",
        choices=tuple(FAMILIES),
        default=DEFAULT_FAMILY,
        help="model family: its processor (patch size, mean/std), TRL's copy of its chat template and its model class "
        "(heads 32 wide; Qwen3.5's linear-attention heads 64)",
    )
    tiny.set_defaults(func=_tiny_model)
    register_data(commands)
    register_rewards(commands)
    register_evaluation(commands)
    register_monitoring(commands)
    register_server(commands)
    register_vllm_serve(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_known_notices()  # before any command imports the libraries that log them
    try:
        if argv and argv[0] == "train":
            return _train(argv[1:])
        if argv and argv[0] == "preflight":
            return _preflight(argv[1:])
        if argv and argv[0] == "warm-start":
            return _warm_start(argv[1:])
        if argv and argv[0] == "pretrain":
            return _pretrain(argv[1:])
        if argv and argv[0] == "vllm-serve":
            from .generation.serve import serve

            return serve(argv[1:])
        SuggestingArgumentParser.argv = argv  # every (sub)parser's error then names the closest known option
        args = build_parser().parse_args(argv)
        return args.func(args)
    except TriuneError as error:
        end_launched_run(error, "triune")  # under a launcher: one line per node, then ends this rank
        print(f"triune: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
