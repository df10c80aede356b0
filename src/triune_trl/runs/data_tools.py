"""`triune data ...` subcommands.

It sits in `runs/`, not in `data/`, because the image sizes it reports depend on the model family (`--family`),
which `models/` knows and `data/` may not import.

    triune data make-sample OUT                          the bundled sample set (Orsta schema)
    triune data validate PATH... [--data-config F]       every problem, one `FILE:ROW: field: message` line each
    triune data inspect FILE                             schema, per-source counts, a few rows as text
    triune data stats --data-config F                    rows per task and source, prompt and image size spreads
    triune data convert IN --to orsta OUT                any reader's rows as an Orsta parquet file

File options come from the data config entry that matches a file (`--data-config`), then from the flags
(`--format`, `--image-root`, `--verifier`, `--data-source`), which win. Image sizes are computed as training
would compute them: `--processor DIR` reads the sizing of a local processor, `--family NAME` takes a model
family's patching without one (qwen2.5-vl, the default: 28 px per token; qwen3-vl, qwen3-vl-moe, qwen3.5,
qwen3.5-moe: 32 px), and `--resize` picks the reader's resize rule.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import DataError

_RESIZE_RULES = ("release", "qwen-vl", "none")


def _make_sample(args: argparse.Namespace) -> int:
    from ..data.make_sample import make_sample_dataset

    files = make_sample_dataset(Path(args.out), seed=args.seed, train_rows=args.train_rows, test_rows=args.test_rows,
                                answer_style=args.answer_style)
    for path in files:
        print(path)
    print(f"{len(files)} parquet files written under {args.out}")
    return 0


def _sizing_and_resize(args: argparse.Namespace) -> tuple[Any, Any]:
    from ..data.images import ImageSizing, make_image_resize
    from ..models.tiny import get_family

    sizing = get_family(args.family).image_sizing()
    if args.processor:
        from transformers import AutoProcessor

        sizing = ImageSizing.from_processor(AutoProcessor.from_pretrained(args.processor))
    return sizing, make_image_resize(args.resize, args.min_pixels, args.max_pixels, factor=sizing.factor)


def _config(args: argparse.Namespace):
    from ..data.config import load_data_config

    if not args.data_config:
        return None
    if not Path(args.data_config).is_file():
        raise DataError(f"--data-config {args.data_config}: no such file; pass a data config YAML (data_configs/ has "
                        "examples)")
    return load_data_config(args.data_config, data_root=args.data_root, root_option="--data-root")


def _spec(path: str, config, args: argparse.Namespace):
    """A file's spec: the matching config entry's options, then the flags that were given."""
    from ..data.options import FileOptions, FileSpec, RewardDefaults

    spec = config.spec_for(path) if config is not None else None
    spec = spec or FileSpec(Path(path), FileOptions())
    flags: dict[str, Any] = {}
    if args.format:
        flags["format"] = args.format
    if args.image_root:
        flags["image_root"] = Path(args.image_root)
    if args.data_source:
        flags["data_source"] = args.data_source
    if args.verifier:
        flags["reward"] = (spec.options.reward or RewardDefaults()).merged({"verifier": args.verifier})
    return replace(spec, options=replace(spec.options, **flags)) if flags else spec


def _check_data_file(path: str) -> None:
    """`DataError` naming a data file that is not there, before a reader meets it (pyarrow's FileNotFoundError
    traceback, or a JSON reader's)."""
    file = Path(path).expanduser()
    if file.is_file():
        return
    what = "a folder, not a data file" if file.is_dir() else "no such file"
    hint = ("pass one file of it (e.g. its train/*.parquet), or --data-config F for a whole config" if file.is_dir()
            else "check the path; `triune data make-sample DIR` writes a sample set to try")
    raise DataError(f"{path}: {what}; {hint}")


def _specs(args: argparse.Namespace, paths: list[str]) -> list:
    """The files a command works on: the given paths, or every file of the config's selected splits."""
    config = _config(args)
    if paths:
        for path in paths:
            _check_data_file(path)
        return [_spec(path, config, args) for path in paths]
    if config is None:
        raise DataError("give data files, or --data-config F to take every file it lists")
    splits = ("train", "test") if args.split == "all" else (args.split,)
    return [_spec(str(spec.path), config, args) if _has_flags(args) else spec
            for split in splits for spec in config.file_specs(split)]


def _has_flags(args: argparse.Namespace) -> bool:
    return any((args.format, args.image_root, args.data_source, args.verifier))


def _validate(args: argparse.Namespace) -> int:
    from ..data.loader import validate_files

    specs = _specs(args, args.paths)
    sizing, resize = _sizing_and_resize(args)
    report = validate_files(specs, sizing=sizing, rescale=resize)
    for problem in report.problems:
        print(problem)
    summary = (
        f"{report.files} file(s), {report.rows} row(s), {report.distinct_specs} distinct reward spec(s) checked: "
    )
    if report.problems:
        print(summary + f"{len(report.problems)} problem(s) in {report.bad_rows} row(s); nothing was changed",
              file=sys.stderr)
        return 1
    print(summary + "no problems", file=sys.stderr)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from ..data.stats import inspect_file

    (spec,) = _specs(args, [args.path])
    sizing, resize = _sizing_and_resize(args)
    info = inspect_file(spec, sizing=sizing, rescale=resize, rows=args.rows)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    print(f"{info['file']}: {info['format']} format, {info['rows']} row(s), {info['problems']} problem(s)"
          + (" (run `triune data validate` to list them)" if info["problems"] else ""))
    print("schema:\n" + "\n".join(f"  {line}" for line in info["schema"]))
    for title in ("data_sources", "verifiers", "images_per_row"):
        print(f"{title.replace('_', ' ')}: " + ", ".join(f"{k}={v}" for k, v in info[title].items()))
    for text in info["sample"]:
        print(text)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from ..data.stats import config_stats

    specs = _specs(args, [])
    sizing, resize = _sizing_and_resize(args)
    stats = config_stats(specs, sizing=sizing, rescale=resize)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"{stats['files']} file(s): {stats['rows']} rows as trained ({stats['distinct_rows']} distinct)")
    print(f"{'task':<14} {'data_source':<28} {'rows':>8} {'share':>7}")
    for entry in stats["per_task_source"]:
        print(f"{entry['task']:<14} {entry['data_source']:<28} {entry['rows']:>8} {entry['share']:>7.1%}")
    print("images per row: " + ", ".join(f"{k}: {v}" for k, v in stats["images_per_row"].items()))
    for key in ("prompt_chars", "image_width", "image_height", "image_tokens"):
        print(f"{key:<13} " + "  ".join(f"{k}={v}" for k, v in stats[key].items()))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from ..data.convert import convert_to_orsta

    (spec,) = _specs(args, [args.input])
    sizing, resize = _sizing_and_resize(args)
    rows = convert_to_orsta(spec, args.output, sizing=sizing, rescale=resize)
    print(f"{rows} row(s) written to {args.output} (Orsta-Data-47k schema)")
    return 0


