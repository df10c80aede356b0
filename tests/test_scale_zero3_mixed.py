"""ZeRO-3 with text-only and image rows in one run: a step where one rank's micro-batch has no image while the
other rank's has one must train like any other (`triune_trl.trainer.image_less_forwards`).

The launch tests run the real recipe under `accelerate launch --config_file local_scripts/zero3.yaml` on 2 CPU
processes. In the first, each rank's micro-batch is exactly one prompt group (per-device batch = num_generations
= 4, one generation per step), so a logged step whose per-source metrics name both an image-free source and an
image source had the image-free prompt on one rank and the image prompt on the other: the test checks that this
happened, and that a step followed it (DeepSpeed then compares the ranks' module traces). Without the vision
alignment the mixed step aborts (gloo "Received data size doesn't match expected size" / "Connection reset by
peer"); with a dummy pass whose backward differs from an image rank's, the next step does ("Detected a disagreement
on list length between rank0 and rank1"). The second runs with gradient accumulation and gradient checkpointing,
where text-only micro-batches reach the model with 0-row image tensors.

The single-process tests check, on the tiny model, that the alignment changes no loss or gradient value, that it
is installed only where parameters are gathered per module (ZeRO-3, FSDP), never under DDP or one process, and
that a text-only micro-batch cut from a batch with images (gradient accumulation) trains instead of crashing on its
0-row image tensors.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import GRPOConfig

from triune_trl.configs import TriuneGRPOConfig
from triune_trl.data import ImageSizing, load_data_config, load_split
from triune_trl.rewards import RewardRouter
from triune_trl.trainer import TriuneGRPOTrainer
from triune_trl.trainer.image_less_forwards import (
    EmptyImageGuard,
    VisionAlignment,
    find_vision_tower,
    floating_sum,
    install_empty_image_guard,
    install_vision_alignment,
    needs_vision_alignment,
    prepare_image_less_forwards,
)

from .conftest import REPO_ROOT, write_data_config
from .test_scale_launch import BIN, RECIPE, TINY_RECIPE, _free_port, _launch

TEXT_FILES = "train/train_math_textmath_*.parquet"
IMAGE_FILES = "train/train_math_mmmath_*.parquet"
skip_without_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="DeepSpeed's CPU comm op needs g++")


def _sources_by_modality(sample_data_dir) -> tuple[set[str], set[str]]:
    """(data sources whose rows have no image, data sources whose rows all have one), read from the parquet."""
    text, image = set(), set()
    for pattern in (TEXT_FILES, IMAGE_FILES):
        for path in sample_data_dir.glob(pattern):
            frame = pd.read_parquet(path, columns=["data_source", "images"])
            for source, images in zip(frame["data_source"], frame["images"], strict=True):
                (image if len(images) else text).add(source)
    assert text and image and not text & image, f"the test needs one image-free and one image source: {text} {image}"
    return text, image


def _sources_per_step(trainer_state: dict) -> dict[int, set[str]]:
    """Data sources each logged training step held, from the per-source `unverifiable_count/<source>` metric."""
    steps = {}
    for entry in trainer_state["log_history"]:
        sources = {key.split("/", 1)[1] for key in entry if key.startswith("unverifiable_count/")}
        if sources and "step" in entry:
            steps[entry["step"]] = sources
    return steps


def _zero3_launch(tmp_path, tiny_model_dir, sample_data_dir, steps: int, *options: str):
    """Train `steps` steps of the tiny recipe on text-only + image rows under ZeRO-3 on 2 CPU processes."""
    data_config = write_data_config(tmp_path / "data.yaml", sample_data_dir, [TEXT_FILES, IMAGE_FILES])
    out = tmp_path / "out"
    launcher = [
        str(BIN / "accelerate"), "launch", "--config_file", str(REPO_ROOT / "local_scripts" / "zero3.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port()),
    ]
    recipe = [
        str(RECIPE), "--config", str(TINY_RECIPE),
        "--model_name_or_path", str(tiny_model_dir), "--data_config", str(data_config),
        "--output_dir", str(out), "--use_cpu", "false", "--seed", "0", "--max_completion_length", "16",
        "--max_steps", str(steps), "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", str(steps),
        *options,
    ]
    _launch(launcher + recipe)
    return out


def _check_zero3_job(out, tiny_model_dir, steps: int) -> dict[int, set[str]]:
    """One 2-process ZeRO-3 job that trained `steps` steps, saved reloadable weights; its sources per step."""
    facts = json.loads((out / "triune_run.json").read_text())
    assert (facts["world_size"], facts["distributed_type"], facts["zero_stage"]) == (2, "DEEPSPEED", 3)
    assert facts["global_step"] == steps
    checkpoint = out / f"checkpoint-{steps}"
    assert sorted(p.name for p in checkpoint.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert (checkpoint / f"global_step{steps}").is_dir()  # DeepSpeed's sharded states, for resuming
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == steps

    final, saved, initial = _weights(out), _weights(checkpoint), _weights(tiny_model_dir)
    assert final.keys() == initial.keys()
    assert all(tensor.numel() > 0 for tensor in final.values()), "ZeRO-3 saved empty (ungathered) tensors"
    assert all(torch.equal(final[name], saved[name]) for name in final), f"checkpoint-{steps} and the final differ"
    assert any(not torch.equal(final[name], initial[name]) for name in final), "no weight moved at lr 1e-2"
    assert all(torch.isfinite(tensor).all() for tensor in final.values())
    AutoProcessor.from_pretrained(out)

    per_step = _sources_per_step(state)
    assert sorted(per_step) == list(range(1, steps + 1)), f"per-source metrics for steps {sorted(per_step)}"
    return per_step


@pytest.mark.slow
@skip_without_compiler
def test_zero3_steps_with_images_on_one_rank_only(tmp_path, tiny_model_dir, sample_data_dir):
    # one prompt group per rank and step (per-device batch = num_generations, no accumulation): the sources a
    # step logged are the two ranks' micro-batches
    out = _zero3_launch(
        tmp_path, tiny_model_dir, sample_data_dir, 4,
        "--per_device_train_batch_size", "4", "--num_generations", "4", "--gradient_accumulation_steps", "1",
    )
    per_step = _check_zero3_job(out, tiny_model_dir, 4)

    text_sources, image_sources = _sources_by_modality(sample_data_dir)
    mixed = [step for step, sources in per_step.items() if sources & text_sources and sources & image_sources]
    assert mixed, f"no step had an image-free rank next to an image rank (sources per step: {per_step})"
    # DeepSpeed compares the ranks' recorded module orders (forward and backward) at the start of the next forward:
    # a step after a mixed one checks that the dummy vision pass matched the image rank module for module
    assert min(mixed) < 4, f"no step followed a mixed step (sources per step: {per_step})"


@pytest.mark.slow
@skip_without_compiler
def test_zero3_text_only_micro_batches_with_gradient_accumulation(tmp_path, tiny_model_dir, sample_data_dir):
    # micro-batches of 2 shuffled rows out of 4 prompt groups per rank: text-only micro-batches get 0-row image
    # tensors, next to image micro-batches on the other rank; gradient checkpointing re-runs forwards in backward
    out = _zero3_launch(
        tmp_path, tiny_model_dir, sample_data_dir, 3,
        "--per_device_train_batch_size", "2", "--num_generations", "2", "--gradient_accumulation_steps", "4",
        "--gradient_checkpointing", "true",
    )
    per_step = _check_zero3_job(out, tiny_model_dir, 3)
    text_sources, image_sources = _sources_by_modality(sample_data_dir)
    assert all(sources & text_sources and sources & image_sources for sources in per_step.values()), per_step


def _weights(folder) -> dict[str, torch.Tensor]:
    return AutoModelForImageTextToText.from_pretrained(folder).state_dict()


# --- single process: the alignment adds exactly zero, and is installed only under ZeRO-3 / FSDP ---------------


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)


def _text_only_batch(model) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    vocab = model.config.get_text_config().vocab_size
    input_ids = torch.randint(0, 500, (2, 12), generator=generator) % vocab
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0  # left padding, as GRPO batches have
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_alignment_adds_exactly_zero_to_a_text_only_forward(tiny_model):
    batch = _text_only_batch(tiny_model)
    loss_plain, grads_plain = _loss_and_grads(tiny_model, batch)
    assert not any(name.split(".")[1:2] == ["visual"] for name in grads_plain), "a text-only pass reached the ViT"

    alignment = install_vision_alignment(tiny_model)
    try:
        loss_aligned, grads_aligned = _loss_and_grads(tiny_model, batch)
        assert alignment.dummy_forwards == 1
    finally:
        alignment.remove()

    assert torch.equal(loss_aligned, loss_plain)
    language = {name for name in grads_plain if ".visual." not in f".{name}"}
    assert language and language <= grads_aligned.keys()
    for name in language:
        assert torch.equal(grads_aligned[name], grads_plain[name]), name
    # the vision tower now takes part in backward too (as on an image rank), with gradients of exactly zero
    vision = {name for name in grads_aligned if name not in grads_plain}
    assert vision and all(".visual." in f".{name}" for name in vision)
    assert all(torch.count_nonzero(grads_aligned[name]) == 0 for name in vision)

    # removed: the model is back to its own forward
    assert torch.equal(_loss_and_grads(tiny_model, batch)[0], loss_plain)


def test_alignment_leaves_image_forwards_and_decoding_steps_alone(tiny_model, tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.new("RGB", (56, 56), "red")], return_tensors="pt")

    alignment = install_vision_alignment(tiny_model)
    try:
        with torch.no_grad():
            tiny_model(**inputs)
        assert alignment.dummy_forwards == 0, "a forward with an image ran the vision tower twice"
        # generation: the prefill has the image, the decoding steps run the language model alone (cached keys)
        tiny_model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert alignment.dummy_forwards == 0
        # a text-only prompt: one dummy vision forward for the prefill, none for the decoding steps
        text_only = processor(text=["What shape?"], return_tensors="pt")
        tiny_model.generate(**text_only, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert alignment.dummy_forwards == 1
    finally:
        alignment.remove()


def test_alignment_finds_the_vision_tower_through_peft(tiny_model_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(target_modules=r".*language_model\.layers\.\d+\.self_attn\.q_proj"))
    tower = find_vision_tower(peft_model)
    assert tower is not None and tower.vision is model.model.visual and tower.language is model.model.language_model
    alignment = install_vision_alignment(peft_model)
    try:
        batch = _text_only_batch(model)
        peft_model(**batch).loss.backward()
        assert alignment.dummy_forwards == 1
    finally:
        alignment.remove()


def test_dummy_image_matches_the_patch_config(tiny_model):
    tower = find_vision_tower(tiny_model)
    pixel_values, grid_thw = tower.dummy_image(torch.device("cpu"))
    config = tiny_model.config.vision_config
    merge = config.spatial_merge_size
    assert grid_thw.tolist() == [[1, merge, merge]]
    assert pixel_values.shape == (merge * merge, config.in_channels * config.temporal_patch_size * config.patch_size**2)
    assert pixel_values.dtype == tiny_model.model.visual.dtype
    # one merged token, out_hidden_size wide: what one real image of the smallest size gives
    features = floating_sum(tiny_model.model.visual(pixel_values, grid_thw=grid_thw))
    assert torch.isfinite(features)


@pytest.mark.parametrize(
    ("distributed_type", "zero_stage", "processes", "expected"),
    [
        ("DEEPSPEED", 3, 2, True),
        ("FSDP", None, 8, True),
        ("DEEPSPEED", 2, 2, False),  # ZeRO-2 keeps whole parameters on every rank: nothing to gather
        ("MULTI_GPU", None, 8, False),  # DDP: TRL sets ddp_find_unused_parameters
        ("MULTI_CPU", None, 2, False),
        ("NO", None, 1, False),
        ("DEEPSPEED", 3, 1, False),  # one rank: nobody to disagree with
    ],
)
def test_alignment_only_where_parameters_are_gathered_per_module(distributed_type, zero_stage, processes, expected):
    assert needs_vision_alignment(distributed_type, zero_stage, processes) is expected


def test_empty_image_tensors_count_as_no_images(tiny_model):
    batch = _text_only_batch(tiny_model)
    loss_plain, grads_plain = _loss_and_grads(tiny_model, batch)
    width = tiny_model.model.visual.patch_embed.proj.weight.shape[1:].numel()
    empty = {"pixel_values": torch.zeros(0, width), "image_grid_thw": torch.zeros(0, 3, dtype=torch.long)}
    guard = install_empty_image_guard(tiny_model)
    try:
        loss_guarded, grads_guarded = _loss_and_grads(tiny_model, {**batch, **empty})
        assert guard.dropped == 1
        with pytest.raises(ValueError, match="image_grid_thw lists 1 images"):
            tiny_model(**batch, pixel_values=empty["pixel_values"], image_grid_thw=torch.tensor([[1, 2, 2]]))
    finally:
        guard.remove()
    assert torch.equal(loss_guarded, loss_plain)
    assert grads_guarded.keys() == grads_plain.keys()
    assert all(torch.equal(grads_guarded[name], grads_plain[name]) for name in grads_plain)


def test_text_only_micro_batches_of_an_image_batch_train(tmp_path, tiny_model_dir, sample_data_dir):
    """Gradient accumulation cuts each generation batch (text and image groups, rows shuffled) into micro-batches
    of 2: some hold only text rows and reach the model with 0-row `pixel_values`."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    config = write_data_config(tmp_path / "data.yaml", sample_data_dir, [TEXT_FILES, IMAGE_FILES])
    dataset = load_split(load_data_config(config), "train", ImageSizing.from_processor(processor))
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        save_strategy="no", disable_tqdm=True, seed=0, max_steps=2, per_device_train_batch_size=2,
        num_generations=2, gradient_accumulation_steps=4, max_completion_length=8, learning_rate=1e-2,
    )
    trainer = TriuneGRPOTrainer(
        model=str(tiny_model_dir), reward_funcs=[RewardRouter()], args=args, train_dataset=dataset,
        processing_class=processor,
    )
    guards = [hook for hook in trainer.image_less_forward_hooks if isinstance(hook, EmptyImageGuard)]
    assert len(guards) == 1 and not any(isinstance(h, VisionAlignment) for h in trainer.image_less_forward_hooks)
    trainer.train()
    assert trainer.state.global_step == 2
    assert guards[0].dropped > 0, "no micro-batch was text-only next to image rows: the test no longer tests this"


