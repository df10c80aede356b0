"""Read Orsta-Data-47k parquet files into the one row shape (docs/architecture.md).

Orsta rows already are records (`rows.py`): `prompt` is `[{role, content}]` with `<image>` placeholders, `images`
holds `{bytes, path}` structs, `reward_model` is the reward spec. This module streams them out of a file with
pyarrow (`parquet.py`, which the data-config loader reads parquet through too).

`load_orsta_files` and `row_from_orsta` are the reader's direct entry points; data configs go through
`loader.load_files`, which reads every format the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets

from triune_trl.data.images import ImageResize, ImageSizing, ReleaseRescale, load_image
from triune_trl.data.loader import load_files
from triune_trl.data.options import FileOptions, FileSpec
from triune_trl.data.parquet import (
    ORSTA_COLUMNS,
    REQUIRED_COLUMNS,
    has_image_column,
    iter_parquet_records,
    parquet_rows,
    read_image_column,
)
from triune_trl.data.rows import (
    IMAGE_PLACEHOLDER,
    ROW_COLUMNS,
    Problem,
    count_image_parts,
    messages_from_prompt,
    plan_row,
    raise_problems,
)
from triune_trl.errors import DataError

__all__ = [
    "IMAGE_PLACEHOLDER",
    "ORSTA_COLUMNS",
    "REQUIRED_COLUMNS",
    "ROW_COLUMNS",
    "Problem",
    "count_image_parts",
    "has_image_column",
    "iter_parquet_records",
    "load_orsta_files",
    "messages_from_prompt",
    "parquet_rows",
    "raise_problems",
    "read_image_column",
    "row_from_orsta",
]

def row_from_orsta(
    record: Mapping[str, Any],
    sizing: ImageSizing,
    rescale: ImageResize | None = ReleaseRescale(),
    *,
    validate: bool = True,
) -> dict[str, Any]:
    """One Orsta record (images as bytes, paths, PIL images or {bytes, path}) -> one row of the row shape.

    The same conversion the dataset applies, in one call; raises DataError (source `<record>`) on problems.
    """
    plan, problems = plan_row(record, sizing, rescale, validate=validate)
    raise_problems([("<record>", None, p) for p in problems])
    images = [load_image(image, rescale) for image in record.get("images") or []]
    return {
        "prompt": plan.messages,
        "images": images,
        "image_sizes": plan.image_sizes,
        "data_source": plan.data_source,
        "reward_model": dict(plan.reward_model) if plan.reward_model is not None else None,
        "ability": plan.ability,
    }


def load_orsta_files(
    paths: Iterable[str | os.PathLike],
    *,
    sizing: ImageSizing,
    rescale: ImageResize | None = ReleaseRescale(),
    validate: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """Read Orsta parquet files as they are (no weighting, no CoT prompts) into one Dataset of the row shape.

    Images are decoded on row access. Every problem in every file is reported together in one DataError before
    anything trains. `cache_dir` is the `datasets` cache for the Arrow copy of the images (default: its cache).
    """
    specs = [FileSpec(Path(path), FileOptions(format="orsta")) for path in paths]
    if not specs:
        raise DataError("no data files were given to load_orsta_files")
    return load_files(specs, sizing=sizing, rescale=rescale, validate=validate, cache_dir=cache_dir)
