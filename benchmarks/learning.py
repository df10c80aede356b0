"""Does a V-Triune run make the model better at seeing? Warm start, RL, held-out accuracy, and three controls.

    python benchmarks/learning.py [--work outputs/learning_bench] [--seed 0] [--test-rows 200] [--rl-steps 40]

The `make learn` pipeline with a test split large enough to measure, every stage a `triune` command in a child
process:

1. the `learn` tiny model and a sample set (`--train-rows` / `--test-rows` per source, `--seed`), plus a copy of
   the test split with every image blank (same sizes: `triune_trl.data.ablation`);
2. warm start: `triune warm-start --config recipes/configs/tiny_warm_start.yaml`;
3. RL: `triune train --config recipes/configs/tiny_learn.yaml` from the warm start (dynamic IoU), timed;
4. greedy `triune eval` on the test split of: the warm start, the RL model, the RL model on blank images (image
   ablation), the no-RL control (the warm start trained further with SFT for the RL run's wall time, same data),
   and, when the data has detection or grounding rows, an RL run with a fixed IoU threshold of 0.5 instead of
   the dynamic schedule;
5. a table per source: majority baseline, warm start, after RL, difference ± standard error
   (`triune_trl.runs.learning`), blank-image, no-RL control and fixed-IoU accuracies. Written to
   benchmarks/results/latest/learning.json and learning.md.

Budget: the stages run one after the other on the CPU; on 2 shared cores the whole benchmark takes about an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "latest"  # git-ignored (README)
TRIUNE = [sys.executable, "-m", "triune_trl.cli"]


def triune(*args: str) -> float:
    """Run one `triune` command; return its wall time in seconds."""
    start = time.monotonic()
    subprocess.run([*TRIUNE, *args], check=True, cwd=REPO)
    return time.monotonic() - start


def data_config(path: Path, root: Path) -> Path:
    """The demo's data config (data_configs/sample_learn.yaml: its sources) with its files under `root`."""
    import yaml

    config = yaml.safe_load((REPO / "data_configs" / "sample_learn.yaml").read_text())
    config["root"] = str(root)
    path.write_text(yaml.safe_dump(config))
    return path


def evaluate(model: Path, config: Path, out: Path, max_completion_length: int) -> dict[str, tuple[float, int]]:
    from triune_trl.runs.learning import accuracies

    if not (out / "results.json").is_file():
        triune("eval", "--model", str(model), "--data-config", str(config), "--out", str(out),
               "--batch-size", "32", "--max-completion-length", str(max_completion_length))
    return accuracies(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="outputs/learning_bench", help="folder for models, data and evaluations")
    parser.add_argument("--seed", type=int, default=0, help="sample data seed")
    parser.add_argument("--train-rows", type=int, default=600)
    parser.add_argument("--test-rows", type=int, default=200)
    parser.add_argument("--rl-steps", type=int, default=None, help="override tiny_learn.yaml's max_steps")
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument("--skip-controls", action="store_true", help="only warm start, RL and the image ablation")
    parser.add_argument("--results", default=str(RESULTS), help="folder for learning.json / learning.md")
    args = parser.parse_args(argv)

    from triune_trl.data.ablation import blank_image_copy
    from triune_trl.runs.learning import compare, majority_baselines, to_markdown

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model, data, blank = work / "model", work / "data", work / "blank"
    if not (model / "config.json").is_file():
        triune("tiny-model", str(model), "--preset", "learn")
    if not (data / ".complete").is_file():
        triune("data", "make-sample", str(data), "--seed", str(args.seed), "--train-rows", str(args.train_rows),
               "--test-rows", str(args.test_rows))
        (data / ".complete").touch()
        shutil.rmtree(blank, ignore_errors=True)
    if not blank.is_dir():
        blank_image_copy(data / "test", blank / "test")
        shutil.copytree(data / "train", blank / "train")
    config, blank_config = data_config(work / "data.yaml", data), data_config(work / "blank.yaml", blank)

    timings: dict[str, float] = {}
    warm = work / "warm_start"
    if not (warm / "config.json").is_file():
        timings["warm_start_s"] = triune(
            "warm-start", "--config", "recipes/configs/tiny_warm_start.yaml", "--model_name_or_path", str(model),
            "--data_config", str(config), "--output_dir", str(warm))
    steps = ["--max_steps", str(args.rl_steps)] if args.rl_steps else []
    rl = work / "rl_dynamic"
    if not (rl / "config.json").is_file():
        timings["rl_s"] = triune("train", "--config", "recipes/configs/tiny_learn.yaml", "--model_name_or_path",
                                 str(warm), "--data_config", str(config), "--output_dir", str(rl), *steps)
    rl_seconds = timings.get("rl_s") or json.loads((rl / "trainer_state.json").read_text())["log_history"][-1].get(
        "train_runtime", 0.0)
    mcl = args.max_completion_length
    columns = {"blank_after_rl": evaluate(rl, blank_config, rl / "eval_blank", mcl)}
    before = evaluate(warm, config, warm / "eval_test", mcl)
    after = evaluate(rl, config, rl / "eval_test", mcl)
    columns["blank_warm_start"] = evaluate(warm, blank_config, warm / "eval_blank", mcl)
    if not args.skip_controls:
        sft = work / "sft_control"
        if not (sft / "config.json").is_file():
            timings["sft_control_s"] = triune(
                "warm-start", "--config", "recipes/configs/tiny_warm_start.yaml", "--model_name_or_path", str(warm),
                "--data_config", str(config), "--output_dir", str(sft), "--max_train_seconds", f"{rl_seconds:.0f}",
                "--warmup_steps", "0", "--seed", "43")
        columns["no_rl_control"] = evaluate(sft, config, sft / "eval_test", mcl)
    if not args.skip_controls and any(source in before for source in ("v3det_train", "d3")):
        fixed = work / "rl_fixed_iou"
        if not (fixed / "config.json").is_file():
            timings["rl_fixed_iou_s"] = triune(
                "train", "--config", "recipes/configs/tiny_learn.yaml", "--model_name_or_path", str(warm),
                "--data_config", str(config), "--output_dir", str(fixed), "--iou_threshold", "0.5", *steps)
        columns["fixed_iou_after_rl"] = evaluate(fixed, config, fixed / "eval_test", mcl)

    from transformers import AutoProcessor

    from triune_trl.data import ImageSizing

    sizing = ImageSizing.from_processor(AutoProcessor.from_pretrained(warm))
    rows = compare(before, after, majority_baselines(str(config), sizing=sizing), columns)
    header = (
        f"Held-out greedy accuracy (%) per source, test split of `triune data make-sample --seed {args.seed}` "
        f"({args.test_rows} rows per source); difference = after RL - warm start, ± 1 standard error.\n\n"
    )
    markdown = header + to_markdown(rows, extra=tuple(columns))
    print(markdown)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "seed": args.seed, "train_rows": args.train_rows, "test_rows": args.test_rows,
        "rl_seconds": rl_seconds, "timings_s": timings, "sources": rows,
    }
    (results / "learning.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (results / "learning.md").write_text(markdown, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
