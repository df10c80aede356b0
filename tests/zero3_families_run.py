"""Test-only driver: one 2-process DeepSpeed ZeRO-3 launch that trains two GRPO steps of every model family in turn.

Launched by tests/test_scale_zero3_families.py under `accelerate launch --config_file local_scripts/zero3.yaml
--num_processes 2` (CPU, gloo). One launch for all families because a launch costs ~30-60 s on 2 cores; the ranks
loop over the families together, each family a fresh TriuneGRPOTrainer (its own DeepSpeed engine) on that family's
tiny model, freed before the next.

Every family trains on rows ordered text-only, image, image, text-only without shuffling, one prompt group per rank
and step (per-device batch = num_generations = 2): in step 1 rank 0 holds the text-only prompt while rank 1 holds an
image, in step 2 the other way round. Under ZeRO-3 the ranks must gather the same modules in the same order, which
the vision alignment (`triune_trl.trainer.image_less_forwards`, Qwen3-VL's deepstack included) provides; DeepSpeed
compares the ranks' recorded module traces at the start of the next step, so step 2 checks step 1, and the end of the
family
(a final gather of the weights) checks step 2. Each family then saves its final folder as `triune train` does
(`save_final_model`: ZeRO-3 gathers the 16-bit weights, Qwen3-VL-MoE's experts are rewritten in the released
layout). Each rank writes, per family, what it saw to
$TRIUNE_TEST_REPORT_DIR/rank<N>.json: the steps trained, the image counts of its micro-batches, the dummy vision
forwards it ran, the logged losses and gradient norms, and whether the gathered weights are finite and moved.
"""

from __future__ import annotations

import gc
import json
import os
import zlib
from pathlib import Path

import torch
from transformers import AutoProcessor

from triune_trl.configs import TriuneGRPOConfig
from triune_trl.data import ImageSizing, load_data_config, load_split
from triune_trl.runs.train import save_final_model
from triune_trl.trainer import TriuneGRPOTrainer
from triune_trl.trainer.distributed import apply_cpu_distributed_shim
from triune_trl.trainer.image_less_forwards import VisionAlignment


def _alternating_rows(dataset):
    """text-only, image, image, text-only rows (the first of each kind), so each step puts one of each on the ranks."""
    text = [i for i, sizes in enumerate(dataset["image_sizes"]) if len(sizes) == 0]
    image = [i for i, sizes in enumerate(dataset["image_sizes"]) if len(sizes) == 1]
    return dataset.select([text[0], image[0], image[1], text[1]])


def text_hash_reward(completions, **kwargs) -> list[float]:
    """A reward that differs between different completions (a random model's two completions of one prompt would
    otherwise score alike, leaving a zero advantage and no gradient to check)."""
    return [zlib.crc32(str(completion).encode()) % 1000 / 1000 for completion in completions]


def _gathered_weights(trainer) -> dict[str, torch.Tensor]:
    import deepspeed

    weights = {}
    for name, parameter in trainer.model.named_parameters():
        with deepspeed.zero.GatheredParameters([parameter]):
            weights[name] = parameter.detach().clone()
    return weights


def train_family(family: str, model_dir: str, data_config: str, out_dir: Path) -> dict:
    processor = AutoProcessor.from_pretrained(model_dir)
    rows = load_split(load_data_config(data_config), "train", ImageSizing.from_processor(processor))
    dataset = _alternating_rows(rows)
    args = TriuneGRPOConfig(
        output_dir=str(out_dir / family), use_cpu=False, bf16=False, gradient_checkpointing=False, report_to="none",
        save_strategy="no", disable_tqdm=True, seed=0, max_steps=2, per_device_train_batch_size=2, num_generations=2,
        gradient_accumulation_steps=1, max_completion_length=8, learning_rate=1e-2, logging_steps=1,
        shuffle_dataset=False,
    )
    trainer = TriuneGRPOTrainer(
        model=model_dir, reward_funcs=[text_hash_reward], args=args, train_dataset=dataset, processing_class=processor,
    )
    images_per_micro_batch = []
    trainer.model.register_forward_pre_hook(
        lambda module, args, kwargs: images_per_micro_batch.append(
            0 if kwargs.get("image_grid_thw") is None else len(kwargs["image_grid_thw"])
        ) if torch.is_grad_enabled() else None,
        with_kwargs=True,
    )
    before = _gathered_weights(trainer)
    trainer.train()
    after = _gathered_weights(trainer)
    alignment = [hook for hook in trainer.image_less_forward_hooks if isinstance(hook, VisionAlignment)]
    final = save_final_model(trainer, out_dir / family / "final")  # what `triune train` ends with: a collective
    report = {
        "global_step": trainer.state.global_step,
        "zero_stage": trainer.accelerator.state.deepspeed_plugin.zero_stage,
        "world_size": trainer.accelerator.num_processes,
        "images_per_gradient_forward": images_per_micro_batch,
        "dummy_forwards": alignment[0].dummy_forwards if alignment else None,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "grad_norms": [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry],
        "weights_finite": all(bool(torch.isfinite(tensor).all()) for tensor in after.values()),
        "weights_moved": any(not torch.equal(before[name], after[name]) for name in after),
        "final_folder": str(final),
    }
    trainer.accelerator.free_memory()
    del trainer
    gc.collect()
    return report


def main() -> None:
    apply_cpu_distributed_shim()
    families = json.loads(os.environ["TRIUNE_TEST_FAMILIES"])  # {family: model folder}, in launch order
    data_config = os.environ["TRIUNE_TEST_DATA_CONFIG"]
    report_dir = Path(os.environ["TRIUNE_TEST_REPORT_DIR"])
    reports = {}
    for family, model_dir in families.items():
        reports[family] = train_family(family, model_dir, data_config, report_dir)
    rank = int(os.environ.get("RANK", "0"))
    (report_dir / f"rank{rank}.json").write_text(json.dumps(reports))


if __name__ == "__main__":
    main()
