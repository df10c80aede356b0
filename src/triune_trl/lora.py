"""LoRA through TRL's `ModelConfig` (`--use_peft true`), with the vision tower left out unless asked for.

Why: PEFT has no default target modules for `qwen2_5_vl`, so `--use_peft true` alone stops with "Please specify
`target_modules`", and the usual `all-linear` also adapts every linear layer of the ViT and of the connector
(`model.visual.*`, incl. `model.visual.merger`), which V-Triune keeps frozen. When `--use_peft` is set without
`--lora_target_modules`, `apply_lora_defaults` fills in a regular expression that PEFT matches against full module
names (`re.fullmatch`) and that selects only the attention and MLP projections of the language model's decoder
layers; `lm_head` and the embeddings stay frozen too. An explicit `--lora_target_modules` is kept as given.
"""

from __future__ import annotations

import logging

from trl import ModelConfig

logger = logging.getLogger(__name__)

LANGUAGE_MODEL_LORA_TARGETS = (
    r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
)


def apply_lora_defaults(model_args: ModelConfig) -> None:
    """Target the language model's linear layers only when LoRA is on and no target modules were given."""
    if model_args.use_peft and not model_args.lora_target_modules and not model_args.lora_target_parameters:
        model_args.lora_target_modules = LANGUAGE_MODEL_LORA_TARGETS
        logger.info("LoRA targets the language model's linear layers only: %s", LANGUAGE_MODEL_LORA_TARGETS)
