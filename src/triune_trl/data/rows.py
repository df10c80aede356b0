"""The one row shape (docs/architecture.md): converting a reader's record into it, and every check a row must pass.

Every reader (Orsta parquet, OmniRL JSON, VLM-R1 JSONL, native JSONL) first turns a source row into a *record*:
`{prompt: [{role, content}], images: [image sources], data_source, reward_model, ability}`, where `content` is the
Orsta string with `<image>` placeholders or a list of TRL content parts. `plan_row` then does what is common to all
formats: messages with typed parts, the size each image will have when the model sees it (from the image header
only: no pixels are decoded), and the validation rules, each problem naming the dotted field it is about.

Reward specs are checked through the rewards registry (`triune_trl.rewards.validate_reward_spec`), so a verifier
added there is accepted here without a change. `SpecChecker` caches those checks per distinct spec: parsing a math
gold with math-verify is the one expensive check, and real files repeat golds (`\\boxed{A}`, small integers).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import PIL

from triune_trl.data.images import ImageResize, ImageSizing, ImageSource, header_size, rescaled_size
from triune_trl.errors import DataError

__all__ = [
    "IMAGE_PLACEHOLDER",
    "ROLES",
    "ROW_COLUMNS",
    "LocatedProblem",
    "Problem",
    "RowPlan",
    "SpecChecker",
    "count_image_parts",
    "format_problems",
    "messages_from_prompt",
    "plan_row",
    "raise_problems",
]

IMAGE_PLACEHOLDER = "<image>"
ROW_COLUMNS = ("prompt", "images", "image_sizes", "data_source", "reward_model", "ability")
ROLES = frozenset({"system", "user", "assistant", "tool"})  # the roles TRL's prepare_multimodal_messages accepts
PART_TYPES = frozenset({"text", "image"})
DET_ACCURACY_KEYS = ("iou_max_label_first", "iou_max_iou_first", "map", "map50", "map75")
_HINT = (
    "Fix or remove the rows above (fields follow the Orsta-Data-47k schema, docs/data.md), then load again."
)


@dataclass(frozen=True)
class Problem:
    """One reason a row cannot be trained on; `field` is a dotted path into the source record."""

    field: str
    message: str


@dataclass(frozen=True)
class LocatedProblem:
    """A problem with its place: file, and row (None for a problem of the whole file)."""

    source: str
    row: int | None
    problem: Problem

    def __str__(self) -> str:
        where = f"{self.source}:{self.row}" if self.row is not None else self.source
        return f"{where}: {self.problem.field}: {self.problem.message}"


def format_problems(problems: Sequence[LocatedProblem]) -> list[str]:
    """One `FILE:ROW: field: message` line per problem."""
    return [str(problem) for problem in problems]


def raise_problems(problems: Sequence[LocatedProblem | tuple[str, int | None, Problem]]) -> None:
    """Raise one DataError listing every problem as `FILE:ROW: field: message`, plus a hint; no-op when empty."""
    if not problems:
        return
    located = [p if isinstance(p, LocatedProblem) else LocatedProblem(*p) for p in problems]
    lines = format_problems(located)
    raise DataError("\n".join([*lines, f"{len(lines)} problem(s). {_HINT}"]))


def _parts_from_text(text: str) -> list[dict[str, Any]]:
    """Orsta content string -> parts: each `<image>` an image part in place, empty text pieces dropped (release)."""
    parts: list[dict[str, Any]] = []
    for j, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if j:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def _parts_from_list(content: Sequence[Any], where: str, problems: list[Problem]) -> list[dict[str, Any]]:
    """TRL content parts, checked and normalised to `{"type": "image"}` / `{"type": "text", "text": str}`."""
    parts: list[dict[str, Any]] = []
    for k, part in enumerate(content):
        field = f"{where}.content[{k}]"
        if not isinstance(part, Mapping) or part.get("type") not in PART_TYPES:
            problems.append(Problem(field, f"expected {{type: text, text}} or {{type: image}}, got {part!r:.80}"))
        elif part["type"] == "image":
            parts.append({"type": "image"})
        elif not isinstance(part.get("text"), str):
            problems.append(Problem(f"{field}.text", f"expected a string, got {part.get('text')!r:.80}"))
        elif IMAGE_PLACEHOLDER in part["text"]:
            problems.append(
                Problem(f"{field}.text", f"contains {IMAGE_PLACEHOLDER}: in content parts, use an {{type: image}} part")
            )
        else:
            parts.append({"type": "text", "text": part["text"]})
    return parts


def messages_from_prompt(prompt: Any) -> tuple[list[dict[str, Any]], list[Problem]]:
    """A record's prompt -> TRL conversational messages with typed content parts.

    `content` is either the Orsta string (every `<image>` becomes a `{"type": "image"}` part in place, the text
    around it text parts; empty text pieces are dropped, as in the release) or a list of TRL content parts. All
    turns are converted the same way, system turns included.
    """
    if not isinstance(prompt, list) or not prompt:
        return [], [Problem("prompt", f"expected a non-empty list of {{role, content}} turns, got {prompt!r:.80}")]
    messages, problems = [], []
    for i, turn in enumerate(prompt):
        where = f"prompt[{i}]"
        if not isinstance(turn, Mapping):
            problems.append(Problem(where, f"expected a {{role, content}} turn, got {turn!r:.80}"))
            continue
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            problems.append(Problem(f"{where}.role", f"{role!r} is not one of {sorted(ROLES)}"))
        if isinstance(content, str):
            parts = _parts_from_text(content)
        elif isinstance(content, list):
            parts = _parts_from_list(content, where, problems)
        else:
            problems.append(Problem(f"{where}.content", f"expected a string or a list of parts, got {content!r:.80}"))
            continue
        messages.append({"role": role, "content": parts})
    return messages, problems


def count_image_parts(messages: Iterable[Mapping[str, Any]]) -> int:
    """Number of `{"type": "image"}` parts: must equal the number of images the row carries."""
    return sum(part.get("type") == "image" for message in messages for part in message["content"])


def _image_problem(image: ImageSource, exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        path = image.get("path") if isinstance(image, Mapping) else image
        return f"no such image file {path} (relative paths resolve against the file's image_root)"
    if isinstance(exc, PIL.UnidentifiedImageError):
        return "cannot read the image: not an image format Pillow recognizes"
    return f"cannot read the image: {type(exc).__name__}: {exc}"


def image_sizes(
    images: Sequence[ImageSource], sizing: ImageSizing, rescale: ImageResize | None
) -> tuple[list[list[int]], list[Problem]]:
    """Per image, [width, height] as the model sees it, from the header only; problems for unusable images."""
    sizes, problems = [], []
    for i, image in enumerate(images):
        field = f"images[{i}]"
        try:
            width, height = header_size(image)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad bytes; all mean "unreadable"
            problems.append(Problem(field, _image_problem(image, exc)))
            continue
        try:
            new_width, new_height = rescaled_size(width, height, rescale)
        except ValueError as exc:  # qwen-vl-utils refuses aspect ratios above 200
            problems.append(Problem(field, f"the image resize rule refuses this {width}x{height} image: {exc}"))
            continue
        if new_width < 1 or new_height < 1:
            problems.append(Problem(field, f"{width}x{height} rescales to {new_width}x{new_height}: too thin to use"))
            continue
        try:
            sizes.append(list(sizing.model_size(new_width, new_height)))
        except ValueError as exc:
            problems.append(Problem(field, f"the processor cannot take this {new_width}x{new_height} image: {exc}"))
    return sizes, problems


class SpecChecker:
    """`reward_model` checks: the rewards registry's, then the data-side rules; cached per distinct spec.

    Data-side rules, reported only where the registry has not already flagged the same field:
    - the ground truth is a non-empty string (a verifier that would accept "" would score against nothing);
    - a detection spec weighs at least one accuracy term (all-zero weights make accuracy 0 for every answer).
    """

    def __init__(self) -> None:
        self._cache: dict[str, list[Problem]] = {}

    def __call__(self, reward_model: Any) -> list[Problem]:
        if not isinstance(reward_model, Mapping):
            return [Problem("reward_model", f"expected a reward spec struct, got {reward_model!r:.80}")]
        key = json.dumps(reward_model, sort_keys=True, default=repr)
        if key not in self._cache:
            self._cache[key] = self._check(reward_model)
        return self._cache[key]

    def __len__(self) -> int:
        return len(self._cache)

    @staticmethod
    def _check(reward_model: Mapping[str, Any]) -> list[Problem]:
        from triune_trl import rewards  # at call time: the rewards package may import this one

        problems = []
        for field, message in rewards.validate_reward_spec(dict(reward_model)):
            path = field if field == "reward_model" or field.startswith("reward_model.") else f"reward_model.{field}"
            problems.append(Problem(path, message))
        flagged = {p.field for p in problems}
        gold = reward_model.get("ground_truth")
        if isinstance(gold, str) and not gold.strip() and "reward_model.ground_truth" not in flagged:
            problems.append(Problem("reward_model.ground_truth", "is empty: a row needs a gold answer to score"))
        problems += _detection_weight_problems(reward_model, flagged)
        return problems


def _detection_weight_problems(reward_model: Mapping[str, Any], flagged: set[str]) -> list[Problem]:
    """All-zero detection accuracy weights, on detection rows or wherever the weights are explicitly given."""
    field = "reward_model.verifier_parm.det_reward_ratio"
    parm = reward_model.get("verifier_parm")
    if isinstance(parm, str):
        try:
            parm = json.loads(parm)
        except ValueError:
            return []
    ratio = parm.get("det_reward_ratio") if isinstance(parm, Mapping) else None
    if not isinstance(ratio, Mapping) or any(f.startswith(field) for f in flagged):
        return []
    values = [ratio.get(key) for key in DET_ACCURACY_KEYS]
    explicit = any(value is not None for value in ratio.values())
    if (reward_model.get("verifier") == "detection" or explicit) and not any(values):
        keys = ", ".join(DET_ACCURACY_KEYS)
        return [Problem(field, f"every accuracy weight ({keys}) is 0 or null: accuracy would be 0 for every answer")]
    return []


@dataclass
class RowPlan:
    """Everything about a row except its pixels."""

    messages: list[dict[str, Any]]
    image_sizes: list[list[int]]
    data_source: Any
    reward_model: Any
    ability: str


def plan_row(
    record: Mapping[str, Any],
    sizing: ImageSizing,
    rescale: ImageResize | None,
    *,
    validate: bool = True,
    checker: SpecChecker | None = None,
) -> tuple[RowPlan, list[Problem]]:
    """A record's messages, model-side image sizes and problems.

    Problems that make the row impossible to build (bad prompt structure, unreadable images) are always reported;
    `validate` adds the checks training needs: a user turn, as many `<image>` placeholders as images, a
    data_source, and a reward spec whose verifier exists and whose gold parses for it.
    """
    images = record.get("images") or []
    messages, problems = messages_from_prompt(record.get("prompt"))
    sizes, image_problems = image_sizes(images, sizing, rescale)
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
        problems += (checker if checker is not None else SpecChecker())(record.get("reward_model"))
    ability = record.get("ability")
    plan = RowPlan(
        messages=messages,
        image_sizes=sizes,
        data_source=record.get("data_source"),
        reward_model=record.get("reward_model"),
        ability=ability if isinstance(ability, str) else "",
    )
    return plan, problems
