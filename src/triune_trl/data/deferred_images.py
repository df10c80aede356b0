"""Images decoded once per generation round: the train DataLoader reads every column but the images, and the trainer
decodes a generation batch's images when it is about to generate from it.

Why. TRL's train DataLoader yields a whole generation batch (per-device batch × steps_per_generation rows) at every
micro-step, and its RepeatSampler repeats each generation batch steps_per_generation times; TRL generates from the
first copy and ignores the others, yet every copy went through the dataset transform, which copied each image's
bytes out of Arrow and decoded and rescaled it again (the lazy `RowDecoder` only shares identical images within one
call). transformers 5 also fetches all gradient_accumulation_steps batches of an optimizer step before its first
micro-step, so as many decoded copies were alive at once. For orsta_7b on 8 GPUs (per-device batch 8,
steps_per_generation 128) that is 128 × the decoding needed, in the main process, and ~16k decoded images per rank
held together (benchmarks/data_path.py measures it).

`DeferredImageDataset` is what the train DataLoader reads instead of the dataset: rows without the `images` column
(so nothing of an image is read) and an `ImageRef` in its place; `resolve_images` replaces the references of one
generation batch by the decoded images, reading and decoding each distinct row once through the dataset's own
`RowDecoder` (the rows of a prompt group share the same PIL images). Host memory for images is then one
generation batch's distinct images, whatever steps_per_generation is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch

IMAGE_COLUMN = "images"


@dataclass(frozen=True)
class ImageRef:
    """Stands for a row's images until its generation round: the row's index in the train dataset."""

    index: int


class DeferredImageDataset(torch.utils.data.Dataset):
    """A row-shape dataset whose rows carry an `ImageRef` instead of their images (see the module docstring)."""

    def __init__(self, dataset: datasets.Dataset):
        if IMAGE_COLUMN not in dataset.column_names:
            raise ValueError(f"DeferredImageDataset needs an {IMAGE_COLUMN!r} column, got {dataset.column_names}")
        self.dataset = dataset
        self._rows = dataset.remove_columns(IMAGE_COLUMN)  # keeps the dataset's transform for the other columns
        self._images = dataset.select_columns([IMAGE_COLUMN])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        rows = self._rows.__getitems__([int(index) for index in indices])
        for row, index in zip(rows, indices, strict=True):
            row[IMAGE_COLUMN] = ImageRef(int(index))
        return rows

    def decode(self, indices: Sequence[int]) -> dict[int, list]:
        """The decoded images of these rows, each distinct row read and decoded once, by row index."""
        unique = sorted(set(indices))
        if not unique:
            return {}
        return dict(zip(unique, self._images[unique][IMAGE_COLUMN], strict=True))


def has_image_refs(rows: Sequence[dict[str, Any]]) -> bool:
    return any(isinstance(row.get(IMAGE_COLUMN), ImageRef) for row in rows)


def resolve_images(rows: Sequence[dict[str, Any]], source: DeferredImageDataset) -> list[dict[str, Any]]:
    """`rows` with every `ImageRef` replaced by the decoded images of its row (new dicts; the others unchanged)."""
    refs = [row[IMAGE_COLUMN].index for row in rows if isinstance(row.get(IMAGE_COLUMN), ImageRef)]
    if not refs:
        return list(rows)
    decoded = source.decode(refs)
    return [
        {**row, IMAGE_COLUMN: decoded[row[IMAGE_COLUMN].index]} if isinstance(row.get(IMAGE_COLUMN), ImageRef) else row
        for row in rows
    ]
