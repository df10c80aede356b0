"""What differs per model family (Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE): the tiny offline models
tests and the CPU recipes train (`tiny`), fused MoE experts in the released layout (`expert_layout`), default LoRA
targets (`lora`) and what a chat template pre-fills in the assistant turn (`prefill`). docs/models.md.

May import: the root's `errors` and `data` (the tiny tokenizer is trained on the sample generator's words).
Never `trainer`, `generation`, `runs` or `cli`.
"""
