"""Image ablation: a copy of parquet files with every image replaced by a blank image of the same size.

Why: an accuracy gain on an image task proves that a model learned to *see* only if it disappears when the image
carries nothing. Evaluating such a copy with the ordinary `triune eval` needs no special flag in the evaluation
code, and keeping each image's size keeps the prompt (number of vision tokens) and the detection verifier's
pixel-to-grid mapping exactly as on the real files.
"""

from __future__ import annotations

import io
from pathlib import Path

__all__ = ["BLANK_COLOUR", "blank_image_copy"]

BLANK_COLOUR = (255, 255, 255)


def _blank_png(image_bytes: bytes, cache: dict[tuple[int, int], bytes]) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(image_bytes)) as image:
        size = image.size
    if size not in cache:
        buffer = io.BytesIO()
        Image.new("RGB", size, BLANK_COLOUR).save(buffer, format="PNG")
        cache[size] = buffer.getvalue()
    return cache[size]


def blank_image_copy(src_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Copy every `*.parquet` under `src_dir` (same relative paths) into `out_dir`, images blanked; return them.

    Files are Orsta-layout parquet (an `images` column of `{bytes, path}` structs); the schema, including the
    `datasets` feature metadata, is kept, so every reader treats the copy as the original.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    src, out = Path(src_dir), Path(out_dir)
    files = sorted(src.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{src}: no parquet files to copy")
    cache: dict[tuple[int, int], bytes] = {}
    written = []
    for path in files:
        table = pq.read_table(path)
        rows = table.to_pylist()
        for row in rows:
            for image in row.get("images") or []:
                if image.get("bytes") is None:
                    raise ValueError(f"{path}: an image without embedded bytes (path {image.get('path')!r})")
                image["bytes"] = _blank_png(image["bytes"], cache)
        target = out / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), target)
        written.append(target)
    return written
