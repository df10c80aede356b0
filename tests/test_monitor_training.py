"""Per-source monitoring and the training tricks on real tiny runs: the real TRL trainer, router and parquet data."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoProcessor, TrainerCallback

from triune_trl.configs import TriuneGRPOConfig
from triune_trl.data import ImageSizing, load_data_config, load_split
from triune_trl.monitoring.per_source import PER_SOURCE_METRICS, metric_key
from triune_trl.rewards import RewardRouter
from triune_trl.rewards.iou_schedule import dynamic_iou_threshold
from triune_trl.trainer import TriuneGRPOTrainer, module_group
from triune_trl.trainer.callbacks import DynamicIoUCallback

from .conftest import write_data_config

ALWAYS = [m for m in PER_SOURCE_METRICS if not m.endswith(("_correct", "iou_threshold"))]
CORRECT_SIDE = [m for m in PER_SOURCE_METRICS if m.endswith("_correct")]
DETECTION_SOURCES = {"v3det_train", "d3"}
STEPS = 3


def _args(output_dir, **overrides) -> TriuneGRPOConfig:
    defaults = dict(
        output_dir=str(output_dir), use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, seed=42, max_completion_length=16,
        learning_rate=1e-2, lr_scheduler_type="constant", weight_decay=0.0,
    )
    defaults.update(overrides)
    return TriuneGRPOConfig(**defaults)


def _length_reward(completions, **kwargs) -> list[float]:
    """A reward with spread on any model (longer is better): gives every step a non-zero policy gradient."""
    return [float(len(completion[0]["content"])) for completion in completions]


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory, tiny_model_dir, sample_data_dir):
    """3 steps over 2 rows of every sample source (each step sees all 10), evaluated on the test split at the end.

    `sequence_bias` on the `<ok>` token makes the random model answer the tag task right about half the time, so
    that source has correct and wrong answers in the same run.
    """
    tmp = tmp_path_factory.mktemp("monitored")
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    config = load_data_config(write_data_config(tmp / "all.yaml", sample_data_dir, ["train/*.parquet"],
                                                ["test/*.parquet"]))
    sizing = ImageSizing.from_processor(processor)
    train = load_split(config, "train", sizing)
    first_two: dict[str, list[int]] = {}
    for index, source in enumerate(train["data_source"]):
        if len(first_two.setdefault(source, [])) < 2:
            first_two[source].append(index)
    train = train.select(sorted(i for indices in first_two.values() for i in indices))
    test = load_split(config, "test", sizing)
    ok_id = processor.tokenizer.convert_tokens_to_ids("<ok>")
    router = RewardRouter()
    trainer = TriuneGRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[router],
        args=_args(tmp / "run", per_device_train_batch_size=40, num_generations=2, max_steps=STEPS,
                   eval_strategy="steps", eval_steps=STEPS, per_device_eval_batch_size=20,
                   save_strategy="steps", save_steps=STEPS, generation_kwargs={"sequence_bias": [[[ok_id], 3.5]]}),
        train_dataset=train,
        eval_dataset=test,
        processing_class=processor,
        callbacks=[DynamicIoUCallback(router)],
    )
    trainer.train()
    state = json.loads((tmp / "run" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return trainer, state, set(train["data_source"]), test, tmp / "run"


def test_every_source_logs_every_metric_into_trainer_state(monitored_run):
    _, state, sources, _, _ = monitored_run
    train_logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(train_logs) == STEPS and len(sources) == 10
    for entry in train_logs:
        missing = [metric_key(m, s) for s in sources for m in ALWAYS if metric_key(m, s) not in entry]
        assert missing == [], f"step {entry['step']}: missing {missing[:5]}"
        assert sum(entry[metric_key("num_completions", s)] for s in sources) == 40  # every completion joined once
        for source in DETECTION_SOURCES:
            assert entry[metric_key("iou_threshold", source)] == dynamic_iou_threshold(entry["step"], STEPS)
            assert metric_key("reward_map50", source) in entry  # the detection verifier's sub-scores
        assert not any(metric_key("iou_threshold", s) in entry for s in sources - DETECTION_SOURCES)
    # the tag task had correct answers: the correct-side metrics appear for it
    tag = [entry for entry in train_logs if entry[metric_key("reward_accuracy", "tag_format")] > 0]
    assert tag, "the biased model never answered the tag task: the run cannot show correct-answer metrics"
    assert all(metric_key(m, "tag_format") in entry for entry in tag for m in CORRECT_SIDE)


def test_per_source_means_agree_with_the_routers_batch_means(monitored_run):
    _, state, sources, _, _ = monitored_run
    for entry in (e for e in state["log_history"] if "loss" in e):
        verified = {s: entry[metric_key("num_completions", s)] - entry[metric_key("unverifiable_count", s)]
                    for s in sources}
        weighted = sum(entry[metric_key("reward_accuracy", s)] * verified[s] for s in sources) / sum(verified.values())
        # TRL averages log_metric values (the router's rewards/accuracy) in a float32 tensor across ranks
        assert weighted == pytest.approx(entry["rewards/accuracy"], rel=1e-6, abs=1e-7)
        assert entry[metric_key("frac_reward_zero_std", "mm_math")] in (0.0, 0.5, 1.0)  # 2 prompt groups


def test_evaluation_logs_per_source_metrics_of_every_test_row(monitored_run):
    _, state, _, test, _ = monitored_run
    [entry] = [e for e in state["log_history"] if "eval_loss" in e]
    test_sources = set(test["data_source"])
    for source in test_sources:
        assert entry[metric_key("eval_num_completions", source)] == test["data_source"].count(source)
        missing = [m for m in ALWAYS if not m.endswith("_wrong") and "eval_" + metric_key(m, source) not in entry]
        assert missing == [], f"{source}: missing eval metrics {missing}"
        # greedy answers of one source may be all right (the biased tag task) or all wrong: one side is there
        sides = [f"eval_{metric_key('response_length' + side, source)}" in entry for side in ("_correct", "_wrong")]
        assert any(sides)


def test_evaluation_decodes_greedily(monitored_run):
    trainer, _, _, _, _ = monitored_run
    processor = trainer.processing_class
    prompt_ids = [processor.tokenizer.encode("Reply with the tag <ok>. Then count to three.")] * 2
    trainer.model.eval()
    try:
        eval_runs = [trainer._generate_single_turn(prompt_ids, None, {}, 1)[0] for _ in range(2)]
    finally:
        trainer.model.train()
    sampled = [trainer._generate_single_turn(prompt_ids, None, {}, 1)[0] for _ in range(2)]
    assert eval_runs[0] == eval_runs[1] and eval_runs[0][0] == eval_runs[0][1]
    assert sampled[0] != sampled[1], "training generation must still sample"


def test_triune_plot_draws_the_run(monitored_run, tmp_path):
    """`triune plot RUN_DIR` as a user runs it, on a run folder whose state lives in its checkpoint."""
    import numpy as np
    from PIL import Image

    from .test_cli import triune

    run_dir = monitored_run[4]
    out = tmp_path / "report.png"
    result = triune("plot", str(run_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    image = np.asarray(Image.open(out).convert("L"), dtype=float)
    assert image.shape[0] > 600 and image.shape[1] > 900  # 7 panels and a legend, readable size
    assert image.std() > 20  # lines and text, not a blank canvas

    empty = tmp_path / "empty"
    empty.mkdir()
    result = triune("plot", str(empty))
    assert result.returncode == 1 and f"{empty}: no trainer_state.json" in result.stderr


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("frozen", [["vit"], ["connector", "llm"]])
def test_frozen_modules_stay_unchanged_and_the_rest_trains(tmp_path, tiny_model_dir, sample_data_dir, frozen):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    config = write_data_config(tmp_path / "d.yaml", sample_data_dir, ["train/train_math_mmmath_*.parquet"])
    dataset = load_split(load_data_config(config), "train", ImageSizing.from_processor(processor))
    trainer = TriuneGRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[_length_reward],
        args=_args(tmp_path / "out", per_device_train_batch_size=8, num_generations=4, max_steps=2,
                   freeze_modules=frozen),
        train_dataset=dataset,
        processing_class=processor,
    )
    before = _snapshot(trainer.model)
    trainer.train()
    after = _snapshot(trainer.model)
    changed = {group: [] for group in ("vit", "connector", "llm")}
    for name, value in before.items():
        changed[module_group(name)].append(not torch.equal(value, after[name]))
    for group, flags in changed.items():
        if group in frozen:
            assert not any(flags), f"{group} is frozen but {sum(flags)} of its tensors changed"
        else:
            assert sum(flags) >= 0.8 * len(flags), f"{group} trains but only {sum(flags)}/{len(flags)} changed"
    counts = trainer.parameter_counts
    frozen_total = sum(p.numel() for n, p in trainer.model.named_parameters() if module_group(n) in frozen)
    assert counts["trainable"] == counts["total"] - frozen_total
    first_log = trainer.state.log_history[0]
    assert first_log["params/trainable"] == counts["trainable"]
    assert all(first_log[f"params/frozen_{group}"] > 0 for group in frozen)


def test_unknown_freeze_module_is_rejected():
    with pytest.raises(ValueError, match=r"unknown module\(s\) \['vision'\]"):
        TriuneGRPOConfig(output_dir="unused", freeze_modules=["vision"], use_cpu=True)


def _pad_run(tmp_path, tiny_model_dir, sample_data_dir, replacement):
    """One step whose policy is pushed to emit the image pad token (TRL only suppresses it for transformers)."""
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    config = write_data_config(tmp_path / "pad.yaml", sample_data_dir, ["train/train_math_mmmath_*.parquet"])
    dataset = load_split(load_data_config(config), "train", ImageSizing.from_processor(processor))
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    trainer = TriuneGRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[RewardRouter()],
        args=_args(tmp_path / "out", per_device_train_batch_size=4, num_generations=2, max_steps=1,
                   max_completion_length=8, vision_pad_replacement=replacement,
                   generation_kwargs={"suppress_tokens": None, "sequence_bias": [[[image_pad], 8.0]]}),
        train_dataset=dataset,
        processing_class=processor,
    )
    return trainer, image_pad


def test_generated_image_pad_tokens_are_replaced_before_the_loss(tmp_path, tiny_model_dir, sample_data_dir):
    trainer, image_pad = _pad_run(tmp_path, tiny_model_dir, sample_data_dir, " ")
    trainer.train()
    space = trainer.processing_class.tokenizer.encode(" ", add_special_tokens=False)[0]
    completion_ids = trainer._buffered_inputs[0]["completion_ids"]  # what the loss was computed on
    replaced = trainer.state.log_history[0]["vision_pads_replaced/mm_math"]
    assert replaced >= 4, "the biased policy should have generated image pad tokens"
    assert not (completion_ids == image_pad).any()
    assert (completion_ids == space).sum() >= replaced
    assert math.isfinite(trainer.state.log_history[0]["loss"])


def test_without_replacement_the_generated_image_pad_reaches_the_forward_pass(
    tmp_path, tiny_model_dir, sample_data_dir
):
    """The control of the test above: the same run with the replacement off fails inside the model."""
    trainer, _ = _pad_run(tmp_path, tiny_model_dir, sample_data_dir, None)
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        trainer.train()


class PoisonGradients(TrainerCallback):
    """Turns the gradients of one optimizer step into NaN through a real backward hook; snapshots every step."""

    def __init__(self, model, step: int):
        self.step, self.snapshots, self.current = step, [], 0
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.register_hook(lambda grad: grad * math.nan if self.current == self.step else grad)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.current = state.global_step + 1
        self.snapshots.append(_snapshot(model))


def test_an_update_with_a_non_finite_grad_norm_is_skipped_and_counted(tmp_path, tiny_model_dir, sample_data_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    config = write_data_config(tmp_path / "d.yaml", sample_data_dir, ["train/train_math_textmath_*.parquet"])
    dataset = load_split(load_data_config(config), "train", ImageSizing.from_processor(processor))
    trainer = TriuneGRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[_length_reward],
        args=_args(tmp_path / "out", per_device_train_batch_size=8, num_generations=4, max_steps=3),
        train_dataset=dataset,
        processing_class=processor,
    )
    poison = PoisonGradients(trainer.model, step=2)
    trainer.add_callback(poison)
    trainer.train()
    final = _snapshot(trainer.model)
    before_1, before_2, before_3 = poison.snapshots

    def same(a, b):
        return all(torch.equal(a[name], b[name]) for name in a)

    assert not same(before_1, before_2), "step 1 must update the weights"
    assert same(before_2, before_3), "step 2 had NaN gradients: its update must be skipped"
    assert not same(before_3, final), "step 3 must update again"
    assert all(torch.isfinite(value).all() for value in final.values())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["skipped_nonfinite_updates"] for entry in logs] == [0, 1, 1]
    assert math.isnan(logs[1]["grad_norm"]) and math.isfinite(logs[2]["grad_norm"])
