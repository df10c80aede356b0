"""Data config YAML -> the files of each split with their options, and the datasets loaded from them.

A data config names files, not data: it travels with a recipe while the data lives wherever a cluster keeps it,
hence `root` (and the `data_root` override, which wins, for running the same config on another machine).

```yaml
root: ../data                      # optional; relative to this YAML's folder unless absolute
seed: 0                            # optional (0): seeds row subsets and CoT prompt draws, so mixing is reproducible
cot_prompts: true                  # optional (true): the release's random CoT instruction on mathverify prompts
train:
  - train/*.parquet                # a plain string is the same as {path: ...}: Orsta files read as they are
  - path: train/train_puzzle_*.parquet
    weight: 2                      # every row twice, like the release's `_x2` files (0.5: a seeded random half)
  - path: omnirl/geo.json          # any format: orsta | omnirl | vlm-r1 | native, detected unless `format:` says
    image_root: omnirl/images      # relative image paths resolve here (relative to root; default: the file's folder)
    max_samples: 1000              # at most this many distinct rows (a seeded random subset), before weight
    data_source: geo3k             # for rows without one (default: the file's stem)
    reward: {verifier: mathverify, accuracy_ratio: 1.0, format_ratio: 0.0}   # for formats without a reward spec
  - path: vlmr1/rec.jsonl
    reward: {verifier: mathverify}
    reward_methods: {iou: {verifier: detection, format_ratio: 0.1, verifier_parm: {...}}}  # per accu_reward_method
test:
  - path: test/*.parquet
    cot_prompts: false             # per-entry seed and cot_prompts override the top-level ones
```
Every problem (unknown key, wrong type, unknown verifier, glob matching nothing) is reported together in one
DataError, as `CONFIG: split[i].key: message`.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import yaml

from triune_trl.data.images import ImageResize, ImageSizing, ReleaseRescale
from triune_trl.data.options import FORMATS, REWARD_KEYS, FileOptions, FileSpec, RewardDefaults
from triune_trl.data.prompt_length import PromptLimit
from triune_trl.errors import DataError, RewardSpecError, fit, missing_data_config_root

__all__ = ["SPLITS", "DataConfig", "FileEntry", "load_data_config", "load_split"]

SPLITS = ("train", "test")
_TOP_KEYS = frozenset({"root", "seed", "cot_prompts", *SPLITS})
_ENTRY_KEYS = frozenset(
    {"path", "format", "image_root", "weight", "max_samples", "seed", "cot_prompts", "data_source", "ability",
     "reward", "reward_methods"}
)
_HINT = (  # two lines of at most 200 characters
    "Fix the data config above: top-level keys are root, seed, cot_prompts, train, test (docs/data.md); each entry\n"
    "is a path or {path, format, image_root, weight, max_samples, seed, cot_prompts, data_source, ability, reward, "
    "reward_methods}."
)


@dataclass(frozen=True)
class FileEntry:
    """One entry of a split: a glob or file pattern and the options of the files it matches."""

    pattern: str
    options: FileOptions = field(default_factory=FileOptions)


@dataclass(frozen=True)
class DataConfig:
    """A parsed data config: where it came from, the folder entries resolve against, and each split's entries."""

    source: Path
    root: Path
    train: list[FileEntry] = field(default_factory=list)
    test: list[FileEntry] = field(default_factory=list)
    root_option: str = "--data_root"  # how the command that read it spells its data-root option, for the hints

    def entries(self, split: str) -> list[FileEntry]:
        """The split's entries as written in the YAML."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return list(getattr(self, split))

    def _matches(self, split: str) -> list[tuple[int, FileEntry, list[Path]]]:
        """Each entry with the files its pattern matches; every entry must match at least one file."""
        if self.entries(split) and not self.root.is_dir():  # one line, with the command that builds a project folder
            raise DataError(missing_data_config_root(self.source, self.root, self.root_option, split))
        out, problems = [], []
        for i, entry in enumerate(self.entries(split)):
            resolved = self.root / os.path.expanduser(entry.pattern)
            matches = sorted(Path(p) for p in glob.glob(str(resolved), recursive=True) if Path(p).is_file())
            if not matches:
                where = f"{self.source}: {split}[{i}].path"
                problems.append(fit(f"{where}: {entry.pattern!r} matches no file (looked for {resolved})",
                                    f"{where}: {entry.pattern!r} matches no file under `root`"))
            out.append((i, entry, matches))
        if problems:
            raise DataError("\n".join([*problems, f"Fix the paths or `root`, or pass {self.root_option} to point "
                                                  "elsewhere."]))
        return out

    def file_specs(self, split: str) -> list[FileSpec]:
        """The split's files, sorted and de-duplicated, each with the options of the first entry matching it."""
        chosen: dict[Path, FileSpec] = {}
        for _, entry, matches in self._matches(split):
            for path in matches:
                chosen.setdefault(path, FileSpec(path, entry.options, self._key(path)))
        return [chosen[path] for path in sorted(chosen)]

    def files(self, split: str) -> list[Path]:
        """Sorted, de-duplicated files of the split; every entry must match at least one file."""
        return [spec.path for spec in self.file_specs(split)]

    def spec_for(self, path: str | os.PathLike) -> FileSpec | None:
        """The spec of a given file if an entry of either split matches it (first match wins), else None."""
        target = Path(path).resolve()
        for split in SPLITS:
            for entry in self.entries(split):
                pattern = str(self.root / os.path.expanduser(entry.pattern))
                if any(Path(p).resolve() == target for p in glob.glob(pattern, recursive=True)):
                    return FileSpec(Path(path), entry.options, self._key(Path(path)))
        return None

    def _key(self, path: Path) -> str:
        """The file's name in seeds: its path relative to root, so seeds do not depend on where the data lives."""
        try:
            return Path(os.path.relpath(path.resolve(), self.root.resolve())).as_posix()
        except ValueError:  # another drive on Windows
            return path.name


