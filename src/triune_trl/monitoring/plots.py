"""`triune plot`: per-source training curves of a run, one panel per metric and one line per data source.

Reads `log_history` from the run's `trainer_state.json`, so it needs nothing but the run folder (no tracker) and
works for any `report_to`. Uses matplotlib's Agg backend: it runs on headless training machines.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import TriuneError
from .per_source import split_metric_key
from .run_files import last_complete_checkpoint

__all__ = ["DEFAULT_PANELS", "PlotError", "find_trainer_state", "per_source_series", "plot_run"]

# (prefix, metric, panel title); eval panels are drawn only when the run evaluated.
DEFAULT_PANELS: tuple[tuple[str, str, str], ...] = (
    ("", "reward", "reward (train)"),
    ("", "reward_accuracy", "accuracy reward (train)"),
    ("", "response_length", "response length, tokens (train)"),
    ("", "reflection_ratio", "reflection ratio (train)"),
    ("", "iou_threshold", "IoU threshold (detection sources)"),
    ("eval_", "reward", "reward (eval, greedy)"),
    ("eval_", "reward_accuracy", "accuracy reward (eval, greedy)"),
)


class PlotError(TriuneError):
    """The run folder holds nothing to plot; the message says where it looked and what to do."""


def find_trainer_state(run: str | Path) -> Path:
    """`trainer_state.json` of a run: the file itself, `RUN/trainer_state.json`, or the newest complete checkpoint's."""
    path = Path(run)
    if path.is_file():
        return path
    if (path / "trainer_state.json").is_file():
        return path / "trainer_state.json"
    checkpoint = last_complete_checkpoint(path)
    if checkpoint is not None:
        return checkpoint / "trainer_state.json"
    raise PlotError(
        f"{path}: no trainer_state.json (looked in the folder and its checkpoint-N folders); point at a run's "
        "output_dir (saved by `triune train`) or at one of its checkpoint folders"
    )


def per_source_series(
    log_history: Sequence[Mapping[str, Any]], prefix: str, metric: str
) -> dict[str, tuple[list[int], list[float]]]:
    """{source: (steps, values)} of `<prefix><metric>/<source>` over the log history, in step order."""
    series: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for entry in log_history:
        step = entry.get("step")
        for key, value in entry.items():
            parts = split_metric_key(key)
            if parts is None or parts[:2] != (prefix, metric) or not isinstance(value, (int, float)):
                continue
            if step is None or math.isnan(value):
                continue
            steps, values = series[parts[2]]
            steps.append(int(step))
            values.append(float(value))
    return dict(sorted(series.items()))


def plot_run(run: str | Path, out: str | Path | None = None, panels=DEFAULT_PANELS) -> Path:
    """Draw the per-source panels of a run into a PNG (default `RUN/report.png`); return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    state_path = find_trainer_state(run)
    try:
        history = json.loads(state_path.read_text(encoding="utf-8"))["log_history"]
    except (OSError, ValueError, KeyError) as exc:
        raise PlotError(f"{state_path}: not a readable trainer_state.json with a log_history ({exc})") from exc
    drawn = [(title, per_source_series(history, prefix, metric)) for prefix, metric, title in panels]
    drawn = [(title, series) for title, series in drawn if series]
    if not drawn:
        raise PlotError(
            f"{state_path}: the log history has no per-source metrics (`<metric>/<data_source>` keys); was the run "
            "trained with TriuneGRPOTrainer and logging_steps set?"
        )
    sources = sorted({source for _, series in drawn for source in series})
    colors = plt.get_cmap("tab20" if len(sources) > 10 else "tab10")
    color_of = {source: colors(index % colors.N) for index, source in enumerate(sources)}

    columns = 2 if len(drawn) > 1 else 1
    rows = math.ceil(len(drawn) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(7 * columns, 3.4 * rows), squeeze=False)
    for axis, (title, series) in zip(axes.flat, drawn, strict=False):
        for source, (steps, values) in series.items():
            axis.plot(steps, values, color=color_of[source], marker="o" if len(steps) <= 30 else None,
                      markersize=3, linewidth=1.4, label=source)
        axis.set_title(title, fontsize=11)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(drawn):]:
        axis.set_visible(False)
    handles = [plt.Line2D([], [], color=color_of[source], linewidth=2) for source in sources]
    figure.legend(handles, sources, loc="center left", bbox_to_anchor=(1.0, 0.5), title="data_source", fontsize=9)
    figure.suptitle(f"{Path(run).name}: per-source metrics", fontsize=13)
    figure.tight_layout()
    if out is None:
        out = Path(run) / "report.png" if Path(run).is_dir() else state_path.parent / "report.png"
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return out_path
