"""The per-source evaluation table: one row per data source, written as markdown (to read) and JSON (to compare),
and the evaluated completions themselves, one JSON line per row (`completions.jsonl`).

Input of the table is a flat metrics dict as `Trainer.evaluate()` returns it (`eval_<metric>/<data_source>` keys,
see `per_source.py`); the table keeps every per-source metric in the JSON and a readable subset in the markdown.
The last row is the unweighted mean over sources (each task counts once, however many test rows it has). The
completions are there because a number that looks wrong is first checked by reading what the model answered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..rewards.router import completion_text
from .per_source import split_metric_key

__all__ = [
    "COMPLETIONS_FILE",
    "MARKDOWN_COLUMNS",
    "completion_records",
    "macro_average",
    "per_source_table",
    "prompt_text",
    "to_markdown",
    "write_completions",
    "write_tables",
]

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
COMPLETIONS_FILE = "completions.jsonl"
IMAGE_PLACEHOLDER = "<image>"


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


def prompt_text(prompt: Any) -> str:
    """A prompt as a person reads it: plain text as it is; conversational messages as `role: text` lines, each
    image part as `<image>` where it stands (the Orsta placeholder)."""
    if isinstance(prompt, str):
        return prompt
    lines = []
    for message in prompt or []:
        content = message.get("content")
        if isinstance(content, str):
            text = content
        else:
            text = "".join(
                IMAGE_PLACEHOLDER if part.get("type") == "image" else str(part.get("text", ""))
                for part in content or []
            )
        lines.append(f"{message.get('role', 'user')}: {text}")
    return "\n".join(lines)


def completion_records(
    inputs: Sequence[Mapping[str, Any]], completions: Sequence[Any], scores: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One `completions.jsonl` record per scored completion: where it came from (data_source, row: the row's position
    in the evaluated split), what was asked and answered, the gold answer, and the router's scores.

    `scores` are the router's per-sample dicts (`final_reward`, `accuracy_reward` None when unverifiable,
    `format_reward`, `unverifiable_reason`), in the order of `inputs`.
    """
    records = []
    for row, completion, score in zip(inputs, completions, scores, strict=True):
        reward_model = row.get("reward_model") or {}
        try:
            answer = completion_text(completion)
        except TypeError:
            answer = str(completion)
        records.append(
            {
                "data_source": row.get("data_source"),
                "row": row.get("row"),
                "prompt": prompt_text(row.get("prompt")),
                "images": len(row.get("images") or row.get("image_sizes") or []),
                "completion": answer,
                "gold": reward_model.get("ground_truth") if isinstance(reward_model, Mapping) else None,
                "reward": score.get("final_reward"),
                "accuracy": score.get("accuracy_reward"),
                "format": score.get("format_reward"),
                "unverifiable": score.get("accuracy_reward") is None,
                "unverifiable_reason": score.get("unverifiable_reason"),
            }
        )
    return records


def write_completions(records: Sequence[Mapping[str, Any]], out_dir: str | Path) -> Path:
    """Write `completions.jsonl` under `out_dir`, sorted by data source and row; return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / COMPLETIONS_FILE
    ordered = sorted(records, key=lambda r: (str(r.get("data_source")), -1 if r.get("row") is None else r["row"]))
    with path.open("w", encoding="utf-8") as handle:
        for record in ordered:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
