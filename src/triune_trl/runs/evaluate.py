"""Decoupled evaluation of a checkpoint: greedy decoding over a split, scored by the training router, per source.

It is the evaluation a run does every `eval_steps` (`TriuneGRPOTrainer` in eval mode: greedy, one completion per
prompt, the same per-source metrics), run on its own so any saved checkpoint can be scored after training. Beside
the tables it writes every completion (`completions.jsonl`: source, row, prompt, answer, gold, scores), because a
number that looks wrong is first checked by reading the answers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ..checks import check_data_root, check_model_path, load_processor
from ..errors import DataError

__all__ = ["evaluate_checkpoint", "register"]

logger = logging.getLogger(__name__)


def evaluate_checkpoint(
    model: str,
    data_config: str,
    split: str = "test",
    *,
    data_root: str | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 8,
    max_completion_length: int = 2048,
    iou_threshold: str = "average",
    max_samples: int | None = None,
    rescale_images: bool = True,
    dtype: str = "auto",
    use_cpu: bool | None = None,
) -> tuple[dict[str, dict[str, float]], Path, Path]:
    """Evaluate `model` on `split` of `data_config`; return the per-source table and the markdown / JSON paths.

    `iou_threshold` defaults to "average" (the release's reward-server default): a dynamic threshold follows
    training progress, which a standalone evaluation does not have. Tables go to `out_dir`, by default
    `<model>/eval_<split>` for a local checkpoint, else `eval_<split>` in the current folder.
    """
    check_model_path(model, "--model", tiny_hint=False)
    check_data_root(data_root, "--data-root")
    import torch

    from ..configs import TriuneGRPOConfig
    from ..data import ImageSizing, ReleaseRescale, load_data_config, load_split
    from ..monitoring.eval_table import per_source_table, write_completions, write_tables
    from ..rewards import RewardRouter
    from ..trainer.grpo_trainer import TriuneGRPOTrainer

    if use_cpu is None:
        use_cpu = not torch.cuda.is_available()
    if out_dir is None:
        out_dir = Path(model) / f"eval_{split}" if Path(model).is_dir() else Path(f"eval_{split}")
    processor = load_processor(model, "--model", padding_side="left", truncation_side="left")
    config = load_data_config(data_config, data_root=data_root, root_option="--data-root")
    rescale = ReleaseRescale() if rescale_images else None
    dataset = load_split(config, split, ImageSizing.from_processor(processor), rescale=rescale)
    if dataset is None:
        raise DataError(f"{data_config}: the data config lists no {split!r} files; add a `{split}:` section")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    # the row's position in the split, for completions.jsonl: TRL's eval sampler does not keep the split's order
    dataset = dataset.add_column("row", list(range(len(dataset))))
    args = TriuneGRPOConfig(
        output_dir=str(out_dir),
        report_to="none",
        use_cpu=use_cpu,
        bf16=not use_cpu,
        per_device_eval_batch_size=batch_size,
        per_device_train_batch_size=2,  # GRPOConfig requires >= 2 generations for training, which never runs
        num_generations=2,
        num_generations_eval=1,
        eval_greedy=True,
        max_completion_length=max_completion_length,
        model_init_kwargs={"dtype": dtype},
        save_strategy="no",
    )
    router = RewardRouter(iou_threshold=iou_threshold)
    # GRPOTrainer insists on a train set; evaluation never reads it, so the split itself stands in.
    trainer = TriuneGRPOTrainer(
        model=model,
        reward_funcs=[router],
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=processor,
    )
    trainer.eval_completions = []
    metrics = trainer.evaluate()
    table = per_source_table(metrics)
    meta: dict[str, Any] = {
        "model": model,
        "data_config": str(data_config),
        "split": split,
        "rows": len(dataset),
        "decoding": "greedy",
        "max_completion_length": max_completion_length,
        "iou_threshold": iou_threshold,
    }
    if not trainer.accelerator.is_main_process:
        return table, Path(out_dir) / "results.md", Path(out_dir) / "results.json"
    markdown_path, json_path = write_tables(table, out_dir, meta)
    completions_path = write_completions(trainer.eval_completions, out_dir)
    logger.info("evaluation tables written to %s and %s, completions to %s", markdown_path, json_path, completions_path)
    return table, markdown_path, json_path


def _eval(args: argparse.Namespace) -> int:
    from ..monitoring.eval_table import COMPLETIONS_FILE

    _, markdown_path, json_path = evaluate_checkpoint(
        args.model,
        args.data_config,
        args.split,
        data_root=args.data_root,
        out_dir=args.out,
        batch_size=args.batch_size,
        max_completion_length=args.max_completion_length,
        iou_threshold=args.iou_threshold,
        max_samples=args.max_samples,
    )
    if markdown_path.is_file():
        print(markdown_path.read_text(encoding="utf-8"))
        print(f"written: {markdown_path}, {json_path} and {markdown_path.parent / COMPLETIONS_FILE}", file=sys.stderr)
    return 0


def _eval_iou_threshold(value: str) -> float | str:
    from ..rewards.iou_schedule import parse_iou_threshold

    try:
        parsed = parse_iou_threshold(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if parsed == "dynamic":
        raise argparse.ArgumentTypeError("'dynamic' follows training progress; evaluate with 'average' or a number")
    return parsed


def register(commands: argparse._SubParsersAction) -> None:
    """Add `triune eval` to the top-level parser."""
    evaluate = commands.add_parser(
        "eval",
        help="greedy evaluation of a checkpoint on a split of a data config, per data source (markdown + JSON table, "
        "and completions.jsonl: every answer with its gold and scores)",
    )
    evaluate.add_argument("--model", required=True, help="checkpoint folder or Hub id (model + processor)")
    evaluate.add_argument("--data-config", required=True, help="data config YAML listing the split's files")
    evaluate.add_argument("--split", default="test", help="split of the data config to evaluate (default: test)")
    evaluate.add_argument("--data-root", default=None, help="folder the config's relative paths resolve against")
    evaluate.add_argument("--out", default=None, help="output folder of results.md, results.json and completions.jsonl "
                          "(default: MODEL/eval_SPLIT)")
    evaluate.add_argument("--batch-size", type=int, default=8, help="prompts per device per batch (default: 8)")
    evaluate.add_argument(
        "--max-completion-length", type=int, default=2048, help="new tokens per answer (default: 2048, as the paper)"
    )
    evaluate.add_argument(
        "--iou-threshold",
        default="average",
        type=_eval_iou_threshold,
        help="detection IoU threshold: a number or 'average' (default; a standalone run has no training progress "
        "for 'dynamic')",
    )
    evaluate.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N rows")
    evaluate.set_defaults(func=_eval)
