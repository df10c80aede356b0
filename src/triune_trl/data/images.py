"""Image decoding and the two resizes an Orsta image goes through before the model sees it.

1. The reader's rescale (`ReleaseRescale`): the V-Triune release squeezes every image's pixel area into
   [512², 2048²] right after decoding. Scores depend on it (detection boxes are judged in the pixel space the
   model saw), so the arithmetic here is the release's, rounding included. `QwenVLResize` is the alternative for
   data prepared the qwen-vl-utils way (VLM-R1, OmniRL): `fetch_image`'s snap to multiples of the model's
   patch_size × merge_size (28 for Qwen2.5-VL, 32 for Qwen3-VL and Qwen3.5) within min/max pixels, computed by
   qwen-vl-utils itself.
2. The processor's resize (`ImageSizing`): the Qwen-VL image processor snaps the rescaled image to multiples of
   patch_size × merge_size within its own min/max pixels. The detection verifier needs that final size, so readers
   compute it once, from the image header alone, with transformers' own `smart_resize`. Nothing here assumes a
   patch size: training reads it from the processor (`ImageSizing.from_processor`), the data tools from
   `--processor` or `--family` (`Family.image_sizing` in `models.tiny`).

Decoding follows `datasets.Image` (EXIF orientation applied when the tag is present), because the release read its
images through `datasets`; RGB conversion comes after the rescale, in the release's order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import PIL.Image
import PIL.ImageOps

ImageSource = bytes | str | os.PathLike | PIL.Image.Image | Mapping[str, Any]
"""Anything the helpers accept: raw bytes, a file path, a PIL image, or a `datasets.Image` dict {bytes, path}."""

# EXIF orientations 5-8 rotate by 90°/270°, so the displayed image has width and height swapped.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_ORIENTATION_TAG = PIL.Image.ExifTags.Base.Orientation


@dataclass(frozen=True)
class ReleaseRescale:
    """The release's `process_image` rule: bring the pixel area into [min_pixels, max_pixels].

    Downscaling is checked first, then upscaling, each with `factor = sqrt(bound / area)` and sides truncated by
    `int()`; so an upscaled image may end a few pixels short of `min_pixels`, exactly as in the release.
    """

    min_pixels: int = 512 * 512
    max_pixels: int = 2048 * 2048

    def __post_init__(self) -> None:
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the rule; pure arithmetic, so sizes can be computed without decoding pixels."""
        if width * height > self.max_pixels:
            factor = math.sqrt(self.max_pixels / (width * height))
            width, height = int(width * factor), int(height * factor)
        if width * height < self.min_pixels:
            factor = math.sqrt(self.min_pixels / (width * height))
            width, height = int(width * factor), int(height * factor)
        return width, height

    def apply(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """Resize `image` to `target_size`; Pillow's default filter, as the release (bicubic; nearest for 1/P)."""
        size = self.target_size(image.width, image.height)
        return image if size == image.size else image.resize(size)


@dataclass(frozen=True)
class QwenVLResize:
    """qwen-vl-utils' `fetch_image` rule: RGB first (RGBA over white), then resize to its `smart_resize` size.

    `smart_resize` snaps both sides to multiples of `factor` with the area in [min_pixels, max_pixels] and refuses
    aspect ratios above 200 (ValueError, reported per image at load time). `factor` is the model's patch_size ×
    merge_size (`fetch_image(image_patch_size=16)` for Qwen3-VL gives 32); unset bounds are qwen-vl-utils' own,
    4 and 16384 tokens of `factor`² pixels.
    """

    min_pixels: int | None = None
    max_pixels: int | None = None
    factor: int = 28

    def __post_init__(self) -> None:
        if self.min_pixels is None:
            object.__setattr__(self, "min_pixels", 4 * self.factor * self.factor)
        if self.max_pixels is None:
            object.__setattr__(self, "max_pixels", 16384 * self.factor * self.factor)
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) qwen-vl-utils resizes to; ValueError for an aspect ratio it refuses."""
        from qwen_vl_utils.vision_process import smart_resize

        new_height, new_width = smart_resize(
            height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )
        return new_width, new_height

    def apply(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """RGB conversion then resize, in qwen-vl-utils' order and with its RGBA handling."""
        from qwen_vl_utils.vision_process import to_rgb as qwen_to_rgb

        image = qwen_to_rgb(image) if image.mode != "RGB" else image
        size = self.target_size(image.width, image.height)
        return image if size == image.size else image.resize(size)


ImageResize = ReleaseRescale | QwenVLResize
"""A reader-side resize rule: anything with `target_size(w, h)` (header arithmetic) and `apply(image)`."""
RESIZE_RULES = ("release", "qwen-vl", "none")


def make_image_resize(
    rule: str, min_pixels: int | None = None, max_pixels: int | None = None, factor: int = 28
) -> ImageResize | None:
    """The resize of a rule name: "release" (`ReleaseRescale`), "qwen-vl" (`QwenVLResize`) or "none" (None).

    Unset bounds take the rule's own defaults (release: 512², 2048²; qwen-vl: qwen-vl-utils' 4 and 16384 tokens).
    `factor` (the model's patch_size × merge_size, `ImageSizing.factor`) matters to the qwen-vl rule only.
    """
    bounds = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    if rule == "release":
        return ReleaseRescale(**bounds)
    if rule == "qwen-vl":
        return QwenVLResize(**bounds, factor=factor)
    if rule == "none":
        return None
    raise ValueError(f"image resize rule must be one of {', '.join(RESIZE_RULES)}, got {rule!r}")