def test_single_process_trainer_installs_no_alignment(tmp_path, tiny_model_dir):
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "What is 1 + 1?"}]}] * 4)
    args = TriuneGRPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=4, max_steps=1, report_to="none",
    )
    trainer = TriuneGRPOTrainer(
        model=str(tiny_model_dir), reward_funcs=[lambda completions, **_: [0.0] * len(completions)], args=args,
        train_dataset=dataset, processing_class=AutoProcessor.from_pretrained(tiny_model_dir),
    )
    assert [type(hook) for hook in trainer.image_less_forward_hooks] == [EmptyImageGuard]
    hooked = {getattr(hook, "__self__", None) for module in trainer.model.modules()
              for hook in module._forward_pre_hooks.values()}
    assert not any(isinstance(owner, VisionAlignment) for owner in hooked)


QWEN3_FAMILIES = ("qwen3-vl", "qwen3-vl-moe", "qwen3.5", "qwen3.5-moe")


def _image_batch(folder) -> dict[str, torch.Tensor]:
    processor = AutoProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.new("RGB", (64, 64), "red")], return_tensors="pt")
    return {**inputs, "labels": inputs["input_ids"].clone()}


@pytest.mark.parametrize("family", QWEN3_FAMILIES)
def test_alignment_mirrors_each_qwen3_family_with_zero_gradients(family, tiny_family_model):
    """Qwen3-VL's deepstack included: the dummy reaches exactly the vision parameters an image forward reaches, the
    logits and language gradients stay bit-identical, and every vision gradient is exactly zero."""
    folder = tiny_family_model(family)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    tower = find_vision_tower(model)
    assert tower is not None and tower.has_deepstack() == family.startswith("qwen3-vl")
    batch = _text_only_batch(model)
    with torch.no_grad():
        logits_plain = model(**batch).logits
    loss_plain, grads_plain = _loss_and_grads(model, batch)
    assert not any(".visual." in f".{name}" for name in grads_plain), "a text-only pass reached the vision tower"

    hooks = prepare_image_less_forwards([model], "DEEPSPEED", 3, 2)
    try:
        assert [type(hook) for hook in hooks] == [EmptyImageGuard, VisionAlignment]
        with torch.no_grad():
            logits_aligned = model(**batch).logits
        loss_aligned, grads_aligned = _loss_and_grads(model, batch)
        assert hooks[1].dummy_forwards == 2
    finally:
        for hook in hooks:
            hook.remove()

    assert torch.equal(logits_aligned, logits_plain) and torch.equal(loss_aligned, loss_plain)
    assert all(torch.equal(grads_aligned[name], grads) for name, grads in grads_plain.items())
    vision = {name for name in grads_aligned if name not in grads_plain}
    assert all(torch.count_nonzero(grads_aligned[name]) == 0 for name in vision)
    # the same vision parameters an image forward trains (deepstack mergers included), no more, no fewer
    _, grads_image = _loss_and_grads(model, _image_batch(folder))
    assert vision == {name for name in grads_image if ".visual." in f".{name}"}
    if tower.has_deepstack():
        assert any("deepstack_merger_list" in name for name in vision)


def test_zero3_installs_the_guard_and_the_alignment_on_each_vision_model(tiny_model):
    hooks = prepare_image_less_forwards([tiny_model, None], "DEEPSPEED", 3, 2)
    try:
        assert [type(hook) for hook in hooks] == [EmptyImageGuard, VisionAlignment]
        _loss_and_grads(tiny_model, _text_only_batch(tiny_model))
        assert hooks[1].dummy_forwards == 1 and hooks[0].dropped == 0
    finally:
        for hook in hooks:
            hook.remove()
    assert not any(module._forward_pre_hooks for module in tiny_model.modules())
