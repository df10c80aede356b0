"""`triune eval` and `triune plot`: score a checkpoint per source, draw a run's per-source curves."""

from __future__ import annotations

import argparse
import sys


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint

    _, markdown_path, json_path = evaluate_checkpoint(
        args.model,
        args.data_config,
        args.split,
        data_root=args.data_root,
        out_dir=args.out,
        batch_size=args.batch_size,
        max_completion_length=args.max_completion_length,
        iou_threshold=args.iou_threshold,
        max_samples=args.max_samples,
    )
    if markdown_path.is_file():
        print(markdown_path.read_text(encoding="utf-8"))
        print(f"written: {markdown_path} and {json_path}", file=sys.stderr)
    return 0


def _eval_iou_threshold(value: str) -> float | str:
    from ..rewards.iou_schedule import parse_iou_threshold

    try:
        parsed = parse_iou_threshold(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if parsed == "dynamic":
        raise argparse.ArgumentTypeError("'dynamic' follows training progress; evaluate with 'average' or a number")
    return parsed


def _plot(args: argparse.Namespace) -> int:
    from .plots import plot_run

    print(f"written: {plot_run(args.run_dir, args.out)}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `triune eval` and `triune plot` to the top-level parser."""
    evaluate = commands.add_parser(
        "eval",
        help="greedy evaluation of a checkpoint on a split of a data config, per data source (markdown + JSON table)",
    )
    evaluate.add_argument("--model", required=True, help="checkpoint folder or Hub id (model + processor)")
    evaluate.add_argument("--data-config", required=True, help="data config YAML listing the split's files")
    evaluate.add_argument("--split", default="test", help="split of the data config to evaluate (default: test)")
    evaluate.add_argument("--data-root", default=None, help="folder the config's relative paths resolve against")
    evaluate.add_argument("--out", default=None, help="output folder (default: MODEL/eval_SPLIT)")
    evaluate.add_argument("--batch-size", type=int, default=8, help="prompts per device per batch (default: 8)")
    evaluate.add_argument(
        "--max-completion-length", type=int, default=2048, help="new tokens per answer (default: 2048, as the paper)"
    )
    evaluate.add_argument(
        "--iou-threshold",
        default="average",
        type=_eval_iou_threshold,
        help="detection IoU threshold: a number or 'average' (default; a standalone run has no training progress "
        "for 'dynamic')",
    )
    evaluate.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N rows")
    evaluate.set_defaults(func=_eval)

    plot = commands.add_parser(
        "plot", help="per-source reward / accuracy / length / reflection / IoU curves of a run (PNG)"
    )
    plot.add_argument("run_dir", help="a run's output_dir, a checkpoint folder, or a trainer_state.json")
    plot.add_argument("--out", default=None, help="PNG to write (default: RUN_DIR/report.png)")
    plot.set_defaults(func=_plot)