def rescaled_size(width: int, height: int, rescale: ImageResize | None) -> tuple[int, int]:
    """Size after the reader's rescale; `None` means the reader does not rescale."""
    return (width, height) if rescale is None else rescale.target_size(width, height)


@dataclass(frozen=True)
class ImageSizing:
    """How the processor resizes an image: multiples of `factor` (patch_size × merge_size) within min/max pixels.

    The defaults are Qwen2.5-VL's (14 px patches merged 2 × 2, 4 to 1280 tokens); `from_processor` reads a real
    processor, `for_token_side` another family's patching with the same token bounds.
    """

    factor: int = 28
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280

    @classmethod
    def for_token_side(cls, factor: int) -> ImageSizing:
        """The sizing of a family whose merged vision token covers `factor` x `factor` pixels (28 or 32), with the
        default bounds in tokens (4 to 1280); `models.tiny.Family.image_sizing` gives a named family's. A
        checkpoint's own bounds need its processor (`from_processor`)."""
        tokens = cls()
        scale = factor * factor
        return cls(
            factor=factor,
            min_pixels=tokens.min_pixels // (tokens.factor**2) * scale,
            max_pixels=tokens.max_pixels // (tokens.factor**2) * scale,
        )

    @classmethod
    def from_processor(cls, processor: Any) -> ImageSizing:
        """Read the sizing of a Qwen2-VL-style processor or image processor, so sizes match what it will produce."""
        image_processor = getattr(processor, "image_processor", processor)
        try:
            patch_size = int(image_processor.patch_size)
            merge_size = int(image_processor.merge_size)
        except AttributeError as exc:
            raise TypeError(
                f"{type(image_processor).__name__} has no patch_size/merge_size: not a Qwen2-VL-style image processor"
            ) from exc
        size = getattr(image_processor, "size", None) or {}
        min_pixels = _first_set(size, ("shortest_edge", "min_pixels")) or getattr(image_processor, "min_pixels", None)
        max_pixels = _first_set(size, ("longest_edge", "max_pixels")) or getattr(image_processor, "max_pixels", None)
        if min_pixels is None or max_pixels is None:
            raise TypeError(f"{type(image_processor).__name__} has no min/max pixels in its size {size!r}")
        return cls(factor=patch_size * merge_size, min_pixels=int(min_pixels), max_pixels=int(max_pixels))

    def model_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the model sees for an input of this size; ValueError if the processor would refuse it."""
        # Imported here: transformers' import is slow and only this function needs it.
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        new_height, new_width = smart_resize(
            height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )
        return new_width, new_height


def _first_set(size: Any, keys: tuple[str, ...]) -> int | None:
    """First non-empty entry among `keys` of a dict or transformers `SizeDict`."""
    for key in keys:
        value = size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)
        if value:
            return value
    return None


def open_image(source: ImageSource) -> PIL.Image.Image:
    """Open without decoding pixels (PIL reads only the header until `load()`)."""
    if isinstance(source, PIL.Image.Image):
        return source
    if isinstance(source, Mapping):
        if source.get("bytes") is not None:
            return PIL.Image.open(BytesIO(source["bytes"]))
        if source.get("path"):
            return PIL.Image.open(source["path"])
        raise ValueError("image has neither bytes nor path")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return PIL.Image.open(BytesIO(source))
    return PIL.Image.open(source)


def _orientation(image: PIL.Image.Image) -> int | None:
    """EXIF orientation of an opened, not yet loaded image, or None; broken EXIF counts as none.

    Pillow's base `getexif` reads only what the header put in `image.info` (PNG's own override would decode the
    pixels). Both the header path and the decode path use this one reading, so a size computed at load time is
    always the size decoded later. It equals `datasets.Image`'s reading except for a PNG whose eXIf chunk follows
    the pixel data (rare; the PNG spec asks for it before), whose orientation both paths then ignore.
    """
    try:
        return PIL.Image.Image.getexif(image).get(_ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - any EXIF parse error means "no usable orientation"
        return None


def header_size(source: ImageSource) -> tuple[int, int]:
    """(width, height) as decoded (EXIF orientation applied), read from the header only: no pixel data."""
    image = open_image(source)
    width, height = image.size
    if _orientation(image) in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return width, height


def decode_image(source: ImageSource) -> PIL.Image.Image:
    """Decode pixels as `datasets.Image` does: load, then apply the EXIF orientation if the tag is present."""
    image = open_image(source)
    orientation = _orientation(image)
    image.load()
    if orientation is not None:
        image = PIL.ImageOps.exif_transpose(image)
    return image


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB view of `image` (a no-op for RGB images)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(source: ImageSource, rescale: ImageResize | None = None) -> PIL.Image.Image:
    """Decode, rescale, convert to RGB: the release's order, so resampling sees the original mode."""
    image = decode_image(source)
    if rescale is not None:
        image = rescale.apply(image)
    return to_rgb(image)
