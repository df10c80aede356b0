"""Per-file options of a data config: how a file is read, weighed, and what reward spec its rows get.

These are plain frozen dataclasses so that readers, the loader and the CLI share one description of "a file and
what to do with it" (`FileSpec`) without depending on YAML: `config.py` builds them from a data config, the
`triune data` commands from their flags, and `load_orsta_files` from nothing but the paths.

Formats without a reward spec (OmniRL JSON, VLM-R1 JSONL) get one from `RewardDefaults`: the verifier, both ratios,
the verifier parameters and a template that turns the file's raw answer into the verifier's formatted gold
(`\\boxed{4}` for mathverify, an `<answer>` block for detection, as in Orsta-Data-47k).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "ANSWER_SLOT",
    "FORMATS",
    "DEFAULT_GOLD_TEMPLATES",
    "FileOptions",
    "FileSpec",
    "RewardDefaults",
]

FORMATS = ("auto", "orsta", "omnirl", "vlm-r1", "native")
ANSWER_SLOT = "{answer}"
# How Orsta-Data-47k formats its gold per verifier; any other verifier gets the raw answer.
DEFAULT_GOLD_TEMPLATES = {
    "mathverify": "\\boxed{" + ANSWER_SLOT + "}",
    "detection": "<answer>\n" + ANSWER_SLOT + "\n</answer>",
}
REWARD_KEYS = ("verifier", "accuracy_ratio", "format_ratio", "verifier_parm", "ground_truth")


@dataclass(frozen=True)
class RewardDefaults:
    """The reward spec given to rows of a format that carries none.

    `ground_truth` is a template in which the literal `{answer}` is replaced by the row's answer (nothing else is
    interpreted, so LaTeX braces need no escaping); None means the verifier's Orsta formatting
    (`DEFAULT_GOLD_TEMPLATES`). An answer that already starts like the template (a solution that is already
    `\\boxed{...}`) is kept as it is.
    """

    verifier: str | None = None
    accuracy_ratio: float = 1.0
    format_ratio: float = 0.0
    verifier_parm: Mapping[str, Any] | None = field(default=None, hash=False, compare=True)
    ground_truth: str | None = None

    def merged(self, override: Mapping[str, Any] | None) -> RewardDefaults:
        """These defaults with the fields `override` sets (keys of REWARD_KEYS; others are ignored)."""
        if not override:
            return self
        return replace(self, **{key: value for key, value in override.items() if key in REWARD_KEYS})

    def gold(self, answer: str) -> str:
        """The formatted ground truth for a raw answer."""
        template = self.ground_truth
        if template is None:
            template = DEFAULT_GOLD_TEMPLATES.get(self.verifier or "", ANSWER_SLOT)
        prefix = template.split(ANSWER_SLOT, 1)[0].strip()
        if prefix and answer.lstrip().startswith(prefix):
            return answer
        return template.replace(ANSWER_SLOT, answer)

    def spec_for(self, answer: str) -> dict[str, Any]:
        """An Orsta `reward_model` struct for a raw answer."""
        return {
            "answer": answer,
            "ground_truth": self.gold(answer),
            "accuracy_ratio": self.accuracy_ratio,
            "format_ratio": self.format_ratio,
            "verifier": self.verifier,
            "verifier_parm": None if self.verifier_parm is None else dict(self.verifier_parm),
        }


@dataclass(frozen=True)
class FileOptions:
    """What to do with one data file. Defaults read a file as it is, once, without CoT prompts.

    - `format`: one of FORMATS; "auto" picks by extension (`.parquet` Orsta, `.json` OmniRL) and, for `.jsonl`, by
      the keys of the first row (`conversations` VLM-R1, `prompt` native, `problem` OmniRL).
    - `image_root`: folder relative image paths resolve against (default: the data file's folder).
    - `weight`: how often each row is used: 2 repeats every row (the release's `_x2` files), 0.5 keeps a seeded
      random half, 1.5 keeps every row once plus a seeded random half again.
    - `max_samples`: keep at most this many distinct rows (a seeded random subset, in file order), before `weight`.
    - `seed`: seeds the subset draws and the CoT prompt draws of this file.
    - `cot_prompts`: append the release's random CoT instruction to mathverify prompts.
    - `data_source`, `ability`: for rows that carry none (default data_source: the file's stem).
    - `reward`: the reward spec of rows that carry none; `reward_methods`: per VLM-R1 `accu_reward_method` value,
      the reward fields that differ from `reward` (at least the verifier), e.g. `{"verifier": "detection"}`.
    """

    format: str = "auto"
    image_root: Path | None = None
    weight: float = 1.0
    max_samples: int | None = None
    seed: int = 0
    cot_prompts: bool = False
    data_source: str | None = None
    ability: str | None = None
    reward: RewardDefaults | None = None
    reward_methods: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"weight must be a number > 0, got {self.weight!r}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {self.max_samples!r}")

    def reward_for_method(self, method: str | None) -> RewardDefaults | None:
        """The reward defaults of a row whose VLM-R1 `accu_reward_method` is `method` (None: not mapped)."""
        base = self.reward or RewardDefaults()
        if method is not None and method in self.reward_methods:
            return base.merged(self.reward_methods[method])
        if method is None or method == "default":
            return self.reward
        return None


@dataclass(frozen=True)
class FileSpec:
    """One file to read and its options. `key` names the file in seeds (its path relative to the data root), so
    the same config draws the same rows and prompts on any machine, wherever the data lives."""

    path: Path
    options: FileOptions = field(default_factory=FileOptions)
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", Path(self.path).name)
