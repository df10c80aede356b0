"""What a chat template pre-fills in the assistant turn, so rewards score the whole turn the model produced.

Why: Qwen3.5's chat templates (4B and larger; TRL's `qwen3_5_think`) end the generation prompt with an opening
`<think>\\n`, so the model writes only the rest of its turn: `reasoning\\n</think>\\n<answer>...`. V-Triune's format
rewards look for the tags in the completion (mathverify: `<think>\\n`, `\\n</think>\\n`, `\\n<answer>\\n`,
`\\n</answer>` each exactly once), which such a completion can never satisfy: it would have to open a second think
block. Decision (docs/rewards.md, "Pre-filled think tag"): the verifiers score `prefill + completion`, the assistant
turn as the model sees it, where `prefill` is an *unclosed* opening tag that the template puts at the end of the
generation prompt. For Qwen2.5-VL, Qwen3-VL and Qwen3.5's non-thinking template (2B and smaller; `<think>\\n\\n
</think>\\n\\n`, a closed empty block) the prefill is empty and scoring is exactly the release's.

The prefill is read once from the template itself, rendered with the run's `chat_template_kwargs` (so
`enable_thinking: false` on a thinking template gives its closed empty block, hence no prefill): a one-message
conversation with and without the generation prompt; the difference is the generation prompt; an opening tag
`<name>` with only whitespace after it to the end is the prefill (from the tag to the end; a closed block such as
`<think>\n\n</think>\n\n` ends in a closing tag, so it never matches).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# an opening tag, then only whitespace to the end of the generation prompt: "<think>\n"
_TRAILING_OPEN_TAG = re.compile(r"<([A-Za-z_][\w.:-]*)>\s*\Z")
_PROBE = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]


def generation_prompt(processing_class: Any, chat_template_kwargs: Mapping[str, Any] | None = None) -> str:
    """The text the chat template appends for `add_generation_prompt=True` (e.g. `<|im_start|>assistant\\n`)."""
    kwargs = dict(chat_template_kwargs or {})
    render = processing_class.apply_chat_template
    with_prompt = render(_PROBE, tokenize=False, add_generation_prompt=True, **kwargs)
    without = render(_PROBE, tokenize=False, add_generation_prompt=False, **kwargs)
    if not with_prompt.startswith(without):
        raise ValueError("the chat template's generation prompt is not a suffix of the rendered conversation")
    return with_prompt[len(without):]


def prefill_of(generation_prompt_text: str) -> str:
    """The unclosed opening tag (and the whitespace after it) that ends a generation prompt, or ""."""
    match = _TRAILING_OPEN_TAG.search(generation_prompt_text)
    if match is None:
        return ""
    return generation_prompt_text[match.start():]


def completion_prefill(processing_class: Any, chat_template_kwargs: Mapping[str, Any] | None = None) -> str:
    """What the chat template pre-fills in the assistant turn before the model writes: "<think>\\n" for Qwen3.5's
    thinking template, "" for Qwen2.5-VL, Qwen3-VL and templates without a chat template at all."""
    if getattr(processing_class, "chat_template", None) is None:
        tokenizer = getattr(processing_class, "tokenizer", None)
        if getattr(tokenizer, "chat_template", None) is None:
            return ""
    return prefill_of(generation_prompt(processing_class, chat_template_kwargs))
