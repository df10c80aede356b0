"""Skipping an optimizer update whose gradient norm is NaN or infinite, with and without DeepSpeed.

Without DeepSpeed, transformers' Trainer calls `optimizer.step()` right after `_get_grad_norm`: dropping every
gradient first (`zero_grad(set_to_none=True)`) makes that step leave the weights and AdamW's moments as they are.

Under DeepSpeed that is too late and the wrong call: accelerate runs `engine.step()` inside the last micro-batch's
backward, so the update has already happened or been refused when the Trainer reads the norm, and
`DeepSpeedEngine.zero_grad()` takes no argument (it raised `TypeError` on the first non-finite norm). What skips
the update there is DeepSpeed's own check, and in DeepSpeed 0.19 it covers every dtype: ZeRO-1/2
(`DeepSpeedZeroOptimizer.step`) and ZeRO-3 (`DeepSpeedZeroOptimizer_Stage3.step`) discard a step whose global
gradient norm is not finite, clear the gradients and report the norm as inf ("OVERFLOW! Skipping step"), and the
engine then leaves the learning-rate schedule where it was. Two settings turn that check off in ZeRO-1/2: a bf16
section with `check_grad_overflow: false`, and `zero_optimization.compute_grad_norm: false`.
`check_deepspeed_config` refuses both when skipping is asked for, and `drop_update` confirms on every
non-finite step that the engine did not apply it (`was_step_applied`), so a poisoned update is never counted as a
skipped one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import UsageError


class NonFiniteUpdateError(RuntimeError):
    """An update with a non-finite gradient norm was applied although skip_nonfinite_updates asked otherwise."""


def check_deepspeed_config(config: Mapping[str, Any]) -> None:
    """`UsageError` (one line from `triune train`, the fix is a config key) if this DeepSpeed config would apply
    updates whose gradient norm is not finite."""
    bf16 = config.get("bf16") or config.get("bfloat16") or {}
    zero = config.get("zero_optimization") or {}
    if bf16.get("check_grad_overflow") is False:
        raise UsageError(
            "skip_nonfinite_updates is on but the DeepSpeed config sets bf16.check_grad_overflow: false, with which "
            "DeepSpeed applies updates whose gradients are NaN/inf; remove that key (default true) or pass "
            "--skip_nonfinite_updates false"
        )
    if zero.get("compute_grad_norm") is False:
        raise UsageError(
            "skip_nonfinite_updates is on but the DeepSpeed config sets zero_optimization.compute_grad_norm: false, "
            "so no gradient norm is checked; remove that key (default true) or pass --skip_nonfinite_updates false"
        )


def drop_update(model: torch.nn.Module) -> None:
    """Make sure the update of a step whose gradient norm is not finite changes no weight.

    `model` is what the Trainer's loop holds: a DeepSpeed engine (which has already refused the update, or raises
    `NonFiniteUpdateError` here if it did not) or a module whose gradients are dropped before `optimizer.step()`.
    """
    was_step_applied = getattr(model, "was_step_applied", None)
    if was_step_applied is None:
        model.zero_grad(set_to_none=True)
        return
    if was_step_applied():
        raise NonFiniteUpdateError(
            "DeepSpeed applied an update whose gradient norm is not finite; the weights are no longer usable. Resume "
            "from the last checkpoint, and keep DeepSpeed's gradient overflow check on (bf16.check_grad_overflow, "
            "zero_optimization.compute_grad_norm)"
        )
