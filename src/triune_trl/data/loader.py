"""Files of any format -> one `datasets.Dataset` of the row shape, validated, weighted, images decoded lazily.

Loading does the cheap work once and defers the expensive work to row access:

* at load time every row of every file is read, converted and checked (`rows.plan_row`): the prompt becomes TRL
  conversational messages, each image's size as the model will see it is computed from its header alone, the
  reward spec goes through the rewards registry. All problems of all files are raised together as one DataError,
  one `FILE:ROW: field: message` line each. `validate_files` runs exactly this scan and builds nothing.
* then each file's options apply: CoT instructions are appended (seeded per row), and `max_samples` / `weight`
  select rows through an indices mapping (no data is copied);
* image bytes stay in `datasets`' memory-mapped Arrow cache (parquet) or on disk (JSON formats: paths), and the
  `RowDecoder` transform decodes and resizes only the rows a DataLoader asks for.

Internally `prompt` and `reward_model` are stored as JSON strings, because Arrow would otherwise rewrite them: image
parts would gain `"text": None`, and files whose reward structs differ (math files have all-null detection
parameters) could not be concatenated. The transform turns them back into exactly the dicts of the row shape.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
from tqdm.auto import tqdm

from triune_trl.data import formats, parquet
from triune_trl.data.cot_prompts import append_to_last_turn, cot_instruction, row_rng
from triune_trl.data.images import ImageResize, ImageSizing, ReleaseRescale, load_image
from triune_trl.data.options import FileOptions, FileSpec
from triune_trl.data.prompt_length import PromptLimit, PromptTokenCounter, PromptTokens
from triune_trl.data.rows import ROW_COLUMNS, LocatedProblem, Problem, RowPlan, SpecChecker, plan_row, raise_problems
from triune_trl.errors import DataError

__all__ = [
    "FileScan",
    "RowDecoder",
    "ValidationReport",
    "iter_file_records",
    "kept_positions",
    "load_files",
    "progress_bar",
    "prompt_messages",
    "prompt_tokens",
    "resolve_format",
    "scan_files",
    "select_indices",
    "validate_files",
]

_STORED_FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "image_sizes": datasets.List(datasets.List(datasets.Value("int64"))),
        "data_source": datasets.Value("string"),
        "reward_model": datasets.Value("string"),
        "ability": datasets.Value("string"),
    }
)


class RowDecoder:
    """The `with_transform` function: stored columns -> the row shape, decoding only the rows asked for.

    Works on whatever subset of columns datasets hands it (`ds["images"]` passes one column). Identical images
    within one call are decoded once and the PIL image shared: TRL's RepeatSampler asks for each prompt
    `num_generations` times in the same batch.
    """

    def __init__(self, rescale: ImageResize | None):
        self.rescale = rescale

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = dict(batch)
        if "prompt" in batch:
            out["prompt"] = [json.loads(value) for value in batch["prompt"]]
        if "reward_model" in batch:
            out["reward_model"] = [json.loads(value) for value in batch["reward_model"]]
        if "images" in batch:
            cache: dict[Any, Any] = {}
            out["images"] = [[self._decode(image, cache) for image in images or []] for images in batch["images"]]
        return out

    def _decode(self, image: Mapping[str, Any], cache: dict[Any, Any]) -> Any:
        key = image["bytes"] if image.get("bytes") is not None else ("path", image.get("path"))
        if key not in cache:
            cache[key] = load_image(image, self.rescale)
        return cache[key]


@dataclass
class FileScan:
    """One file, read and checked: its rows' plans (when kept), their row numbers, and its problems.

    `images` holds the image references of JSON-family rows (paths); it is None for parquet, whose image bytes are
    read from the file itself when the dataset is built.
    """

    spec: FileSpec
    format: str | None
    rows: list[int] = field(default_factory=list)
    plans: list[RowPlan] = field(default_factory=list)
    images: list[list[dict[str, Any]]] | None = None
    problems: list[LocatedProblem] = field(default_factory=list)


@dataclass
class ValidationReport:
    """What `validate_files` found: how much was read, and every problem."""

    files: int
    rows: int
    distinct_specs: int
    problems: list[LocatedProblem]

    @property
    def bad_rows(self) -> int:
        return len({(p.source, p.row) for p in self.problems if p.row is not None})


def resolve_format(spec: FileSpec) -> tuple[str | None, Problem | None]:
    """The file's format: its option, or detected from the extension and first row."""
    if spec.options.format != "auto":
        return spec.options.format, None
    fmt, why = formats.detect_format(spec.path)
    return fmt, (Problem("file", why) if fmt is None else None)


