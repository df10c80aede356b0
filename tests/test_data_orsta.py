"""The Orsta parquet reader: row shape, the release's rescale, model-side sizes, laziness, TRL indexing, errors.

Every test writes its own small parquet files in the Orsta-Data-47k schema with `datasets` (image bytes inside).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import datasets
import PIL.Image
import PIL.ImageFile
import pytest
from torch.utils.data import DataLoader
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from trl.trainer.utils import RepeatSampler, identity

import triune_trl.data.loader as loader
from triune_trl.data import ImageSizing, ReleaseRescale, load_orsta_files, row_from_orsta
from triune_trl.data.images import decode_image, header_size
from triune_trl.errors import DataError

DET_KEYS = ("iou_max_label_first", "iou_max_iou_first", "iou_completeness", "map", "map50", "map75")
ORSTA_FEATURES = datasets.Features(
    {
        "data_source": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
        "prompt": datasets.List({"content": datasets.Value("string"), "role": datasets.Value("string")}),
        "ability": datasets.Value("string"),
        "reward_model": {
            "answer": datasets.Value("string"),
            "ground_truth": datasets.Value("string"),
            "accuracy_ratio": datasets.Value("float64"),
            "format_ratio": datasets.Value("float64"),
            "verifier": datasets.Value("string"),
            "verifier_parm": {
                "det_verifier_normalized": datasets.Value("bool"),
                "det_reward_ratio": {key: datasets.Value("float64") for key in DET_KEYS},
            },
        },
        "extra_info": {"id": datasets.Value("string"), "image_path": datasets.Value("string")},
    }
)
SIZING = ImageSizing(factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 1280)  # Qwen2.5-VL's defaults


def image_bytes(width: int, height: int, mode: str = "RGB", fmt: str = "PNG", exif: bytes | None = None) -> bytes:
    """A small flat image, encoded as it would sit in the parquet."""
    buffer = io.BytesIO()
    image = PIL.Image.new(mode, (width, height))
    image.save(buffer, fmt, **({"exif": exif} if exif else {}))
    return buffer.getvalue()


def math_spec(verifier: str = "mathverify") -> dict[str, Any]:
    """A real mm_math-style reward spec (detection parameters null)."""
    return {
        "answer": "4",
        "ground_truth": "\\boxed{4}",
        "accuracy_ratio": 1.0,
        "format_ratio": 0.0,
        "verifier": verifier,
        "verifier_parm": {"det_verifier_normalized": None, "det_reward_ratio": dict.fromkeys(DET_KEYS)},
    }


def orsta_row(text: str, images: list[bytes], *, role: str = "user", verifier: str = "mathverify") -> dict:
    """One Orsta record with a single turn."""
    return {
        "data_source": "mm_math",
        "images": [{"bytes": data, "path": None} for data in images],
        "prompt": [{"content": text, "role": role}],
        "ability": "math",
        "reward_model": math_spec(verifier),
        "extra_info": {"id": "0", "image_path": ""},
    }


def write_orsta(path: Path, rows: list[dict]) -> Path:
    """Write rows as an Orsta-schema parquet file, as the release's files were written (datasets, bytes inside)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {name: [row[name] for row in rows] for name in ORSTA_FEATURES}
    datasets.Dataset.from_dict(columns, features=ORSTA_FEATURES).to_parquet(str(path))
    return path


@pytest.fixture
def load(tmp_path):
    """load_orsta_files with a private datasets cache, so tests leave nothing behind."""

    def _load(paths, **kwargs):
        kwargs.setdefault("sizing", SIZING)
        return load_orsta_files(paths, cache_dir=tmp_path / "hf_cache", **kwargs)

    return _load


# --- prompt conversion ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "n_images", "content"),
    [
        ("<image>What is shown?", 1, [{"type": "image"}, {"type": "text", "text": "What is shown?"}]),
        ("Look: <image>", 1, [{"type": "text", "text": "Look: "}, {"type": "image"}]),
        (
            "Compare <image> and <image>. Which is bigger?",
            2,
            [
                {"type": "text", "text": "Compare "},
                {"type": "image"},
                {"type": "text", "text": " and "},
                {"type": "image"},
                {"type": "text", "text": ". Which is bigger?"},
            ],
        ),
        ("<image><image>\n", 2, [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "\n"}]),
        ("No image here.", 0, [{"type": "text", "text": "No image here."}]),
    ],
)
def test_each_placeholder_becomes_an_image_part_in_place(text, n_images, content):
    row = row_from_orsta(orsta_row(text, [image_bytes(600, 500)] * n_images), SIZING)
    assert row["prompt"] == [{"role": "user", "content": content}]
    assert len(row["images"]) == len(row["image_sizes"]) == n_images


