"""Per-source aggregation on records built from real router scores: naming, joins, correct/wrong splits, groups."""

from __future__ import annotations

import json
import math

import pytest

from triune_trl.data.make_sample import DETECTION_VERIFIER_PARM
from triune_trl.monitoring.collector import SourceMonitor, current_iou_threshold
from triune_trl.monitoring.eval_table import macro_average, per_source_table, to_markdown, write_tables
from triune_trl.monitoring.per_source import (
    PER_SOURCE_METRICS,
    aggregate,
    group_zero_std_flags,
    metric_key,
    split_metric_key,
)
from triune_trl.rewards import RewardRouter

MATH = {"ground_truth": "\\boxed{12}", "answer": "12", "verifier": "mathverify", "accuracy_ratio": 1.0,
        "format_ratio": 0.0, "verifier_parm": None}
DET = {"ground_truth": "<answer>\n[{'bbox_2d': [100, 100, 500, 500], 'label': 'dog'}]\n</answer>",
       "answer": "[{'bbox_2d': [100, 100, 500, 500], 'label': 'dog'}]", "verifier": "detection",
       "accuracy_ratio": 1.0, "format_ratio": 0.1, "verifier_parm": DETECTION_VERIFIER_PARM}
BROKEN = {**MATH, "ground_truth": "no number here"}  # gold does not parse: unverifiable
EOS, PAD = 7, 0


def _batch():
    """Six completions (3 prompt groups of 2) through the real router, as TRL would call it."""
    rows = [
        {"data_source": "mm_math", "reward_model": MATH, "image_sizes": []},
        {"data_source": "mm_math", "reward_model": MATH, "image_sizes": []},
        {"data_source": "v3det/train", "reward_model": DET, "image_sizes": [[1000, 1000]]},
        {"data_source": "v3det/train", "reward_model": DET, "image_sizes": [[1000, 1000]]},
        {"data_source": "broken", "reward_model": BROKEN, "image_sizes": []},
        {"data_source": "broken", "reward_model": BROKEN, "image_sizes": []},
    ]
    texts = [
        "Wait, 7+5... let me verify: \\boxed{12}",  # correct, reflective (wait, verify)
        "\\boxed{13}",  # wrong
        "<answer>\n[{'bbox_2d': [100, 100, 500, 500], 'label': 'dog'}]\n</answer>",  # perfect box
        "<answer>\n[{'bbox_2d': [100, 100, 500, 500], 'label': 'dog'}]\n</answer>",  # same: zero-std group
        "\\boxed{1}",
        "\\boxed{2}",
    ]
    completions = [[{"role": "assistant", "content": text}] for text in texts]
    ids = [[5, 6, EOS], [5, 5, 5, 5], [1, 2, 3, EOS], [1, 2, 3, EOS], [9, 9], [9, 9, 9, EOS]]  # 2nd, 5th clipped
    router = RewardRouter(iou_threshold="dynamic")
    router.set_progress(1, 100)  # progress 1% -> tau 0.85
    rewards = router(
        completions=completions,
        reward_model=[row["reward_model"] for row in rows],
        image_sizes=[row["image_sizes"] for row in rows],
        data_source=[row["data_source"] for row in rows],
    )
    records = SourceMonitor.local_records(
        rows, completions, ids, router.last_scores, stop_token_ids=[EOS, PAD],
        iou_threshold=current_iou_threshold(router), vision_pads_replaced=[0, 2, 0, 0, 0, 1],
    )
    return records, [math.nan if r is None else r for r in rewards]


def test_naming_scheme_round_trips():
    assert metric_key("reward", "v3det/train") == "reward/v3det_train"
    assert split_metric_key("reward/mm_math") == ("", "reward", "mm_math")
    assert split_metric_key("eval_reward_map50/d3") == ("eval_", "reward_map50", "d3")
    assert split_metric_key("reflection_word_check_again/d3") == ("", "reflection_word_check_again", "d3")
    for trl_key in ("reward", "rewards/triune/mean", "completions/mean_length", "clip_ratio/low_mean", "eval_reward"):
        assert split_metric_key(trl_key) is None


def test_metrics_of_a_real_router_batch():
    records, rewards = _batch()
    monitor = SourceMonitor()
    monitor.add("train", records, rewards, group_size=2)
    metrics = monitor.flush("train")
    assert monitor.flush("train") == {}  # the window starts over

    # mm_math: one correct reflective answer (3 tokens, ended), one wrong plain answer (4 tokens, clipped)
    assert metrics["num_completions/mm_math"] == 2
    assert metrics["reward/mm_math"] == 0.5 and metrics["reward_accuracy/mm_math"] == 0.5
    assert metrics["response_length/mm_math"] == 3.5 and metrics["response_clip_ratio/mm_math"] == 0.5
    assert metrics["response_length_correct/mm_math"] == 3 and metrics["response_clip_ratio_correct/mm_math"] == 0
    assert metrics["response_length_wrong/mm_math"] == 4 and metrics["response_clip_ratio_wrong/mm_math"] == 1
    assert metrics["reflection_ratio/mm_math"] == 0.5
    assert metrics["reflection_ratio_correct/mm_math"] == 1.0 and metrics["reflection_ratio_wrong/mm_math"] == 0.0
    assert metrics["accuracy_reflection/mm_math"] == 1.0 and metrics["accuracy_no_reflection/mm_math"] == 0.0
    assert metrics["reflection_word_wait/mm_math"] == 1 and metrics["reflection_word_verify/mm_math"] == 1
    assert metrics["frac_reward_zero_std/mm_math"] == 0.0  # rewards 1 and 0
    assert metrics["vision_pads_replaced/mm_math"] == 2
    assert "iou_threshold/mm_math" not in metrics  # not an IoU-scored source

    # detection (source name with a slash): two perfect boxes, every sub-score reported, tau of the schedule
    assert metrics["reward_accuracy/v3det_train"] == 1.0
    assert metrics["frac_reward_zero_std/v3det_train"] == 1.0
    assert metrics["iou_threshold/v3det_train"] == 0.85
    assert metrics["reward_map50/v3det_train"] == pytest.approx(1.0)
    assert "response_length_wrong/v3det_train" not in metrics  # no wrong answer: a mean over nothing is left out

    # unverifiable gold: counted, in neither correct nor wrong, no reward mean
    assert metrics["unverifiable_count/broken"] == 2
    assert "reward/broken" not in metrics and "reward_accuracy/broken" not in metrics
    assert "response_length_correct/broken" not in metrics and "response_length_wrong/broken" not in metrics
    assert metrics["response_length/broken"] == 3.0
    assert metrics["frac_reward_zero_std/broken"] == 1.0  # no scored completion: no learning signal


