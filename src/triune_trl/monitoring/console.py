"""What a run prints: TRL's headline scalars on one compact line, then a per-source table, at every logging step.

A V-Triune log entry holds hundreds of keys (every per-source metric, 15 reflection words per source, every detection
sub-score); transformers' `ProgressCallback` / `PrinterCallback` print the whole dict on one line, thousands of
characters long. `ConsoleCallback` takes their place on the console only: what is logged does not change, so
`trainer_state.json` and every `report_to` backend still receive every key. Printed lines are kept to
`MAX_LINE` characters; the progress bar (with its ETA) stays, on stderr, as transformers draws it.

The table is rendered with `rich`, as TRL renders its completion samples: one row per data source with the metrics
V-Triune is about: completions (`n`), reward, accuracy, format, unverifiable completions, mean length in tokens,
share clipped at `max_completion_length`, and the IoU threshold of sources scored on boxes.
"""

from __future__ import annotations

import io
import shutil
import sys
from collections.abc import Mapping
from numbers import Real
from typing import Any

from transformers import ProgressCallback

from .per_source import split_metric_key

__all__ = ["MAX_LINE", "ConsoleCallback", "format_log", "per_source_rows"]

MAX_LINE = 200

# The scalars worth a glance at every step, in print order (short label, key); present ones are printed.
HEADLINE: tuple[tuple[str, str], ...] = (
    ("loss", "loss"),
    ("grad_norm", "grad_norm"),
    ("lr", "learning_rate"),
    ("reward", "reward"),
    ("reward_std", "reward_std"),
    ("zero_std", "frac_reward_zero_std"),
    ("accuracy", "rewards/accuracy"),
    ("format", "rewards/format"),
    ("unverifiable", "rewards/unverifiable_count"),
    ("len", "completions/mean_length"),
    ("clipped", "completions/clipped_ratio"),
    ("entropy", "entropy"),
    ("kl", "kl"),
    ("skipped", "skipped_nonfinite_updates"),
    ("runtime", "runtime"),
    ("samples/s", "samples_per_second"),
    ("train_loss", "train_loss"),
    ("train_runtime", "train_runtime"),
    ("epoch", "epoch"),
)

# Per-source table columns: (header, metric, digits); a metric a source lacks in this entry prints as "-". Two-line
# headers keep nine columns within an 80-column terminal next to a source name.
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("n", "num_completions", 0),
    ("reward", "reward", 3),
    ("accuracy", "reward_accuracy", 3),
    ("format", "reward_format", 3),
    ("unveri-\nfiable", "unverifiable_count", 0),
    ("mean\nlength", "response_length", 1),
    ("clip\nratio", "response_clip_ratio", 3),
    ("IoU\nthr.", "iou_threshold", 3),
)


def _number(value: Any, digits: int | None = None) -> str:
    if isinstance(value, bool) or not isinstance(value, Real):
        return str(value)
    if digits is not None:
        return f"{value:.{digits}f}"
    return f"{value:.4g}"


def _wrap(items: list[str], width: int = MAX_LINE, separator: str = " | ") -> list[str]:
    """Join `items` into lines no longer than `width`; an item longer than `width` is cut."""
    lines: list[str] = []
    current = ""
    for item in items:
        item = item if len(item) <= width else item[: width - 3] + "..."
        candidate = f"{current}{separator}{item}" if current else item
        if len(candidate) > width:
            lines.append(current)
            candidate = item
        current = candidate
    if current:
        lines.append(current)
    return lines


def per_source_rows(logs: Mapping[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    """{source: {metric: value}} of the per-source keys of `logs` carrying `prefix` ("" for train, "eval_")."""
    rows: dict[str, dict[str, Any]] = {}
    for key, value in logs.items():
        parts = split_metric_key(key)
        if parts is not None and parts[0] == prefix:
            rows.setdefault(parts[2], {})[parts[1]] = value
    return rows


def _headline(logs: Mapping[str, Any], prefix: str, step: int, max_steps: int) -> list[str]:
    mode = "eval" if prefix else "train"
    items = [f"step {step}/{max_steps} {mode}" if max_steps else f"step {step} {mode}"]
    for label, key in HEADLINE:
        full = key if key.startswith("train_") or key == "epoch" else prefix + key
        if full in logs:
            items.append(f"{label} {_number(logs[full])}")
    return items


def _table(rows: dict[str, dict[str, Any]], title: str, width: int, color: bool) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    columns = [column for column in COLUMNS if any(column[1] in metrics for metrics in rows.values())]
    utf8 = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "").startswith("utf8")
    table = Table(
        title=title, title_justify="left", show_edge=False, pad_edge=False, box=box.HEAVY_HEAD if utf8 else box.ASCII2
    )
    table.add_column("source", overflow="fold", min_width=10)
    for header, _, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for source in sorted(rows):
        metrics = rows[source]
        table.add_row(source, *(_number(metrics[m], d) if m in metrics else "-" for _, m, d in columns))
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=color, color_system="standard" if color else None).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def format_log(logs: Mapping[str, Any], step: int, max_steps: int = 0, *, width: int = 160, color: bool = False) -> str:
    """The console text of one log entry: the headline scalars (wrapped at `MAX_LINE`), then the per-source table.

    An eval entry (keys `eval_...`) gets the same layout from its `eval_` keys. Keys that are neither headline nor
    per-source (router sub-scores, `params/*`, TRL's min/max lengths, ...) are not printed: they are in
    `trainer_state.json` and the trackers.
    """
    prefix = "eval_" if any(key.startswith("eval_") for key in logs) else ""
    width = min(width, MAX_LINE)
    lines = _wrap(_headline(logs, prefix, step, max_steps), width)
    rows = per_source_rows(logs, prefix)
    if rows:
        mode = "eval" if prefix else "train"
        lines.append(_table(rows, f"per source, step {step} ({mode})", width, color))
    return "\n".join(lines)


def console_width() -> int:
    """The terminal's width when printing to one (at most `MAX_LINE`), else 160 columns for log files."""
    if sys.stdout.isatty():
        return min(shutil.get_terminal_size().columns, MAX_LINE)
    return 160


class ConsoleCallback(ProgressCallback):
    """transformers' progress bar (ETA included) with `format_log` instead of the printed dict of every key.

    `progress=False` (for `disable_tqdm`, where transformers would use `PrinterCallback`) prints the same text
    without bars. Only the main process prints.
    """

    def __init__(self, progress: bool = True):
        super().__init__()
        self.progress = progress

    def on_train_begin(self, args, state, control, **kwargs):
        if self.progress:
            super().on_train_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.progress:
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        text = format_log(logs, state.global_step, state.max_steps, width=console_width(), color=sys.stdout.isatty())
        if self.training_bar is not None:
            self.training_bar.write(text)  # above the bar, which is redrawn below
        else:
            print(text, flush=True)
