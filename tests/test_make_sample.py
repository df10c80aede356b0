"""The sample generator writes real Orsta-layout parquet: names, schema, images, gold boxes and determinism."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from triune_trl.data.cot_prompts import DIRECT_CLOSE_FORM, DIRECT_FREE_FORM
from triune_trl.data.make_sample import (
    SAMPLE_SOURCES,
    SAMPLE_TASKS,
    SHAPE_COLOURS,
    direct_completion,
    make_sample_dataset,
)

FILE_NAME = re.compile(r"^(train|test)_([a-z0-9]+)_([a-z0-9]+)_(\d+)\.parquet$")
EXPECTED_TASKS = {"math", "puzzle", "science", "chart", "detection", "grounding", "counting", "ocr", "format"}
DETECTION_SOURCES = {"v3det_train", "d3"}
GOLD_BOX = re.compile(r"\{'bbox_2d': \[\d+, \d+, \d+, \d+\], 'label': '[a-z ]+'\}")

# Built by hand (not from the module's Features) so that a drift of the generator's schema fails here.
RATIO = pa.float64()
ORSTA_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("ability", pa.string()),
        (
            "reward_model",
            pa.struct(
                [
                    ("answer", pa.string()),
                    ("ground_truth", pa.string()),
                    ("accuracy_ratio", RATIO),
                    ("format_ratio", RATIO),
                    ("verifier", pa.string()),
                    (
                        "verifier_parm",
                        pa.struct(
                            [
                                ("det_verifier_normalized", pa.bool_()),
                                (
                                    "det_reward_ratio",
                                    pa.struct(
                                        [
                                            (key, RATIO)
                                            for key in (
                                                "iou_max_label_first",
                                                "iou_max_iou_first",
                                                "iou_completeness",
                                                "map",
                                                "map50",
                                                "map75",
                                            )
                                        ]
                                    ),
                                ),
                            ]
                        ),
                    ),
                ]
            ),
        ),
        ("extra_info", pa.struct([("id", pa.string()), ("image_path", pa.string())])),
    ]
)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_sample_dataset(tmp_path_factory.mktemp("sample"), seed=0)


def rows_of(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def all_rows(paths: list[Path]) -> list[dict]:
    return [row for path in paths for row in rows_of(path)]


def parse_gold_boxes(ground_truth: str) -> list[dict]:
    assert ground_truth.startswith("<answer>\n[") and ground_truth.endswith("]\n</answer>"), ground_truth
    return ast.literal_eval(ground_truth[len("<answer>\n") : -len("\n</answer>")])


def painted_box(image: Image.Image, around: tuple[float, ...], colour: tuple[int, int, int]) -> tuple[int, ...]:
    """Bounding box (right/bottom exclusive) of the `colour` pixels within 3 px of `around`, in image coordinates.

    Shapes are drawn at least 6 px apart, so no other shape's pixels fall in that margin.
    """
    region = (
        max(0, int(around[0]) - 3),
        max(0, int(around[1]) - 3),
        min(image.width, int(around[2]) + 4),
        min(image.height, int(around[3]) + 4),
    )
    crop = image.crop(region)
    mask = Image.new("1", crop.size, 0)
    mask.putdata([int(pixel == colour) for pixel in crop.getdata()])
    left, top, right, bottom = mask.getbbox()
    return left + region[0], top + region[1], right + region[0], bottom + region[1]


def test_every_task_is_in_both_splits_with_orsta_file_names(sample: list[Path]) -> None:
    assert set(SAMPLE_TASKS) == EXPECTED_TASKS
    seen: dict[str, set[str]] = {"train": set(), "test": set()}
    for path in sample:
        match = FILE_NAME.match(path.name)
        assert match, path.name
        split, task, _source, num = match.groups()
        assert path.parent.name == split
        assert int(num) == pq.read_metadata(path).num_rows == (24 if split == "train" else 4)
        seen[split].add(task)
    assert seen["train"] == seen["test"] == EXPECTED_TASKS
    assert len(sample) == 2 * len(SAMPLE_SOURCES)


def test_schema_is_the_orsta_schema(sample: list[Path]) -> None:
    for path in sample:
        assert pq.read_schema(path).remove_metadata() == ORSTA_SCHEMA, path.name


def test_images_are_embedded_pngs_that_decode(sample: list[Path]) -> None:
    for row in all_rows(sample):
        for image in row["images"]:
            assert image["bytes"] and (image["path"] is None or image["path"].endswith(".png"))
            decoded = Image.open(io.BytesIO(image["bytes"]))
            decoded.load()
            assert decoded.format == "PNG" and decoded.mode == "RGB"
            assert all(100 <= side <= 320 for side in decoded.size), decoded.size


def test_one_user_turn_with_one_placeholder_per_image(sample: list[Path]) -> None:
    per_source = {source.data_source: source.images_per_row for source in SAMPLE_SOURCES}
    for row in all_rows(sample):
        (turn,) = row["prompt"]
        assert turn["role"] == "user"
        assert turn["content"].count("<image>") == len(row["images"]) == per_source[row["data_source"]]
    counts = set(per_source.values())
    assert {0, 1, 2} <= counts, "text-only, single- and multi-image rows must all occur"


def test_reward_specs_follow_the_released_rows(sample: list[Path]) -> None:
    for row in all_rows(sample):
        spec = row["reward_model"]
        assert spec["accuracy_ratio"] == 1.0
        if spec["verifier"] == "detection":
            assert row["data_source"] in DETECTION_SOURCES
            assert spec["format_ratio"] == 0.1
            assert spec["verifier_parm"] == {
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
        else:
            assert spec["verifier_parm"] == {"det_verifier_normalized": None, "det_reward_ratio": None}
        if spec["verifier"] == "mathverify":
            assert spec["ground_truth"] == f"\\boxed{{{spec['answer']}}}"
            assert "\\boxed" not in row["prompt"][0]["content"], "the CoT instruction is added by the reader"
        if row["data_source"] == "mm_math":
            assert spec["format_ratio"] == 0.0
        if spec["verifier"] == "tag":
            assert spec["ground_truth"] == spec["answer"] == "<ok>" and spec["format_ratio"] == 0.0


def test_mathverify_gold_parses(sample: list[Path]) -> None:
    math_verify = pytest.importorskip("math_verify")
    for row in all_rows(sample):
        spec = row["reward_model"]
        if spec["verifier"] == "mathverify":
            assert math_verify.parse(spec["ground_truth"].lower(), extraction_mode="first_match"), spec


def test_detection_gold_is_the_drawn_shapes(sample: list[Path]) -> None:
    checked = 0
    for row in all_rows(sample):
        if row["data_source"] not in DETECTION_SOURCES:
            continue
        gold = row["reward_model"]["ground_truth"]
        assert re.fullmatch(rf"<answer>\n\[{GOLD_BOX.pattern}(, {GOLD_BOX.pattern})*\]\n</answer>", gold), gold
        image = Image.open(io.BytesIO(row["images"][0]["bytes"])).convert("RGB")
        width, height = image.size
        boxes = parse_gold_boxes(gold)
        assert boxes and all(isinstance(box, dict) for box in boxes)
        if row["data_source"] == "d3":
            assert len(boxes) == 1
        for box in boxes:
            x1, y1, x2, y2 = box["bbox_2d"]
            assert all(isinstance(v, int) and 0 <= v <= 1000 for v in box["bbox_2d"])
            assert x1 <= x2 and y1 <= y2
            assert box["label"] in row["prompt"][0]["content"]
            colour = SHAPE_COLOURS[box["label"].split()[0]]
            centre = (int((x1 + x2) / 2000 * width), int((y1 + y2) / 2000 * height))
            assert image.getpixel(centre) == colour, (row["extra_info"], box)
            # Tight: the shape's own pixels span the box, up to the rounding of the 0-1000 grid.
            expected = (x1 * width / 1000, y1 * height / 1000, x2 * width / 1000, y2 * height / 1000)
            found = painted_box(image, expected, colour)
            assert all(abs(f - e) <= 1.0 for f, e in zip(found, expected, strict=True)), (box, found, expected)
            checked += 1
    assert checked >= 28


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = make_sample_dataset(tmp_path / "a", seed=7, train_rows=3, test_rows=1)
    again = make_sample_dataset(tmp_path / "b", seed=7, train_rows=3, test_rows=1)
    other = make_sample_dataset(tmp_path / "c", seed=8, train_rows=3, test_rows=1)
    assert [p.name for p in first] == [p.name for p in again] == [p.name for p in other]
    for a, b in zip(first, again, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    # Files with images differ for sure (random sizes); a text-only file of one row may repeat by chance.
    drawn = {
        s.file_name(split, n) for s in SAMPLE_SOURCES if s.images_per_row for split, n in (("train", 3), ("test", 1))
    }
    for a, c in zip(first, other, strict=True):
        assert a.name not in drawn or a.read_bytes() != c.read_bytes(), a.name


def test_rerun_with_other_counts_replaces_the_old_files(tmp_path: Path) -> None:
    make_sample_dataset(tmp_path, train_rows=2, test_rows=1)
    written = make_sample_dataset(tmp_path, train_rows=3, test_rows=2)
    assert sorted(tmp_path.glob("*/*.parquet")) == sorted(written)


def test_rejects_empty_splits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        make_sample_dataset(tmp_path, train_rows=0)


# --- `--answer-style direct` (issue 24): short completions for fast RL, scored by the unchanged verifiers ---------


@pytest.fixture(scope="module")
def both_styles(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    root = tmp_path_factory.mktemp("styles")
    think = make_sample_dataset(root / "think", seed=5, train_rows=6, test_rows=2)
    direct = make_sample_dataset(root / "direct", seed=5, train_rows=6, test_rows=2, answer_style="direct")
    return think, direct


def test_direct_style_changes_only_the_prompt(both_styles: tuple[list[Path], list[Path]]) -> None:
    think, direct = both_styles
    assert [p.name for p in think] == [p.name for p in direct]
    for think_path, direct_path in zip(think, direct, strict=True):
        for a, b in zip(rows_of(think_path), rows_of(direct_path), strict=True):
            assert {k: v for k, v in a.items() if k != "prompt"} == {k: v for k, v in b.items() if k != "prompt"}
            question, direct_question = a["prompt"][0]["content"], b["prompt"][0]["content"]
            verifier = a["reward_model"]["verifier"]
            if verifier == "mathverify":  # the question, then the direct instruction of the row's form
                form = DIRECT_FREE_FORM if a["reward_model"]["format_ratio"] == 0 else DIRECT_CLOSE_FORM
                assert direct_question == f"{question}\n\n{form}"
            elif verifier == "detection":  # the think-first instruction is swapped for a direct one
                assert "First think" in question and "First think" not in direct_question
                assert direct_question.startswith(question.split(" First think")[0])
                assert direct_question.endswith('Answer directly, in the form:\n<think>\n</think>\n<answer>\n'
                                                '[{"bbox_2d": [x1, y1, x2, y2], "label": "object name"}]\n</answer>')
            else:
                assert direct_question == question


def test_direct_completions_get_the_full_reward_from_the_real_verifiers(
    both_styles: tuple[list[Path], list[Path]],
) -> None:
    from triune_trl.rewards import score_sample

    seen = set()
    for row in all_rows(both_styles[1]):
        spec = row["reward_model"]
        size = Image.open(io.BytesIO(row["images"][0]["bytes"])).size if row["images"] else None
        for seen_size in [size, (112, 112)] if size else [None]:  # as stored, and as the `see` model sees it
            right = score_sample(direct_completion(spec, seen_size), spec, image_size=seen_size, step=0, total_steps=10)
            assert right["accuracy_reward"] == 1.0 and right["final_reward"] == pytest.approx(1.0), (row, right)
            if spec["format_ratio"]:
                assert right["format_reward"] == 1.0, (row["data_source"], direct_completion(spec, seen_size))
        wrong = score_sample("\\boxed{nothing}", spec, image_size=size, step=0, total_steps=10)
        assert wrong["accuracy_reward"] == 0.0
        seen.add(row["data_source"])
    assert seen == {source.data_source for source in SAMPLE_SOURCES}


def test_direct_completions_are_short() -> None:
    free = {"verifier": "mathverify", "format_ratio": 0.0, "ground_truth": "\\boxed{3}"}
    close = {**free, "format_ratio": 0.1, "ground_truth": "\\boxed{B}"}
    assert direct_completion(free) == "\\boxed{3}"
    assert direct_completion(close) == "<think>\n</think>\n<answer>\n\\boxed{B}\n</answer>"
    with pytest.raises(ValueError, match="image size"):
        direct_completion({"verifier": "detection", "format_ratio": 0.1, "ground_truth": "<answer>\n[]\n</answer>"})


def test_cli_answer_style_flag_and_unknown_styles(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from triune_trl.cli import main

    assert main(["data", "make-sample", str(tmp_path / "d"), "--train-rows", "1", "--test-rows", "1",
                 "--answer-style", "direct"]) == 0
    (row,) = rows_of(tmp_path / "d" / "train" / "train_ocr_estvqa_1.parquet")
    assert row["prompt"][0]["content"].endswith(DIRECT_FREE_FORM)
    with pytest.raises(ValueError, match="answer_style"):
        make_sample_dataset(tmp_path / "e", answer_style="short")
