"""The prompt ids and log-probs the trainer exchanges with vLLM (pure functions; engine tests: test_vllm_colocate)."""

from __future__ import annotations

import pytest

from triune_trl.generation.prompts import collapse_placeholder_runs, drop_replaced_logprobs

PAD, VIDEO_PAD, START, END = 9, 8, 5, 6


def test_each_images_pad_run_becomes_one_placeholder():
    # two images: <start> pad x3 <end> text <start> pad x2 <end>; text tokens repeat freely
    ids = [1, 1, START, PAD, PAD, PAD, END, 2, 2, START, PAD, PAD, END, VIDEO_PAD, VIDEO_PAD]
    assert collapse_placeholder_runs(ids, {PAD, VIDEO_PAD}) == [1, 1, START, PAD, END, 2, 2, START, PAD, END, VIDEO_PAD]


def test_prompts_without_placeholder_runs_are_unchanged():
    assert collapse_placeholder_runs([3, 3, START, PAD, END], {PAD}) == [3, 3, START, PAD, END]
    assert collapse_placeholder_runs([], {PAD}) == []


def test_vllm_logprobs_are_dropped_from_the_first_replaced_token_on():
    generated = [[4, PAD, 7, PAD], [4, 7], [PAD, 4]]
    replaced = [[4, 3, 7, 3], [4, 7], [3, 4]]
    logprobs = [[-0.1, -2.0, -0.3, -1.5], [-0.2, None], [-0.4, -0.5]]
    expected = [[-0.1, None, None, None], [-0.2, None], [None, None]]
    assert drop_replaced_logprobs(logprobs, generated, replaced) == expected


def test_misaligned_logprobs_are_an_error_not_a_silent_truncation():
    with pytest.raises(ValueError):
        drop_replaced_logprobs([[-0.1]], [[4, PAD]], [[4, 3]])
