"""TriuneGRPOTrainer: TRL's GRPOTrainer plus the few overrides V-Triune needs, nothing else.

V-Triune mixes text-only, single-image and multi-image samples in one batch. TRL 1.16 represents "no image" as
`None` inside the per-prompt image lists it builds for generation (vLLM needs exactly that), then hands the same
list to the processor to compute the forward pass inputs, where `None` crashes
(`TypeError: only a single or a list of entries is supported but got type=<class 'NoneType'>`). The processor
wants `[]` for a prompt without images. We normalise at that boundary only, after generation, so the vLLM path keep
seeing `None`.
"""

from __future__ import annotations

from trl import GRPOTrainer

# `GRPOTrainer._generate` in TRL 1.16 returns, in order: prompt_ids, completion_ids, tool_mask, completions,
# logprobs, extra_fields, images, tool_images.
_GENERATE_OUTPUTS = 8
_IMAGES_INDEX = 6


def images_for_processor(images: list | None) -> list | None:
    """Per-prompt image lists as the processor accepts them: `None` entries (text-only prompts) become `[]`."""
    if images is None:
        return None
    return [image_list if image_list is not None else [] for image_list in images]


class TriuneGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that trains on batches mixing text-only, single-image and multi-image prompts."""

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
