"""The per-source evaluation table: one row per data source, written as markdown (to read) and JSON (to compare).

Input is a flat metrics dict as `Trainer.evaluate()` returns it (`eval_<metric>/<data_source>` keys, see
`per_source.py`); the table keeps every per-source metric in the JSON and a readable subset in the markdown. The
last row is the unweighted mean over sources (each task counts once, however many test rows it has).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .per_source import split_metric_key

__all__ = ["MARKDOWN_COLUMNS", "macro_average", "per_source_table", "to_markdown", "write_tables"]

MARKDOWN_COLUMNS: tuple[str, ...] = (
    "num_completions",
    "reward",
    "reward_accuracy",
    "reward_format",
    "unverifiable_count",
    "response_length",
    "response_clip_ratio",
    "reflection_ratio",
)
# Columns that are counts: summed, not averaged, in the last row.
COUNT_COLUMNS = frozenset({"num_completions", "unverifiable_count"})
AVERAGE_ROW = "mean over sources"


def per_source_table(metrics: Mapping[str, Any], prefix: str = "eval_") -> dict[str, dict[str, float]]:
    """{data_source: {metric: value}} from the `<prefix><metric>/<data_source>` entries of `metrics`."""
    table: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = split_metric_key(key)
        if parts is None or parts[0] != prefix or not isinstance(value, (int, float)):
            continue
        _, metric, source = parts
        table.setdefault(source, {})[metric] = float(value)
    return dict(sorted(table.items()))


def macro_average(table: Mapping[str, Mapping[str, float]], columns: Sequence[str] = MARKDOWN_COLUMNS) -> dict:
    """Per column: the mean over the sources that have it (counts are summed)."""
    row = {}
    for column in columns:
        values = [metrics[column] for metrics in table.values() if column in metrics]
        if values:
            row[column] = sum(values) if column in COUNT_COLUMNS else sum(values) / len(values)
    return row


def _cell(column: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if column in COUNT_COLUMNS else f"{value:.4f}"


def to_markdown(table: Mapping[str, Mapping[str, float]], columns: Sequence[str] = MARKDOWN_COLUMNS) -> str:
    """A GitHub markdown table, one row per source and the mean-over-sources row last."""
    lines = [
        "| data_source | " + " | ".join(columns) + " |",
        "|---|" + "|".join("---:" for _ in columns) + "|",
    ]
    rows = {**table, AVERAGE_ROW: macro_average(table, columns)}
    for source, metrics in rows.items():
        name = f"**{source}**" if source == AVERAGE_ROW else source
        lines.append(f"| {name} | " + " | ".join(_cell(c, metrics.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_tables(
    table: Mapping[str, Mapping[str, float]], out_dir: str | Path, meta: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write `results.md` and `results.json` under `out_dir`; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = "".join(f"- {key}: `{value}`\n" for key, value in (meta or {}).items())
    markdown_path, json_path = out / "results.md", out / "results.json"
    markdown_path.write_text((header + "\n" if header else "") + to_markdown(table), encoding="utf-8")
    payload = {**(meta or {}), "sources": table, "mean_over_sources": macro_average(table)}
    json_path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return markdown_path, json_path
