"""`score_jsonl`: the `triune reward score` command's engine."""

from __future__ import annotations

import json

import pytest

from triune_trl.errors import InputLineError
from triune_trl.runs.score_file import score_jsonl

RATIO = {
    "iou_max_label_first": 1.0,
    "iou_max_iou_first": 0.0,
    "iou_completeness": 0.0,
    "map": 0.0,
    "map50": 0.0,
    "map75": 0.0,
}
MATH = {
    "ground_truth": "\\boxed{4}",
    "accuracy_ratio": 1.0,
    "format_ratio": 0.0,
    "verifier": "mathverify",
    "verifier_parm": {"det_verifier_normalized": None, "det_reward_ratio": None},
}
DETECTION = {
    "ground_truth": '<answer>\n[{"bbox_2d": [0, 0, 100, 100], "label": "dog"}]\n</answer>',
    "accuracy_ratio": 1.0,
    "format_ratio": 0.0,
    "verifier": "detection",
    "verifier_parm": {"det_verifier_normalized": True, "det_reward_ratio": RATIO},
}
BOXES = '<answer>\n[{"bbox_2d": [0, 0, 100, 90], "label": "dog"}]\n</answer>'


def write_lines(path, records) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_round_trip_keeps_order_and_fields(tmp_path):
    records = [
        {"completion": "\\boxed{4}", "data_source": "mm_math", "reward_model": MATH, "extra": [1, 2]},
        {
            "completion": BOXES,
            "data_source": "v3det",
            "reward_model": DETECTION,
            "image_size": [1000, 1000],
            "step": 10,
            "total_steps": 100,
        },  # fmt: skip
        {"completion": "\\boxed{5}", "data_source": "mm_math", "reward_model": MATH},
        {"completion": "x", "data_source": "mm_math", "reward_model": {**MATH, "ground_truth": "no answer"}},
    ]
    source, target = tmp_path / "in.jsonl", tmp_path / "out" / "scored.jsonl"
    write_lines(source, records[:2] + ["   "] + records[2:])  # a blank line is skipped
    assert score_jsonl(source, target) == 4

    out = read_lines(target)
    assert [line["completion"] for line in out] == [r["completion"] for r in records]
    assert out[0]["extra"] == [1, 2] and out[0]["data_source"] == "mm_math"
    assert (out[0]["final_reward"], out[0]["accuracy_reward"], out[0]["format_reward"]) == (1.0, 1.0, 0.0)
    assert out[1]["accuracy_reward"] == pytest.approx(0.9)  # step 10/100 -> tau 0.85, IoU 0.9
    assert out[1]["label_first_iou50_mean_iou"] == pytest.approx(0.9)
    assert out[2]["final_reward"] == 0.0 and out[2]["unverifiable_reason"] is None
    assert out[3]["final_reward"] is None and out[3]["accuracy_reward"] is None
    assert "gold" in out[3]["unverifiable_reason"]


def test_a_fixed_threshold_needs_no_progress(tmp_path):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(source, [{"completion": BOXES, "reward_model": DETECTION, "image_size": [1000, 1000]}])
    assert score_jsonl(source, target, iou_threshold=0.95) == 1
    assert read_lines(target)[0]["accuracy_reward"] == 0.0


GOOD = {"completion": "\\boxed{4}", "data_source": "mm_math", "reward_model": MATH}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"reward_model": MATH}, "missing 'completion'"),
        ({"completion": 3, "reward_model": MATH}, "'completion' must be a string"),
        ({"completion": "x"}, "missing 'reward_model'"),
        ({"completion": "x", "reward_model": "mathverify"}, "'reward_model' must be an object"),
        ({"completion": "x", "reward_model": {**MATH, "format_ratio": "low"}}, "reward_model.format_ratio"),
        ({**GOOD, "data_source": 5}, "'data_source' must be a string"),
        ({**GOOD, "image_size": [640]}, "'image_size'"),
        ({**GOOD, "image_size": [10**400, 5]}, "'image_size'"),  # an int no float holds: a message, not a crash
        ({**GOOD, "step": -1, "total_steps": 10}, "'step'"),
        ({**GOOD, "step": 1}, "together"),
        ({"completion": BOXES, "reward_model": DETECTION, "image_size": [9, 9]}, "needs 'step' and 'total_steps'"),
        ({"completion": BOXES, "reward_model": DETECTION, "step": 1, "total_steps": 9}, "needs 'image_size'"),
    ],
)
def test_a_malformed_line_stops_before_anything_is_written(tmp_path, bad, message):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(source, [GOOD, "", GOOD, bad, GOOD])  # the bad record is on line 4
    with pytest.raises(InputLineError) as caught:
        score_jsonl(source, target)
    assert caught.value.line == 4
    assert caught.value.path == str(source)
    assert message in caught.value.message
    assert not target.exists()


