"""Every model family ([qwen3]) through TriuneGRPOTrainer on the HF path, with the real TRL trainer, router and
parquet: one GRPO step on a batch mixing text-only, one-image and two-image rows with the paper's freeze (vit,
connector), save and reload; one LoRA step with the default per-family targets (Qwen3.5's linear attention and
shared expert, the MoE families' fused experts), the adapter saved and reloaded; the Qwen3.5 think pre-fill handed
to the reward router. Qwen2.5-VL's own runs are in test_training_e2e.py / test_scale_hub.py."""

from __future__ import annotations

import re

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import ModelConfig
from trl.trainer.utils import get_peft_config

from triune_trl.configs import TriuneGRPOConfig
from triune_trl.data import ImageSizing, load_data_config, load_split
from triune_trl.models.lora import FUSED_EXPERT_LORA_PARAMETERS, apply_lora_defaults
from triune_trl.rewards import RewardRouter
from triune_trl.runs.train import save_final_model
from triune_trl.trainer import TriuneGRPOTrainer, module_group

from .conftest import write_data_config
from .test_expert_layout import assert_saved_experts_in_released_layout

QWEN3_FAMILIES = ["qwen3-vl", "qwen3-vl-moe", "qwen3.5", "qwen3.5-moe"]
MIXED = ["train/train_math_textmath_*.parquet", "train/train_math_mmmath_*.parquet", "train/train_puzzle_*.parquet"]

# What the default LoRA targets adapt in each family's 2-layer tiny model (layer 0 of Qwen3.5 is linear attention,
# layer 1 full attention), as (module kind, count).
ATTENTION = {"self_attn.q_proj": 2, "self_attn.k_proj": 2, "self_attn.v_proj": 2, "self_attn.o_proj": 2}
MLP = {"mlp.gate_proj": 2, "mlp.up_proj": 2, "mlp.down_proj": 2}
LINEAR_ATTENTION = {f"linear_attn.{name}": 1 for name in ("in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b",
                                                           "out_proj")}
FULL_ATTENTION = {name: 1 for name in ATTENTION}
SHARED = {f"mlp.shared_expert.{name}": 2 for name in ("gate_proj", "up_proj", "down_proj")}
EXPERTS = {"mlp.experts": 2}
LORA_TARGETS = {
    "qwen3-vl": {**ATTENTION, **MLP},
    "qwen3-vl-moe": {**ATTENTION, **EXPERTS},
    "qwen3.5": {**LINEAR_ATTENTION, **FULL_ATTENTION, **MLP},
    "qwen3.5-moe": {**LINEAR_ATTENTION, **FULL_ATTENTION, **SHARED, **EXPERTS},
}


def _args(output_dir, **overrides) -> TriuneGRPOConfig:
    defaults = dict(
        output_dir=str(output_dir), use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, seed=42, max_completion_length=12,
        learning_rate=1e-2, lr_scheduler_type="constant", weight_decay=0.0, shuffle_dataset=False, max_steps=1,
        num_generations=2,
    )
    defaults.update(overrides)
    return TriuneGRPOConfig(**defaults)


def _length_reward(completions, **kwargs) -> list[float]:
    """Reward spread on any model, so the step has a non-zero policy gradient."""
    return [float(len(completion[0]["content"])) for completion in completions]


def _mixed_rows(tmp_path, sample_data_dir, processor):
    """One text-only, one one-image and one two-image row of the sample set, sized by the family's processor."""
    config = write_data_config(tmp_path / "mixed.yaml", sample_data_dir, MIXED)
    dataset = load_split(load_data_config(config), "train", ImageSizing.from_processor(processor))
    by_count: dict[int, int] = {}
    for index, sizes in enumerate(dataset["image_sizes"]):
        by_count.setdefault(len(sizes), index)
    return dataset.select([by_count[0], by_count[1], by_count[2]])


