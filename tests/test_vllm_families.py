"""TRL's colocate mode with a real vLLM engine (vllm-cpu) for each Qwen3 family: Qwen3-VL, Qwen3-VL-MoE, Qwen3.5,
Qwen3.5-MoE (Qwen2.5-VL: tests/test_vllm_colocate.py).

Per family, one real TriuneGRPOTrainer and its engine: after a sync, vLLM scores a text-only, a one-image and a
two-image prompt like the trainer (|log p_vLLM - log p_trainer| < 0.01 per token; vLLM runs bf16, downcasting the
fp32 checkpoint, the trainer fp32); after a large step of every weight it does not; after the next sync it does
again; and a mixed text/image generation round's sampled log-probs match the trainer's. The MoE families need the
two MoE sync fixes (`triune_trl.expert_layout`: Qwen3-VL-MoE's experts in the released layout; `vllm_cpu_sync`:
CPU fused experts prepacked again after the reload), the sync reports the re-prepack. Qwen3.5's gated-delta-net
layers run on vLLM-CPU because the tiny model's linear heads are 64 wide (the CPU kernel takes 64 or 128, and bf16
only, which vLLM's default dtype gives).

The engines run eager (`enforce_eager=True`, added to TRL's `LLM(...)` call here): compiling each model's graph costs
~50 s per family on 2 cores from a fresh clone against ~4 s eager, and the weights, the sync and the kernels are the
same; tests/test_vllm_colocate.py keeps TRL's compiled engine covered.
"""

from __future__ import annotations

import copy
import functools
import os
from types import SimpleNamespace

import pytest
import torch

from .conftest import REPO_ROOT, write_data_config

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO_ROOT / ".pytest_cache" / "vllm"))

pytest.importorskip(
    "vllm", reason="vllm is not installed (on a host without CUDA, `make install` installs vllm-cpu: README, vLLM)"
)

import trl.generation.vllm_generation as trl_vllm_generation  # noqa: E402
from transformers import AutoProcessor  # noqa: E402
from transformers.models.auto.configuration_auto import CONFIG_MAPPING  # noqa: E402
from trl.data_utils import prepare_multimodal_messages  # noqa: E402

from triune_trl.configs import TriuneGRPOConfig  # noqa: E402
from triune_trl.data import ImageSizing, load_data_config, load_split  # noqa: E402
from triune_trl.trainer import TriuneGRPOTrainer  # noqa: E402

from .test_vllm_colocate import CompletionRecorder, gaps, release_engine, trainer_logprobs  # noqa: E402

pytestmark = pytest.mark.slow

TOLERANCE = 0.01  # per token, same weights (measured: <= 0.0072 after a sync, 0.002-0.004 typical)
MOE_LAYERS = {"qwen3-vl": 0, "qwen3-vl-moe": 2, "qwen3.5": 0, "qwen3.5-moe": 2}  # the tiny models' 2 decoder layers


@pytest.fixture(scope="module")
def eager_engines():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trl_vllm_generation, "LLM", functools.partial(trl_vllm_generation.LLM, enforce_eager=True))
        yield


@pytest.fixture
def family_run(request, eager_engines, tmp_path, tiny_family_model, sample_data_dir):
    saved_environment = dict(os.environ)  # TRL's colocate mode sets RANK, WORLD_SIZE, MASTER_ADDR/PORT for vLLM
    # vLLM registers its own Qwen3.5 config classes with transformers' AutoConfig when it resolves a Qwen3.5 model;
    # a later from_pretrained in this process would then build transformers' model from vLLM's config and fail
    # ("'Qwen3_5VisionConfig' object has no attribute 'num_attention_heads'"). Restored after each engine.
    saved_configs = dict(CONFIG_MAPPING._extra_content)
    folder = tiny_family_model(request.param)
    processor = AutoProcessor.from_pretrained(folder)
    config = load_data_config(write_data_config(tmp_path / "data.yaml", sample_data_dir, ["train/*.parquet"]))
    rows = load_split(config, "train", ImageSizing.from_processor(processor))
    by_images = {}
    for index, sizes in enumerate(rows["image_sizes"]):
        by_images.setdefault(len(sizes), index)
    assert set(by_images) == {0, 1, 2}, "the sample set must hold text-only, one-image and two-image rows"
    args = TriuneGRPOConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        save_strategy="no", disable_tqdm=True, seed=42, max_completion_length=16, per_device_train_batch_size=6,
        num_generations=2, max_steps=1, use_vllm=True, vllm_mode="colocate", vllm_max_model_length=1024,
    )
    trainer = TriuneGRPOTrainer(
        model=str(folder), reward_funcs=[CompletionRecorder()], args=args, train_dataset=rows,
        processing_class=processor,
    )
    yield SimpleNamespace(
        family=request.param,
        trainer=trainer,
        llm=trainer.vllm_generation.llm,
        processor=processor,
        rows=[rows[by_images[count]] for count in (0, 1, 2)],  # text-only, one image, two images
    )
    release_engine(trainer, saved_environment)
    del trainer
    CONFIG_MAPPING._extra_content.clear()
    CONFIG_MAPPING._extra_content.update(saved_configs)


@pytest.mark.parametrize("family_run", list(MOE_LAYERS), indirect=True)
def test_vllm_colocate_follows_the_trainer_for_each_qwen3_family(family_run):
    run, trainer = family_run, family_run.trainer
    completion = run.processor.tokenizer.encode(" so the answer is <answer>42</answer>", add_special_tokens=False)
    saved = copy.deepcopy(trainer.model.state_dict())

    finished = trainer.vllm_generation.sync_weights()
    assert finished == [{"tied_output_layers": 1, "cpu_moe_layers": MOE_LAYERS[run.family]}]
    synced = gaps(run, completion)
    assert all(gap.max() < TOLERANCE for gap in synced), [round(gap.max().item(), 4) for gap in synced]

    # a generation round of text-only, one-image and two-image prompts in one vLLM call, sampled at temperature 1:
    # vLLM's log-probs of what it sampled are the trainer's
    trainer.model.train()
    prompts = [prepare_multimodal_messages(row["prompt"], images=row["images"]) for row in run.rows]
    outputs = trainer._generate(prompts)
    assert [len(images) for images in outputs[6]] == [0, 1, 2]
    for row, completion_ids, sampled in zip(run.rows, outputs[1], outputs[4], strict=True):
        scored = [position for position, logprob in enumerate(sampled) if logprob is not None]
        assert scored, "vLLM sampled nothing scorable"
        expected = trainer_logprobs(trainer, run.processor, row, list(completion_ids))[scored]
        gap = (torch.tensor([sampled[position] for position in scored]) - expected).abs()
        assert gap.max() < TOLERANCE, (len(row["images"]), gap.max().item())

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a large step of every weight: language model, experts, vision tower, tied embeddings
        for parameter in trainer.model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std().nan_to_num() * 0.5)
    stale = gaps(run, completion)
    assert all(gap.mean() > 5 * TOLERANCE for gap in stale), [round(gap.mean().item(), 4) for gap in stale]

    trainer.vllm_generation.sync_weights()
    synced = gaps(run, completion)
    assert all(gap.max() < TOLERANCE for gap in synced), [round(gap.max().item(), 4) for gap in synced]

    trainer.model.load_state_dict(saved)
