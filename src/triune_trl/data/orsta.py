"""Read Orsta-Data-47k parquet files into the one row shape (docs/architecture.md).

Loading does the cheap work once and defers the expensive work to row access:

* at load time every row is converted and checked: the prompt becomes TRL conversational messages, each image's
  size as the model will see it is computed from its header alone, and every row is validated; all problems of all
  files are raised together as one `DataError`;
* the image bytes stay in `datasets`' memory-mapped Arrow cache and are decoded and rescaled by a
  `Dataset.with_transform` only for the rows a DataLoader asks for.

Internally `prompt` and `reward_model` are stored as JSON strings, because Arrow would otherwise rewrite them: image
parts would gain `"text": None`, and files whose reward structs differ (math files have all-null detection
parameters) could not be concatenated. The transform turns them back into exactly the dicts of the row shape.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import PIL
import pyarrow.parquet as pq

from triune_trl.data.images import ImageSizing, ImageSource, ReleaseRescale, header_size, load_image, rescaled_size
from triune_trl.errors import DataError

IMAGE_PLACEHOLDER = "<image>"
ROW_COLUMNS = ("prompt", "images", "image_sizes", "data_source", "reward_model", "ability")
REQUIRED_COLUMNS = ("prompt", "data_source", "reward_model")
ROLES = frozenset({"system", "user", "assistant", "tool"})  # the roles TRL's prepare_multimodal_messages accepts
_HINT = (
    "Fix or remove the rows above (fields follow the Orsta-Data-47k schema, docs/architecture.md), then load again."
)
_SCAN_BATCH = 256
# Types the reader imposes on the file's columns: images stay undecoded bytes (the transform decodes them).
_STORED_TYPES = {
    "images": datasets.List(datasets.Image(decode=False)),
    "data_source": datasets.Value("string"),
    "ability": datasets.Value("string"),
}
_STORED_FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "image_sizes": datasets.List(datasets.List(datasets.Value("int64"))),
        "reward_model": datasets.Value("string"),
    }
)


@dataclass(frozen=True)
class Problem:
    """One reason a row cannot be trained on; `field` is a dotted path into the Orsta record."""

    field: str
    message: str


def raise_problems(problems: Sequence[tuple[str, int | None, Problem]]) -> None:
    """Raise one DataError listing every problem as `FILE:ROW: field: message`, plus a hint; no-op when empty."""
    if not problems:
        return
    lines = [
        f"{source}:{row}: {p.field}: {p.message}" if row is not None else f"{source}: {p.field}: {p.message}"
        for source, row, p in problems
    ]
    raise DataError("\n".join([*lines, f"{len(lines)} problem(s). {_HINT}"]))


def messages_from_prompt(prompt: Any) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Orsta `prompt` ([{role, content: str}]) -> TRL conversational messages with typed content parts.

    Every `<image>` becomes a `{"type": "image"}` part in place, the text around it `{"type": "text"}` parts; empty
    text pieces are dropped, as in the release. All turns are converted the same way, system turns included.
    """
    if not isinstance(prompt, list) or not prompt:
        return [], [Problem("prompt", f"expected a non-empty list of {{role, content}} turns, got {prompt!r:.80}")]
    messages, problems = [], []
    for i, turn in enumerate(prompt):
        if not isinstance(turn, Mapping):
            problems.append(Problem(f"prompt[{i}]", f"expected a {{role, content}} turn, got {turn!r:.80}"))
            continue
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            problems.append(Problem(f"prompt[{i}].role", f"{role!r} is not one of {sorted(ROLES)}"))
        if not isinstance(content, str):
            problems.append(Problem(f"prompt[{i}].content", f"expected a string, got {content!r:.80}"))
            continue
        parts: list[dict[str, Any]] = []
        for j, text in enumerate(content.split(IMAGE_PLACEHOLDER)):
            if j:
                parts.append({"type": "image"})
            if text:
                parts.append({"type": "text", "text": text})
        messages.append({"role": role, "content": parts})
    return messages, problems


def count_image_parts(messages: Iterable[Mapping[str, Any]]) -> int:
    """Number of `{"type": "image"}` parts: must equal the number of images the row carries."""
    return sum(part.get("type") == "image" for message in messages for part in message["content"])


