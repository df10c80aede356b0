"""Render a run's TensorBoard scalars of some metric families as a PNG, one card per tag as TensorBoard lays them out.

    python local_scripts/tensorboard_png.py outputs/tiny_cpu/runs/<RUN> docs/monitoring_tensorboard.png \\
        [--family train/reward/ --family eval/reward/]

The event file is read with TensorBoard's own `EventAccumulator`, so the picture shows what TensorBoard received:
tags `train/<metric>/<source>` and `eval/<metric>/<source>` (transformers' `rewrite_logs` names), one chart per
tag, sorted by name, in the section named by the first path segment. For docs/monitoring.md; needs tensorboard and
matplotlib.
"""

from __future__ import annotations

import argparse
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log_dir", help="a folder holding events.out.tfevents.* (OUTPUT_DIR/runs/<run>)")
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--family", action="append", help="tag prefix to draw (default: train/reward/, eval/reward/)")
    parser.add_argument("--columns", type=int, default=4)
    args = parser.parse_args()
    families = args.family or ["train/reward/", "eval/reward/"]

    events = EventAccumulator(args.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    tags = sorted(tag for tag in events.Tags()["scalars"] if tag.startswith(tuple(families)))
    if not tags:
        raise SystemExit(f"{args.log_dir}: no scalar tag starts with {families}")
    rows = math.ceil(len(tags) / args.columns)
    figure, axes = plt.subplots(rows, args.columns, figsize=(3.2 * args.columns, 2.3 * rows), squeeze=False)
    for axis, tag in zip(axes.flat, tags, strict=False):
        points = events.Scalars(tag)
        axis.plot([p.step for p in points], [p.value for p in points], marker="o" if len(points) < 4 else None,
                  markersize=3, linewidth=1.4, color="#ff7043")  # fmt: skip
        axis.set_title(tag, fontsize=9)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(tags) :]:
        axis.set_visible(False)
    sections = sorted({tag.split("/")[0] for tag in tags})
    figure.suptitle(f"TensorBoard sections {', '.join(sections)}: {len(tags)} cards ({', '.join(families)})")
    figure.tight_layout()
    figure.savefig(args.out, dpi=90)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
