"""Fuzzing every verifier through the real router and its worker pool: nothing escapes, every score is in range.

At least 10,000 random and adversarial completions (hypothesis: unicode text, numbers of every size including NaN
and infinities, LaTeX with nested braces, malformed and truncated box JSON with NaN / infinite / absurd
coordinates, think/answer layouts around all of these) go through every built-in verifier, plus a fixed set of
heavy inputs (megabyte strings, LaTeX nested thousands deep, thousands of boxes, a megabyte of digits). Checked:
the router returns one value per completion, never raises, and every reward is None or a finite number in its
verifier's documented range; no completion's scoring ran more than 1 s past the time limit.

Everything runs through 2 worker processes with a per-sample time limit, so a pathological input costs at most the
limit: the file stays within a couple of minutes on 2 shared cores.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triune_trl.rewards import RewardRouter, get_verifier

LIMIT = 5.0
IMAGE_SIZE = [[1000, 800]]
DET_RATIO = {"iou_max_label_first": 1.0, "iou_max_iou_first": 0.5, "iou_completeness": 0.3, "map": 0.2,
             "map50": 0.2, "map75": 0.2}  # fmt: skip
DET_GOLD = "<answer>\n[{'bbox_2d': [10, 10, 200, 200], 'label': 'dog'}, {'bbox_2d': [300, 300, 400, 500], 'label': 'cat'}]\n</answer>"  # noqa: E501


def _spec(verifier, gold: str, parm: dict | None = None) -> dict:
    return {"ground_truth": gold, "verifier": verifier, "accuracy_ratio": 1.0, "format_ratio": 0.1,
            "verifier_parm": parm}  # fmt: skip


SPECS = {
    "mathverify": _spec("mathverify", "\\boxed{\\frac{3}{4}}"),
    "detection": _spec("detection", DET_GOLD, {"det_verifier_normalized": True, "det_reward_ratio": DET_RATIO}),
    "tag": _spec("tag", "<ok>"),
    "ocr": _spec("ocr", '["Hello World", "hello, world"]'),
    "counting": _spec("counting", "\\boxed{12}", {"tolerance": 1}),
    "numeric": _spec("numeric", "\\boxed{-12.5}"),
    "choice": _spec("choice", "B", {"options": ["red", "blue", "green"]}),
    "grounding": _spec("grounding", "[10, 10, 200, 200]", {"det_verifier_normalized": True}),
    "grounding_continuous": _spec("grounding", "[10, 10, 200, 200]", {"mode": "continuous"}),
    "text_overlap": _spec("text_overlap", "a small red car parked next to a tree"),
    "length": _spec("length", "", {"min_length": 5, "max_length": 100}),
    "format": _spec("format", "", {"newlines": True}),
    "format_pattern": _spec("format", "", {"pattern": r"<think>.*</think>\s*<answer>.*</answer>"}),
    "multi": {
        **_spec("counting", "\\boxed{12}"),
        "verifier": [{"name": "counting", "weight": 1.0}, {"name": "length", "weight": 0.1,
                     "verifier_parm": {"max_length": 50}}, {"name": "format", "weight": 0.2}],  # fmt: skip
    },
}

# ----------------------------------------------------------------------------------------------- strategies

numbers = st.one_of(
    st.integers(-(10**40), 10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "NaN", "1e999", "-0", "0.0", "1,204", "３", "\u22125", "12%", "\\$3"]),
)
latex_bits = st.sampled_from(
    ["\\frac{", "}", "{", "\\boxed{", "\\sqrt{", "^", "_", "\\left(", "\\right)", "\\text{", "$", "\\\\", "\\pi",
     "x", "=", "+", "\\cdot", "\\infty", "\\%", " ", "\\begin{matrix}", "&", "\\end{matrix}"]  # fmt: skip
)
latex = st.lists(st.one_of(latex_bits, numbers), max_size=30).map("".join)
# Up to 8 levels here: math-verify (sympy) needs 0.5 s for a 12-deep \\frac tower, 2 s for 16 and times out past 17
# (that path is checked once, by the heavy set's 5000-deep tower); deeper random towers would spend the test's time
# on that one path.
nested = st.builds(
    lambda depth, inner, closed: "\\boxed{" + "\\frac{1}{" * depth + inner + "}" * (depth + closed),
    st.integers(0, 8),
    numbers,
    st.integers(-1, 2),
)
coordinate = st.one_of(
    st.integers(-2000, 3000), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 0.5])
)
box = st.fixed_dictionaries(
    {
        "bbox_2d": st.lists(coordinate, min_size=0, max_size=5),
        "label": st.one_of(st.sampled_from(["dog", "cat", "DOG"]), st.text(max_size=6), st.integers()),
    }
)
boxes_json = st.lists(box, max_size=8).map(lambda items: json.dumps(items, allow_nan=True))
malformed_boxes = st.builds(
    lambda text, cut, quote: (text[:cut] if cut else text).replace('"', "'" if quote else '"'),
    boxes_json,
    st.integers(0, 200),
    st.booleans(),
)
answers = st.one_of(
    numbers, latex, nested, boxes_json, malformed_boxes, st.text(max_size=60), st.sampled_from("ABCDEabcde")
)
layouts = st.sampled_from(
    [
        "{a}",
        "\\boxed{{{a}}}",
        "<answer>{a}</answer>",
        "<think>\n{t}\n</think>\n<answer>\n{a}\n</answer>",
        "<think>\n{t}\n</think>\n<answer>\n\\boxed{{{a}}}\n</answer>",
        "<think>{t}</think><answer>{a}</answer><answer>{a}</answer>",
        "{t} <ok> {a}",
    ]
)
completions = st.one_of(
    st.text(max_size=300),
    st.builds(lambda layout, t, a: layout.format(t=t, a=a), layouts, st.text(max_size=80), answers),
)


def _heavy() -> dict[str, str]:
    """Fixed pathological inputs, each sent once through every verifier."""
    many_boxes = [{"bbox_2d": [i % 900, i % 700, i % 900 + 50, i % 700 + 40], "label": ["dog", "cat", "x"][i % 3]}
                  for i in range(3000)]  # fmt: skip
    return {
        "1 MB of letters": "a" * 1_000_000,
        "1 MB of words": "the cat " * 125_000,
        "1 MB of braces": "{" * 1_000_000,
        "1 MB of unclosed boxes": "\\boxed{" * 140_000,
        "LaTeX nested 5000 deep": "\\boxed{" + "\\frac{1}{" * 5000 + "2" + "}" * 5001,
        "a megabyte of digits": "\\boxed{" + "9" * 1_000_000 + "}",
        "3000 boxes": "<answer>\n" + json.dumps(many_boxes) + "\n</answer>",
        "NaN and infinite boxes": '<answer>\n[{"bbox_2d": [NaN, Infinity, 1e999, -1], "label": "dog"}, '
        '{"bbox_2d": [1e308, 1e308, 1.7e308, 1.7e308], "label": "dog"}]\n</answer>',
        "100k open brackets": "<answer>\n" + "[" * 100_000 + "\n</answer>",
        "120k answer tags": "<answer>" * 120_000,
        "dollars and powers": "$" * 50_000 + "\\boxed{" + "x^" * 20_000 + "}",
        "1 MB of unicode": "数学\u0000\U0001f600" * 250_000,
    }


# ----------------------------------------------------------------------------------------------- checks


@pytest.fixture(scope="module")
def router():
    router = RewardRouter(iou_threshold="average", workers=2, time_limit=LIMIT)
    yield router
    router.close()


def _score_and_check(router: RewardRouter, texts: list[str], tally: Counter) -> None:
    names = list(SPECS)
    rows = [(text, name) for text in texts for name in names]
    rewards = router(
        prompts=["p"] * len(rows),
        completions=[text for text, _ in rows],
        reward_model=[SPECS[name] for _, name in rows],
        image_sizes=IMAGE_SIZE * len(rows),
    )
    assert len(rewards) == len(rows) == len(router.last_scores)
    for (_, name), reward, score in zip(rows, rewards, router.last_scores, strict=True):
        verifiers = SPECS[name]["verifier"]
        primary = verifiers if isinstance(verifiers, str) else verifiers[0]["name"]
        low, high = get_verifier(primary).accuracy_range
        accuracy, fmt = score["accuracy_reward"], score["format_reward"]
        assert reward == score["final_reward"]
        if accuracy is None:
            assert reward is None and isinstance(score["unverifiable_reason"], str)
            tally[f"{name} unverifiable"] += 1
        else:
            assert math.isfinite(accuracy) and low <= accuracy <= high, (name, score)
            assert math.isfinite(reward) and min(low, 0.0) <= reward <= max(high, 1.0), (name, score)
            tally[f"{name} verified"] += 1
        assert fmt is None or (math.isfinite(fmt) and 0.0 <= fmt <= 1.0), (name, score)
        for key, value in score.items():
            if key not in ("final_reward", "format_reward", "accuracy_reward", "unverifiable_reason"):
                assert isinstance(value, float) and math.isfinite(value), (name, key, value)
    for result in router.last_results:
        assert result.seconds <= LIMIT + 1.0, result
        tally[result.status] += 1
    tally["completions"] += len(texts)


def test_every_built_in_verifier_is_fuzzed():
    fuzzed = {name for spec in SPECS.values() for name in _names(spec["verifier"])}
    assert fuzzed >= {"mathverify", "detection", "tag", "ocr", "counting", "numeric", "choice", "grounding",
                      "text_overlap", "length", "format"}  # fmt: skip


def _names(verifier) -> list[str]:
    return [verifier] if isinstance(verifier, str) else [entry["name"] for entry in verifier]


def test_heavy_inputs_through_every_verifier(router):
    tally: Counter = Counter()
    _score_and_check(router, list(_heavy().values()), tally)
    assert tally["completions"] == 12
    assert sum(count for key, count in tally.items() if key.endswith(" verified")) >= 12 * len(SPECS) // 2


def test_ten_thousand_random_and_adversarial_completions(router):
    tally: Counter = Counter()

    @settings(
        max_examples=200,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(completions, min_size=50, max_size=50))
    def run(batch: list[str]) -> None:
        _score_and_check(router, batch, tally)

    run()
    assert tally["completions"] >= 10_000
    for name in SPECS:  # the fuzz reaches real scoring, not only rejections
        assert tally[f"{name} verified"] >= 0.9 * tally["completions"], (name, tally)
