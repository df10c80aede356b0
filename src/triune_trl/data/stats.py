"""What is in a data file or a data config: `triune data inspect FILE` and `triune data stats --data-config F`.

Both read through the same scan as training (`loader.scan_files`), so what they show is what training gets: the
row shape, the image sizes as the model sees them (from image headers; no pixels are decoded), and for `stats`
the rows as trained (weights and sample caps applied, CoT instructions appended). They compute plain dicts
(`inspect_file`, `config_stats`) that the CLI prints as text or JSON.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from triune_trl.data import formats
from triune_trl.data.cot_prompts import append_to_last_turn, cot_instruction, row_rng
from triune_trl.data.images import ImageResize, ImageSizing
from triune_trl.data.loader import FileScan, scan_files, select_indices
from triune_trl.data.options import FileSpec
from triune_trl.data.rows import RowPlan

__all__ = ["config_stats", "distribution", "inspect_file", "render_row", "task_of"]

PERCENTILES = (0, 10, 50, 90, 99, 100)
_ORSTA_NAME = re.compile(r"^(?:train|test)_([A-Za-z0-9]+)_")


def distribution(values: Sequence[float]) -> dict[str, float]:
    """count, mean and the PERCENTILES of `values` (empty dict values are omitted)."""
    if not values:
        return {"count": 0}
    array = np.asarray(values, dtype=float)
    out = {"count": int(array.size), "mean": round(float(array.mean()), 1)}
    for q, value in zip(PERCENTILES, np.percentile(array, PERCENTILES), strict=True):
        out[{0: "min", 100: "max"}.get(q, f"p{q}")] = round(float(value), 1)
    return out


def task_of(spec: FileSpec, plan: RowPlan) -> str:
    """The row's task: from an Orsta file name `{split}_{task}_{source}_{num}`, else the row's ability."""
    match = _ORSTA_NAME.match(spec.path.name)
    return match.group(1) if match else (plan.ability or "-")


def _prompt_text(messages: Iterable[dict[str, Any]]) -> str:
    return "".join(part.get("text", "") for message in messages for part in message["content"])


def render_row(row: int, plan: RowPlan) -> str:
    """One row as a person reads it: turns with `<image k WxH>` markers, then the reward spec."""
    lines = [f"row {row}: data_source={plan.data_source!r} ability={plan.ability!r}"]
    image = 0
    for message in plan.messages:
        text = []
        for part in message["content"]:
            if part["type"] == "image":
                size = plan.image_sizes[image] if image < len(plan.image_sizes) else None
                text.append(f"<image {image + 1}: {size[0]}x{size[1]} as the model sees it>" if size else "<image ?>")
                image += 1
            else:
                text.append(part["text"])
        lines.append(f"  {message['role']}: " + "".join(text).replace("\n", "\n  | "))
    spec = plan.reward_model if isinstance(plan.reward_model, dict) else {}
    lines.append(
        f"  reward: verifier={spec.get('verifier')!r} accuracy_ratio={spec.get('accuracy_ratio')} "
        f"format_ratio={spec.get('format_ratio')} ground_truth={spec.get('ground_truth')!r:.200}"
    )
    return "\n".join(lines)


def _schema(spec: FileSpec, fmt: str | None) -> list[str]:
    """Columns with their types (parquet), or the keys rows carry with how many rows have each (JSON formats)."""
    if fmt == "orsta":
        schema = pq.read_schema(spec.path)
        return [f"{name}: {str(schema.field(name).type)[:160]}" for name in schema.names]
    rows, _ = formats.read_json_rows(spec.path)
    keys: Counter[str] = Counter()
    types: dict[str, set[str]] = {}
    for _, raw in rows:
        if isinstance(raw, dict):
            for key, value in raw.items():
                keys[key] += 1
                types.setdefault(key, set()).add(type(value).__name__)
    return [f"{key}: {' | '.join(sorted(types[key]))} ({count} of {len(rows)} rows)" for key, count in keys.items()]


def inspect_file(spec: FileSpec, *, sizing: ImageSizing, rescale: ImageResize | None, rows: int = 3) -> dict[str, Any]:
    """Format, schema, counts per source / verifier / image count, problem count, and the first `rows` rows."""
    (scan,) = scan_files([spec], sizing=sizing, rescale=rescale, desc="inspecting")
    plans = scan.plans
    return {
        "file": str(spec.path),
        "format": scan.format,
        "rows": len(scan.rows),
        "schema": _schema(spec, scan.format) if scan.format else [],
        "data_sources": dict(Counter(str(p.data_source) for p in plans).most_common()),
        "verifiers": dict(Counter(_verifier(p) for p in plans).most_common()),
        "images_per_row": {str(k): v for k, v in sorted(Counter(len(p.image_sizes) for p in plans).items())},
        "problems": len(scan.problems),
        "sample": [render_row(row, plan) for row, plan in zip(scan.rows[:rows], plans[:rows], strict=True)],
    }


def _verifier(plan: RowPlan) -> str:
    return str(plan.reward_model.get("verifier")) if isinstance(plan.reward_model, dict) else "-"


def _as_trained(scan: FileScan) -> list[tuple[RowPlan, str]]:
    """(plan, prompt text as trained) per row after the file's selection, CoT instruction included."""
    options, spec = scan.spec.options, scan.spec
    texts = []
    for row, plan in zip(scan.rows, scan.plans, strict=True):
        messages = plan.messages
        if options.cot_prompts:
            text = cot_instruction(plan.reward_model, row_rng(options.seed, spec.key, row))
            messages = append_to_last_turn(messages, text) if text else messages
        texts.append(_prompt_text(messages))
    indices = select_indices(len(scan.plans), options, spec.key)
    order = range(len(scan.plans)) if indices is None else indices
    return [(scan.plans[i], texts[i]) for i in order]


def config_stats(
    specs: Sequence[FileSpec], *, sizing: ImageSizing, rescale: ImageResize | None
) -> dict[str, Any]:
    """Counts per task and source, prompt length and image size distributions of the rows as trained (image tokens
    in `sizing.factor`-pixel squares: 28 for Qwen2.5-VL, 32 for Qwen3-VL / Qwen3.5)."""
    factor = sizing.factor
    scans = scan_files(specs, sizing=sizing, rescale=rescale, validate=False, desc="reading")
    by_task: Counter[tuple[str, str]] = Counter()
    lengths, per_row, widths, heights, tokens = [], Counter(), [], [], []
    for scan in scans:
        for plan, text in _as_trained(scan):
            by_task[(task_of(scan.spec, plan), str(plan.data_source))] += 1
            lengths.append(len(text))
            per_row[len(plan.image_sizes)] += 1
            for width, height in plan.image_sizes:
                widths.append(width)
                heights.append(height)
                tokens.append(width * height // (factor * factor))
    total = sum(by_task.values())
    return {
        "files": len(specs),
        "rows": total,
        "distinct_rows": sum(len(scan.rows) for scan in scans),
        "problems": sum(len(scan.problems) for scan in scans),
        "per_task_source": [
            {"task": task, "data_source": source, "rows": count, "share": round(count / total, 4) if total else 0.0}
            for (task, source), count in sorted(by_task.items())
        ],
        "prompt_chars": distribution(lengths),
        "images_per_row": {str(k): v for k, v in sorted(per_row.items())},
        "image_width": distribution(widths),
        "image_height": distribution(heights),
        "image_tokens": distribution(tokens),
    }