def _image_sizes(
    images: Sequence[ImageSource], sizing: ImageSizing, rescale: ReleaseRescale | None
) -> tuple[list[list[int]], list[Problem]]:
    """Per image, [width, height] as the model sees it, from the header only; problems for unusable images."""
    sizes, problems = [], []
    for i, image in enumerate(images):
        field = f"images[{i}]"
        try:
            width, height = header_size(image)
        except PIL.UnidentifiedImageError:
            problems.append(Problem(field, "cannot read the image: not an image format Pillow recognizes"))
            continue
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad bytes; all mean "unreadable"
            problems.append(Problem(field, f"cannot read the image: {type(exc).__name__}: {exc}"))
            continue
        new_width, new_height = rescaled_size(width, height, rescale)
        if new_width < 1 or new_height < 1:
            problems.append(Problem(field, f"{width}x{height} rescales to {new_width}x{new_height}: too thin to use"))
            continue
        try:
            sizes.append(list(sizing.model_size(new_width, new_height)))
        except ValueError as exc:
            problems.append(Problem(field, f"the processor cannot take this {new_width}x{new_height} image: {exc}"))
    return sizes, problems


def _validate_reward_model(reward_model: Any) -> list[Problem]:
    """Problems the reward side reports for this spec, with field paths rooted at `reward_model`."""
    if not isinstance(reward_model, Mapping):
        return [Problem("reward_model", f"expected a reward spec struct, got {reward_model!r:.80}")]
    from triune_trl import rewards  # at call time: the rewards package may import this one

    problems = []
    for field, message in rewards.validate_reward_spec(dict(reward_model)):
        path = field if field == "reward_model" or field.startswith("reward_model.") else f"reward_model.{field}"
        problems.append(Problem(path, message))
    return problems


def _plan_row(
    record: Mapping[str, Any], sizing: ImageSizing, rescale: ReleaseRescale | None, validate: bool
) -> tuple[dict[str, Any], list[Problem]]:
    """Everything about a row except its pixels: messages, model-side image sizes, and its problems.

    Problems that make the row impossible to build (bad prompt structure, unreadable images) are always reported;
    `validate` adds the checks training needs (user turn, placeholder count, data_source, reward spec).
    """
    images = record.get("images") or []
    messages, problems = messages_from_prompt(record.get("prompt"))
    sizes, image_problems = _image_sizes(images, sizing, rescale)
    problems += image_problems
    if validate:
        if messages and not any(m["role"] == "user" for m in messages):
            problems.append(Problem("prompt", "has no user turn"))
        placeholders = count_image_parts(messages)
        if placeholders != len(images):
            problems.append(
                Problem("prompt", f"has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but the row has "
                                  f"{len(images)} image(s)")
            )
        data_source = record.get("data_source")
        if not isinstance(data_source, str) or not data_source:
            problems.append(Problem("data_source", f"expected a non-empty string, got {data_source!r:.80}"))
        problems += _validate_reward_model(record.get("reward_model"))
    plan = {
        "prompt": messages,
        "image_sizes": sizes,
        "data_source": record.get("data_source"),
        "reward_model": record.get("reward_model"),
        "ability": record.get("ability", ""),
    }
    return plan, problems


def row_from_orsta(
    record: Mapping[str, Any],
    sizing: ImageSizing,
    rescale: ReleaseRescale | None = ReleaseRescale(),
    *,
    validate: bool = True,
) -> dict[str, Any]:
    """One Orsta record (images as bytes, paths, PIL images or {bytes, path}) -> one row of the row shape.

    The same conversion the dataset applies, in one call; raises DataError (source `<record>`) on problems.
    """
    plan, problems = _plan_row(record, sizing, rescale, validate)
    raise_problems([("<record>", None, p) for p in problems])
    images = [load_image(image, rescale) for image in record.get("images") or []]
    return {
        "prompt": plan["prompt"],
        "images": images,
        "image_sizes": plan["image_sizes"],
        "data_source": plan["data_source"],
        "reward_model": dict(plan["reward_model"]) if plan["reward_model"] is not None else None,
        "ability": plan["ability"],
    }


class RowDecoder:
    """The `with_transform` function: stored columns -> the row shape, decoding only the rows asked for.

    Works on whatever subset of columns datasets hands it (`ds["images"]` passes one column). Identical image
    bytes within one call are decoded once and the PIL image shared: TRL's RepeatSampler asks for each prompt
    `num_generations` times in the same batch.
    """

    def __init__(self, rescale: ReleaseRescale | None):
        self.rescale = rescale

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = dict(batch)
        if "prompt" in batch:
            out["prompt"] = [json.loads(value) for value in batch["prompt"]]
        if "reward_model" in batch:
            out["reward_model"] = [json.loads(value) for value in batch["reward_model"]]
        if "images" in batch:
            cache: dict[Any, Any] = {}
            out["images"] = [[self._decode(image, cache) for image in images or []] for images in batch["images"]]
        return out

    def _decode(self, image: Mapping[str, Any], cache: dict[Any, Any]) -> Any:
        key = image["bytes"] if image.get("bytes") is not None else ("path", image.get("path"))
        if key not in cache:
            cache[key] = load_image(image, self.rescale)
        return cache[key]