def test_every_fixed_metric_has_a_key_for_a_source_with_correct_and_wrong_answers():
    records, rewards = _batch()
    metrics = aggregate(records[:2])
    missing = [name for name in PER_SOURCE_METRICS if name not in {"frac_reward_zero_std", "iou_threshold"}
               and metric_key(name, "mm_math") not in metrics]
    assert missing == []


def test_a_window_of_several_steps_is_sample_weighted():
    records, rewards = _batch()
    monitor = SourceMonitor()
    monitor.add("train", records[:2], rewards[:2], group_size=2)  # mm_math: reward 1 and 0
    monitor.add("train", [records[1]] * 2, [0.0, 0.0], group_size=2)  # mm_math: two more zeros
    metrics = monitor.flush("train")
    assert metrics["num_completions/mm_math"] == 4
    assert metrics["reward/mm_math"] == 0.25  # 1 of 4, not the mean of the step means (0.25 vs 0.25) ...
    assert metrics["frac_reward_zero_std/mm_math"] == 0.5  # one tied group of two
    monitor.add("train", records[:2], rewards[:2], group_size=2)
    monitor.add("train", records[1:2] * 4, [0.0] * 4, group_size=2)
    assert monitor.flush("train")["reward/mm_math"] == pytest.approx(1 / 6)  # step means would give 0.25


def test_train_and_eval_windows_are_separate():
    records, rewards = _batch()
    monitor = SourceMonitor()
    monitor.add("eval", records, rewards, group_size=1)
    assert monitor.flush("train") == {}
    assert monitor.flush("eval")["frac_reward_zero_std/mm_math"] == 1.0  # one completion per prompt in eval


def test_group_flags_follow_trl_layout():
    assert group_zero_std_flags([1.0, 1.0, 0.0, 1.0], 2) == [True, False]
    assert group_zero_std_flags([math.nan, 1.0, 0.5, 0.5], 2) == [True, True]
    with pytest.raises(ValueError, match="groups of 4"):
        group_zero_std_flags([1.0, 2.0], 4)


def test_mismatched_batch_is_reported():
    records, rewards = _batch()
    with pytest.raises(ValueError, match="6 gathered records but 5"):
        SourceMonitor().add("train", records, rewards[:5], group_size=1)
    with pytest.raises(ValueError, match="2 rows, 1 completions"):
        SourceMonitor.local_records([{}, {}], ["a"], [[1], [2]], [{}, {}], stop_token_ids=[EOS])


def test_eval_table_from_evaluate_metrics(tmp_path):
    metrics = {"eval_loss": 0.0, "eval_reward": 0.3,
               "eval_num_completions/a": 4.0, "eval_reward/a": 0.5, "eval_unverifiable_count/a": 1.0,
               "eval_num_completions/b": 2.0, "eval_reward/b": 0.1, "eval_reward_map/b": 0.7,
               "reward/a": 9.0}  # a train key: not part of the eval table
    table = per_source_table(metrics)
    assert table == {"a": {"num_completions": 4.0, "reward": 0.5, "unverifiable_count": 1.0},
                     "b": {"num_completions": 2.0, "reward": 0.1, "reward_map": 0.7}}
    average = macro_average(table)
    assert average["num_completions"] == 6 and average["reward"] == pytest.approx(0.3)
    assert average["unverifiable_count"] == 1  # counts are summed, over the sources that have them
    markdown = to_markdown(table)
    assert "| a | 4 | 0.5000 |" in markdown and "| **mean over sources** | 6 | 0.3000 |" in markdown
    md_path, json_path = write_tables(table, tmp_path / "out", {"model": "m", "split": "test"})
    assert md_path.read_text().startswith("- model: `m`")
    payload = json.loads(json_path.read_text())
    assert payload["sources"]["b"]["reward_map"] == 0.7 and payload["split"] == "test"


def test_multi_verifier_rows_get_the_iou_threshold_when_any_verifier_uses_boxes():
    from triune_trl.monitoring.collector import _uses_iou

    multi = {"verifier": [{"name": "grounding", "weight": 1.0}, {"name": "length", "weight": 0.1}]}
    assert _uses_iou(multi)
    assert _uses_iou({"verifier": "detection"})
    assert not _uses_iou({"verifier": [{"name": "mathverify", "weight": 1.0}]})
    assert not _uses_iou({"verifier": "mathverify"}) and not _uses_iou(None)