def test_system_turn_is_kept_as_text_and_roles_are_kept():
    record = orsta_row("<image>Q", [image_bytes(600, 500)])
    record["prompt"] = [{"role": "system", "content": "Be brief."}, *record["prompt"]]
    row = row_from_orsta(record, SIZING)
    assert row["prompt"] == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
    ]


def test_dataset_rows_have_exactly_the_row_shape(tmp_path, load):
    spec = math_spec()
    path = write_orsta(
        tmp_path / "train_math_mmmath_3.parquet",
        [orsta_row("<image>A", [image_bytes(600, 500)]), orsta_row("text only", []),
         orsta_row("A<image>B<image>C", [image_bytes(600, 500), image_bytes(700, 600)])],
    )
    dataset = load([path])
    assert dataset.column_names == ["prompt", "images", "image_sizes", "data_source", "reward_model", "ability"]
    one, text, two = dataset[0], dataset[1], dataset[2]
    assert one["prompt"] == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "A"}]}]
    assert len(one["images"]) == 1 and isinstance(one["images"][0], PIL.Image.Image)
    assert text["images"] == [] and text["image_sizes"] == []
    assert text["prompt"] == [{"role": "user", "content": [{"type": "text", "text": "text only"}]}]
    assert [part["type"] for part in two["prompt"][0]["content"]] == ["text", "image", "text", "image", "text"]
    assert len(two["images"]) == 2 and all(im.mode == "RGB" for im in two["images"])
    assert one["reward_model"] == spec  # unchanged, null detection parameters included
    assert (one["data_source"], one["ability"]) == ("mm_math", "math")
    assert list(dataset["image_sizes"]) == [[[588, 504]], [], [[588, 504], [700, 588]]]


# --- the release's rescale and the processor's resize -------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((100, 50), (724, 362)),  # upscaled: factor sqrt(512²/5000), sides truncated (area ends just below 512²)
        ((700, 300), (782, 335)),
        ((4200, 1100), (4001, 1048)),  # downscaled: factor sqrt(2048²/area), sides truncated
        ((600, 500), (600, 500)),  # inside [512², 2048²]: untouched
        ((2048, 2048), (2048, 2048)),
    ],
)
def test_release_rescale_arithmetic(size, expected):
    assert ReleaseRescale().target_size(*size) == expected


def test_release_rescale_matches_the_release_formula_on_a_sweep():
    """The release's process_image arithmetic, restated: downscale check first, then upscale, int() truncation."""

    def release(width, height, max_pixels=2048 * 2048, min_pixels=512 * 512):
        if width * height > max_pixels:
            factor = math.sqrt(max_pixels / (width * height))
            width, height = int(width * factor), int(height * factor)
        if width * height < min_pixels:
            factor = math.sqrt(min_pixels / (width * height))
            width, height = int(width * factor), int(height * factor)
        return width, height

    rule = ReleaseRescale()
    for width in (1, 7, 64, 333, 512, 1000, 2047, 3001, 9000):
        for height in (1, 5, 77, 512, 999, 2049, 5000):
            assert rule.target_size(width, height) == release(width, height)


def test_decoded_images_are_rescaled_and_rgb(tmp_path, load):
    path = write_orsta(
        tmp_path / "f.parquet",
        [orsta_row("<image>small", [image_bytes(100, 50, mode="L")]),
         orsta_row("<image>huge", [image_bytes(4200, 1100, mode="RGBA")]),
         orsta_row("<image>palette", [image_bytes(700, 300, mode="P")])],
    )
    rows = load([path]).__getitems__([0, 1, 2])
    assert [row["images"][0].size for row in rows] == [(724, 362), (4001, 1048), (782, 335)]
    assert all(row["images"][0].mode == "RGB" for row in rows)
    unscaled = load([path], rescale=None)[0]["images"][0]
    assert (unscaled.size, unscaled.mode) == ((100, 50), "RGB")


@pytest.fixture
def qwen_image_processor(monkeypatch):
    """A real Qwen2VLImageProcessor whose min and max pixels both act on the rescaled test images.

    transformers 5.17 writes min/max_pixels into the class-level `size` dict; the monkeypatch undoes that leak.
    """
    monkeypatch.setattr(Qwen2VLImageProcessor, "size", dict(Qwen2VLImageProcessor.size))
    return Qwen2VLImageProcessor(min_pixels=600 * 600, max_pixels=512 * 28 * 28)


