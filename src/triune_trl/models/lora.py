"""LoRA through TRL's `ModelConfig` (`--use_peft true`), with the vision tower left out unless asked for.

Why: PEFT has no default target modules for the Qwen VLMs, so `--use_peft true` alone stops with "Please specify
`target_modules`", and the usual `all-linear` also adapts every linear layer of the ViT and of the connector
(`model.visual.*`, incl. `model.visual.merger`), which V-Triune keeps frozen. When `--use_peft` is set without
`--lora_target_modules` / `--lora_target_parameters`, `apply_lora_defaults` fills in a regular expression that PEFT
matches against full module names (`re.fullmatch`) and that selects only the linear layers of the language model's
decoder layers, for every supported family:

- attention: `self_attn.{q,k,v,o}_proj` (Qwen2.5-VL, Qwen3-VL, Qwen3.5's full-attention layers);
- Qwen3.5's gated-delta-net linear attention: `linear_attn.{in_proj_qkv,in_proj_z,in_proj_a,in_proj_b,out_proj}`
  (not its depthwise `conv1d`, nor the per-head vectors `A_log` / `dt_bias`);
- MLP: `mlp.{gate,up,down}_proj`, and Qwen3.5-MoE's `mlp.shared_expert.{gate,up,down}_proj`.

Routers (`mlp.gate`), Qwen3.5-MoE's one-output `mlp.shared_expert_gate`, `lm_head` and the embeddings stay frozen.

MoE routed experts (Qwen3-VL-MoE, Qwen3.5-MoE) are not modules but two fused 3-D `nn.Parameter`s per layer,
`mlp.experts.gate_up_proj` (E, 2 x I, H) and `mlp.experts.down_proj` (E, H, I), which `target_modules` cannot reach.
PEFT 0.21 adapts them through `target_parameters` (`ParamWrapper`: one rank-r pair per expert, folded into the
weight at each forward, merged exactly by `merge_and_unload`), but that wrapper refuses `lora_dropout != 0`, DoRA,
`lora_bias` and `fan_in_fan_out`. So for a model with fused experts the default adds them as
`lora_target_parameters` when `--lora_dropout 0` (the MoE recipes set it); with TRL's default dropout (0.05) the
experts stay frozen and a warning says how to adapt them. Explicit targets are kept as given; explicit
`--lora_target_parameters` with a nonzero dropout is a one-line usage error instead of PEFT's traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from trl import ModelConfig

from ..errors import UsageError

logger = logging.getLogger(__name__)

LANGUAGE_MODEL_LORA_TARGETS = (
    r".*language_model\.layers\.\d+\.("
    r"self_attn\.(q|k|v|o)_proj"
    r"|linear_attn\.(in_proj_qkv|in_proj_z|in_proj_a|in_proj_b|out_proj)"
    r"|mlp\.(shared_expert\.)?(gate|up|down)_proj)"
)
FUSED_EXPERT_LORA_PARAMETERS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def has_fused_experts(config: Any) -> bool:
    """True for a config whose language model routes tokens to experts (Qwen3-VL-MoE, Qwen3.5-MoE)."""
    text_config = getattr(config, "text_config", None) or config
    return bool(getattr(text_config, "num_experts", 0))


def _model_config(model_args: ModelConfig) -> Any | None:
    """The model's config (only config.json is read), or None when it cannot be read here: the model load reports
    that later with its own one-line error."""
    if not model_args.model_name_or_path:
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=getattr(model_args, "trust_remote_code", False),
        )
    except (OSError, ValueError):
        return None


def apply_lora_defaults(model_args: ModelConfig, config: Any | None = None) -> None:
    """Target the language model's linear layers (and MoE experts, see the module docstring) when LoRA is on and no
    targets were given. `config` is the model's config; read from `model_name_or_path` when not passed."""
    if not model_args.use_peft:
        return
    if model_args.lora_target_parameters and model_args.lora_dropout:
        raise UsageError(
            f"--lora_target_parameters {' '.join(model_args.lora_target_parameters)} needs --lora_dropout 0 "
            f"(PEFT's LoRA on parameters such as fused MoE experts has no dropout), got {model_args.lora_dropout}"
        )
    if model_args.lora_target_modules or model_args.lora_target_parameters:
        return
    model_args.lora_target_modules = LANGUAGE_MODEL_LORA_TARGETS
    logger.info("LoRA targets the language model's linear layers only: %s", LANGUAGE_MODEL_LORA_TARGETS)
    if config is None:
        config = _model_config(model_args)
    if config is None or not has_fused_experts(config):
        return
    if model_args.lora_dropout:
        logger.warning(
            "LoRA leaves this MoE model's routed experts (%s) frozen: PEFT adapts fused experts only without dropout; "
            "pass --lora_dropout 0 to adapt them too (got %s)",
            ", ".join(FUSED_EXPERT_LORA_PARAMETERS), model_args.lora_dropout,
        )
        return
    model_args.lora_target_parameters = list(FUSED_EXPERT_LORA_PARAMETERS)
    logger.info("LoRA also targets the routed experts: %s", FUSED_EXPERT_LORA_PARAMETERS)
