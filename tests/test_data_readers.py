"""Every reader into the one row shape, on files the tests write: OmniRL JSON/JSONL, VLM-R1 JSONL, native JSONL,
Orsta parquet train and test, all of them mixed in one data config; image roots; the qwen-vl resize rule."""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import pytest
import yaml

import triune_trl.data.loader as loader
from triune_trl.data import (
    FileOptions,
    FileSpec,
    ImageSizing,
    QwenVLResize,
    RewardDefaults,
    load_data_config,
    load_files,
    load_split,
)
from triune_trl.data.rows import ROW_COLUMNS
from triune_trl.errors import DataError

from .test_data_orsta import image_bytes, math_spec, orsta_row, write_orsta

SIZING = ImageSizing()
DET_PARM = {
    "det_verifier_normalized": True,
    "det_reward_ratio": {"iou_max_label_first": 1.0, "iou_max_iou_first": 0.0, "iou_completeness": 0.3, "map": 0.0,
                         "map50": 0.0, "map75": 0.0},
}


def write_png(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.new("RGB", (width, height), (200, 10, 10)).save(path)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def types(message: dict) -> list[str]:
    return [part["type"] for part in message["content"]]


@pytest.fixture
def load(tmp_path):
    def _load(specs, **kwargs):
        return load_files(specs, sizing=SIZING, cache_dir=tmp_path / "hf_cache", **kwargs)

    return _load


@pytest.fixture
def images_dir(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    for name, size in {"a.png": (600, 500), "b.png": (700, 600), "c.png": (640, 480), "d.png": (800, 600)}.items():
        write_png(folder / name, *size)
    return folder


def test_omnirl_json_mixing_text_only_one_image_and_three_image_rows(tmp_path, images_dir, load):
    rows = [
        {"problem": "What is 2+2?", "solution": "<answer> 4 </answer>"},
        {"problem": "How many circles?", "solution": "3", "image": ["a.png"]},
        {"problem": "Compare <image>, <image> and <image>.", "solution": "\\boxed{B}",
         "image": ["a.png", "b.png", "c.png"]},
        {"problem": "Which is larger?", "solution": 7, "image": ["b.png", "d.png", "c.png"]},
    ]
    path = tmp_path / "data" / "geo_train.json"
    path.parent.mkdir()
    path.write_text(json.dumps(rows))
    options = FileOptions(image_root=images_dir, reward=RewardDefaults(verifier="mathverify"), ability="math")
    dataset = load([FileSpec(path, options)])
    assert dataset.column_names == list(ROW_COLUMNS)
    text, one, placed, leading = (dataset[i] for i in range(4))

    assert text["prompt"] == [{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}]
    assert text["images"] == [] and text["image_sizes"] == []
    assert types(one["prompt"][0]) == ["image", "text"] and len(one["images"]) == 1
    # placeholders stay where the question puts them; a question without any gets its images in front
    assert types(placed["prompt"][0]) == ["text", "image", "text", "image", "text", "image", "text"]
    assert types(leading["prompt"][0]) == ["image", "image", "image", "text"]
    assert [im.size for im in leading["images"]] == [(700, 600), (800, 600), (640, 480)]
    assert leading["image_sizes"] == [[700, 588], [812, 588], [644, 476]]
    assert all(im.mode == "RGB" for im in placed["images"])

    # the reward spec comes from the file's defaults, gold formatted as Orsta formats it
    assert text["reward_model"] == {"answer": "4", "ground_truth": "\\boxed{4}", "accuracy_ratio": 1.0,
                                    "format_ratio": 0.0, "verifier": "mathverify", "verifier_parm": None}
    assert placed["reward_model"]["ground_truth"] == "\\boxed{B}"  # already boxed: kept as is
    assert leading["reward_model"]["answer"] == "7"
    assert {row["data_source"] for row in dataset} == {"geo_train"}  # the file's stem
    assert {row["ability"] for row in dataset} == {"math"}


def test_omnirl_as_jsonl_with_a_single_path_string_and_row_data_source(tmp_path, images_dir, load):
    path = write_jsonl(tmp_path / "mix.jsonl", [
        {"problem": "Read the sign.", "solution": "stop", "image": "a.png", "data_source": "signs"},
        {"problem": "Say hi.", "solution": "hi", "image": []},
    ])
    options = FileOptions(image_root=images_dir, data_source="fallback",
                          reward=RewardDefaults(verifier="tag", format_ratio=0.5, ground_truth="<{answer}>"))
    dataset = load([FileSpec(path, options)])
    assert [row["data_source"] for row in dataset] == ["signs", "fallback"]
    assert [len(row["images"]) for row in dataset] == [1, 0]
    assert dataset[0]["reward_model"]["ground_truth"] == "<stop>"
    assert dataset[0]["reward_model"]["format_ratio"] == 0.5


def test_vlm_r1_jsonl_maps_accu_reward_method_to_verifiers(tmp_path, images_dir, load):
    path = write_jsonl(tmp_path / "rec.jsonl", [
        {"id": 1, "image": "a.png",
         "conversations": [{"from": "human", "value": "<image>How many objects?"},
                           {"from": "gpt", "value": "<answer>5</answer>"}]},
        {"id": 2, "image": ["a.png", "b.png"], "accu_reward_method": "default",
         "conversations": [{"from": "human", "value": "Which image is wider?"}, {"from": "gpt", "value": 2}]},
        {"id": 3, "image": "d.png", "accu_reward_method": "iou",
         "conversations": [{"from": "system", "value": "Answer in JSON."},
                           {"from": "human", "value": "Find the dog."},
                           {"from": "gpt", "value": "[{'bbox_2d': [10, 20, 300, 400], 'label': 'dog'}]"}]},
    ])
    options = FileOptions(
        image_root=images_dir,
        reward=RewardDefaults(verifier="mathverify"),
        reward_methods={"iou": {"verifier": "detection", "format_ratio": 0.1, "verifier_parm": DET_PARM}},
    )
    count, two, grounding = (load([FileSpec(path, options)])[i] for i in range(3))
    assert count["prompt"] == [{"role": "user", "content": [{"type": "image"},
                                                            {"type": "text", "text": "How many objects?"}]}]
    assert count["reward_model"]["ground_truth"] == "\\boxed{5}" and count["reward_model"]["answer"] == "5"
    assert types(two["prompt"][0]) == ["image", "image", "text"]  # VLM-R1 puts images before the question
    assert two["reward_model"]["ground_truth"] == "\\boxed{2}"
    assert [m["role"] for m in grounding["prompt"]] == ["system", "user"]
    assert types(grounding["prompt"][1]) == ["image", "text"]
    assert grounding["reward_model"] == {
        "answer": "[{'bbox_2d': [10, 20, 300, 400], 'label': 'dog'}]",
        "ground_truth": "<answer>\n[{'bbox_2d': [10, 20, 300, 400], 'label': 'dog'}]\n</answer>",
        "accuracy_ratio": 1.0, "format_ratio": 0.1, "verifier": "detection", "verifier_parm": DET_PARM,
    }
    assert {row["data_source"] for row in load([FileSpec(path, options)])} == {"rec"}


def test_vlm_r1_unmapped_method_and_missing_defaults_name_row_and_field(tmp_path, images_dir, load):
    row = {"image": "a.png", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    path = write_jsonl(tmp_path / "r.jsonl", [row, {**row, "accu_reward_method": "mcq"}])
    with pytest.raises(DataError) as caught:
        load([FileSpec(path, FileOptions(image_root=images_dir, reward=RewardDefaults(verifier="mathverify")))])
    assert f"{path}:2: accu_reward_method: 'mcq' maps to no verifier" in str(caught.value)
    assert f"{path}:1:" not in str(caught.value)
    with pytest.raises(DataError) as caught:
        load([FileSpec(path, FileOptions(image_root=images_dir))])
    assert f"{path}:1: reward_model: this format carries no reward spec" in str(caught.value)


def test_native_jsonl_takes_string_or_part_contents_and_recomputes_sizes(tmp_path, images_dir, load):
    spec = math_spec()
    path = write_jsonl(tmp_path / "native.jsonl", [
        {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q1"}]}],
         "images": ["a.png"], "image_sizes": [[1, 1]], "data_source": "nat", "reward_model": spec, "ability": "math"},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q2"}],
         "images": [], "data_source": "nat", "reward_model": spec},
    ])
    first, second = load([FileSpec(path, FileOptions(image_root=images_dir))])
    assert first["prompt"] == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q1"}]}]
    assert first["image_sizes"] == [[588, 504]]  # recomputed, never trusted
    assert first["reward_model"] == spec and second["ability"] == ""
    assert second["prompt"][0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}


def test_one_config_mixes_every_format_orsta_train_and_test_included(tmp_path, images_dir, monkeypatch):
    root = tmp_path / "root"
    write_orsta(root / "train" / "train_math_mmmath_2.parquet",
                [orsta_row("<image>q1", [image_bytes(600, 500)]), orsta_row("q2", [])])
    write_orsta(root / "test" / "test_math_mmmath_1.parquet", [orsta_row("<image>t", [image_bytes(600, 500)])])
    (root / "omni").mkdir()
    (root / "omni" / "o.json").write_text(json.dumps([{"problem": "p", "solution": "1", "image": ["a.png"]}]))
    write_jsonl(root / "vlm" / "v.jsonl", [{"image": "b.png", "conversations": [
        {"from": "human", "value": "<image>v"}, {"from": "gpt", "value": "2"}]}])
    write_jsonl(root / "native" / "n.jsonl", [{"prompt": [{"role": "user", "content": "n"}], "images": [],
                                               "data_source": "nat", "reward_model": math_spec()}])
    config_path = root / "mix.yaml"
    config_path.write_text(yaml.safe_dump({
        "cot_prompts": False,
        "train": ["train/*.parquet",
                  {"path": "omni/*.json", "image_root": str(images_dir), "reward": {"verifier": "mathverify"}},
                  {"path": "vlm/*.jsonl", "image_root": str(images_dir), "reward": "mathverify"},
                  {"path": "native/n.jsonl"}],
        "test": ["test/*.parquet"],
    }))
    decodes = []
    real_load = loader.load_image
    monkeypatch.setattr(loader, "load_image", lambda *a, **k: decodes.append(1) or real_load(*a, **k))
    config = load_data_config(config_path)
    train = load_split(config, "train", SIZING, cache_dir=tmp_path / "hf")
    test = load_split(config, "test", SIZING, cache_dir=tmp_path / "hf")
    assert decodes == []  # nothing decoded at load time
    assert train.column_names == test.column_names == list(ROW_COLUMNS)
    rows = [train[i] for i in range(len(train))]
    assert len(decodes) == 3  # one per image, when its row is read
    assert sorted(row["data_source"] for row in rows) == ["mm_math", "mm_math", "nat", "o", "v"]
    assert sorted(len(row["images"]) for row in rows) == sorted(len(row["image_sizes"]) for row in rows)
    assert sorted(len(row["images"]) for row in rows) == [0, 0, 1, 1, 1]
    assert all(isinstance(im, PIL.Image.Image) for row in rows for im in row["images"])
    assert len(test) == 1 and test[0]["prompt"][0]["content"] == [{"type": "image"}, {"type": "text", "text": "t"}]


def test_image_root_is_relative_to_the_config_root_and_missing_images_are_named(tmp_path):
    root = tmp_path / "root"
    write_png(root / "pics" / "x.png", 600, 500)
    (root / "o.json").write_text(json.dumps([{"problem": "p", "solution": "1", "image": ["x.png"]},
                                             {"problem": "p", "solution": "1", "image": ["gone.png"]}]))
    config_path = root / "c.yaml"
    config_path.write_text(yaml.safe_dump({"train": [{"path": "o.json", "image_root": "pics",
                                                      "reward": {"verifier": "mathverify"}}]}))
    with pytest.raises(DataError) as caught:
        load_split(load_data_config(config_path), "train", SIZING)
    lines = str(caught.value).splitlines()
    assert lines[0] == (f"{root / 'o.json'}:1: images[0]: no such image file {root / 'pics' / 'gone.png'} "
                        "(relative paths resolve against the file's image_root)")
    assert not any(":0:" in line for line in lines)


def test_format_detection_and_explicit_formats(tmp_path, load):
    weird = tmp_path / "rows.txt"
    weird.write_text("{}\n")
    unknown = write_jsonl(tmp_path / "u.jsonl", [{"question": "?"}])
    with pytest.raises(DataError) as caught:
        load([FileSpec(weird), FileSpec(unknown)])
    message = str(caught.value)
    assert f"{weird}: file: cannot tell the format of a .txt file: set `format:` for it" in message
    assert f"{unknown}: file: the first row has none of conversations (VLM-R1)" in message
    as_omnirl = write_jsonl(tmp_path / "o.txt", [{"problem": "p", "solution": "s"}])
    dataset = load([FileSpec(as_omnirl, FileOptions(format="omnirl", reward=RewardDefaults(verifier="tag")))])
    assert dataset[0]["reward_model"]["ground_truth"] == "s"


def test_qwen_vl_resize_snaps_to_multiples_of_28_as_qwen_vl_utils_does(tmp_path, load):
    from qwen_vl_utils.vision_process import fetch_image

    path = write_orsta(tmp_path / "f.parquet", [orsta_row("<image>", [image_bytes(1000, 333, mode="RGBA")]),
                                                orsta_row("<image>", [image_bytes(60, 50)])])
    rule = QwenVLResize(min_pixels=256 * 28 * 28, max_pixels=512 * 28 * 28)
    dataset = load([FileSpec(path, FileOptions(format="orsta"))], rescale=rule)
    for row, size in zip(dataset, [(1000, 333), (60, 50)], strict=True):
        reference = fetch_image({"image": PIL.Image.new("RGB", size), "min_pixels": rule.min_pixels,
                                 "max_pixels": rule.max_pixels})
        assert row["images"][0].size == reference.size
        assert all(side % 28 == 0 for side in row["images"][0].size)
        assert row["image_sizes"] == [list(reference.size)]
    thin = write_orsta(tmp_path / "thin.parquet", [orsta_row("<image>", [image_bytes(2000, 5)])])
    with pytest.raises(DataError, match=r"thin\.parquet:0: images\[0\]: the image resize rule refuses"):
        load([FileSpec(thin, FileOptions(format="orsta"))], rescale=rule)


def test_resize_rules_by_name_and_the_recipe_option():
    from triune_trl.configs import TriuneScriptArguments
    from triune_trl.data import ReleaseRescale, make_image_resize

    assert make_image_resize("release") == ReleaseRescale()
    assert make_image_resize("qwen-vl", 3136, 12845056) == QwenVLResize(3136, 12845056)
    assert make_image_resize("none") is None
    with pytest.raises(ValueError, match="must be one of release, qwen-vl, none"):
        make_image_resize("bicubic")
    assert TriuneScriptArguments(rescale_rule="qwen-vl").rescale_rule == "qwen-vl"
    with pytest.raises(ValueError, match="--rescale_rule must be 'release' or 'qwen-vl'"):
        TriuneScriptArguments(rescale_rule="bicubic")
