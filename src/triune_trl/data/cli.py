"""`triune data ...` subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path


def _make_sample(args: argparse.Namespace) -> int:
    from .make_sample import make_sample_dataset

    files = make_sample_dataset(Path(args.out), seed=args.seed, train_rows=args.train_rows, test_rows=args.test_rows)
    for path in files:
        print(path)
    print(f"{len(files)} parquet files written under {args.out}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `triune data` and its subcommands to the top-level parser."""
    data = commands.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)

    sample = data.add_parser("make-sample", help="write the bundled multi-task sample set in the Orsta-Data-47k schema")
    sample.add_argument("out", help="output folder (train/ and test/ are created inside)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--train-rows", type=int, default=24, help="rows per train file")
    sample.add_argument("--test-rows", type=int, default=4, help="rows per test file")
    sample.set_defaults(func=_make_sample)
