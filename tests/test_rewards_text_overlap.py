"""The `text_overlap` verifier: BLEU / ROUGE-L / METEOR from sacrebleu, rouge-score and nltk, WordNet from PyPI."""

from __future__ import annotations

import pytest
import sacrebleu

from triune_trl.rewards import score_sample, validate_reward_spec
from triune_trl.rewards import wordnet as wordnet_module

REFERENCE = "The cat sat on the mat."


def overlap_spec(gold: str = REFERENCE, **parm) -> dict:
    return {
        "ground_truth": gold,
        "verifier": "text_overlap",
        "accuracy_ratio": 1.0,
        "format_ratio": 0.0,
        "verifier_parm": parm or None,
    }


def scores(answer: str, gold: str = REFERENCE, **parm) -> dict:
    return score_sample(f"<answer>{answer}</answer>", overlap_spec(gold, **parm))


def test_identical_answer_scores_one_on_every_metric_but_meteor_fragmentation():
    result = scores(REFERENCE)
    assert result["bleu"] == 1.0  # sacrebleu gives 100.00000000000004; capped at 1
    assert result["rouge_l"] == 1.0
    # METEOR of 7 tokens (13a splits off the period) in one chunk: 1 - 0.5 * (1/7)^3
    assert result["meteor"] == pytest.approx(1 - 0.5 * (1 / 7) ** 3)
    assert result["accuracy_reward"] == pytest.approx((1 + 1 + 1 - 0.5 / 343) / 3)


@pytest.mark.parametrize(
    "answer",
    ["a cat was sitting on the mat", "The cat sat.", "dogs bark loudly at night", "the the the the", "Ünïcödé wörds ß"],
)
def test_bleu_equals_sacrebleu_sentence_bleu(answer):
    expected = sacrebleu.sentence_bleu(answer, [REFERENCE], tokenize="13a", lowercase=True).score / 100
    assert scores(answer, weights={"bleu": 1})["bleu"] == pytest.approx(min(1.0, expected), abs=1e-12)


def test_rouge_l_hand_checked():
    # LCS of "a b c d" and "a c d e" is "a c d": precision 3/4, recall 3/4, F 0.75
    result = scores("a b c d", "a c d e", weights={"rouge_l": 1})
    assert result["rouge_l"] == pytest.approx(0.75)
    assert result["accuracy_reward"] == pytest.approx(0.75)  # the only weighted metric
    assert "bleu" not in result and "meteor" not in result


def test_meteor_uses_wordnet_synonyms():
    # "fast" and "quick" share a WordNet synset: 3 matches in 1 chunk -> 1 - 0.5 * (1/3)^3
    result = scores("the fast car", "the quick car", weights={"meteor": 1})
    assert result["meteor"] == pytest.approx(1 - 0.5 / 27)
    unrelated = scores("the purple car", "the quick car", weights={"meteor": 1})
    assert unrelated["meteor"] < 0.5


def test_weights_mix_and_best_reference():
    result = scores("a c d e", '["x y z", "a b c d"]', weights={"bleu": 0, "rouge_l": 3, "meteor": 1})
    assert result["rouge_l"] == pytest.approx(0.75)  # against the second reference
    assert result["accuracy_reward"] == pytest.approx((3 * result["rouge_l"] + result["meteor"]) / 4)


def test_empty_missing_and_huge_answers():
    empty = scores("")
    assert (empty["accuracy_reward"], empty["bleu"], empty["rouge_l"], empty["meteor"]) == (0.0, 0.0, 0.0, 0.0)
    missing = score_sample("no tags at all", overlap_spec())
    assert missing["accuracy_reward"] == 0.0 and missing["meteor"] == 0.0
    huge = scores("mat " * 250_000)  # a megabyte, cut to 1024 tokens
    assert 0.0 <= huge["accuracy_reward"] < 0.05


def test_max_tokens_cuts_the_answer():
    result = scores("the cat sat on the mat . and then it slept for hours", max_tokens=7)
    assert result["rouge_l"] == 1.0  # only the first 7 tokens are scored


def test_tokenizers_for_unicode():
    # 13a keeps "猫が座った" as one token; char splits it into characters that partly match
    assert scores("猫が座った", "猫が寝た", weights={"rouge_l": 1})["rouge_l"] == 0.0
    # chars: 猫 が 座 っ た vs 猫 が 寝 た -> LCS 猫 が た = 3: P 3/5, R 3/4, F = 2PR / (P + R) = 2/3
    chars = scores("猫が座った", "猫が寝た", weights={"rouge_l": 1}, tokenizer="char")
    assert chars["rouge_l"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("parm", "gold", "field"),
    [
        ({"weights": {"bleu": 0, "rouge_l": 0, "meteor": 0}}, REFERENCE, "reward_model.verifier_parm.weights"),
        ({"weights": {"cider": 1}}, REFERENCE, "reward_model.verifier_parm.weights.cider"),
        ({"weights": {"bleu": -1}}, REFERENCE, "reward_model.verifier_parm.weights.bleu"),
        ({"tokenizer": "spacy"}, REFERENCE, "reward_model.verifier_parm.tokenizer"),
        ({"max_tokens": 0}, REFERENCE, "reward_model.verifier_parm.max_tokens"),
        ({}, "  \\boxed{ } ", "reward_model.ground_truth"),  # an empty reference
    ],
)
def test_bad_specs(parm, gold, field):
    problems = validate_reward_spec(overlap_spec(gold, **parm))
    assert [got for got, _ in problems] == [field]


def test_missing_wordnet_is_reported_before_training(monkeypatch):
    """Without the `meteor` extra (and no nltk data), a row weighing METEOR is rejected with the install command."""
    monkeypatch.setattr(wordnet_module, "wordnet_dir", lambda: None)
    monkeypatch.setattr(wordnet_module, "_nltk_has_wordnet", lambda: False)
    [(field, message)] = validate_reward_spec(overlap_spec())
    assert field == "reward_model.verifier_parm.weights.meteor"
    assert 'pip install "triune-trl[meteor]"' in message
    assert validate_reward_spec(overlap_spec(weights={"bleu": 1, "rouge_l": 1})) == []


def test_packaged_wordnet_is_found():
    assert wordnet_module.wordnet_problem() is None
    reader = wordnet_module.load_wordnet()
    assert {lemma.name() for synset in reader.synsets("quick") for lemma in synset.lemmas()} >= {"fast", "speedy"}
