"""Did a run make the model better? Per-source before/after accuracy with baselines and standard errors.

`make learn` and `benchmarks/learning.py` evaluate a checkpoint before and after V-Triune RL with `triune eval`
(greedy, test split) and hand the two `results.json` files here. This module adds what a single evaluation does
not have:

- the majority baseline of each source: the most frequent gold answer of the train split, answered to every test
  row and scored by that row's verifier (for detection: the most frequent gold box list), i.e. what a model that
  ignores the image and the question can reach;
- standard errors: accuracies are means over n test rows of scores in [0, 1], whose variance is at most p(1 - p),
  so `sqrt(p (1 - p) / n)` bounds the standard error of one accuracy (exact for 0/1 scores), and the difference of
  two evaluations on the same rows is given the independent-samples bound `sqrt(se_a^2 + se_b^2)`, which is
  conservative for paired rows.

    python -m triune_trl.runs.learning --data-config data_configs/sample_learn.yaml \\
        --before artifacts/warm_start/eval_test --after outputs/tiny_learn/eval_test
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["accuracies", "compare", "majority_baselines", "standard_error", "to_markdown"]

ACCURACY = "reward_accuracy"
COUNT = "num_completions"


def standard_error(p: float, n: int) -> float:
    """Bound on the standard error of a mean of n scores in [0, 1] whose mean is p (exact for 0/1 scores)."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n > 0 else float("nan")


def accuracies(results_json: str | Path) -> dict[str, tuple[float, int]]:
    """{data_source: (accuracy, rows)} of a `triune eval` results.json (or the folder holding it)."""
    path = Path(results_json)
    path = path / "results.json" if path.is_dir() else path
    sources = json.loads(path.read_text(encoding="utf-8"))["sources"]
    return {
        source: (float(metrics[ACCURACY]), int(metrics.get(COUNT, 0)))
        for source, metrics in sources.items()
        if ACCURACY in metrics
    }


def majority_baselines(data_config: str, data_root: str | None = None, sizing=None) -> dict[str, float]:
    """Per source: mean test accuracy of always answering the most frequent train gold (see the module docstring)."""
    from ..data import ImageSizing, load_data_config, load_split, make_image_resize
    from ..rewards import score_sample
    from .warm_start import sft_target

    config = load_data_config(data_config, data_root=data_root)
    sizing = sizing or ImageSizing()
    rescale = make_image_resize("release")
    splits = {}
    for split in ("train", "test"):
        rows = load_split(config, split, sizing, rescale=rescale)
        if rows is None:
            raise ValueError(f"{data_config}: no {split} files; the baseline needs both splits")
        splits[split] = rows.with_format(None)
    modes: dict[str, str] = {}
    train = splits["train"]
    for source in set(train["data_source"]):
        golds = Counter(
            json.loads(spec)["ground_truth"]
            for spec, s in zip(train["reward_model"], train["data_source"], strict=True)
            if s == source
        )
        modes[source] = golds.most_common(1)[0][0]
    scores: dict[str, list[float]] = {}
    test = splits["test"]
    for spec_json, sizes, source in zip(test["reward_model"], test["image_sizes"], test["data_source"], strict=True):
        spec = json.loads(spec_json)
        size = tuple(sizes[0]) if sizes else None
        answer = sft_target({**spec, "ground_truth": modes[source]}, size) if source in modes else ""
        result = score_sample(answer, spec, image_size=size, iou_threshold="average")
        scores.setdefault(source, []).append(result["accuracy_reward"] or 0.0)
    return {source: sum(values) / len(values) for source, values in sorted(scores.items())}


def compare(
    before: Mapping[str, tuple[float, int]],
    after: Mapping[str, tuple[float, int]],
    baselines: Mapping[str, float] | None = None,
    extra: Mapping[str, Mapping[str, tuple[float, int]]] | None = None,
) -> dict[str, dict[str, float]]:
    """One row per source: baseline, before, after, their difference and its standard error, extra columns."""
    rows: dict[str, dict[str, float]] = {}
    for source in sorted(set(before) & set(after)):
        (b, n_b), (a, n_a) = before[source], after[source]
        row = {"rows": float(n_a), "before": b, "after": a, "difference": a - b}
        row["difference_se"] = math.sqrt(standard_error(b, n_b) ** 2 + standard_error(a, n_a) ** 2)
        if baselines and source in baselines:
            row["baseline"] = baselines[source]
        for name, table in (extra or {}).items():
            if source in table:
                row[name] = table[source][0]
        rows[source] = row
    if rows:
        columns = {key for row in rows.values() for key in row if key != "difference_se"}
        mean = {key: sum(r[key] for r in rows.values() if key in r) / sum(key in r for r in rows.values())
                for key in columns}
        mean["difference_se"] = math.sqrt(sum(r["difference_se"] ** 2 for r in rows.values())) / len(rows)
        rows["mean over sources"] = mean
    return rows


def to_markdown(rows: Mapping[str, Mapping[str, float]], extra: Sequence[str] = ()) -> str:
    """The before/after table in percentage points."""
    columns = ["baseline", "before", "after", "difference", *extra]
    lines = [
        "| data_source | rows | " + " | ".join(columns) + " |",
        "|---|---:|" + "|".join("---:" for _ in columns) + "|",
    ]
    for source, row in rows.items():
        cells = []
        for column in columns:
            value = row.get(column)
            if value is None:
                cells.append("–")
            elif column == "difference":
                cells.append(f"{100 * value:+.1f} ± {100 * row['difference_se']:.1f}")
            else:
                cells.append(f"{100 * value:.1f}")
        n = f"{row['rows']:.0f}" if source != "mean over sources" else ""
        lines.append(f"| {source} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m triune_trl.runs.learning", description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="`triune eval` output folder (or results.json) before RL")
    parser.add_argument("--after", required=True, help="the same after RL")
    parser.add_argument("--data-config", required=True, help="the data config evaluated (for the majority baseline)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default=None, help="also write the table as JSON here")
    parser.add_argument(
        "--processor", default=None, help="model folder whose image sizing the baseline's detection boxes use"
    )
    args = parser.parse_args(argv)
    sizing = None
    if args.processor:
        from transformers import AutoProcessor

        from ..data import ImageSizing

        sizing = ImageSizing.from_processor(AutoProcessor.from_pretrained(args.processor))
    baselines = majority_baselines(args.data_config, args.data_root, sizing)
    rows = compare(accuracies(args.before), accuracies(args.after), baselines)
    print("held-out greedy accuracy (%, test split), before -> after RL; difference ± 1 standard error")
    print(to_markdown(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
