"""Reading Orsta-format parquet files: the file-level checks, the footer's row count, records streamed a few hundred
rows at a time with pyarrow (validation never holds a file in memory and writes nothing), and the `images` column
as a memory-mapped `datasets` column whose bytes are decoded only on row access.

Both the Orsta reader (`orsta.py`) and the data-config loader (`loader.py`) read parquet through this module, so
neither imports the other for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from triune_trl.data.rows import Problem

REQUIRED_COLUMNS = ("prompt", "data_source", "reward_model")
ORSTA_COLUMNS = ("prompt", "images", "data_source", "reward_model", "ability")
IMAGE_COLUMN_TYPE = datasets.List(datasets.Image(decode=False))
_SCAN_BATCH = 256


def _is_image_list(arrow_type: pa.DataType) -> bool:
    """A list of `datasets.Image` structs ({bytes, path}), as Hugging Face `datasets` writes an images column."""
    if not (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)):
        return False
    item = arrow_type.value_type
    if pa.types.is_null(item):  # a text-only file written with inferred types: lists that are always empty
        return True
    return pa.types.is_struct(item) and {item.field(i).name for i in range(item.num_fields)} >= {"bytes", "path"}


def _open(path: Path) -> tuple[pq.ParquetFile | None, list[Problem]]:
    """The parquet file, or the file-level problems that stop it from being read as Orsta data."""
    if path.suffix != ".parquet":
        return None, [Problem("file", "not a .parquet file (this reader reads Orsta parquet files)")]
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - missing file, not parquet, permissions: all reported the same way
        return None, [Problem("file", f"cannot read as parquet: {type(exc).__name__}: {exc}")]
    schema = parquet.schema_arrow
    problems = [Problem(c, "column missing from the file") for c in REQUIRED_COLUMNS if c not in schema.names]
    if "images" in schema.names and not _is_image_list(schema.field("images").type):
        problems.append(
            Problem("images", f"column type {schema.field('images').type} is not a list of images {{bytes, path}}")
        )
    return (None if problems else parquet), problems


def has_image_column(path: Path) -> bool:
    """Whether the parquet file has an `images` column holding images (text-only files may have none, or nulls)."""
    schema = pq.read_schema(path)
    return "images" in schema.names and not pa.types.is_null(schema.field("images").type.value_type)


def parquet_rows(path: Path) -> int:
    """Row count from the parquet footer (0 if unreadable: the scan reports why)."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # noqa: BLE001
        return 0


def iter_parquet_records(path: Path) -> Iterator[tuple[int | None, dict[str, Any] | None, list[Problem]]]:
    """(row, record, problems) for every row of an Orsta parquet file; row None for problems of the whole file."""
    parquet, problems = _open(path)
    if parquet is None:
        yield None, None, problems
        return
    columns = [c for c in ORSTA_COLUMNS if c in parquet.schema_arrow.names]
    row = 0
    for batch in parquet.iter_batches(batch_size=_SCAN_BATCH, columns=columns):
        for record in batch.to_pylist():
            yield row, record, []
            row += 1


def read_image_column(path: Path, cache_dir: str | os.PathLike | None) -> tuple[datasets.Dataset | None, str]:
    """The file's `images` column as a memory-mapped Dataset (bytes undecoded), or (None, why)."""
    try:
        # Declared at read time, not cast afterwards: casting a list-of-images column rewrites every image's bytes.
        dataset = datasets.Dataset.from_parquet(
            str(path), columns=["images"], features=datasets.Features({"images": IMAGE_COLUMN_TYPE}),
            cache_dir=cache_dir,
        )
    except Exception as exc:  # noqa: BLE001 - a column of the wrong type fails the cast; report, don't crash
        return None, f"cannot read the images column: {type(exc).__name__}: {exc}"
    return dataset, ""
