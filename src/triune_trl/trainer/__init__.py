"""The trainer: `TriuneGRPOTrainer(GRPOTrainer)`, the few overrides TRL needs (`grpo_trainer`, whose docstring lists
each one and why), and the helpers those overrides call: text-only micro-batches beside image ones
(`image_less_forwards`), a round's image tensors kept in host memory (`image_buffers`), skipped non-finite updates
(`nonfinite`), the dynamic IoU callback (`callbacks`) and the CPU-only distributed launch (`distributed`).

May import: the root's `configs`, `checks`, `errors`, and `data`, `rewards`, `monitoring`, `models`, `generation`.
Never `runs` or `cli` (they build on the trainer).
"""

__all__ = ["TriuneGRPOTrainer", "images_for_processor", "module_group"]


def __getattr__(name: str):
    """`from triune_trl.trainer import TriuneGRPOTrainer` loads the trainer (TRL's, vLLM's client: ~5 s) on first use,
    so that `trainer.callbacks` / `trainer.distributed`, which the option parser needs, come without it."""
    if name in __all__:
        from triune_trl.trainer import grpo_trainer

        return getattr(grpo_trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
