"""Exceptions that carry enough context for a user to fix their input without reading a traceback, and the wording
they share: `fit` (a message on one printed line of at most 200 characters) and `builder` (the command that builds a
folder of this project, for a message about one that is missing). Standard library only: every package imports it.
"""

from __future__ import annotations

import os
from pathlib import Path


class TriuneError(Exception):
    """Base class for every error this package raises on purpose."""


class DataError(TriuneError):
    """A data file, row or field is unusable. The message names file, row and field and says what to do."""


class RewardSpecError(TriuneError):
    """A `reward_model` struct cannot be scored: `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InputLineError(TriuneError):
    """A line of a JSONL input file is malformed; `line` is 1-based."""

    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message


class UsageError(TriuneError):
    """A command-line option, recipe key or launch setting is wrong; the message names it and says what to pass."""


# What builds each folder the recipes and data configs read, by its last two path parts (the Makefile's targets;
# `{path}` is the path as the user gave it). tests/test_errors.py checks them against the Makefile and the recipes.
BUILDERS = {
    "artifacts/tiny-qwen2.5-vl": "triune tiny-model {path}",
    "artifacts/tiny-qwen2.5-vl-learn": "triune tiny-model {path} --preset learn",
    "artifacts/tiny-qwen2.5-vl-see": "triune tiny-model {path} --preset see",
    "artifacts/warm_start": "triune warm-start --config recipes/configs/tiny_warm_start.yaml",
    "artifacts/see_describe": "triune pretrain --config recipes/configs/tiny_see_describe.yaml",
    "artifacts/see_bridge": "triune pretrain --config recipes/configs/tiny_see_bridge.yaml",
    "checkpoints/tiny-see": "make pretrain",
    "artifacts/sample_data": "triune data make-sample {path}",
    "artifacts/sample_learn": "triune data make-sample {path} --seed 0 --train-rows 600 --test-rows 60",
}
_BUILD_NOTES = {"artifacts/warm_start": "`make learn` runs it first"}
MESSAGE_LIMIT = 176  # an error line is at most 200 characters with its longest prefix ("sft_warm_start: error: ")


def fit(*wordings: str) -> str:
    """The first wording within MESSAGE_LIMIT characters, else the last (shortest) one.

    Why: a message names paths a person typed, whose length is theirs; the most helpful wording is kept when it fits
    on one printed line of at most 200 characters, and a shorter one (the path named once) when it does not.
    """
    return next((wording for wording in wordings if len(wording) <= MESSAGE_LIMIT), wordings[-1])


def builder(name: str | os.PathLike) -> str | None:
    """`build it: `COMMAND`` for a folder of this project that `name` ends in (`BUILDERS`), else None."""
    key = "/".join(Path(name).parts[-2:])
    if key not in BUILDERS:
        return None
    note = f" ({_BUILD_NOTES[key]})" if key in _BUILD_NOTES else ""
    return f"build it: `{BUILDERS[key].format(path=name)}`{note}"


def missing_data_config_root(config: str | os.PathLike, root: str | os.PathLike, option: str,
                             split: str | None = None) -> str:
    """The one line for a data config whose `root` folder does not exist: its builder, or what to change."""
    shown = os.path.normpath(root)
    what = f"no such folder, so each {split} path matches no file" if split else "no such folder"
    hint = builder(shown)
    if hint:
        return f"{config}: root {shown}: {what}; {hint}"
    return fit(f"{config}: root {shown}: {what}; fix `root` in the data config, or pass {option} to point elsewhere",
               f"{config}: root {shown}: {what}; fix `root`, or pass {option}")