class _Problems(list):
    """Config problems as `SOURCE: where: message` lines."""

    def __init__(self, source: Path):
        super().__init__()
        self.source = source

    def add(self, where: str, message: str) -> None:
        self.append(f"{self.source}: {where}: {message}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_reward(defaults: RewardDefaults, where: str, problems: _Problems) -> None:
    """Structure of a reward default: a known verifier, valid ratios and parameters, a template with {answer}."""
    from triune_trl.rewards import RewardSpec, get_verifier  # at call time: the rewards package may import this one

    if defaults.ground_truth is not None and "{answer}" not in defaults.ground_truth:
        problems.add(f"{where}.ground_truth", f"a template must contain {{answer}}, got {defaults.ground_truth!r}")
    if not defaults.verifier:
        problems.add(f"{where}.verifier", "missing: name the verifier rows of this file are scored with")
        return
    try:
        spec = RewardSpec.from_dict(defaults.spec_for("1"))
        verifier = get_verifier(spec.verifier)
    except RewardSpecError as exc:
        problems.add(f"{where}.{exc.field.removeprefix('reward_model.')}", exc.message)
        return
    for path, message in verifier.check_params(spec):
        problems.add(f"{where}.{path.removeprefix('reward_model.')}", message)


def _reward_fields(raw: Any, where: str, problems: _Problems) -> dict[str, Any] | None:
    """The keys of a `reward:` mapping (or a bare verifier name), type-checked."""
    if isinstance(raw, str):
        return {"verifier": raw}
    if not isinstance(raw, Mapping):
        problems.add(where, f"expected a verifier name or a mapping with keys {', '.join(REWARD_KEYS)}, got {raw!r}")
        return None
    fields = {}
    for key, value in raw.items():
        if key not in REWARD_KEYS:
            problems.add(f"{where}.{key}", f"unknown key; expected one of {', '.join(REWARD_KEYS)}")
        elif key in ("accuracy_ratio", "format_ratio") and not _number(value):
            problems.add(f"{where}.{key}", f"expected a number, got {value!r}")
        elif key in ("verifier", "ground_truth") and not isinstance(value, str):
            problems.add(f"{where}.{key}", f"expected a string, got {value!r}")
        elif key == "verifier_parm" and value is not None and not isinstance(value, Mapping):
            problems.add(f"{where}.{key}", f"expected a mapping or null, got {value!r}")
        else:
            fields[key] = value
    return fields


def _entry_options(
    entry: dict[str, Any], where: str, base: FileOptions, root: Path, problems: _Problems
) -> FileOptions:
    """FileOptions of one `{path, ...}` entry; problems recorded, defaults kept for the faulty keys."""
    options: dict[str, Any] = {}
    checks = {
        "format": (lambda v: v in FORMATS, f"expected one of {', '.join(FORMATS)}"),
        "image_root": (lambda v: isinstance(v, str) and bool(v), "expected a folder path"),
        "weight": (lambda v: _number(v) and v > 0, "expected a number > 0"),
        "max_samples": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "expected an int >= 1"),
        "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "expected an integer"),
        "cot_prompts": (lambda v: isinstance(v, bool), "expected true or false"),
        "data_source": (lambda v: isinstance(v, str) and bool(v), "expected a non-empty string"),
        "ability": (lambda v: isinstance(v, str), "expected a string"),
    }
    for key, (ok, expected) in checks.items():
        if key in entry:
            if ok(entry[key]):
                options[key] = entry[key]
            else:
                problems.add(f"{where}.{key}", f"{expected}, got {entry[key]!r}")
    if "image_root" in options:
        options["image_root"] = root / os.path.expanduser(options["image_root"])
    reward = None
    if entry.get("reward") is not None:
        fields = _reward_fields(entry["reward"], f"{where}.reward", problems)
        if fields is not None:
            reward = RewardDefaults().merged(fields)
            _check_reward(reward, f"{where}.reward", problems)
            options["reward"] = reward
    methods = entry.get("reward_methods")
    if methods is not None:
        if not isinstance(methods, Mapping):
            problems.add(f"{where}.reward_methods", f"expected a mapping from accu_reward_method to a verifier, got "
                                                    f"{methods!r}")
        else:
            options["reward_methods"] = {}
            for method, raw in methods.items():
                fields = _reward_fields(raw, f"{where}.reward_methods.{method}", problems)
                if fields is not None:
                    _check_reward((reward or RewardDefaults()).merged(fields), f"{where}.reward_methods.{method}",
                                  problems)
                    options["reward_methods"][str(method)] = fields
    return replace(base, **options)


