"""Readers of the JSON-family formats: OmniRL JSON, VLM-R1 JSONL and the native JSONL of the row shape.

Each converter turns one source row into a *record* (`rows.py`), the form `plan_row` takes:
`{prompt: [{role, content}], images: [{bytes: None, path}], data_source, reward_model, ability}`. Image paths are
resolved against the file's image root here, and stay paths: the pixels are read when a row is accessed.

- OmniRL (`[{"problem", "solution", "image": [paths] | path}]`, a JSON array or JSONL): text-only, one-image and
  multi-image rows may be mixed in one file. VLM-R1 (`{"image": str | [str], "conversations": [{"from": "human",
  "value"}, {"from": "gpt", "value"}], "accu_reward_method"?}`, JSONL): every turn before the last `gpt` turn is
  the prompt (`human` -> user, `gpt` -> assistant, `system`), the last `gpt` value is the solution.
  Both carry no reward spec: the file's `RewardDefaults` make one from the solution (its `<answer>` tags
  stripped, as VLM-R1 does), and a VLM-R1 `accu_reward_method` selects per row which defaults apply.
- Images and placeholders: `<image>` in the question marks where each image goes; a question without any
  placeholder gets its images in front of the text, which is how both projects build their prompts.
- Native JSONL: one row of the row shape per line (`prompt` with string or part contents, `images` as paths,
  `data_source`, `reward_model`, `ability`); `image_sizes` is recomputed, never trusted.

Rows are numbered as a user finds them: the index in a JSON array (from 0, like parquet rows), the line number in
JSONL (from 1, as editors show it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from triune_trl.data.options import FileOptions, RewardDefaults
from triune_trl.data.rows import IMAGE_PLACEHOLDER, Problem

__all__ = ["CONVERTERS", "JSON_FORMATS", "Record", "detect_format", "read_json_rows", "resolve_image"]

Record = dict[str, Any]
Converted = tuple[Record | None, list[Problem]]
JSON_FORMATS = ("omnirl", "vlm-r1", "native")
_VLM_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_ANSWER_TAGS = ("<answer>", "</answer>")


def detect_format(path: Path) -> tuple[str | None, str]:
    """(format, "") for a file, or (None, why) when neither its extension nor its first row tells."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "orsta", ""
    if suffix == ".json":
        return "omnirl", ""
    if suffix != ".jsonl":
        return None, f"cannot tell the format of a {suffix or 'extensionless'} file: set `format:` for it"
    try:
        with path.open(encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), None)
        keys = json.loads(first) if first is not None else {}
    except (OSError, ValueError) as exc:
        return None, f"cannot read the first row to tell the format: {type(exc).__name__}: {exc}"
    if isinstance(keys, Mapping):
        for key, name in (("conversations", "vlm-r1"), ("prompt", "native"), ("problem", "omnirl")):
            if key in keys:
                return name, ""
    return None, "the first row has none of conversations (VLM-R1), prompt (native), problem (OmniRL): set `format:`"


def read_json_rows(path: Path) -> tuple[list[tuple[int, Any]], list[tuple[int | None, Problem]]]:
    """(row number, parsed value) of a JSON array or JSONL file, and located problems (bad lines, bad files)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [(None, Problem("file", f"cannot read: {type(exc).__name__}: {exc}"))]
    if path.suffix.lower() != ".jsonl" and text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except ValueError as exc:
            return [], [(None, Problem("file", f"not valid JSON: {exc}"))]
        return list(enumerate(values)), []
    rows, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except ValueError as exc:
            problems.append((number, Problem("line", f"not valid JSON: {exc}")))
    return rows, problems


def resolve_image(value: Any, image_root: Path) -> dict[str, Any] | None:
    """An image reference (path string or {path}) as a `datasets.Image` dict with an absolute path; None if not one."""
    if isinstance(value, Mapping):
        value = value.get("path")
    if not isinstance(value, str) or not value:
        return None
    path = Path(os.path.expanduser(value.removeprefix("file://")))
    return {"bytes": None, "path": str(path if path.is_absolute() else image_root / path)}


def _images(value: Any, field: str, image_root: Path) -> tuple[list[dict[str, Any]], list[Problem]]:
    """A row's image references: none, one path, or a list of paths."""
    if value is None:
        return [], []
    values = [value] if isinstance(value, (str, Mapping)) else value
    if not isinstance(values, list):
        return [], [Problem(field, f"expected a path or a list of paths, got {value!r:.80}")]
    images, problems = [], []
    for i, item in enumerate(values):
        image = resolve_image(item, image_root)
        if image is None:
            problems.append(Problem(f"{field}[{i}]", f"expected a non-empty path string, got {item!r:.80}"))
        else:
            images.append(image)
    return images, problems


def _with_leading_images(text: str, count: int) -> str:
    """The question with one `<image>` per image in front when it has no placeholder of its own."""
    return IMAGE_PLACEHOLDER * count + text if count and IMAGE_PLACEHOLDER not in text else text


def _answer(value: Any, field: str) -> tuple[str | None, list[Problem]]:
    """The raw answer of a solution: `<answer>` tags stripped, numbers as text; a problem if missing or empty."""
    if isinstance(value, bool) or value is None or not isinstance(value, (str, int, float)):
        return None, [Problem(field, f"expected the answer as a string or number, got {value!r:.80}")]
    answer = str(value)
    for tag in _ANSWER_TAGS:
        answer = answer.replace(tag, "")
    answer = answer.strip()
    if not answer:
        return None, [Problem(field, "is empty: a row needs a gold answer to score")]
    return answer, []