def _read_parquet(path: Path, cache_dir: str | os.PathLike | None) -> tuple[datasets.Dataset | None, list[Problem]]:
    """The file as a memory-mapped Dataset with the columns the row shape needs, images left undecoded."""
    if path.suffix != ".parquet":
        return None, [Problem("file", "not a .parquet file (this reader reads Orsta parquet files)")]
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001 - missing file, not parquet, permissions: all reported the same way
        return None, [Problem("file", f"cannot read as parquet: {type(exc).__name__}: {exc}")]
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        return None, [Problem(c, "column missing from the file") for c in missing]
    columns = [c for c in ("prompt", "images", "data_source", "reward_model", "ability") if c in schema.names]
    file_features = datasets.Features.from_arrow_schema(schema)
    # Declared at read time, not cast afterwards: casting a list-of-images column would rewrite every image's bytes.
    features = datasets.Features({c: _STORED_TYPES.get(c, file_features[c]) for c in columns})
    try:
        ds = datasets.Dataset.from_parquet(str(path), columns=columns, features=features, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - a column of the wrong type fails the cast; report, don't crash
        return None, [Problem("file", f"columns do not match the Orsta schema: {type(exc).__name__}: {exc}")]
    return ds, []


def _records(ds: datasets.Dataset) -> Iterable[dict[str, Any]]:
    """Rows as plain dicts, read in batches (images stay {bytes, path} dicts: the features say decode=False)."""
    for batch in ds.iter(batch_size=_SCAN_BATCH):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns), strict=True):
            yield dict(zip(columns, values, strict=True))


def _load_file(
    path: Path,
    sizing: ImageSizing,
    rescale: ReleaseRescale | None,
    validate: bool,
    cache_dir: str | os.PathLike | None,
) -> tuple[datasets.Dataset | None, list[tuple[str, int | None, Problem]]]:
    """One file -> stored-form Dataset (ROW_COLUMNS; prompt/reward_model as JSON) and its located problems."""
    ds, file_problems = _read_parquet(path, cache_dir)
    if ds is None:
        return None, [(str(path), None, p) for p in file_problems]
    prompts, sizes, reward_models, problems = [], [], [], []
    scan = ds.select_columns([c for c in ds.column_names if c != "ability"])  # ability needs no check
    for row, record in enumerate(_records(scan)):
        plan, row_problems = _plan_row(record, sizing, rescale, validate)
        problems += [(str(path), row, p) for p in row_problems]
        prompts.append(json.dumps(plan["prompt"], ensure_ascii=False))
        sizes.append(plan["image_sizes"])
        reward_models.append(json.dumps(plan["reward_model"], ensure_ascii=False))
    if "images" not in ds.column_names:
        ds = ds.add_column("images", [[] for _ in range(len(ds))], feature=datasets.List(datasets.Image(decode=False)))
    if "ability" not in ds.column_names:
        ds = ds.add_column("ability", [""] * len(ds), feature=datasets.Value("string"))
    base = ds.select_columns(["images", "data_source", "ability"])
    computed = datasets.Dataset.from_dict(
        {"prompt": prompts, "image_sizes": sizes, "reward_model": reward_models}, features=_STORED_FEATURES
    )
    merged = datasets.concatenate_datasets([base, computed], axis=1).select_columns(list(ROW_COLUMNS))
    return merged, problems


def load_orsta_files(
    paths: Iterable[str | os.PathLike],
    *,
    sizing: ImageSizing,
    rescale: ReleaseRescale | None = ReleaseRescale(),
    validate: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """Read Orsta parquet files into one Dataset of the row shape; images are decoded on row access.

    Every problem in every file is reported together in one DataError before anything trains. `cache_dir` is the
    `datasets` cache for the Arrow copy of the files (default: the `datasets` cache).
    """
    parts, problems = [], []
    for path in paths:
        ds, file_problems = _load_file(Path(path), sizing, rescale, validate, cache_dir)
        problems += file_problems
        if ds is not None:
            parts.append(ds)
    raise_problems(problems)
    if not parts:
        raise DataError("no data files were given to load_orsta_files")
    # concatenate_datasets may reorder columns (it keeps the blocks of the first file's table); restore the order.
    dataset = datasets.concatenate_datasets(parts).select_columns(list(ROW_COLUMNS))
    return dataset.with_transform(RowDecoder(rescale))
