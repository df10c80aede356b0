"""Where a run keeps its state: the newest complete `checkpoint-N` of an output folder.

Kept free of heavy imports: `triune plot` and the resume option both need it, and `triune plot` should start fast.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["last_complete_checkpoint"]

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The highest-numbered `checkpoint-N` under `output_dir` that holds its `trainer_state.json`, or None.

    `Trainer._save_checkpoint` writes `trainer_state.json` after the weights, optimizer, scheduler and RNG states, so
    a checkpoint without it was cut by a hard kill mid-save; transformers' own `get_last_checkpoint` would pick it
    and the resume would then fail on a missing file.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    complete = []
    for path in folder.iterdir():
        match = _CHECKPOINT.fullmatch(path.name)
        if match and path.is_dir() and (path / "trainer_state.json").is_file():
            complete.append((int(match.group(1)), path))
    return max(complete)[1] if complete else None
