"""`triune data convert IN --to orsta OUT`: any reader's rows written as an Orsta-Data-47k parquet file.

Why: the Orsta schema is the one every V-Triune tool reads (the release's verl loader included), and a parquet
file carries its image bytes with it, so a converted OmniRL or VLM-R1 set no longer depends on an image folder.

The file is validated first, exactly as training would validate it; one bad row and nothing is written. Rows are
then written in source order, a batch at a time (memory stays bounded by the batch, not the file), to a temporary
file that replaces OUT only when complete. What is written:

- `prompt`: one `{content, role}` per turn, image parts back as `<image>` placeholders;
- `images`: the original encoded bytes of each image (never re-encoded: the loader resizes at read time), with
  the path relative to the image root;
- `reward_model`: the Orsta struct. `verifier_parm` is the Orsta struct `{det_verifier_normalized,
  det_reward_ratio}` when no row has other parameters; otherwise the struct is widened to the union of every row's
  keys (null where a row does not use one, which the verifiers read as absent), and only if the rows disagree on a
  key's type is the column written as JSON strings (which the reward spec parser reads the same way);
- `extra_info`: `{id: "<file key>:<row>", image_path: the image paths joined with ","}`.

Per-file weights, sample caps and CoT prompts are training-time choices and are not applied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from triune_trl.data.images import ImageResize, ImageSizing
from triune_trl.data.loader import iter_file_records, progress_bar, resolve_format, scan_files
from triune_trl.data.make_sample import DET_REWARD_RATIO_KEYS, ORSTA_FEATURES
from triune_trl.data.options import FileSpec
from triune_trl.data.rows import IMAGE_PLACEHOLDER, LocatedProblem, Problem, plan_row, raise_problems

__all__ = ["convert_to_orsta", "orsta_prompt", "orsta_reward_model"]

_BATCH = 256
_PARM_KEYS = ("det_verifier_normalized", "det_reward_ratio")


def orsta_prompt(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """TRL messages -> Orsta turns: text parts joined, each image part an `<image>` placeholder in place."""
    return [
        {
            "content": "".join(IMAGE_PLACEHOLDER if part["type"] == "image" else part["text"] for part in m["content"]),
            "role": m["role"],
        }
        for m in messages
    ]


def _verifier_parm(value: Any) -> dict[str, Any] | None:
    """A verifier_parm as a dict (it may be a JSON string), or None."""
    if isinstance(value, (str, bytes)):
        value = json.loads(value) if value.strip() else None
    return dict(value) if isinstance(value, Mapping) else None


def _orsta_parm(reward_model: Mapping[str, Any]) -> dict[str, Any]:
    """verifier_parm with the two Orsta keys always present (det_reward_ratio with its six keys) plus any others."""
    parm = _verifier_parm(reward_model.get("verifier_parm")) or {}
    ratio = parm.get("det_reward_ratio")
    return {
        **parm,
        "det_verifier_normalized": parm.get("det_verifier_normalized"),
        "det_reward_ratio": None if ratio is None else {key: ratio.get(key) for key in DET_REWARD_RATIO_KEYS},
    }


def orsta_reward_model(reward_model: Mapping[str, Any], parm_as_json: bool = False) -> dict[str, Any]:
    """A row's reward spec as the Orsta struct (verifier_parm as a dict, or a JSON string when asked)."""
    parm = _orsta_parm(reward_model)
    answer = reward_model.get("answer")
    return {
        "answer": None if answer is None else str(answer),
        "ground_truth": reward_model.get("ground_truth"),
        "accuracy_ratio": float(reward_model["accuracy_ratio"]),
        "format_ratio": float(reward_model["format_ratio"]),
        "verifier": reward_model.get("verifier"),
        "verifier_parm": json.dumps(parm, ensure_ascii=False) if parm_as_json else parm,
    }


def _stored_image(image: Mapping[str, Any], image_root: Path) -> dict[str, Any]:
    """{bytes, path}: the image's own bytes (read from disk for path-only images), path relative to the root."""
    if image.get("bytes") is not None:
        return {"bytes": image["bytes"], "path": image.get("path")}
    path = Path(image["path"])
    try:
        name = Path(os.path.relpath(path, image_root)).as_posix()
    except ValueError:
        name = str(path)
    return {"bytes": path.read_bytes(), "path": name if not name.startswith("..") else str(path)}


def _orsta_rows(spec: FileSpec, fmt: str, parm_as_json: bool, sizing: ImageSizing, rescale: ImageResize | None
                ) -> Iterator[dict[str, Any]]:
    """The file's rows in the Orsta schema, in order (the file has been validated)."""
    image_root = spec.options.image_root if spec.options.image_root is not None else spec.path.parent
    for row, record, _ in iter_file_records(spec, fmt)[1]:
        if record is None:
            continue
        plan, _ = plan_row(record, sizing, rescale, validate=False)
        images = [_stored_image(image, image_root) for image in record.get("images") or []]
        yield {
            "data_source": plan.data_source,
            "images": images,
            "prompt": orsta_prompt(plan.messages),
            "ability": plan.ability,
            "reward_model": orsta_reward_model(plan.reward_model, parm_as_json),
            "extra_info": {"id": f"{spec.key}:{row}", "image_path": ",".join(i["path"] or "" for i in images)},
        }


def _parm_feature(spec: FileSpec, fmt: str) -> Any:
    """The datasets feature of verifier_parm: Orsta's struct, the union struct of every row's keys, or a string."""
    orsta_feature = ORSTA_FEATURES["reward_model"]["verifier_parm"]
    parms = [_orsta_parm(record["reward_model"]) for _, record, _ in iter_file_records(spec, fmt)[1] if record]
    if all(set(parm) <= set(_PARM_KEYS) for parm in parms):
        return orsta_feature
    try:
        inferred = pa.array(parms).type
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a key with values of different types in different rows
        return datasets.Value("string")
    union = datasets.Features.from_arrow_schema(pa.schema([("verifier_parm", inferred)]))["verifier_parm"]
    return {**union, **orsta_feature}  # the Orsta keys keep their Orsta types


def convert_to_orsta(spec: FileSpec, out: str | os.PathLike, *, sizing: ImageSizing,
                     rescale: ImageResize | None) -> int:
    """Validate `spec`'s file, then write it to `out` in the Orsta schema; returns the number of rows written.

    Raises DataError listing every problem (and writes nothing) when the file does not validate.
    """
    (scan,) = scan_files([spec], sizing=sizing, rescale=rescale, keep_plans=False, desc="validating")
    raise_problems(scan.problems)
    fmt, _ = resolve_format(spec)  # known: scan_files reports an unknown format as a problem
    parm_feature = _parm_feature(spec, fmt)
    parm_as_json = parm_feature == datasets.Value("string")
    features = datasets.Features(ORSTA_FEATURES)
    features["reward_model"] = {**ORSTA_FEATURES["reward_model"], "verifier_parm": parm_feature}
    schema = features.arrow_schema
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    written = 0
    try:
        with pq.ParquetWriter(partial, schema) as writer, progress_bar(len(scan.rows), "converting") as bar:
            batch: list[dict[str, Any]] = []
            for row in _orsta_rows(spec, fmt, parm_as_json, sizing, rescale):
                batch.append(row)
                bar.update(1)
                if len(batch) == _BATCH:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    written, batch = written + len(batch), []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                written += len(batch)
        partial.replace(out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise_problems([LocatedProblem(str(out), None, Problem("file", f"cannot write: {exc}"))])
    return written
