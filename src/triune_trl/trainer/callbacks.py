"""Trainer callbacks that connect training progress to reward computation."""

from __future__ import annotations

from transformers import TrainerCallback


class DynamicIoUCallback(TrainerCallback):
    """Tells the reward router which step is being trained, so the dynamic IoU threshold follows progress.

    The paper's schedule is a function of `step / total_steps`. `step` is the optimizer step whose rollouts are being
    scored, 1-based as in the release's verl trainer: before optimizer step k runs (`global_step == k - 1`) the
    router is told `k`. Setting it on every step begin (not only at generation time) keeps it right after a resume
    from a checkpoint, where `global_step` starts at the saved step.
    """

    def __init__(self, router):
        self.router = router

    def _update(self, state) -> None:
        self.router.set_progress(state.global_step + 1, state.max_steps)

    def on_train_begin(self, args, state, control, **kwargs):
        self._update(state)

    def on_step_begin(self, args, state, control, **kwargs):
        self._update(state)
