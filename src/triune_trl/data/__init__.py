"""Sample-level data formatting: every input format becomes the one row shape (docs/architecture.md, docs/data.md).

Readers: Orsta-Data-47k parquet (`orsta`), OmniRL JSON, VLM-R1 JSONL and native JSONL (`formats`). Data configs
(`config`) list files per split with per-file options; `loader` validates every row, applies weights and CoT
prompts (`cot_prompts`) and decodes images lazily (`images`).

May import: `errors` and `rewards` (to validate reward specs). Nothing above: a model family's image sizing is
`models.tiny.Family.image_sizing`, which builds on this package.
"""

from triune_trl.data.config import DataConfig, FileEntry, load_data_config, load_split
from triune_trl.data.images import ImageSizing, QwenVLResize, ReleaseRescale, make_image_resize
from triune_trl.data.loader import ValidationReport, load_files, validate_files
from triune_trl.data.options import FileOptions, FileSpec, RewardDefaults
from triune_trl.data.orsta import load_orsta_files, row_from_orsta

__all__ = [
    "DataConfig",
    "FileEntry",
    "FileOptions",
    "FileSpec",
    "ImageSizing",
    "QwenVLResize",
    "ReleaseRescale",
    "RewardDefaults",
    "ValidationReport",
    "load_data_config",
    "load_files",
    "load_orsta_files",
    "load_split",
    "make_image_resize",
    "row_from_orsta",
    "validate_files",
]
