"""TriuneGRPOTrainer: TRL's GRPOTrainer plus the few overrides V-Triune needs, nothing else.

Two fixes, both for batches of prompts that differ (which is every V-Triune batch):

1. Left padding. TRL left-pads the prompt ids itself, but takes Qwen2.5-VL's `mm_token_type_ids` (which say where
   the image tokens are, for mRoPE) from the processor, padded on the tokenizer's `padding_side`. TRL only sets
   that side to "left" when it loads the processor itself; a processor passed in with right padding shifts the
   image-token map against the ids, and the first batch whose image prompts differ in length crashes in
   `get_rope_index` ("shape mismatch: value tensor of shape [3, N] cannot be broadcast..."). We set it to left.

2. Mixed modalities. V-Triune mixes text-only, single-image and multi-image samples in one batch. TRL 1.16
   represents "no image" as `None` inside the per-prompt image lists it builds for generation (vLLM needs exactly
   that), then hands the same list to the processor to compute the forward pass inputs, where `None` crashes
   (`TypeError: only a single or a list of entries is supported but got type=<class 'NoneType'>`). The processor
   wants `[]` for a prompt without images. We normalise at that boundary only, after generation, so the vLLM path
   keeps seeing `None`.
"""

from __future__ import annotations

import logging

from transformers import ProcessorMixin
from trl import GRPOTrainer

logger = logging.getLogger(__name__)

# `GRPOTrainer._generate` in TRL 1.16 returns, in order: prompt_ids, completion_ids, tool_mask, completions,
# logprobs, extra_fields, images, tool_images.
_GENERATE_OUTPUTS = 8
_IMAGES_INDEX = 6


def images_for_processor(images: list | None) -> list | None:
    """Per-prompt image lists as the processor accepts them: `None` entries (text-only prompts) become `[]`."""
    if images is None:
        return None
    return [image_list if image_list is not None else [] for image_list in images]


def use_left_padding(processing_class) -> None:
    """Make the processor (or tokenizer) pad and truncate on the left, as TRL's GRPO code assumes."""
    tokenizer = processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class
    if tokenizer is None:
        return
    if tokenizer.padding_side != "left":
        logger.info(
            "Setting the tokenizer's padding_side to 'left' (was %r): GRPO prompts are left-padded.",
            tokenizer.padding_side,
        )
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"


class TriuneGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that trains on batches mixing text-only, single-image and multi-image prompts."""

    def __init__(self, *args, processing_class=None, **kwargs):
        if processing_class is not None:
            use_left_padding(processing_class)
        super().__init__(*args, processing_class=processing_class, **kwargs)

    def _generate(self, prompts: list):
        outputs = super()._generate(prompts)
        if len(outputs) != _GENERATE_OUTPUTS:
            raise RuntimeError(
                f"GRPOTrainer._generate returned {len(outputs)} values, expected {_GENERATE_OUTPUTS}: this TRL version "
                "is not the one triune-trl supports (trl 1.16.x). Install trl>=1.16,<1.17."
            )
        outputs = list(outputs)
        outputs[_IMAGES_INDEX] = images_for_processor(outputs[_IMAGES_INDEX])
        return tuple(outputs)
