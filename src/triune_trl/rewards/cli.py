"""`triune reward ...` subcommands."""

from __future__ import annotations

import argparse
import sys

from .router import DEFAULT_TIME_LIMIT, DEFAULT_WORKERS


def _score(args: argparse.Namespace) -> int:
    if args.token_file and not args.server:
        print("triune: error: --token-file is for reward servers: add --server URL", file=sys.stderr)
        return 2
    from .iou_schedule import parse_iou_threshold
    from .score_file import score_jsonl

    count = score_jsonl(
        args.input,
        args.output,
        iou_threshold=parse_iou_threshold(args.iou_threshold),
        workers=args.workers,
        time_limit=args.time_limit,
        progress=True,
        servers=args.server,
        token_file=args.token_file,
    )
    print(f"scored {count} completions -> {args.output}", file=sys.stderr)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `triune reward` and its subcommands to the top-level parser."""
    reward = commands.add_parser("reward", help="reward tools").add_subparsers(dest="reward_command", required=True)

    score = reward.add_parser("score", help="score completions offline through the same router as training")
    score.add_argument("--input", required=True, help="JSONL: completion, data_source, reward_model, ...")
    score.add_argument("--output", required=True, help="JSONL with the input fields plus every reward")
    score.add_argument(
        "--iou-threshold",
        default="dynamic",
        help="'dynamic' (uses each line's step/total_steps), 'average' or a number",
    )
    score.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"worker processes that score (default {DEFAULT_WORKERS}; 0 scores in this process, without time limit)",
    )
    score.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT,
        help=f"seconds one completion may take before it is reported unverifiable (default {DEFAULT_TIME_LIMIT:g})",
    )
    score.add_argument(
        "--server",
        help="score on reward servers (`triune serve-rewards`) instead: base URLs separated by '|' "
        "(failover as in training; --workers and --time-limit are the servers' own then)",
    )
    score.add_argument("--token-file", help="with --server: a file holding the servers' bearer token")
    score.set_defaults(func=_score)
