"""The reward router: combination formula, unverifiable samples, TRL call shapes, progress, logging, caching."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from triune_trl.rewards import RewardRouter, get_verifier, score_sample
from triune_trl.rewards.verifiers.detection import DETECTION_SUB_SCORES


def tag_spec(accuracy_ratio: float = 1.0, format_ratio: float = 0.1, gold: str = "<ok>") -> dict:
    return {
        "answer": gold,
        "ground_truth": gold,
        "accuracy_ratio": accuracy_ratio,
        "format_ratio": format_ratio,
        "verifier": "tag",
        "verifier_parm": {"det_verifier_normalized": None, "det_reward_ratio": None},
    }


GOLD_BOXES = [{"bbox_2d": [0, 0, 100, 100], "label": "dog"}]
DET_SPEC = {
    "answer": "",
    "ground_truth": "<answer>\n" + json.dumps(GOLD_BOXES) + "\n</answer>",
    "accuracy_ratio": 1.0,
    "format_ratio": 0.0,
    "verifier": "detection",
    "verifier_parm": {
        "det_verifier_normalized": True,
        "det_reward_ratio": {
            "iou_max_label_first": 1.0,
            "iou_max_iou_first": 0.0,
            "iou_completeness": 0.0,
            "map": 0.0,
            "map50": 0.0,
            "map75": 0.0,
        },
    },
}
# On a 1000x1000 image the pixels are the grid: IoU 0.9 with the gold, matched at tau 0.85 but not at 0.95.
PRED_90 = '<think>\n.\n</think>\n<answer>\n[{"bbox_2d": [0, 0, 100, 90], "label": "dog"}]\n</answer>'


# ----------------------------------------------------------------------------------------------- combination


@pytest.mark.parametrize(
    ("completion", "accuracy_ratio", "format_ratio", "expected"),
    [
        ("<ok>", 1.0, 0.1, 1.0),  # acc 1, format 1
        ("<ok><ok>", 1.0, 0.1, 1 / 1.1),  # acc 1, format 0 (twice): 1 * 1/1.1 + 0 * 0.1/1.1
        ("<ok><ok>", 2.0, 1.0, 2 / 3),
        ("<ok><ok>", 0.0, 1.0, 0.0),  # format only
        ("<ok>", 0.3, 0.7, 1.0),
        ("nothing", 1.0, 0.1, 0.0),
    ],
)
def test_final_reward_is_the_ratio_weighted_mix(completion, accuracy_ratio, format_ratio, expected):
    result = score_sample(completion, tag_spec(accuracy_ratio, format_ratio))
    assert result["final_reward"] == pytest.approx(expected, abs=1e-12)


def test_tag_verifier_is_the_learnable_demo_task():
    result = score_sample("I say <ok> twice <ok>", tag_spec())
    assert (result["accuracy_reward"], result["format_reward"]) == (1.0, 0.0)
    assert score_sample("<OK>", tag_spec())["accuracy_reward"] == 0.0  # exact, case-sensitive
    empty = score_sample("<ok>", tag_spec(gold=""))
    assert empty["accuracy_reward"] is None and "non-empty ground_truth" in empty["unverifiable_reason"]


# ----------------------------------------------------------------------------------------------- unverifiable


def test_unknown_verifier_and_malformed_spec_give_none_with_a_reason():
    unknown = score_sample("<ok>", {**tag_spec(), "verifier": "no_such_verifier"})
    assert unknown == {
        "final_reward": None,
        "format_reward": None,
        "accuracy_reward": None,
        "unverifiable_reason": unknown["unverifiable_reason"],
    }
    assert "unknown verifier 'no_such_verifier'" in unknown["unverifiable_reason"]
    broken = score_sample("<ok>", {**tag_spec(), "accuracy_ratio": "high"})
    assert broken["final_reward"] is None
    assert "reward_model.accuracy_ratio" in broken["unverifiable_reason"]
    assert score_sample("<ok>", None)["final_reward"] is None


def test_router_returns_none_for_unverifiable_samples_and_counts_them():
    logged: dict[str, float] = {}
    router = RewardRouter()
    rewards = router(
        prompts=["p"] * 4,
        completions=["<ok>", "<ok><ok>", "<ok>", "<ok>"],
        reward_model=[tag_spec(), tag_spec(), {**tag_spec(), "verifier": "nope"}, {"verifier": "tag"}],
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    assert rewards == [pytest.approx(1.0), pytest.approx(1 / 1.1), None, None]
    assert logged["rewards/unverifiable_count"] == 2.0
    assert logged["rewards/unverifiable_fraction"] == 0.5
    assert logged["rewards/accuracy"] == 1.0  # over the two verified samples
    assert logged["rewards/format"] == 0.5  # format 1 and 0; unresolvable specs have no format
    assert [score["unverifiable_reason"] is None for score in router.last_scores] == [True, True, False, False]


# ----------------------------------------------------------------------------------------------- call shapes


def test_conversational_completions_are_read_as_text():
    router = RewardRouter()
    completions = [
        [{"role": "assistant", "content": "<ok>"}],
        [{"role": "assistant", "content": [{"type": "text", "text": "<o"}, {"type": "text", "text": "k>"}]}],
        [{"role": "assistant", "content": "nothing"}],
        [{"role": "assistant", "content": 42}],  # unreadable -> unverifiable, not a crash
    ]
    rewards = router(prompts=[[]] * 4, completions=completions, reward_model=[tag_spec()] * 4)
    assert rewards == [pytest.approx(1.0), pytest.approx(1.0), 0.0, None]
    assert "unreadable completion" in router.last_scores[3]["unverifiable_reason"]


def test_router_has_the_trl_name_and_validates_its_threshold():
    assert RewardRouter().__name__ == "triune"
    assert RewardRouter(iou_threshold="0.75").iou_threshold == 0.75
    with pytest.raises(ValueError, match="iou_threshold"):
        RewardRouter(iou_threshold="sometimes")


# ----------------------------------------------------------------------------------------------- progress


def _detection_call(router: RewardRouter, **kwargs) -> list:
    return router(prompts=["p"], completions=[PRED_90], reward_model=[DET_SPEC], image_sizes=[[[1000, 1000]]], **kwargs)


def test_trainer_state_gives_progress_when_none_was_set():
    router = RewardRouter()
    assert router.progress is None
    # global_step 9 -> step 10 of 100: progress 0.10 -> tau 0.85 -> IoU 0.9 matches
    assert _detection_call(router, trainer_state=SimpleNamespace(global_step=9, max_steps=100)) == [pytest.approx(0.9)]
    # global_step 10 -> step 11: progress 0.11 -> tau 0.95 -> no match
    assert _detection_call(router, trainer_state=SimpleNamespace(global_step=10, max_steps=100)) == [0.0]


def test_set_progress_wins_over_trainer_state():
    router = RewardRouter()
    router.set_progress(11, 100)
    assert router.progress == (11, 100)
    assert _detection_call(router, trainer_state=SimpleNamespace(global_step=0, max_steps=100)) == [0.0]
    router.set_progress(10, 100)
    assert _detection_call(router) == [pytest.approx(0.9)]


def test_detection_without_progress_or_image_size_is_unverifiable():
    router = RewardRouter()
    assert _detection_call(router) == [None]
    assert "step and total_steps" in router.last_scores[0]["unverifiable_reason"]
    router.set_progress(1, 100)
    text_only = router(prompts=["p"], completions=[PRED_90], reward_model=[DET_SPEC], image_sizes=[[]])
    assert text_only == [None]
    assert "image size" in router.last_scores[0]["unverifiable_reason"]


def test_first_image_size_is_used():
    router = RewardRouter(iou_threshold=0.85)
    # first image 2000x2000: pixels [0,0,100,90] -> grid [0,0,50,45]: IoU 0.225 -> no match
    rewards = router(
        prompts=["p", "p"],
        completions=[PRED_90, PRED_90],
        reward_model=[DET_SPEC, DET_SPEC],
        image_sizes=[[[1000, 1000], [2000, 2000]], [[2000, 2000], [1000, 1000]]],
    )
    assert rewards == [pytest.approx(0.9), 0.0]


# ----------------------------------------------------------------------------------------------- logging, cache


def test_sub_scores_are_kept_and_logged_over_verified_samples():
    logged: dict[str, float] = {}
    router = RewardRouter(iou_threshold=0.5)
    router(
        prompts=["p", "p"],
        completions=[PRED_90, "no boxes"],
        reward_model=[DET_SPEC, DET_SPEC],
        image_sizes=[[[1000, 1000]], [[1000, 1000]]],
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    assert set(DETECTION_SUB_SCORES) <= set(router.last_scores[0])
    assert router.last_scores[0]["label_first_iou50_mean_iou"] == pytest.approx(0.9)
    # mean over the two samples: (0.9 + 0) / 2 for accuracy and the label-first report score
    assert logged["rewards/accuracy"] == pytest.approx(0.45)
    assert logged["rewards/label_first_iou50_mean_iou"] == pytest.approx(0.45)
    assert logged["rewards/size_penalty"] == pytest.approx(0.5)  # 1.0 and the release's 0.0 for "no box"
    assert logged["rewards/unverifiable_count"] == 0.0


def test_gold_is_parsed_once_per_distinct_spec_within_a_call(monkeypatch):
    """In process (`workers=0`), where a patched parser is visible; the workers' count is in test_rewards_pool."""
    verifier = get_verifier("tag")
    calls = []
    original = type(verifier).parse_gold

    def counting(self, spec):
        calls.append(spec.ground_truth)
        return original(self, spec)

    monkeypatch.setattr(type(verifier), "parse_gold", counting)
    router = RewardRouter(workers=0)
    router(prompts=["p"] * 6, completions=["<ok>"] * 6, reward_model=[tag_spec()] * 4 + [tag_spec(gold="<x>")] * 2)
    assert calls == ["<ok>", "<x>"]
    router(prompts=["p"], completions=["<ok>"], reward_model=[tag_spec()])
    assert calls == ["<ok>", "<x>", "<ok>"]  # in process, the cache lives for one call only


def test_mismatched_column_lengths_are_a_programming_error():
    with pytest.raises(ValueError, match="reward_model"):
        RewardRouter()(prompts=["p"], completions=["a", "b"], reward_model=[tag_spec()])
    with pytest.raises(ValueError, match="reward_model"):
        RewardRouter()(prompts=["p"], completions=["a"])