def iter_file_records(spec: FileSpec, fmt: str) -> tuple[int, Iterator[tuple[int | None, dict | None, list[Problem]]]]:
    """(expected row count, iterator of (row, record, conversion problems)) for a file of a known format."""
    if fmt == "orsta":
        return parquet.parquet_rows(spec.path), parquet.iter_parquet_records(spec.path)
    rows, read_problems = formats.read_json_rows(spec.path)
    image_root = spec.options.image_root if spec.options.image_root is not None else spec.path.parent
    convert = formats.CONVERTERS[fmt]

    def generate() -> Iterator[tuple[int | None, dict | None, list[Problem]]]:
        for row, problem in read_problems:
            yield row, None, [problem]
        for row, raw in rows:
            record, problems = convert(raw, spec.path, spec.options, image_root)
            yield row, record, problems

    return len(rows), generate()


def progress_bar(total: int, desc: str) -> tqdm:
    """A row-level progress bar on stderr, silenced by the same switch as `datasets`' own bars."""
    return tqdm(total=total, desc=desc, unit="row", disable=not datasets.is_progress_bar_enabled(), leave=False)


def scan_files(
    specs: Sequence[FileSpec],
    *,
    sizing: ImageSizing,
    rescale: ImageResize | None,
    validate: bool = True,
    keep_plans: bool = True,
    checker: SpecChecker | None = None,
    desc: str = "reading data",
) -> list[FileScan]:
    """Read and check every row of every file; nothing is written anywhere."""
    checker = checker if checker is not None else SpecChecker()
    scans = []
    with progress_bar(sum(parquet.parquet_rows(s.path) for s in specs if s.path.suffix == ".parquet"), desc) as bar:
        for spec in specs:
            fmt, problem = resolve_format(spec)
            scan = FileScan(spec, fmt, images=None if fmt == "orsta" else [])
            scans.append(scan)
            if problem is not None:
                scan.problems.append(LocatedProblem(str(spec.path), None, problem))
                continue
            count, records = iter_file_records(spec, fmt)
            if fmt != "orsta":
                bar.total = (bar.total or 0) + count
                bar.refresh()
            for row, record, problems in records:
                if record is not None:
                    plan, row_problems = plan_row(record, sizing, rescale, validate=validate, checker=checker)
                    if problems and record.get("reward_model") is None:  # why there is none is already said
                        row_problems = [p for p in row_problems if p.field != "reward_model"]
                    problems = problems + row_problems
                    scan.rows.append(row)
                    if keep_plans:
                        scan.plans.append(plan)
                        if scan.images is not None:
                            scan.images.append(record.get("images") or [])
                    bar.update(1)
                scan.problems += [LocatedProblem(str(spec.path), row, p) for p in problems]
    return scans


def select_indices(n: int, options: FileOptions, key: str) -> list[int] | None:
    """Row positions after `max_samples` then `weight`, drawn from a stream seeded by (seed, file key); None: all.

    `max_samples` keeps a random subset of distinct rows in file order; `weight` w then keeps every row int(w)
    times plus a random round(frac(w) * rows) of them once more.
    """
    capped = options.max_samples is not None and options.max_samples < n
    if not capped and options.weight == 1:
        return None
    rng = random.Random(f"triune-mix:{options.seed}:{key}")
    base = sorted(rng.sample(range(n), options.max_samples)) if capped else list(range(n))
    whole = int(options.weight)
    extra = round((options.weight - whole) * len(base))
    return base * whole + (sorted(rng.sample(base, extra)) if extra else [])


def prompt_messages(scan: FileScan) -> list[list[dict[str, Any]]]:
    """The rows' prompts as trained on: with the CoT instruction of each mathverify row when the file asks for it."""
    options, out = scan.spec.options, []
    for row, plan in zip(scan.rows, scan.plans, strict=True):
        messages = plan.messages
        if options.cot_prompts:
            text = cot_instruction(plan.reward_model, row_rng(options.seed, scan.spec.key, row))
            if text is not None:
                messages = append_to_last_turn(messages, text)
        out.append(messages)
    return out


def prompt_tokens(scans: Sequence[FileScan], counter: PromptTokenCounter) -> list[list[PromptTokens]]:
    """Per file, per row: the prompt's length in tokens as the processor will produce it (no pixels decoded)."""
    return [counter.count(prompt_messages(scan), [plan.image_sizes for plan in scan.plans]) for scan in scans]


