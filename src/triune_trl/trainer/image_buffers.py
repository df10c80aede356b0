"""Image tensors of a generation batch kept in host memory between their generation and their micro-batch.

TRL generates once per generation round and buffers the round's inputs, image tensors included, on the
accelerator for all steps_per_generation micro-steps. At the Orsta geometry that is far more than the 2 GB per
rank this project allows itself: per rank a round is 1024 completions (per-device batch 8 × steps_per_generation
128), each carrying its prompt's `pixel_values` (TRL processes every completion's prompt), so 2.9 GiB in bf16 at
the 512² floor, 15 GiB for a mix of photo sizes and 48 GiB at 2048² (benchmarks/data_path.py, from the Qwen2.5-VL
processor's patch arithmetic, checked against the processor). The trainer
moves a round's buffered image tensors to host memory right after generating (`offload`), and each micro-batch's
back to the accelerator when it is taken (`onload`), so during the accumulation window the accelerator holds one
micro-batch's images at a time. Not during generation and scoring: TRL 1.16 processes the whole round's prompts and
moves their `pixel_values` to the accelerator in `_generate_and_score_completions`, so the peak is unchanged; bounding
it needs the round processed and scored in chunks inside TRL. Only image tensors move: ids, masks and advantages
are small.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

IMAGE_TENSOR_KEYS = ("pixel_values", "pixel_values_videos")
HOST = torch.device("cpu")


def move_image_tensors(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A copy of `batch` whose image tensors are on `device`; every other value is the same object."""
    return {
        key: value.to(device) if key in IMAGE_TENSOR_KEYS and isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }


def offload(buffered: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A generation round's buffered micro-batches with their image tensors in host memory."""
    return [move_image_tensors(batch, HOST) for batch in buffered]


def onload(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """One micro-batch with its image tensors back on the accelerator, for its forward and backward pass."""
    return move_image_tensors(batch, device)
