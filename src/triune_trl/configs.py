"""Options of a V-Triune run that TRL's own dataclasses do not have.

Everything about optimisation, generation and logging is a `trl.GRPOConfig` field, everything about the model a
`trl.ModelConfig` field; this dataclass only adds where the data lives and how rewards are computed. All three are
read together by `TrlParser` from a YAML recipe (`--config`) with command-line overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .rewards.iou_schedule import parse_iou_threshold

RELEASE_MIN_PIXELS = 512 * 512
RELEASE_MAX_PIXELS = 2048 * 2048


@dataclass
class TriuneScriptArguments:
    """Data and reward options of a V-Triune run."""

    data_config: str = field(
        default="data_configs/sample.yaml",
        metadata={"help": "YAML file listing the train and test parquet files (see data_configs/)."},
    )
    data_root: str | None = field(
        default=None,
        metadata={
            "help": "Directory the data config's relative paths resolve against; overrides the config's `root`. "
            "For Orsta-Data-47k: the folder holding train/ and test/."
        },
    )
    iou_threshold: str = field(
        default="dynamic",
        metadata={
            "help": "IoU threshold of the detection verifier: 'dynamic' (0.85 for the first 10% of steps, 0.95 "
            "until 25%, then 0.99, as in the paper), 'average' (mean over 0.5:0.05:0.95 and 0.99) or a number."
        },
    )
    rescale_images: bool = field(
        default=True,
        metadata={
            "help": "Rescale every image so its pixel area lies in [rescale_min_pixels, rescale_max_pixels] "
            "before the processor sees it, as the V-Triune release does."
        },
    )
    rescale_min_pixels: int = field(
        default=RELEASE_MIN_PIXELS, metadata={"help": "Lower bound of the image area rescale (release: 512*512)."}
    )
    rescale_max_pixels: int = field(
        default=RELEASE_MAX_PIXELS, metadata={"help": "Upper bound of the image area rescale (release: 2048*2048)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows after loading (smoke runs)."}
    )

    def __post_init__(self):
        parse_iou_threshold(self.iou_threshold)  # fail on a bad setting before any data is loaded
        if self.rescale_min_pixels <= 0 or self.rescale_max_pixels < self.rescale_min_pixels:
            raise ValueError(
                "--rescale_min_pixels must be positive and not above --rescale_max_pixels, got "
                f"{self.rescale_min_pixels} and {self.rescale_max_pixels}"
            )

    @property
    def iou_threshold_value(self) -> float | str:
        """The threshold as the reward router takes it: a float, or the name of a schedule (raises if invalid)."""
        return parse_iou_threshold(self.iou_threshold)