@pytest.mark.parametrize("rescale", [ReleaseRescale(), None])
def test_image_sizes_are_what_the_processor_produces(tmp_path, load, qwen_image_processor, rescale):
    sizing = ImageSizing.from_processor(qwen_image_processor)
    assert sizing == ImageSizing(factor=28, min_pixels=600 * 600, max_pixels=512 * 28 * 28)
    sizes = [(100, 50), (4200, 1100), (700, 300), (1000, 990), (33, 900)]
    path = write_orsta(tmp_path / "f.parquet", [orsta_row("<image>", [image_bytes(w, h)]) for w, h in sizes])
    dataset = load([path], sizing=sizing, rescale=rescale)
    for row in dataset:
        grid = qwen_image_processor(images=row["images"], return_tensors="pt")["image_grid_thw"].tolist()
        assert row["image_sizes"] == [[w * 14, h * 14] for _, h, w in grid]


def test_sizing_is_read_from_a_processor_holding_an_image_processor(qwen_image_processor):
    class Processor:
        image_processor = qwen_image_processor

    assert ImageSizing.from_processor(Processor()) == ImageSizing.from_processor(qwen_image_processor)
    assert ImageSizing.from_processor(Processor()).model_size(100, 50) == (868, 448)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied_like_datasets_and_read_from_the_header(fmt):
    exif = PIL.Image.Exif()
    exif[PIL.Image.ExifTags.Base.Orientation] = 6  # rotated 90°: width and height swap
    data = image_bytes(100, 50, fmt=fmt, exif=exif.tobytes())
    as_datasets_decodes = datasets.Image().decode_example({"bytes": data, "path": None})
    assert header_size(data) == decode_image(data).size == as_datasets_decodes.size == (50, 100)


# --- laziness and TRL's indexing ----------------------------------------------------------------------------------


@pytest.fixture
def decode_counter(monkeypatch):
    """Counts pixel decodes: every PIL load and every image the reader's transform decodes."""
    counts = {"pil_load": 0, "reader_decode": 0}
    pil_load, reader_load = PIL.ImageFile.ImageFile.load, loader.load_image

    def counting_pil_load(self):
        counts["pil_load"] += 1
        return pil_load(self)

    def counting_reader_load(*args, **kwargs):
        counts["reader_decode"] += 1
        return reader_load(*args, **kwargs)

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", counting_pil_load)
    monkeypatch.setattr(loader, "load_image", counting_reader_load)
    return counts


def test_loading_reads_headers_only_and_rows_decode_on_access(tmp_path, load, decode_counter):
    formats = ["PNG", "JPEG", "PNG", "WEBP"]
    rows = [orsta_row("<image>", [image_bytes(300 + i, 200, fmt=fmt)]) for i, fmt in enumerate(formats)]
    dataset = load([write_orsta(tmp_path / "f.parquet", rows)])
    assert decode_counter == {"pil_load": 0, "reader_decode": 0}
    assert len(dataset["image_sizes"]) == 4 and decode_counter["reader_decode"] == 0
    dataset[2]
    assert decode_counter["reader_decode"] == 1


def test_trl_grpo_sampler_and_dataloader_get_pil_lists_decoding_each_image_once_per_batch(
    tmp_path, load, decode_counter
):
    rows = [orsta_row("<image>one", [image_bytes(600, 500)]), orsta_row("text", []),
            orsta_row("<image><image>two", [image_bytes(610, 500), image_bytes(620, 500)]),
            orsta_row("also text", [])]
    dataset = load([write_orsta(tmp_path / "f.parquet", rows)])
    # As GRPOTrainer.get_train_dataloader builds it: generation batch = 4 prompts x num_generations 2, no collation.
    num_generations, prompts_per_batch = 2, 4
    sampler = RepeatSampler(dataset, mini_repeat_count=num_generations, batch_size=prompts_per_batch,
                            repeat_count=1, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=num_generations * prompts_per_batch, sampler=sampler,
                        collate_fn=identity)
    (batch,) = list(loader)
    assert len(batch) == 8
    for row in batch:
        assert isinstance(row["images"], list) and all(isinstance(im, PIL.Image.Image) for im in row["images"])
        assert len(row["images"]) == len(row["image_sizes"])
    assert sorted(len(row["images"]) for row in batch) == [0, 0, 0, 0, 1, 1, 2, 2]
    assert decode_counter["reader_decode"] == 3  # each distinct image once, though each prompt came twice

    worker_batches = list(DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=identity))
    assert [len(row["images"]) for row in worker_batches[0]] == [1, 0, 2, 0]