def _file_flags(parser: argparse.ArgumentParser, *, config_only: bool = False) -> None:
    """Flags every reading command shares; `config_only` commands work on a data config, not on given files."""
    parser.add_argument("--data-config", required=config_only,
                        help="data config YAML giving per-file options (format, reward, ...)")
    parser.add_argument("--data-root", help="folder the data config's paths resolve against (overrides its root)")
    if not config_only:
        parser.add_argument("--format", choices=("orsta", "omnirl", "vlm-r1", "native"),
                            help="file format (default: from the config entry, else detected)")
    else:
        parser.set_defaults(format=None)
    parser.add_argument("--image-root", help="folder relative image paths resolve against (default: the file's)")
    parser.add_argument("--verifier", help="verifier of rows without a reward spec (OmniRL, VLM-R1)")
    parser.add_argument("--data-source", help="data_source of rows without one (default: the file's stem)")
    parser.add_argument("--processor", help="local processor/model folder whose image sizing to use "
                                            "(wins over --family)")
    from ..models.tiny import DEFAULT_FAMILY, FAMILIES  # stdlib-only at import time

    parser.add_argument("--family", choices=tuple(FAMILIES), default=DEFAULT_FAMILY,
                        help="model family whose patching sizes the images when no --processor is given: qwen2.5-vl "
                             "28 px per token, the Qwen3 families 32 px, within Qwen2.5-VL's 4 to 1280 tokens per "
                             "image; a checkpoint's own token bounds (released Qwen3 processors allow more) need "
                             "--processor")
    parser.add_argument("--resize", choices=_RESIZE_RULES, default="release",
                        help="reader-side resize: release (area into [512², 2048²]), qwen-vl (qwen-vl-utils), none")
    parser.add_argument("--min-pixels", type=int, help="lower area bound of --resize (default: the rule's)")
    parser.add_argument("--max-pixels", type=int, help="upper area bound of --resize (default: the rule's)")


def register(commands: argparse._SubParsersAction) -> None:
    """Add `triune data` and its subcommands to the top-level parser."""
    data = commands.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)

    sample = data.add_parser("make-sample", help="write the bundled multi-task sample set in the Orsta-Data-47k schema")
    sample.add_argument("out", help="output folder (train/ and test/ are created inside)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--train-rows", type=int, default=24, help="rows per train file")
    sample.add_argument("--test-rows", type=int, default=4, help="rows per test file")
    sample.add_argument(
        "--answer-style", choices=("think", "direct"), default="think",
        help="think: the release's prompts (default); direct: ask for the answer alone in the verifier's form, "
        "5-15 token completions for fast RL (read with cot_prompts: false, data_configs/sample_see_direct.yaml)")
    sample.set_defaults(func=_make_sample)

    validate = data.add_parser(
        "validate", help="check every row as training would; lists every problem as FILE:ROW: field: message, "
        "exits 1 if any; changes nothing")
    validate.add_argument("paths", nargs="*", help="data files (default: every file of --data-config)")
    validate.add_argument("--split", choices=("train", "test", "all"), default="all",
                          help="with --data-config and no paths: which split's files")
    _file_flags(validate)
    validate.set_defaults(func=_validate)

    inspect = data.add_parser("inspect", help="schema, per-source counts and a few rows of one data file")
    inspect.add_argument("path", help="data file (any format)")
    inspect.add_argument("--rows", type=int, default=3, help="rows to render (default 3)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    _file_flags(inspect)
    inspect.set_defaults(func=_inspect, split="all")

    stats = data.add_parser("stats", help="rows per task and source, prompt length and image size distributions of "
                                          "a data config, as trained (weights, caps and CoT prompts applied)")
    stats.add_argument("--split", choices=("train", "test", "all"), default="train")
    stats.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _file_flags(stats, config_only=True)
    stats.set_defaults(func=_stats)

    convert = data.add_parser("convert", help="write any reader's rows as an Orsta-Data-47k parquet file "
                                              "(validated first; nothing is written if a row is bad)")
    convert.add_argument("input", help="data file (any format)")
    convert.add_argument("--to", choices=("orsta",), required=True, help="output format")
    convert.add_argument("output", help="output .parquet file")
    _file_flags(convert)
    convert.set_defaults(func=_convert, split="all")
