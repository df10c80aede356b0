"""The trainer's console and tracker callbacks, adjusted where V-Triune's metric names need it.

Two changes to the callbacks transformers installs, made by `adjust_callbacks(trainer)` when the trainer is built:

- the console: `ProgressCallback` / `PrinterCallback` give way to `ConsoleCallback` (console.py), which prints a
  compact line and a per-source table instead of the dict of every key;
- MLflow: its file store (`file:` tracking URIs, `./mlruns`) keeps each metric as a file named after the metric, so
  `reward/d3` needs `reward` to be a folder, while TRL logs the run-wide `reward` too. MLflow then fails the whole
  batch of that step (`[Errno 20] Not a directory: .../metrics/eval_reward/d3`) and the step's metrics are lost.
  `TriuneMLflowCallback` logs a metric whose name is also a metric family as `<name>/all` (`reward/all`,
  `eval_reward/all`, `frac_reward_zero_std/all`), next to the per-source charts of its family.

Nothing else changes: `trainer_state.json`, TensorBoard, W&B and Trackio receive the keys as logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import PrinterCallback, ProgressCallback
from transformers.integrations import MLflowCallback

from .console import ConsoleCallback

__all__ = ["ALL_SUFFIX", "TriuneMLflowCallback", "adjust_callbacks", "leaf_safe_names"]

ALL_SUFFIX = "all"


def leaf_safe_names(logs: Mapping[str, Any], families: set[str] | None = None) -> dict[str, Any]:
    """`logs` with every key that is also a prefix of another key (`reward` next to `reward/d3`) renamed
    `<key>/all`. `families`, when given, collects the prefixes seen so far, so a family met in an earlier call counts.
    """
    seen = families if families is not None else set()
    for key in logs:
        parts = key.split("/")
        seen.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return {(f"{key}/{ALL_SUFFIX}" if key in seen else key): value for key, value in logs.items()}


class TriuneMLflowCallback(MLflowCallback):
    """transformers' MLflow callback with metric names that a file store can hold (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self._families: set[str] = set()

    def on_log(self, args, state, control, logs, model=None, **kwargs):
        super().on_log(args, state, control, leaf_safe_names(logs, self._families), model=model, **kwargs)


def adjust_callbacks(trainer) -> None:
    """Swap the console callbacks for `ConsoleCallback` and the MLflow callback, when present, for ours."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ConsoleCallback(progress=not trainer.args.disable_tqdm))
    if any(type(callback) is MLflowCallback for callback in trainer.callback_handler.callbacks):
        trainer.remove_callback(MLflowCallback)
        trainer.add_callback(TriuneMLflowCallback())