class RecordingRouter(RewardRouter):
    def __init__(self, **kwargs):
        super().__init__(workers=0, **kwargs)
        self.image_counts: list[list[int]] = []

    def __call__(self, *args, **kwargs):
        self.image_counts.append(sorted(len(sizes) for sizes in kwargs["image_sizes"]))
        return super().__call__(*args, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("family", QWEN3_FAMILIES)
def test_a_mixed_step_with_the_paper_freeze_then_save_and_reload(tmp_path, tiny_family_model, sample_data_dir,
                                                                  family):
    model_dir = tiny_family_model(family)
    processor = AutoProcessor.from_pretrained(model_dir)
    router = RecordingRouter()
    trainer = TriuneGRPOTrainer(
        model=str(model_dir),
        reward_funcs=[router, _length_reward],
        args=_args(tmp_path / "out", per_device_train_batch_size=6, freeze_modules=["vit", "connector"]),
        train_dataset=_mixed_rows(tmp_path, sample_data_dir, processor),
        processing_class=processor,
    )
    # Qwen3.5's template pre-fills "<think>\n": the router scores it + the completion (docs/rewards.md)
    assert router.completion_prefix == ("<think>\n" if family.startswith("qwen3.5") else "")
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 1 and router.image_counts == [[0, 0, 1, 1, 2, 2]]
    loss = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry][0]
    assert loss == loss  # finite (NaN != NaN)
    changed: dict[str, list[bool]] = {"vit": [], "connector": [], "llm": []}
    for name, value in trainer.model.named_parameters():
        changed[module_group(name)].append(not torch.equal(before[name], value.detach()))
    assert changed["vit"] and not any(changed["vit"]), "the frozen vision tower changed"
    assert changed["connector"] and not any(changed["connector"]), "the frozen connector changed"
    assert sum(changed["llm"]) >= 0.5 * len(changed["llm"]), f"{sum(changed['llm'])}/{len(changed['llm'])} trained"

    save_final_model(trainer, tmp_path / "saved")  # what `triune train` does at the end
    if family == "qwen3-vl-moe":  # experts in the released layout vLLM starts from
        assert_saved_experts_in_released_layout(tmp_path / "saved", trainer.model.config.text_config)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "saved")
    assert type(reloaded) is type(trainer.model)
    trained = dict(trainer.model.named_parameters())
    for name, value in reloaded.named_parameters():
        assert torch.equal(value, trained[name].detach()), name
    assert AutoProcessor.from_pretrained(tmp_path / "saved").image_processor.patch_size == 16


@pytest.mark.slow
@pytest.mark.parametrize("family", QWEN3_FAMILIES)
def test_lora_with_the_family_default_targets_saves_and_reloads(tmp_path, tiny_family_model, sample_data_dir, family):
    model_dir = tiny_family_model(family)
    processor = AutoProcessor.from_pretrained(model_dir)
    model_args = ModelConfig(model_name_or_path=str(model_dir), use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    apply_lora_defaults(model_args)
    moe = family.endswith("-moe")
    assert model_args.lora_target_parameters == (FUSED_EXPERT_LORA_PARAMETERS if moe else None)
    rows = _mixed_rows(tmp_path, sample_data_dir, processor).select([0, 2])  # text-only and two-image
    trainer = TriuneGRPOTrainer(
        model=str(model_dir),
        reward_funcs=[_length_reward],
        args=_args(tmp_path / "out", per_device_train_batch_size=4, freeze_modules=["vit", "connector"]),
        train_dataset=rows,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
    )
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and ".language_model.layers." in n for n in trainable)
    assert any(not torch.equal(lora_before[n], p.detach()) for n, p in trainer.model.named_parameters()
               if n in lora_before), "no LoRA weight trained"

    trainer.save_model(str(tmp_path / "adapter"))
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as adapter:
        keys = list(adapter.keys())
    kinds: dict[str, int] = {}
    for key in keys:
        match = re.search(r"\.layers\.\d+\.(.+?)(\.base_layer)?\.lora_A\.weight$", key)
        if match:
            kinds[match.group(1)] = kinds.get(match.group(1), 0) + 1
    # a fused-experts module carries one ParamWrapper per parameter (gate_up_proj, down_proj): 2 per layer
    expected = {kind: count * (2 if kind == "mlp.experts" else 1) for kind, count in LORA_TARGETS[family].items()}
    assert kinds == expected
    assert not [key for key in keys if "visual" in key or "lm_head" in key or "embed" in key]

    base = AutoModelForImageTextToText.from_pretrained(model_dir)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    trained = {n: p for n, p in trainer.model.named_parameters() if ".lora_" in n}
    loaded = {n: p for n, p in reloaded.named_parameters() if ".lora_" in n}
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[n], trained[n].detach()) for n in trained)