# --- validation ---------------------------------------------------------------------------------------------------


def test_all_problems_of_all_files_are_reported_with_file_row_and_field(tmp_path, load):
    image = image_bytes(600, 500)
    first = write_orsta(
        tmp_path / "first.parquet",
        [
            orsta_row("<image>fine", [image]),
            orsta_row("<image>", [image], verifier="no_such_verifier"),
            orsta_row("<image> and <image>", [image]),
            orsta_row("no user turn", [], role="assistant"),
            orsta_row("both wrong", [image], verifier="no_such_verifier"),
        ],
    )
    second = write_orsta(
        tmp_path / "second.parquet",
        [orsta_row("<image>", [b"not an image"]), orsta_row("fine", [])],
    )
    with pytest.raises(DataError) as caught:
        load([first, second])
    lines = str(caught.value).splitlines()
    expected_prefixes = [
        f"{first}:1: reward_model.verifier: ",
        f"{first}:2: prompt: has 2 <image> placeholder(s) but the row has 1 image(s)",
        f"{first}:3: prompt: has no user turn",
        f"{first}:4: prompt: has 0 <image> placeholder(s) but the row has 1 image(s)",
        f"{first}:4: reward_model.verifier: ",
        f"{second}:0: images[0]: cannot read the image",
    ]
    for prefix in expected_prefixes:
        assert any(line.startswith(prefix) for line in lines), f"missing {prefix!r} in:\n{caught.value}"
    assert not any(f"{first}:0:" in line or f"{second}:1:" in line for line in lines)
    assert lines[-1].startswith(f"{len(lines) - 1} problem(s). Fix or remove the rows above")


def test_validate_false_skips_training_checks_but_not_unreadable_images(tmp_path, load):
    path = write_orsta(
        tmp_path / "f.parquet",
        [orsta_row("<image>", [image_bytes(600, 500)], verifier="no_such_verifier"), orsta_row("x <image>", [])],
    )
    assert len(load([path], validate=False)) == 2
    broken = write_orsta(tmp_path / "broken.parquet", [orsta_row("<image>", [b"\x89PNG broken"])])
    with pytest.raises(DataError, match=r"broken\.parquet:0: images\[0\]: cannot read the image"):
        load([broken], validate=False)


def test_missing_columns_and_non_parquet_files_are_data_errors(tmp_path, load):
    no_reward = tmp_path / "no_reward.parquet"
    datasets.Dataset.from_dict({"prompt": [[{"content": "q", "role": "user"}]], "data_source": ["x"]}).to_parquet(
        str(no_reward)
    )
    text_file = tmp_path / "rows.jsonl"
    text_file.write_text("{}\n")
    with pytest.raises(DataError) as caught:
        load([no_reward, text_file, tmp_path / "absent.parquet"])
    message = str(caught.value)
    assert f"{no_reward}: reward_model: column missing from the file" in message
    assert f"{text_file}: file: not a .parquet file" in message
    assert f"{tmp_path / 'absent.parquet'}: file: cannot read as parquet" in message


def test_row_from_orsta_raises_one_error_with_every_problem():
    record = orsta_row("<image><image>", [image_bytes(600, 500)], role="assistant", verifier="no_such_verifier")
    with pytest.raises(DataError) as caught:
        row_from_orsta(record, SIZING)
    message = str(caught.value)
    assert "<record>: prompt: has no user turn" in message
    assert "<record>: prompt: has 2 <image> placeholder(s) but the row has 1 image(s)" in message
    assert "<record>: reward_model.verifier: " in message


def test_files_with_differently_typed_reward_structs_concatenate(tmp_path, load):
    """A math-only file whose detection parameters were written as all-null columns still loads beside others."""
    math_only = tmp_path / "math.parquet"
    record = orsta_row("q", [])
    datasets.Dataset.from_list([record]).to_parquet(str(math_only))  # inferred types: null detection fields
    other = write_orsta(tmp_path / "other.parquet", [orsta_row("<image>", [image_bytes(600, 500)])])
    dataset = load([math_only, other])
    assert dataset.column_names == ["prompt", "images", "image_sizes", "data_source", "reward_model", "ability"]
    assert dataset[0]["reward_model"] == record["reward_model"]
    assert dataset[1]["reward_model"] == math_spec()