def test_an_existing_output_is_left_untouched_on_error(tmp_path):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    target.write_text("previous\n")
    write_lines(source, ["{broken"])
    with pytest.raises(InputLineError):
        score_jsonl(source, target)
    assert target.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


# ----------------------------------------------------------------------------------------------- workers, limits


def test_worker_processes_score_like_the_process_itself(tmp_path):
    records = [
        {"completion": "\\boxed{4}", "reward_model": MATH},
        {"completion": "\\boxed{5}", "reward_model": MATH},
        {"completion": BOXES, "reward_model": DETECTION, "image_size": [1000, 1000], "step": 10, "total_steps": 100},
        {"completion": "\\boxed{12.4}", "reward_model": {**MATH, "verifier": "numeric", "ground_truth": "12"}},
    ]
    source = tmp_path / "in.jsonl"
    write_lines(source, records)
    assert score_jsonl(source, tmp_path / "pooled.jsonl", workers=2) == 4
    assert score_jsonl(source, tmp_path / "inline.jsonl", workers=0) == 4
    assert read_lines(tmp_path / "pooled.jsonl") == read_lines(tmp_path / "inline.jsonl")
    assert [line["final_reward"] for line in read_lines(tmp_path / "pooled.jsonl")] == [1.0, 0.0, 0.9, 1.0]


def test_a_line_that_hangs_is_unverifiable_and_the_file_is_written(tmp_path):
    from tests.test_rewards_pool_verifiers import MisbehavingVerifier  # noqa: F401  (registers test_misbehave)

    slow = {"ground_truth": "g", "verifier": "test_misbehave", "accuracy_ratio": 1.0, "format_ratio": 0.0}
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(source, [{"completion": "ok", "reward_model": slow}, {"completion": "hang", "reward_model": slow}])
    assert score_jsonl(source, target, workers=1, time_limit=1.0) == 2
    fine, hung = read_lines(target)
    assert fine["final_reward"] == 1.0
    assert hung["final_reward"] is None and "1 s time limit" in hung["unverifiable_reason"]


def test_grounding_lines_need_progress_unless_continuous(tmp_path):
    grounding = {**MATH, "verifier": "grounding", "ground_truth": "[0, 0, 10, 10]"}
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(source, [{"completion": "<answer>[0, 0, 10, 10]</answer>", "reward_model": grounding}])
    with pytest.raises(InputLineError, match="a grounding row needs 'step'"):
        score_jsonl(source, target)
    continuous = {**grounding, "verifier_parm": {"mode": "continuous"}}
    write_lines(source, [{"completion": "<answer>[0, 0, 10, 10]</answer>", "reward_model": continuous}])
    assert score_jsonl(source, target, workers=0) == 1
    assert read_lines(target)[0]["accuracy_reward"] == 1.0


def test_multi_verifier_lines_are_checked_per_entry(tmp_path):
    multi = {**DETECTION, "verifier": [{"name": "detection"}, {"name": "length", "verifier_parm": {"max_length": 50}}]}
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(source, [{"completion": BOXES, "reward_model": multi, "step": 1, "total_steps": 9}])
    with pytest.raises(InputLineError, match="det_verifier_normalized needs 'image_size'"):
        score_jsonl(source, target)


def test_the_cli_passes_workers_and_time_limit(tmp_path, capsys):
    from triune_trl.cli import main

    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(source, [GOOD])
    assert main(["reward", "score", "--input", str(source), "--output", str(target), "--workers", "0",
                 "--time-limit", "3"]) == 0  # fmt: skip
    assert read_lines(target)[0]["final_reward"] == 1.0
    assert "scored 1 completions" in capsys.readouterr().err
