"""Sample-level data formatting: every input format becomes the one row shape (docs/architecture.md)."""

from triune_trl.data.config import DataConfig, load_data_config, load_split
from triune_trl.data.images import ImageSizing, ReleaseRescale
from triune_trl.data.orsta import load_orsta_files, row_from_orsta

__all__ = [
    "DataConfig",
    "ImageSizing",
    "ReleaseRescale",
    "load_data_config",
    "load_orsta_files",
    "load_split",
    "row_from_orsta",
]
