"""The release's random CoT prompt pools: which rows get which pool, where the text goes, seeding, the switch."""

from __future__ import annotations

import copy

import pytest
import yaml

from triune_trl.data import ImageSizing, load_data_config, load_split
from triune_trl.data.cot_prompts import (
    CLOSE_FORM_FIRST,
    CLOSE_FORM_SECOND,
    FREE_FORM_FIRST,
    FREE_FORM_SECOND,
    append_to_last_turn,
    cot_instruction,
    row_rng,
)

from .test_data_orsta import image_bytes, orsta_row, write_orsta
from .test_data_validate import detection_row

SIZING = ImageSizing()


def test_pools_are_the_releases():
    # 19 free-form first sentences: the release's list joins two sentences for want of a comma
    assert (len(FREE_FORM_FIRST), len(FREE_FORM_SECOND), len(CLOSE_FORM_FIRST), len(CLOSE_FORM_SECOND)) == (
        19, 20, 10, 10)
    assert ("Walk me through the reasoning process step by step.Please solve this by explaining each step of the "
            "way.") in FREE_FORM_FIRST
    assert FREE_FORM_SECOND[0] == "Finally, place your answer in \\boxed{}. "
    assert all("\\boxed{}" in s for s in FREE_FORM_SECOND)
    assert all("<think> </think>" in s and "<answer> </answer>" in s for s in CLOSE_FORM_FIRST)
    example = "<think>\nreasoning process here\n</think>\n<answer>\n\\boxed{answer here}\n</answer>."
    assert all(s.endswith(example) for s in CLOSE_FORM_SECOND)


@pytest.mark.parametrize(
    ("spec", "pools"),
    [
        ({"verifier": "mathverify", "format_ratio": 0.0}, (FREE_FORM_FIRST, FREE_FORM_SECOND)),
        ({"verifier": "mathverify", "format_ratio": 0}, (FREE_FORM_FIRST, FREE_FORM_SECOND)),
        ({"verifier": "mathverify", "format_ratio": 0.1}, (CLOSE_FORM_FIRST, CLOSE_FORM_SECOND)),
        ({"verifier": "detection", "format_ratio": 0.0}, None),
        ({"verifier": "tag", "format_ratio": 0.0}, None),
    ],
)
def test_free_form_when_format_ratio_is_0_close_form_otherwise_mathverify_only(spec, pools):
    text = cot_instruction(spec, row_rng(0, "f.parquet", 3))
    if pools is None:
        assert text is None
        return
    first, second = pools
    assert text.startswith("\n\n")
    assert any(text == "\n\n" + a + b for a in first for b in second)


def test_the_draw_is_a_function_of_seed_file_and_row_and_covers_the_pools():
    spec = {"verifier": "mathverify", "format_ratio": 0.0}
    draws = [cot_instruction(spec, row_rng(0, "f.parquet", row)) for row in range(2000)]
    assert draws == [cot_instruction(spec, row_rng(0, "f.parquet", row)) for row in range(2000)]
    assert draws != [cot_instruction(spec, row_rng(1, "f.parquet", row)) for row in range(2000)]
    assert draws != [cot_instruction(spec, row_rng(0, "g.parquet", row)) for row in range(2000)]
    assert all(any(d.startswith("\n\n" + s) for d in draws) for s in FREE_FORM_FIRST)
    assert all(any(d.endswith(s) for d in draws) for s in FREE_FORM_SECOND)


def test_text_goes_to_the_last_turn_as_if_appended_to_its_string():
    trailing_text = [{"role": "system", "content": [{"type": "text", "text": "S"}]},
                     {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}]
    original = copy.deepcopy(trailing_text)
    assert append_to_last_turn(trailing_text, "\n\nX")[-1]["content"] == [
        {"type": "image"}, {"type": "text", "text": "Q\n\nX"}]
    assert trailing_text == original  # not modified in place
    trailing_image = [{"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image"}]}]
    assert append_to_last_turn(trailing_image, "\n\nX")[0]["content"][-1] == {"type": "text", "text": "\n\nX"}


@pytest.fixture
def cot_data(tmp_path):
    """Three files: free-form math, close-form math, detection."""
    free = [orsta_row(f"<image>Q{i}", [image_bytes(600, 500)]) for i in range(40)]
    close = copy.deepcopy(free[:10])
    for row in close:
        row["reward_model"]["format_ratio"] = 0.1
    write_orsta(tmp_path / "train_math_free_40.parquet", free)
    write_orsta(tmp_path / "train_math_close_10.parquet", close)
    write_orsta(tmp_path / "train_detection_det_2.parquet", [detection_row(), detection_row()])
    return tmp_path


def _texts(root, tmp_path, **config):
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump({"train": ["train_*.parquet"], **config}))
    dataset = load_split(load_data_config(path), "train", SIZING, cache_dir=tmp_path / "hf")
    return {(row["data_source"], row["reward_model"]["format_ratio"], i): row["prompt"][-1]["content"][-1]["text"]
            for i, row in enumerate(dataset)}


def test_data_config_applies_pools_seeded_and_switchable(cot_data, tmp_path):
    on = _texts(cot_data, tmp_path)  # default: on, seed 0
    assert on == _texts(cot_data, tmp_path, seed=0)
    for (source, ratio, _), text in on.items():
        if source == "v3det_train":
            assert text == "Find the dog."  # detection prompts stay as the data has them
        else:
            question, instruction = text.split("\n\n", 1)
            pools = (FREE_FORM_FIRST, FREE_FORM_SECOND) if ratio == 0 else (CLOSE_FORM_FIRST, CLOSE_FORM_SECOND)
            assert question.startswith("Q") and any(instruction == a + b for a in pools[0] for b in pools[1])
    reseeded = _texts(cot_data, tmp_path, seed=1)
    assert reseeded.keys() == on.keys() and reseeded != on
    off = _texts(cot_data, tmp_path, cot_prompts=False)
    assert all("\n\n" not in text for text in off.values())


def test_per_entry_switch_and_group_members_share_one_prompt(cot_data, tmp_path):
    path = cot_data / "c.yaml"
    path.write_text(yaml.safe_dump({"cot_prompts": False, "train": [
        {"path": "train_math_free_*.parquet", "cot_prompts": True, "weight": 2}, "train_math_close_*.parquet"]}))
    dataset = load_split(load_data_config(path), "train", SIZING, cache_dir=tmp_path / "hf")
    assert len(dataset) == 90
    rows = [dataset[i] for i in range(len(dataset))]
    close, free = rows[:10], rows[10:]  # files in path order
    assert all("\n\n" not in row["prompt"][0]["content"][-1]["text"] for row in close)
    assert all("\n\n" in row["prompt"][0]["content"][-1]["text"] for row in free)
    # a row read again (TRL reads it once per generation of its group) has the same prompt
    assert [dataset[13]["prompt"] for _ in range(3)] == [rows[13]["prompt"]] * 3
    assert rows[10]["prompt"] == rows[50]["prompt"]  # weight 2: the second copy of a row is that row
