"""Deterministic sample set in the Orsta-Data-47k parquet layout.

The real Orsta-Data-47k is 47.7K rows of licensed images; tests, the CPU recipe and first-time users need something
that has the same files, the same columns and the same reward specs, is a few hundred kilobytes, and is made
offline. `make_sample_dataset` draws every task of V-Triune (math, puzzle, science, chart, detection, grounding,
counting, OCR) plus a learnable demo task with PIL, from one seed, so that the same seed gives byte-identical files.

What is copied from the real data (see `reference/vtriune.md` section 1) and why:

- File names `{split}_{task}_{source}_{num}.parquet` under `train/` and `test/`; `num` is the file's row count.
  Source names carry no underscore so that the name splits without ambiguity.
- Columns and types: `ORSTA_FEATURES`. Rows of every verifier share one schema, the detection-only fields of
  `verifier_parm` are null on the other rows, as in the released files.
- mathverify rows store the question only. The release's loader (`verl/utils/dataset/rl_dataset.py`) appends a
  random "think step by step ... put the answer in \\boxed{}" instruction to every mathverify prompt at load time,
  so a stored instruction would be said twice. Detection and grounding rows carry their own instruction (output
  format, `<think>`/`<answer>` tags), because the loader adds nothing to them.
- Ground truth: `\\boxed{...}` for mathverify; for detection
  `<answer>\\n[{'bbox_2d': [x1, y1, x2, y2], 'label': 'red circle'}, ...]\\n</answer>` (the Python repr of the box
  list, Qwen2.5-VL style) with ints normalised to 0-1000 by `int(x / width * 1000)`, the same rule the detection
  verifier applies to predictions, so a pixel-perfect prediction scores exactly 1.
- Detection reward spec: accuracy 1.0, format 0.1, `det_verifier_normalized` true, ratios label-first 1.0,
  iou-first 0, completeness 0.3, every mAP 0: the values of the real `v3det_train` rows.

Pixels are drawn without anti-aliasing (except the text of the OCR, math and chart images), so every detection box is
the exact bounding box of its shape's pixels, and images are PNG (lossless) with fixed encoder settings.

The visuals are made to be learnable from pixels by a small model in minutes (the learning demo, `make learn`):
every image is a 224 px square (what the `learn` tiny model sees without resizing), shapes are 44 px, high-contrast
and sit in distinct cells of a 4 x 4 grid, and answers come from small ranges (1-6 shapes to count, 2-4 bars of
values 1-6, sums of two digits, one of eight words, three options). Difficulty still differs per task.

Answer styles (`answer_style`, `triune data make-sample --answer-style`): "think" (default) stores the questions as
above; "direct" (issue 24) appends an instruction to answer at once in the verifier's form (`direct_question`), so
a correct completion (`direct_completion`) is 5-15 tokens instead of a 30-40-token grounded think, and RL steps get
cheaper. Same images, golds and reward specs for a seed in both styles; read direct rows with `cot_prompts: false`.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import io
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, Features, List, Value
from PIL import Image, ImageDraw, ImageFont

from triune_trl.data.cot_prompts import direct_instruction

__all__ = [
    "ANSWER_STYLES",
    "DETECTION_VERIFIER_PARM",
    "ORSTA_FEATURES",
    "SAMPLE_SOURCES",
    "SAMPLE_TASKS",
    "SHAPE_COLOURS",
    "SHAPES",
    "SampleSource",
    "direct_completion",
    "direct_question",
    "make_sample_dataset",
]

# The brief of this project fixes float64. The Hub card of Orsta-Data-47k declares accuracy_ratio and
# format_ratio as float32 in its merged "default" config; change this one constant to follow it.
RATIO_DTYPE = "float64"

DET_REWARD_RATIO_KEYS = ("iou_max_label_first", "iou_max_iou_first", "iou_completeness", "map", "map50", "map75")

ORSTA_FEATURES = Features(
    {
        "data_source": Value("string"),
        "images": List(datasets.Image()),
        "prompt": List({"content": Value("string"), "role": Value("string")}),
        "ability": Value("string"),
        "reward_model": {
            "answer": Value("string"),
            "ground_truth": Value("string"),
            "accuracy_ratio": Value(RATIO_DTYPE),
            "format_ratio": Value(RATIO_DTYPE),
            "verifier": Value("string"),
            "verifier_parm": {
                "det_verifier_normalized": Value("bool"),
                "det_reward_ratio": {key: Value(RATIO_DTYPE) for key in DET_REWARD_RATIO_KEYS},
            },
        },
        "extra_info": {"id": Value("string"), "image_path": Value("string")},
    }
)

DETECTION_VERIFIER_PARM: dict[str, Any] = {
    "det_verifier_normalized": True,
    "det_reward_ratio": {
        "iou_max_label_first": 1.0,
        "iou_max_iou_first": 0.0,
        "iou_completeness": 0.3,
        "map": 0.0,
        "map50": 0.0,
        "map75": 0.0,
    },
}
_NO_VERIFIER_PARM: dict[str, Any] = {"det_verifier_normalized": None, "det_reward_ratio": None}

SHAPES = ("circle", "square", "triangle")
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 70),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
}
_BACKGROUNDS = ((255, 255, 255), (246, 246, 240), (238, 242, 248), (248, 242, 236))
# Every image is one square canvas on a grid of cells, each holding at most one shape inset by a margin. Why: the
# tasks must be learnable from pixels by a small model in minutes (`make learn`), so shapes are large (44 px, about
# 2 x 2 merged vision tokens of a 224 px image), high-contrast, never overlapping, and few; their boxes come from
# a small set of positions, which a small model can tell apart. 224 px is what the `learn` tiny model sees
# (64 merged tokens, no resize), so gold boxes on the 0-1000 grid map to whole pixels exactly.
CANVAS = 224
GRID = 4
_CELL = CANVAS // GRID
_CELL_MARGIN = 6  # free pixels between a shape and its cell's border: shapes are at least 12 px apart
_OCR_WORDS = ("sun", "cat", "tree", "book", "house", "river", "apple", "rocket")
_CHART_COLOURS = ("red", "green", "blue", "purple")
_CHART_MAX = 6
_DETECTION_INSTRUCTION = (
    "First think about the question inside <think> </think> tags, then give the final JSON list inside "
    "<answer> </answer> tags, for example:\n<think>\nreasoning process here\n</think>\n<answer>\n"
    '[{"bbox_2d": [x1, y1, x2, y2], "label": "object name"}]\n</answer>'
)
# `--answer-style direct` (issue 24): the detection instruction without reasoning; the empty think block keeps the
# layout the detection format reward looks for ("\n<answer>\n" ... "\n</answer>").
_DETECTION_DIRECT_INSTRUCTION = (
    "Answer directly, in the form:\n<think>\n</think>\n<answer>\n"
    '[{"bbox_2d": [x1, y1, x2, y2], "label": "object name"}]\n</answer>'
)
# How completions are asked for: "think" (the release's prompts; the default, byte-identical to earlier versions)
# or "direct" (the answer in the verifier's form, no reasoning: 5-15 tokens instead of 30-40; issue 24).
ANSWER_STYLES = ("think", "direct")
_EMPTY_THINK = "<think>\n</think>\n<answer>\n{answer}\n</answer>"
_TAG = "<ok>"
_TAG_PROMPTS = (
    f"Reply with the tag {_TAG}.",
    f"Answer with exactly {_TAG}.",
    f"Respond only with {_TAG}.",
)
_PNG_SETTINGS = {"format": "PNG", "optimize": False, "compress_level": 6}

Box = tuple[int, int, int, int]  # pixel box: left, top, right, bottom; right and bottom are one past the last pixel


@dataclass(frozen=True)
class Example:
    """One generated question, before it becomes an Orsta row: only what differs from row to row."""

    images: tuple[Image.Image, ...]
    question: str  # the user turn; one `<image>` per image, in order
    answer: str  # the raw answer
    ground_truth: str  # the formatted gold the verifier parses
    # What a reader of the image writes before answering, grounded in what was drawn ("c3 red circle 1, c9 red
    # square 2" for a count): the warm start's `<think>` text (triune_trl.runs.pretrain). Not stored in the parquet
    # rows.
    reasoning: str = ""


@dataclass(frozen=True)
class DrawnObject:
    """A shape as drawn: its label ("red circle") and the exact bounding box of its pixels."""

    colour: str
    shape: str
    box: Box

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def cell(self) -> int:
        """The grid cell (1 to GRID * GRID, in reading order) the shape's top-left corner lies in."""
        return (self.box[1] // _CELL) * GRID + self.box[0] // _CELL + 1


@dataclass(frozen=True)
class SampleSource:
    """One file pair of the sample set: where its rows go, how they are scored and how they are drawn."""

    task: str
    source: str
    data_source: str
    ability: str
    verifier: str
    accuracy_ratio: float
    format_ratio: float
    images_per_row: int
    build: Callable[[random.Random], Example]

    def file_name(self, split: str, rows: int) -> str:
        """The Orsta file name, so that readers and data configs treat the sample like the real set."""
        return f"{split}_{self.task}_{self.source}_{rows}.parquet"


# ---------------------------------------------------------------------------------------------------- drawing


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font: no system font lookup, so the pixels depend on the Pillow version only."""
    return ImageFont.load_default(size=size)


def _canvas(rng: random.Random) -> Image.Image:
    """A blank square RGB canvas with a light background."""
    return Image.new("RGB", (CANVAS, CANVAS), rng.choice(_BACKGROUNDS))


def _grid_slots(rng: random.Random, count: int) -> list[Box]:
    """`count` distinct random grid cells (at most GRID x GRID), each as the square slot its shape fills."""
    cells = rng.sample(range(GRID * GRID), min(count, GRID * GRID))
    slots = []
    for cell in cells:
        left, top = (cell % GRID) * _CELL + _CELL_MARGIN, (cell // GRID) * _CELL + _CELL_MARGIN
        slots.append((left, top, left + _CELL - 2 * _CELL_MARGIN, top + _CELL - 2 * _CELL_MARGIN))
    return slots


def _shape_mask(size: tuple[int, int], shape: str, slot: Box) -> Image.Image:
    """A 1-bit mask of the shape inscribed in `slot`, drawn without anti-aliasing."""
    mask = Image.new("1", size, 0)
    draw = ImageDraw.Draw(mask)
    left, top, right, bottom = slot[0], slot[1], slot[2] - 1, slot[3] - 1
    if shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=1)
    elif shape == "square":
        draw.rectangle((left, top, right, bottom), fill=1)
    elif shape == "triangle":
        draw.polygon([(left, bottom), (right, bottom), ((left + right) / 2, top)], fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return mask


def _draw_object(image: Image.Image, colour: str, shape: str, slot: Box) -> DrawnObject:
    """Paint one shape and return it with the bounding box of the pixels actually painted (the detection gold)."""
    mask = _shape_mask(image.size, shape, slot)
    image.paste(SHAPE_COLOURS[colour], mask=mask)
    box = mask.getbbox()
    if box is None:
        raise RuntimeError(f"shape {shape} in slot {slot} painted no pixel")
    return DrawnObject(colour, shape, box)


def _draw_objects(rng: random.Random, image: Image.Image, labels: Sequence[tuple[str, str]]) -> list[DrawnObject]:
    """Paint the (colour, shape) labels in random distinct grid cells (all of them: at most GRID x GRID)."""
    if len(labels) > GRID * GRID:
        raise ValueError(f"{len(labels)} shapes do not fit in a {GRID} x {GRID} grid")
    slots = _grid_slots(rng, len(labels))
    return [_draw_object(image, colour, shape, slot) for (colour, shape), slot in zip(labels, slots, strict=True)]


def _random_labels(rng: random.Random, count: int, palette: int | None = None) -> list[tuple[str, str]]:
    """`count` random (colour, shape) labels; a small `palette` makes repeated labels likely, as in real scenes."""
    categories = [(colour, shape) for colour in SHAPE_COLOURS for shape in SHAPES]
    if palette is not None:
        categories = rng.sample(categories, palette)
    return [rng.choice(categories) for _ in range(count)]


def _draw_text(image: Image.Image, xy: tuple[float, float], text: str, size: int, fill: tuple[int, int, int]) -> None:
    """Write text with the bundled font; `xy` is the top-left corner of the text's ink."""
    font = _font(size)
    left, top, _, _ = font.getbbox(text)
    ImageDraw.Draw(image).text((xy[0] - left, xy[1] - top), text, font=font, fill=fill)


def _text_size(text: str, size: int) -> tuple[int, int]:
    """Width and height of the text's ink, to place it inside the image."""
    left, top, right, bottom = _font(size).getbbox(text)
    return int(right - left), int(bottom - top)


def _encode_png(image: Image.Image) -> bytes:
    """PNG bytes with fixed encoder settings and no metadata chunks, so equal pixels give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, **_PNG_SETTINGS)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------- ground truth


def _boxed(value: object) -> str:
    """The mathverify gold form of an answer."""
    return f"\\boxed{{{value}}}"


def _normalize_box(box: Box, size: tuple[int, int]) -> list[int]:
    """Pixel box to 0-1000 ints with the rule the detection verifier applies to predictions."""
    width, height = size
    x1, y1, x2, y2 = box
    return [int(x1 / width * 1000), int(y1 / height * 1000), int(x2 / width * 1000), int(y2 / height * 1000)]


def _box_list(objects: Sequence[DrawnObject], size: tuple[int, int], labels: Sequence[str] | None = None) -> str:
    """The Qwen2.5-VL box list as the real rows print it: the Python repr of a list of dicts."""
    names = labels if labels is not None else [obj.label for obj in objects]
    pairs = zip(objects, names, strict=True)
    return repr([{"bbox_2d": _normalize_box(obj.box, size), "label": name} for obj, name in pairs])


def _answer_block(box_list: str) -> str:
    """Detection gold: the box list inside the answer tags, one newline either side, as in the real data."""
    return f"<answer>\n{box_list}\n</answer>"


def _reading_order(objects: Sequence[DrawnObject]) -> list[DrawnObject]:
    """Objects top to bottom, then left to right: a stable, human-like order for gold lists."""
    return sorted(objects, key=lambda obj: (obj.box[1], obj.box[0]))


# --------------------------------------------------------------------------------------------------- examples


def _centred_text(rng: random.Random, text: str, size: int, ink: tuple[int, int, int]) -> Image.Image:
    """A canvas with `text` written large, at a random place that keeps it whole."""
    image = _canvas(rng)
    text_w, text_h = _text_size(text, size)
    if text_w + 8 > CANVAS or text_h + 8 > CANVAS:
        raise ValueError(f"{text!r} at {size} px does not fit a {CANVAS} px canvas")
    corner = (rng.randint(4, CANVAS - text_w - 4), rng.randint(4, CANVAS - text_h - 4))
    _draw_text(image, corner, text, size, ink)
    return image


def _math_image_example(rng: random.Random) -> Example:
    """mm_math-like: a sum of two digits rendered large in the image, the question only asks for its value."""
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    image = _centred_text(rng, f"{a} + {b}", 44, (20, 20, 20))
    question = "<image>\nWhat is the value of the expression shown in the image?"
    return Example((image,), question, str(a + b), _boxed(a + b), f"{a} + {b} = {a + b}")


def _math_text_example(rng: random.Random) -> Example:
    """Text-only arithmetic: puts image-free rows into the mix so mixed text/image batches happen."""
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    if rng.random() < 0.5:
        question, value = f"What is {a} + {b}?", a + b
    else:
        question, value = f"What is {a} times {b % 12 + 1}?", a * (b % 12 + 1)
    return Example((), question, str(value), _boxed(value), f"= {value}")


def _panel(rng: random.Random, count: int) -> Image.Image:
    """A puzzle panel with `count` shapes of one colour."""
    image = _canvas(rng)
    colour = rng.choice(list(SHAPE_COLOURS))
    _draw_objects(rng, image, [(colour, rng.choice(SHAPES)) for _ in range(count)])
    return image


def _puzzle_example(rng: random.Random) -> Example:
    """PuzzleVQA-like with two images: compare or add the shape counts of two panels (1 to 4 shapes each)."""
    count_a, count_b = rng.randint(1, 4), rng.randint(1, 4)
    panel_a, panel_b = _panel(rng, count_a), _panel(rng, count_b)
    intro = "Panel A: <image>\nPanel B: <image>\n"
    if count_a != count_b and rng.random() < 0.5:
        answer = "A" if count_a > count_b else "B"
        question = intro + "Which panel contains more shapes? Answer with A or B."
    else:
        answer = str(count_a + count_b)
        question = intro + "How many shapes are there in the two panels altogether?"
    return Example((panel_a, panel_b), question, answer, _boxed(answer), f"A {count_a}, B {count_b}")


def _choices(options: Sequence[str]) -> str:
    """Lettered options, one a line, as multiple-choice science questions print them."""
    return "\n".join(f"{chr(ord('A') + i)}. {option}" for i, option in enumerate(options))


def _science_example(rng: random.Random) -> Example:
    """ScienceQA-like multiple choice about a diagram; the gold is the option letter."""
    image = _canvas(rng)
    if rng.random() < 0.5:
        shape = rng.choice(SHAPES)
        colours = rng.sample(list(SHAPE_COLOURS), rng.randint(2, 4))
        _draw_objects(rng, image, [(colour, shape) for colour in colours])
        options = rng.sample(SHAPES, len(SHAPES))
        stem = "Which shape do all of the objects in the diagram have?"
        correct = shape
    else:
        colour = rng.choice(list(SHAPE_COLOURS))
        side = rng.randint(80, 150)
        left, top = rng.randint(4, CANVAS - side - 4), rng.randint(4, CANVAS - side - 4)
        _draw_object(image, colour, rng.choice(SHAPES), (left, top, left + side, top + side))
        options = [colour, *rng.sample([c for c in SHAPE_COLOURS if c != colour], 2)]
        rng.shuffle(options)
        stem = "What is the colour of the object in the diagram?"
        correct = colour
    letter = chr(ord("A") + options.index(correct))
    question = f"<image>\n{stem}\n{_choices(options)}\nAnswer with the option's letter from the given choices."
    return Example((image,), question, letter, _boxed(letter), f"{correct} {letter}")


def _bar_chart(rng: random.Random, colours: Sequence[str], values: Sequence[int]) -> Image.Image:
    """Bars of distinct colours on one fixed scale (one unit = 28 px) over a base line, each value written above."""
    image = _canvas(rng)
    draw = ImageDraw.Draw(image)
    base, unit, bar_w = CANVAS - 16, 28, 36
    pitch = (CANVAS - 16) // len(colours)
    draw.line((6, base, CANVAS - 6, base), fill=(60, 60, 60), width=2)
    for i, (colour, value) in enumerate(zip(colours, values, strict=True)):
        centre = 8 + pitch // 2 + i * pitch
        bar_top = base - value * unit
        draw.rectangle((centre - bar_w // 2, bar_top, centre + bar_w // 2 - 1, base - 1), fill=SHAPE_COLOURS[colour])
        text_w, _ = _text_size(str(value), 14)
        _draw_text(image, (centre - text_w / 2, bar_top - 16), str(value), 14, (30, 30, 30))
    return image


def _chart_example(rng: random.Random) -> Example:
    """ChartQAPro-like: read the bar of one colour, or the largest value, of a bar chart; numeric gold 1-6."""
    count = rng.randint(2, 4)
    colours = rng.sample(_CHART_COLOURS, count)
    values = rng.sample(range(1, _CHART_MAX + 1), count)
    image = _bar_chart(rng, colours, values)
    bars = ", ".join(f"{colour} {value}" for colour, value in zip(colours, values, strict=True))
    if rng.random() < 0.5:
        target = rng.randrange(count)
        stem, value = f"What is the value of the {colours[target]} bar?", values[target]
        reasoning = f"{bars}; {colours[target]} {value}"
    else:
        stem, value = "What is the largest value shown in the bar chart?", max(values)
        reasoning = f"{bars}; largest {value}"
    return Example((image,), f"<image>\n{stem}", str(value), _boxed(value), reasoning)


def _detection_example(rng: random.Random) -> Example:
    """V3Det-like: find every object of the listed categories (1 to 3 shapes); gold boxes are the drawn shapes'."""
    image = _canvas(rng)
    objects = _reading_order(_draw_objects(rng, image, _random_labels(rng, rng.randint(1, 3), palette=3)))
    categories = ", ".join(dict.fromkeys(obj.label for obj in objects))
    question = (
        f"<image>\nDetect all objects in the image that belong to these categories: {categories}. "
        'Report each object as {"bbox_2d": [x1, y1, x2, y2], "label": "category name"} in pixel coordinates of '
        f"the image, and list every object, even when several share a category. {_DETECTION_INSTRUCTION}"
    )
    box_list = _box_list(objects, image.size)
    reasoning = ", ".join(f"c{obj.cell} {obj.label}" for obj in objects)
    return Example((image,), question, box_list, _answer_block(box_list), reasoning)


def _relation(target: DrawnObject, twin: DrawnObject) -> str:
    """Where the target is relative to its look-alike, along the axis on which they are further apart."""
    tx, ty = (target.box[0] + target.box[2]) / 2, (target.box[1] + target.box[3]) / 2
    ox, oy = (twin.box[0] + twin.box[2]) / 2, (twin.box[1] + twin.box[3]) / 2
    if abs(tx - ox) >= abs(ty - oy):
        return "on the left" if tx < ox else "on the right"
    return "at the top" if ty < oy else "at the bottom"


def _grounding_example(rng: random.Random) -> Example:
    """D3-like: one referred object among a look-alike and up to one distractor; a single gold box."""
    colour, shape = rng.choice(list(SHAPE_COLOURS)), rng.choice(SHAPES)
    others = [label for label in _random_labels(rng, rng.randint(0, 1)) if label != (colour, shape)]
    image = _canvas(rng)
    objects = _draw_objects(rng, image, [(colour, shape), (colour, shape), *others])
    target = objects[rng.randrange(2)]
    twin = objects[1] if target is objects[0] else objects[0]
    phrase = f"{target.label} {_relation(target, twin)}"
    question = (
        f"<image>\nLocate the {phrase} in the image. Report its bounding box in pixel coordinates of the image as "
        f'{{"bbox_2d": [x1, y1, x2, y2], "label": "{phrase}"}}. {_DETECTION_INSTRUCTION}'
    )
    box_list = _box_list([target], image.size, labels=[phrase])
    return Example((image,), question, box_list, _answer_block(box_list), f"c{target.cell} {target.label}")


def _enumeration(objects: Iterator[DrawnObject] | Sequence[DrawnObject]) -> str:
    """The matching objects in cell order with a running count ("c3 red circle 1, c9 red square 2"): the count is
    then a copy of the last index, so a reader only has to find the next matching cell, never pool silently."""
    ordered = sorted(objects, key=lambda obj: obj.cell)
    return ", ".join(f"c{obj.cell} {obj.label} {index}" for index, obj in enumerate(ordered, 1))


def _counting_example(rng: random.Random) -> Example:
    """CLEVR-like counting by shape, by colour or in total (1 to 6 shapes); integer gold."""
    image = _canvas(rng)
    objects = _draw_objects(rng, image, _random_labels(rng, rng.randint(1, 6), palette=4))
    pick = rng.choice(objects)
    kind = rng.choice(("shape", "colour", "total"))
    if kind == "shape":
        stem, count = f"How many {pick.shape}s are there in the image?", sum(o.shape == pick.shape for o in objects)
    elif kind == "colour":
        stem, count = (
            f"How many {pick.colour} objects are there in the image?",
            sum(o.colour == pick.colour for o in objects),
        )
    else:
        stem, count = "How many objects are there in the image?", len(objects)
    reasoning = _enumeration(obj for obj in objects if kind == "total" or getattr(obj, kind) == getattr(pick, kind))
    return Example((image,), f"<image>\n{stem}", str(count), _boxed(count), reasoning)


def _ocr_example(rng: random.Random) -> Example:
    """EST-VQA-like: read the word written large in the image (one of a few words); the word is the boxed gold."""
    word = rng.choice(_OCR_WORDS)
    ink = (rng.randint(0, 90), rng.randint(0, 90), rng.randint(0, 90))
    image = _centred_text(rng, word, 40, ink)
    return Example((image,), "<image>\nWhat word is written in the image?", word, _boxed(word), f"word {word}")


def _tag_example(rng: random.Random) -> Example:
    """The learnable demo: answer with one short tag, so a random tiny model can reach reward 1 quickly."""
    return Example((), rng.choice(_TAG_PROMPTS), _TAG, _TAG)


SAMPLE_SOURCES: tuple[SampleSource, ...] = (
    SampleSource("math", "mmmath", "mm_math", "math", "mathverify", 1.0, 0.0, 1, _math_image_example),
    SampleSource("math", "textmath", "text_math", "math", "mathverify", 1.0, 0.0, 0, _math_text_example),
    SampleSource("puzzle", "puzzlevqa", "puzzlevqa", "puzzle", "mathverify", 1.0, 0.0, 2, _puzzle_example),
    # One mathverify source in "close form" (format_ratio > 0) so both CoT prompt pools and the format reward
    # of mathverify are exercised by the sample set.
    SampleSource("science", "scienceqa", "scienceqa", "science", "mathverify", 1.0, 0.1, 1, _science_example),
    SampleSource("chart", "chartqapro", "chartqapro", "chart", "mathverify", 1.0, 0.0, 1, _chart_example),
    SampleSource("detection", "v3det", "v3det_train", "cv_detection", "detection", 1.0, 0.1, 1, _detection_example),
    SampleSource("grounding", "d3", "d3", "cv_grounding", "detection", 1.0, 0.1, 1, _grounding_example),
    SampleSource("counting", "clevr", "clevr", "cv_counting", "mathverify", 1.0, 0.0, 1, _counting_example),
    SampleSource("ocr", "estvqa", "estvqa", "cv_ocr", "mathverify", 1.0, 0.0, 1, _ocr_example),
    SampleSource("format", "tagformat", "tag_format", "format", "tag", 1.0, 0.0, 0, _tag_example),
)
SAMPLE_TASKS: tuple[str, ...] = tuple(dict.fromkeys(source.task for source in SAMPLE_SOURCES))


# ---------------------------------------------------------------------------------------------- answer styles


def _reward_form(source: SampleSource) -> dict[str, Any]:
    """The part of a row's reward spec that decides which instruction and layout apply."""
    return {"verifier": source.verifier, "format_ratio": source.format_ratio}


def direct_question(source: SampleSource, question: str) -> str:
    """The `--answer-style direct` form of a generated question: the same task, asking for the answer alone.

    mathverify rows get the direct instruction of their form (`cot_prompts.direct_instruction`) in the stored
    prompt; detection and grounding rows swap their think-first instruction for a direct one; other rows (the tag
    task) already ask for the answer alone.
    """
    if source.verifier == "detection":
        if not question.endswith(_DETECTION_INSTRUCTION):
            raise RuntimeError(f"{source.data_source}: the question does not end with the detection instruction")
        return question[: -len(_DETECTION_INSTRUCTION)] + _DETECTION_DIRECT_INSTRUCTION
    return question + (direct_instruction(_reward_form(source)) or "")


def _pixel_box_list(gold: str, size: tuple[int, int]) -> str:
    """A detection gold ("<answer>\\n[...]\\n</answer>", boxes on the 0-1000 grid) as the box list a model writes:
    pixel coordinates of an image of `size`, which the verifier normalises back with `_normalize_box`'s rule."""
    width, height = size
    boxes = ast.literal_eval(gold.strip()[len("<answer>") : -len("</answer>")].strip())
    for box in boxes:
        x1, y1, x2, y2 = box["bbox_2d"]
        box["bbox_2d"] = [round(x1 * width / 1000), round(y1 * height / 1000), round(x2 * width / 1000),
                          round(y2 * height / 1000)]
    return repr(boxes)


def direct_completion(reward_model: Mapping[str, Any], image_size: tuple[int, int] | None = None) -> str:
    """The correct completion of a direct-answer row (its stored `reward_model`), in the layout its verifier scores
    in full.

    Free-form mathverify rows (format_ratio 0) do not weigh format, so the boxed gold alone (5-6 tokens) is
    complete; close-form mathverify and detection rows weigh format, so the answer sits in the tag layout behind an
    empty think block (about 14 tokens). Detection boxes are written in pixels of `image_size` (the image as the
    model sees it), as the prompt asks. What a direct warm start is trained on, and what the tests score with the
    real verifiers.
    """
    gold = reward_model["ground_truth"]
    if reward_model["verifier"] == "detection":
        if image_size is None:
            raise ValueError("a detection row's completion is in pixels: pass the image size the model sees")
        return _EMPTY_THINK.format(answer=_pixel_box_list(gold, image_size))
    if reward_model["verifier"] == "mathverify" and reward_model["format_ratio"] != 0:
        return _EMPTY_THINK.format(answer=gold)
    return gold


# -------------------------------------------------------------------------------------------------------- rows


def _row(source: SampleSource, split: str, index: int, example: Example) -> dict[str, Any]:
    """An Orsta row: the example plus the source's reward spec and metadata."""
    if example.question.count("<image>") != len(example.images):
        raise RuntimeError(f"{source.data_source}: placeholders and images disagree in {example.question!r}")
    row_id = f"{source.source}_{split}_{index:05d}"
    names = [f"{row_id}_{k}.png" for k in range(len(example.images))]
    is_detection = source.verifier == "detection"
    return {
        "data_source": source.data_source,
        "images": [{"bytes": _encode_png(img), "path": name} for img, name in zip(example.images, names, strict=True)],
        "prompt": [{"content": example.question, "role": "user"}],
        "ability": source.ability,
        "reward_model": {
            "answer": example.answer,
            "ground_truth": example.ground_truth,
            "accuracy_ratio": source.accuracy_ratio,
            "format_ratio": source.format_ratio,
            "verifier": source.verifier,
            "verifier_parm": DETECTION_VERIFIER_PARM if is_detection else _NO_VERIFIER_PARM,
        },
        "extra_info": {"id": row_id, "image_path": ",".join(names)},
    }


def _file_rng(seed: int, split: str, source: SampleSource) -> random.Random:
    """One random stream per file: a file's rows depend on the seed only, not on the other files or counts."""
    return random.Random(f"triune-sample:{seed}:{split}:{source.data_source}")


def _styled(source: SampleSource, example: Example, answer_style: str) -> Example:
    """The example with its question in the answer style; drawing is untouched, so every style has the same
    images and golds for a seed."""
    if answer_style == "think":
        return example
    return dataclasses.replace(example, question=direct_question(source, example.question))


def _rows(source: SampleSource, split: str, count: int, seed: int, answer_style: str = "think") -> list[dict[str, Any]]:
    """`count` rows of one source and split."""
    rng = _file_rng(seed, split, source)
    return [_row(source, split, index, _styled(source, source.build(rng), answer_style)) for index in range(count)]


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Silence the `datasets` progress bar of `to_parquet` for one call, leaving the user's setting as it was."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    """Write rows with `datasets`, as the real files were written, under the fixed Orsta features."""
    columns = {name: [row[name] for row in rows] for name in ORSTA_FEATURES}
    dataset = Dataset.from_dict(columns, features=ORSTA_FEATURES)
    with _quiet_progress_bars():
        dataset.to_parquet(str(path))


def _remove_stale(directory: Path, split: str, source: SampleSource) -> None:
    """Drop this generator's earlier files of the source (other row counts) so a glob never reads both."""
    for stale in directory.glob(f"{split}_{source.task}_{source.source}_*.parquet"):
        if stale.stem.rsplit("_", 1)[-1].isdigit():
            stale.unlink()


def make_sample_dataset(
    out_dir: str | Path, *, seed: int = 0, train_rows: int = 24, test_rows: int = 4, answer_style: str = "think"
) -> list[Path]:
    """Write the sample set under `out_dir/train` and `out_dir/test` and return the files, train first.

    Every source of `SAMPLE_SOURCES` gets `train_rows` training rows and `test_rows` test rows. The same seed gives
    byte-identical files (with the same Pillow, zlib and pyarrow versions); earlier sample files of the same
    sources in `out_dir` are replaced. `answer_style` "direct" asks for the answer alone in the verifier's form
    (`direct_question`; same images, golds and reward specs as "think"); read such rows with `cot_prompts: false`
    (data_configs/sample_see_direct.yaml).
    """
    if train_rows < 1 or test_rows < 1:
        raise ValueError(f"train_rows and test_rows must be at least 1, got {train_rows} and {test_rows}")
    if answer_style not in ANSWER_STYLES:
        raise ValueError(f"answer_style must be one of {', '.join(ANSWER_STYLES)}, got {answer_style!r}")
    written: list[Path] = []
    for split, count in (("train", train_rows), ("test", test_rows)):
        directory = Path(out_dir) / split
        directory.mkdir(parents=True, exist_ok=True)
        for source in SAMPLE_SOURCES:
            _remove_stale(directory, split, source)
            path = directory / source.file_name(split, count)
            _write_parquet(_rows(source, split, count, seed, answer_style), path)
            written.append(path)
    return written