def _reward_model(raw: Mapping[str, Any], answer: str | None, options: FileOptions) -> tuple[Any, list[Problem]]:
    """The reward spec of a row without one: the file's defaults, chosen per `accu_reward_method` if present."""
    method = raw.get("accu_reward_method")
    if method is not None and not isinstance(method, str):
        return None, [Problem("accu_reward_method", f"expected a string, got {method!r:.80}")]
    defaults = options.reward_for_method(method)
    if defaults is None and method not in (None, "default"):
        from triune_trl import rewards  # at call time: the rewards package may import this one

        if method in rewards.available_verifiers():
            defaults = (options.reward or RewardDefaults()).merged({"verifier": method})
        else:
            return None, [
                Problem("accu_reward_method", f"{method!r} maps to no verifier: add it to this file's reward_methods "
                        f"in the data config (e.g. reward_methods: {{{method}: mathverify}})")
            ]
    if defaults is None or defaults.verifier is None:
        return None, [Problem("reward_model", "this format carries no reward spec and the data config gives none: "
                              "set `reward: {verifier: ...}` for this file")]
    if answer is None:
        return None, []
    return defaults.spec_for(answer), []


def _meta(raw: Mapping[str, Any], path: Path, options: FileOptions) -> dict[str, Any]:
    """data_source and ability: the row's own, else the file's options, else the file's stem for data_source."""
    source = raw.get("data_source")
    ability = raw.get("ability")
    return {
        "data_source": source if isinstance(source, str) and source else options.data_source or path.stem,
        "ability": ability if isinstance(ability, str) else options.ability or "",
    }


def convert_omnirl(raw: Any, path: Path, options: FileOptions, image_root: Path) -> Converted:
    """One OmniRL row `{"problem", "solution", "image"?}` -> a record."""
    if not isinstance(raw, Mapping):
        return None, [Problem("row", f"expected an object with problem and solution, got {raw!r:.80}")]
    images, problems = _images(raw.get("image"), "image", image_root)
    question = raw.get("problem")
    if not isinstance(question, str) or not question.strip():
        problems.append(Problem("problem", f"expected a non-empty question string, got {question!r:.80}"))
        question = ""
    answer, answer_problems = _answer(raw.get("solution"), "solution")
    reward_model, reward_problems = _reward_model(raw, answer, options)
    problems += answer_problems + reward_problems
    record = {
        "prompt": [{"role": "user", "content": _with_leading_images(question, len(images))}],
        "images": images,
        "reward_model": reward_model,
        **_meta(raw, path, options),
    }
    return record, problems


def convert_vlm_r1(raw: Any, path: Path, options: FileOptions, image_root: Path) -> Converted:
    """One VLM-R1 row `{"image", "conversations", "accu_reward_method"?}` -> a record."""
    if not isinstance(raw, Mapping):
        return None, [Problem("row", f"expected an object with conversations, got {raw!r:.80}")]
    images, problems = _images(raw.get("image"), "image", image_root)
    conversations = raw.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        return None, [*problems, Problem("conversations", f"expected a list of turns, got {conversations!r:.80}")]
    turns = []
    for i, turn in enumerate(conversations):
        speaker = turn.get("from") if isinstance(turn, Mapping) else None
        value = turn.get("value") if isinstance(turn, Mapping) else None
        if speaker not in _VLM_ROLES:
            problems.append(Problem(f"conversations[{i}].from", f"expected one of {sorted(_VLM_ROLES)}, got "
                                    f"{speaker!r:.40}"))
        elif _VLM_ROLES[speaker] != "assistant" and not isinstance(value, str):
            problems.append(Problem(f"conversations[{i}].value", f"expected a string, got {value!r:.80}"))
        else:
            turns.append((i, _VLM_ROLES[speaker], value))
    answer_at = max((i for i, role, _ in turns if role == "assistant"), default=None)
    if answer_at is None:
        problems.append(Problem("conversations", "has no gpt turn holding the solution"))
        answer = None
    else:
        answer, answer_problems = _answer(conversations[answer_at]["value"], f"conversations[{answer_at}].value")
        problems += answer_problems
    prompt = [{"role": role, "content": value} for i, role, value in turns if answer_at is None or i < answer_at]
    placed = any(IMAGE_PLACEHOLDER in turn["content"] for turn in prompt if isinstance(turn["content"], str))
    if any(turn["role"] == "user" for turn in prompt) and not placed:
        first_user = next(turn for turn in prompt if turn["role"] == "user")
        first_user["content"] = _with_leading_images(first_user["content"], len(images))
    reward_model, reward_problems = _reward_model(raw, answer, options)
    problems += reward_problems
    record = {"prompt": prompt, "images": images, "reward_model": reward_model, **_meta(raw, path, options)}
    return record, problems


def convert_native(raw: Any, path: Path, options: FileOptions, image_root: Path) -> Converted:
    """One row of the row shape -> a record (image paths resolved, image_sizes recomputed)."""
    if not isinstance(raw, Mapping):
        return None, [Problem("row", f"expected an object with prompt, images, data_source, reward_model, got "
                              f"{raw!r:.80}")]
    images, problems = _images(raw.get("images"), "images", image_root)
    if "reward_model" not in raw:
        problems.append(Problem("reward_model", "missing: every native row carries its reward spec"))
    record = {"prompt": raw.get("prompt"), "images": images, "reward_model": raw.get("reward_model"),
              **_meta(raw, path, options)}
    return record, problems


CONVERTERS: dict[str, Callable[[Any, Path, FileOptions, Path], Converted]] = {
    "omnirl": convert_omnirl,
    "vlm-r1": convert_vlm_r1,
    "native": convert_native,
}

