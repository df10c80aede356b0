"""The release's random chain-of-thought instructions for mathverify prompts (reference section 1).

The V-Triune loader (`verl/utils/dataset/rl_dataset.py`, `RLHFDataset.__getitem__`) appends to the content of the
*last* prompt turn of every row whose `reward_model.verifier` is `"mathverify"`:

- "free form" (`format_ratio == 0`): `"\\n\\n" + choice(FREE_FORM_FIRST) + choice(FREE_FORM_SECOND)`;
- "close form" (any other format_ratio): `"\\n\\n" + choice(CLOSE_FORM_FIRST) + choice(CLOSE_FORM_SECOND)`.

Rows of any other verifier (detection, grounding, ...) keep the instruction the data already has. The sentences
below are the release's, character for character: in its free-form first list a missing comma joins two
sentences into one entry ("...step by step.Please solve this by explaining each step of the way."), so that pool
has 19 entries, not 20, and the joined entry is one of them; the first free-form second sentence ends with a space.
Both quirks are kept so that prompts are drawn from exactly the release's distribution.

One deliberate difference: the release draws anew at every access (`random.choice`), so the same row gets a
different sentence every time it is read. TRL's GRPO sampler reads a row once per generation of its group, and a
group must share one prompt, so here the draw is a pure function of (seed, file, row): reproducible, identical
within a group, and still spread over the pool across rows.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CLOSE_FORM_FIRST",
    "CLOSE_FORM_SECOND",
    "DIRECT_CLOSE_FORM",
    "DIRECT_FREE_FORM",
    "FREE_FORM_FIRST",
    "FREE_FORM_SECOND",
    "append_to_last_turn",
    "cot_instruction",
    "direct_instruction",
    "row_rng",
]

FREE_FORM_FIRST = (
    "Please provide a step-by-step explanation of your reasoning.",
    "Break down the problem and solve it step by step.",
    "Guide me through your thought process step by step.",
    "Elaborate your reasoning step by step.",
    "Solve this problem by reasoning through each step.",
    "Provide your reasoning in a detailed, step-by-step manner.",
    "Explain each step of your thought process clearly.",
    "Work through the solution, showing each step.",
    "Start from the basics and explain each step of the process.",
    # Two sentences in one entry: the release's list lacks the comma between them (see the module docstring).
    "Walk me through the reasoning process step by step.Please solve this by explaining each step of the way.",
    "Take me through your reasoning process, step by step.",
    "Explain the solution in a detailed, sequential manner.",
    "Describe each step in the solution process clearly.",
    "Provide a breakdown of your reasoning, step by step.",
    "Please outline the steps you took to solve this.",
    "Detail your thought process and explain each step.",
    "Walk me through the logic behind your solution step by step.",
    "Step through your reasoning process carefully.",
    "Break down the solution into manageable steps and explain each.",
)

FREE_FORM_SECOND = (
    "Finally, place your answer in \\boxed{}. ",
    "Conclude your reasoning and present the answer inside \\boxed{}.",
    "Your final answer should be placed in \\boxed{}.",
    "Present the result in \\boxed{}.",
    "Wrap up your reasoning and put the solution in \\boxed{}.",
    "Enclose your final answer in \\boxed{}.",
    "The final answer should be boxed in \\boxed{}.",
    "Put your solution inside \\boxed{}.",
    "Display the answer in \\boxed{}.",
    "Put the final answer within \\boxed{}.",
    "Finally, place the answer inside \\boxed{}.",
    "Put your final answer in \\boxed{}.",
    "Conclude with your final result inside \\boxed{}.",
    "Your answer should be enclosed within \\boxed{}.",
    "Wrap your solution in \\boxed{}.",
    "Enclose the final result inside \\boxed{}.",
    "Present the final answer in a \\boxed{} format.",
    "The final answer must be shown within \\boxed{}.",
    "Conclude by boxing the final result in \\boxed{}.",
    "Please display the final answer enclosed in \\boxed{}.",
)

CLOSE_FORM_FIRST = (
    "Please solve the problem step by step, providing clear explanations. The reasoning should be enclosed within "
    "<think> </think> tags, while the final answer is to be placed within <answer> </answer> tags.",
    "Solve the problem by breaking it down step by step. The reasoning process should be enclosed in <think> "
    "</think> tags, and the final answer should be inside <answer> </answer> tags.",
    "Begin by solving the problem step by step, with detailed reasoning enclosed in <think> </think> tags. The "
    "final answer must be placed within <answer> </answer> tags.",
    "Please solve the problem sequentially, explaining each step clearly. Enclose your reasoning within <think> "
    "</think> tags, and place the final answer inside <answer> </answer> tags.",
    "Solve the problem in steps, providing reasoning within <think> </think> tags, and place the final answer "
    "within <answer> </answer> tags.",
    "Proceed to solve the problem step by step, making sure that the reasoning is enclosed in <think> </think> "
    "tags. The final answer should be in <answer> </answer> tags.",
    "Break down the problem and solve it step by step. The reasoning should be within <think> </think> tags, and "
    "the answer must be enclosed in <answer> </answer> tags.",
    "Work through the problem step by step, enclosing your reasoning in <think> </think> tags, and placing the "
    "final answer in <answer> </answer> tags.",
    "Step through the problem, ensuring that your reasoning is contained in <think> </think> tags, with the answer "
    "placed inside <answer> </answer> tags.",
    "Please solve the problem by explaining each step in detail. Your reasoning should be enclosed in <think> "
    "</think> tags, and the answer should be inside <answer> </answer> tags.",
)

_EXAMPLE = "<think>\nreasoning process here\n</think>\n<answer>\n\\boxed{answer here}\n</answer>."
CLOSE_FORM_SECOND = (
    "Moreover, the final answer should be inside \\boxed{}. For example: " + _EXAMPLE,
    "In addition, format the answer inside \\boxed{}. For instance: " + _EXAMPLE,
    "Also, the final answer should be enclosed within \\boxed{}. For example: " + _EXAMPLE,
    "Additionally, ensure the answer is in \\boxed{}. For example: " + _EXAMPLE,
    "Furthermore, the final answer needs to be formatted inside \\boxed{}. For example: " + _EXAMPLE,
    "Also, the answer itself must be enclosed in \\boxed{}. For instance: " + _EXAMPLE,
    "Ensure the answer is formatted inside \\boxed{}. For example: " + _EXAMPLE,
    "Additionally, the final answer must be placed inside \\boxed{}. For instance: " + _EXAMPLE,
    "Make sure the answer is enclosed in \\boxed{}. For example: " + _EXAMPLE,
    "Lastly, format the answer within \\boxed{}. For example: " + _EXAMPLE,
)

COT_VERIFIER = "mathverify"


def row_rng(seed: int, file_key: str, row: int) -> random.Random:
    """The random stream of one row: depends on the seed, the file's key and the row only."""
    return random.Random(f"triune-cot:{seed}:{file_key}:{row}")