def _file_dataset(
    scan: FileScan, cache_dir: str | os.PathLike | None, dropped: set[int] | frozenset[int] = frozenset()
) -> datasets.Dataset:
    """One scanned file in stored form (ROW_COLUMNS; prompt/reward_model as JSON), its row selection applied.

    `dropped`: positions (in the file's rows) left out, after `max_samples` / `weight` drew theirs.
    """
    columns: dict[str, list] = {
        "prompt": [json.dumps(messages, ensure_ascii=False) for messages in prompt_messages(scan)],
        "image_sizes": [plan.image_sizes for plan in scan.plans],
        "data_source": [plan.data_source for plan in scan.plans],
        "reward_model": [json.dumps(plan.reward_model, ensure_ascii=False) for plan in scan.plans],
        "ability": [plan.ability for plan in scan.plans],
    }
    features = datasets.Features(_STORED_FEATURES)
    image_column = None
    if scan.images is not None:
        columns["images"], features["images"] = scan.images, parquet.IMAGE_COLUMN_TYPE
    elif parquet.has_image_column(scan.spec.path):
        image_column, why = parquet.read_image_column(scan.spec.path, cache_dir)
        if image_column is None:
            raise_problems([LocatedProblem(str(scan.spec.path), None, Problem("images", why))])
    else:
        columns["images"], features["images"] = [[] for _ in scan.plans], parquet.IMAGE_COLUMN_TYPE
    dataset = datasets.Dataset.from_dict(columns, features=features)
    if image_column is not None:
        dataset = datasets.concatenate_datasets([image_column, dataset], axis=1)
    dataset = dataset.select_columns(list(ROW_COLUMNS))
    indices = kept_positions(scan, dropped)
    return dataset if indices is None else dataset.select(indices)


def kept_positions(scan: FileScan, dropped: set[int] | frozenset[int] = frozenset()) -> list[int] | None:
    """Positions of the file's rows the run trains on, repeats included: its `max_samples` / `weight` draw, without
    the `dropped` ones (prompts over max_prompt_length). None: every row once. `triune preflight` counts with it too."""
    indices = select_indices(len(scan.plans), scan.spec.options, scan.spec.key)
    if dropped:
        indices = [i for i in (range(len(scan.plans)) if indices is None else indices) if i not in dropped]
    return indices


def load_files(
    specs: Sequence[FileSpec],
    *,
    sizing: ImageSizing,
    rescale: ImageResize | None = ReleaseRescale(),
    validate: bool = True,
    cache_dir: str | os.PathLike | None = None,
    prompt_limit: PromptLimit | None = None,
) -> datasets.Dataset:
    """Read files of any format into one Dataset of the row shape; images are decoded on row access.

    Every problem in every file is reported together in one DataError before anything trains. `cache_dir` is the
    `datasets` cache for the Arrow copy of parquet images (default: the `datasets` cache). With a `prompt_limit`,
    every row's prompt length in tokens is computed, and rows over it are dropped (counted per data source) or
    reported as `FILE:ROW` errors, as the limit says.
    """
    if not specs:
        raise DataError("no data files to load")
    scans = scan_files(specs, sizing=sizing, rescale=rescale, validate=validate)
    raise_problems([problem for scan in scans for problem in scan.problems])
    dropped: list[set[int]] = [set() for _ in scans]
    if prompt_limit is not None:
        counts = prompt_tokens(scans, prompt_limit.counter)
        report = prompt_limit.check([
            (str(scan.spec.path), scan.rows, [str(plan.data_source) for plan in scan.plans], file_counts)
            for scan, file_counts in zip(scans, counts, strict=True)
        ])
        dropped = [{k for k, tokens in enumerate(file_counts) if tokens.total > prompt_limit.max_length}
                   for file_counts in counts]
        if report.over and all(len(d) == len(scan.rows) for d, scan in zip(dropped, scans, strict=True)):
            raise DataError(f"every row is over max_prompt_length {prompt_limit.max_length}: {report.summary()}")
    parts = [_file_dataset(scan, cache_dir, drop) for scan, drop in zip(scans, dropped, strict=True)]
    # concatenate_datasets may reorder columns (it keeps the blocks of the first file's table); restore the order.
    dataset = datasets.concatenate_datasets(parts).select_columns(list(ROW_COLUMNS))
    return dataset.with_transform(RowDecoder(rescale))


def validate_files(
    specs: Sequence[FileSpec], *, sizing: ImageSizing, rescale: ImageResize | None = ReleaseRescale()
) -> ValidationReport:
    """Every problem of every row of every file, as training would find them; reads only, writes nothing."""
    checker = SpecChecker()
    scans = scan_files(specs, sizing=sizing, rescale=rescale, keep_plans=False, checker=checker, desc="validating")
    problems = [problem for scan in scans for problem in scan.problems]
    return ValidationReport(
        files=len(specs), rows=sum(len(scan.rows) for scan in scans), distinct_specs=len(checker), problems=problems
    )
