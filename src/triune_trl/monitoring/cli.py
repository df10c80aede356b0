"""`triune plot`: draw a run's per-source curves (`triune eval` lives with the evaluation, in `runs/evaluate.py`)."""

from __future__ import annotations

import argparse


def _plot(args: argparse.Namespace) -> int:
    from .plots import plot_run

    print(f"written: {plot_run(args.run_dir, args.out)}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `triune plot` to the top-level parser."""
    plot = commands.add_parser(
        "plot", help="per-source reward / accuracy / length / reflection / IoU curves of a run (PNG)"
    )
    plot.add_argument("run_dir", help="a run's output_dir, a checkpoint folder, or a trainer_state.json")
    plot.add_argument("--out", default=None, help="PNG to write (default: RUN_DIR/report.png)")
    plot.set_defaults(func=_plot)