def _entry(where: str, entry: Any, base: FileOptions, root: Path, problems: _Problems) -> FileEntry | None:
    """One split entry (`{path: ...}` or a plain string), or None with a problem recorded."""
    if isinstance(entry, str) and entry:
        return FileEntry(entry, base)
    if not isinstance(entry, dict):
        problems.add(where, f"expected {{path: glob-or-file}} or a string, got {entry!r}")
        return None
    for key in entry:
        if key not in _ENTRY_KEYS:
            problems.add(f"{where}.{key}", "unknown key")
    pattern = entry.get("path")
    options = _entry_options(entry, where, base, root, problems)
    if not isinstance(pattern, str) or not pattern:
        problems.add(f"{where}.path", f"expected a non-empty string, got {pattern!r}")
        return None
    return FileEntry(pattern, options)


def load_data_config(path: str | os.PathLike, data_root: str | os.PathLike | None = None,
                     root_option: str = "--data_root") -> DataConfig:
    """Parse a data config YAML; `data_root` (if given) replaces its `root`. `root_option` is how the calling command
    spells that option (`--data_root` for the recipes, `--data-root` for `triune data` and `triune eval`): the
    hints name it."""
    source = Path(path)
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{source}: cannot read the data config: {exc}") from exc
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise DataError(f"{source}: expected a mapping with keys root, train, test, got {type(raw).__name__}")
    problems = _Problems(source)
    for key in raw:
        if key not in _TOP_KEYS:
            problems.add(str(key), "unknown key")
    root_value = raw.get("root")
    if root_value is not None and not isinstance(root_value, str):
        problems.add("root", f"expected a path string, got {root_value!r}")
        root_value = None
    if data_root is not None:
        root = Path(os.path.expanduser(data_root))
    elif root_value:
        root = source.parent / os.path.expanduser(root_value)  # an absolute root replaces the YAML's folder
    else:
        root = source.parent
    base = FileOptions(cot_prompts=True)
    for key, ok, expected in (("seed", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
                              ("cot_prompts", lambda v: isinstance(v, bool), "true or false")):
        if key in raw:
            if ok(raw[key]):
                base = replace(base, **{key: raw[key]})
            else:
                problems.add(key, f"expected {expected}, got {raw[key]!r}")
    splits: dict[str, list[FileEntry]] = {}
    for split in SPLITS:
        entries = raw.get(split) or []
        if not isinstance(entries, list):
            problems.add(split, f"expected a list of entries, got {entries!r}")
            entries = []
        parsed = [_entry(f"{split}[{i}]", entry, base, root, problems) for i, entry in enumerate(entries)]
        splits[split] = [entry for entry in parsed if entry is not None]
    if problems:
        raise DataError("\n".join([*problems, _HINT]))
    return DataConfig(source=source, root=root, train=splits["train"], test=splits["test"], root_option=root_option)


def load_split(
    config: DataConfig,
    split: str,
    sizing: ImageSizing,
    rescale: ImageResize | None = ReleaseRescale(),
    *,
    validate: bool = True,
    cache_dir: str | os.PathLike | None = None,
    prompt_limit: PromptLimit | None = None,
) -> datasets.Dataset | None:
    """The split's files as one Dataset of the row shape, or None when the config lists no files for it.

    `prompt_limit`: rows whose prompt is longer (in tokens) are dropped or reported (`data.prompt_length`).
    """
    from triune_trl.data.loader import load_files  # the loader imports the readers; keep config import light

    if not config.entries(split):
        return None
    return load_files(
        config.file_specs(split), sizing=sizing, rescale=rescale, validate=validate, cache_dir=cache_dir,
        prompt_limit=prompt_limit,
    )