def cot_instruction(reward_model: Any, rng: random.Random) -> str | None:
    """The text the release appends to this row's last turn, or None when it appends nothing."""
    if not isinstance(reward_model, Mapping) or reward_model.get("verifier") != COT_VERIFIER:
        return None
    if reward_model.get("format_ratio") == 0:
        first, second = FREE_FORM_FIRST, FREE_FORM_SECOND
    else:
        first, second = CLOSE_FORM_FIRST, CLOSE_FORM_SECOND
    return "\n\n" + rng.choice(first) + rng.choice(second)


def append_to_last_turn(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """Messages with `text` appended to the last turn, as the release appends to that turn's content string.

    Appending to the string before splitting at `<image>` (the release's order) equals extending a trailing text
    part, or adding a text part after a trailing image. The input is not modified.
    """
    if not messages:
        return messages
    last = messages[-1]
    parts = list(last["content"])
    if parts and parts[-1].get("type") == "text":
        parts[-1] = {"type": "text", "text": parts[-1]["text"] + text}
    else:
        parts.append({"type": "text", "text": text})
    return [*messages[:-1], {**last, "content": parts}]


# --- direct answers (`triune data make-sample --answer-style direct`; not from the release) ---------------------
# Why: a tiny model's 30-40-token grounded <think> makes RL slow (a step's generation, log-prob forward and
# backward all grow with the completion) and wanders at temperature 1 (issue 24). These instructions ask for the
# answer in the verifier's own form with no reasoning, so a completion is 5-15 tokens. The instructions are short
# too (14 and 25 tokens of the tiny tokenizer against 31-87 for the release's): every prompt token is processed
# once per completion in the loss forward and backward. They are written into the stored prompt by the generator;
# a data config of such rows sets `cot_prompts: false`, or the loader would append a "step by step" instruction
# that contradicts them.
DIRECT_FREE_FORM = "Answer directly, with only the final answer in \\boxed{}."
# Close form: the layout the format reward wants, with an empty think (the shortest text that earns it).
DIRECT_CLOSE_FORM = "Answer directly, in the form <think>\n</think>\n<answer>\n\\boxed{answer here}\n</answer>."


def direct_instruction(reward_model: Any) -> str | None:
    """The direct-answer instruction for a mathverify row (free or close form, as `cot_instruction` chooses), or
    None for other verifiers, whose rows carry their own instruction."""
    if not isinstance(reward_model, Mapping) or reward_model.get("verifier") != COT_VERIFIER:
        return None
    return "\n\n" + (DIRECT_FREE_FORM if reward_model.get("format_ratio") == 0 else DIRECT_CLOSE_FORM)
