"""Data config YAML -> the list of files of each split, and the datasets loaded from them.

A data config names files, not data: it travels with a recipe while the data lives wherever a cluster keeps it,
hence `root` (and the `data_root` override, which wins, for running the same config on another machine).

```yaml
root: ../data                      # optional; relative to this YAML's folder unless absolute
train:
  - path: train/*.parquet          # glob or file, relative to root (or to this YAML's folder when no root)
  - train/extra.parquet            # a plain string is the same as {path: ...}
test:
  - path: test/test_math_megabench_237.parquet
```
Every problem (unknown key, malformed entry, glob matching nothing) is reported together in one DataError.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import yaml

from triune_trl.data.images import ImageSizing, ReleaseRescale
from triune_trl.data.orsta import load_orsta_files
from triune_trl.errors import DataError

SPLITS = ("train", "test")
_TOP_KEYS = frozenset({"root", *SPLITS})
_ENTRY_KEYS = frozenset({"path"})
_HINT = "Fix the data config above: top-level keys are root, train, test; each entry is {path: glob-or-file}."


@dataclass(frozen=True)
class DataConfig:
    """A parsed data config: where it came from, the folder entries resolve against, and each split's entries."""

    source: Path
    root: Path
    train: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)

    def entries(self, split: str) -> list[str]:
        """The split's path patterns as written in the YAML."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return list(getattr(self, split))

    def files(self, split: str) -> list[Path]:
        """Sorted, de-duplicated files of the split; every entry must match at least one file."""
        found: set[Path] = set()
        problems = []
        for i, pattern in enumerate(self.entries(split)):
            resolved = self.root / os.path.expanduser(pattern)
            matches = [Path(p) for p in glob.glob(str(resolved), recursive=True) if Path(p).is_file()]
            if not matches:
                where = f"{self.source}: {split}[{i}].path"
                problems.append(f"{where}: {pattern!r} matches no file (looked for {resolved})")
            found.update(matches)
        if problems:
            raise DataError("\n".join([*problems, "Fix the paths or `root`, or pass data_root to point elsewhere."]))
        return sorted(found)


def _entry_pattern(source: Path, where: str, entry: Any, problems: list[str]) -> str | None:
    """The path pattern of one split entry (`{path: ...}` or a plain string), or None with a problem recorded."""
    if isinstance(entry, str) and entry:
        return entry
    if not isinstance(entry, dict):
        problems.append(f"{source}: {where}: expected {{path: glob-or-file}} or a string, got {entry!r}")
        return None
    problems += [f"{source}: {where}.{key}: unknown key" for key in entry if key not in _ENTRY_KEYS]
    pattern = entry.get("path")
    if not isinstance(pattern, str) or not pattern:
        problems.append(f"{source}: {where}.path: expected a non-empty string, got {pattern!r}")
        return None
    return pattern


def load_data_config(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> DataConfig:
    """Parse a data config YAML; `data_root` (if given) replaces its `root`."""
    source = Path(path)
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{source}: cannot read the data config: {exc}") from exc
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise DataError(f"{source}: expected a mapping with keys root, train, test, got {type(raw).__name__}")
    problems = [f"{source}: {key}: unknown key" for key in raw if key not in _TOP_KEYS]
    splits: dict[str, list[str]] = {}
    for split in SPLITS:
        entries = raw.get(split) or []
        if not isinstance(entries, list):
            problems.append(f"{source}: {split}: expected a list of entries, got {entries!r}")
            entries = []
        patterns = [_entry_pattern(source, f"{split}[{i}]", entry, problems) for i, entry in enumerate(entries)]
        splits[split] = [p for p in patterns if p is not None]
    root_value = raw.get("root")
    if root_value is not None and not isinstance(root_value, str):
        problems.append(f"{source}: root: expected a path string, got {root_value!r}")
    if problems:
        raise DataError("\n".join([*problems, _HINT]))
    if data_root is not None:
        root = Path(os.path.expanduser(data_root))
    elif root_value:
        root = source.parent / os.path.expanduser(root_value)  # an absolute root replaces the YAML's folder
    else:
        root = source.parent
    return DataConfig(source=source, root=root, train=splits["train"], test=splits["test"])


def load_split(
    config: DataConfig,
    split: str,
    sizing: ImageSizing,
    rescale: ReleaseRescale | None = ReleaseRescale(),
    *,
    validate: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset | None:
    """The split's files as one Dataset of the row shape, or None when the config lists no files for it."""
    if not config.entries(split):
        return None
    return load_orsta_files(config.files(split), sizing=sizing, rescale=rescale, validate=validate, cache_dir=cache_dir)
