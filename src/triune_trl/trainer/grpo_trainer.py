"""TriuneGRPOTrainer: TRL's GRPOTrainer plus the few overrides V-Triune needs, nothing else.

Two fixes, both for batches of prompts that differ (which is every V-Triune batch):

1. Left padding. TRL left-pads the prompt ids itself, but takes Qwen2.5-VL's `mm_token_type_ids` (which say where
   the image tokens are, for mRoPE) from the processor, padded on the tokenizer's `padding_side`. TRL only sets
   that side to "left" when it loads the processor itself; a processor passed in with right padding shifts the
   image-token map against the ids, and the first batch whose image prompts differ in length crashes in
   `get_rope_index` ("shape mismatch: value tensor of shape [3, N] cannot be broadcast..."). We set it to left.

2. Mixed modalities. V-Triune mixes text-only, single-image and multi-image samples in one batch. TRL 1.16
   represents "no image" as `None` inside the per-prompt image lists it builds for generation (vLLM needs exactly
   that), then hands the same list to the processor to compute the forward pass inputs, where `None` crashes
   (`TypeError: only a single or a list of entries is supported but got type=<class 'NoneType'>`). The processor
   wants `[]` for a prompt without images. We normalise at that boundary only, after generation, so the vLLM path
   keeps seeing `None`. Across ranks, TRL gathers the batch's images for its completions table on every step
   (`log_multimodal`, on by default) but only on ranks whose batch has an image: a rank holding only text-only
   prompts skips the collective and the run hangs. We gather them ourselves, on every rank, one list per prompt
   (`[]` for text-only), and only when `log_completions` will use them.

Then V-Triune's monitoring and training tricks, each an override at the one place where TRL holds the data
(options: `TriuneGRPOConfig`; a plain `GRPOConfig` gets their defaults):

3. Per-source metrics (`triune_trl.monitoring`): right after the reward functions ran, the batch's rows,
   completions, completion ids and the router's per-sample scores become records, gathered from all ranks and
   logged as `<metric>/<data_source>` through TRL's metrics, so every `report_to` and `trainer_state.json` get them.
4. `freeze_modules` (vit / connector / llm), applied when the trainer is built, before `train()` builds the
   optimizer; the parameter counts are logged.
5. Image/video pad tokens the policy generates inside a completion are replaced (default: the space token) before
   log-probs are computed; otherwise the forward pass takes them for image slots and fails, or trains on noise.
6. An update whose gradient norm is NaN or infinite is skipped and counted: its gradients are dropped before
   `optimizer.step()`, or under DeepSpeed, which steps inside backward, its own check refuses it
   (`triune_trl.trainer.nonfinite`).
7. Greedy decoding during evaluation, and a train sampler whose epoch order survives a resume.
8. Micro-batches without images (`triune_trl.trainer.image_less_forwards`): a text-only micro-batch cut from a batch
   with images gets 0-row image tensors, which the vision tower fails on; they become None. Under ZeRO-3 / FSDP a
   forward
   without images also runs the vision tower on a dummy image with weight 0: parameters are gathered per module,
   so a text-only rank next to an image rank would otherwise abort the job.
9. vLLM (`triune_trl.generation.prompts`): in colocate mode, image prompts reach vLLM with one placeholder per image
   (TRL sends the processor-expanded ids, which vLLM expands a second time). A completion whose vision pad was
   replaced (5.) keeps no vLLM log-prob from that token on (they were sampled after the pad, which the trainer does
   not score), as TRL drops those vLLM could not score. On vLLM's CPU platform TRL's per-parameter weight sync
   fails, so it goes through vLLM's `reload_weights` (`triune_trl.generation.cpu_sync`); GPU platforms keep TRL's. On
   every platform and in every mode, fused MoE experts that transformers keeps transposed in memory (Qwen3-VL-MoE)
   are handed to vLLM in the released checkpoint layout its loader expects (`triune_trl.models.expert_layout`).
10. Images are decoded once per generation round (`triune_trl.data.deferred_images`): TRL's train DataLoader
   yields the whole generation batch at every micro-step, so the train loader reads rows without their images and
   a round's images are decoded when it generates.
11. A generation round's buffered image tensors wait in host memory, not on the accelerator, until their
   micro-batch (`triune_trl.trainer.image_buffers`). TRL still moves the whole round's `pixel_values` to the accelerator
   while it generates and scores, so this shortens how long they stay there, not the peak.
12. Console and tracker callbacks (`triune_trl.monitoring.trackers.adjust_callbacks`, when the trainer is built):
   transformers' printed dict of every key (hundreds per step with per-source metrics) gives way to a headline line
   and a per-source table, and MLflow's callback to one that renames `reward` to `reward/all` next to
   `reward/<source>`, which MLflow's file store would otherwise refuse, losing the step's metrics.
13. A chat template that pre-fills an opening tag in the assistant turn (Qwen3.5's `<think>\n`): the reward
   router scores `prefill + completion`, so V-Triune's think/answer format can be met (`triune_trl.models.prefill`).
14. vLLM server mode (`triune_trl.generation.client`): while TRL builds the trainer (its client connects and opens
   the weight transfer in `GRPOTrainer.__init__`), its `VLLMClient` is `TriuneVLLMClient`, which syncs over HTTP
   when the server runs the `triune_http` backend (`triune vllm-serve` on a CPU host: TRL's sync is NCCL only),
   keeps TRL's NCCL path otherwise, resets the server's encoder cache after each sync, and ends the run with one
   line when the server dies.
15. One-step off-policy rollouts (`async_rollouts`, server mode; `triune_trl.trainer.async_rollouts`): the Trainer's
   DataLoader is read one generation batch ahead (`get_batch_samples`); the last update on a batch (its generation
   point, when one update trains it) launches the next batch on the server with the current weights before the
   micro-step is scored and trained (`_prepare_inputs`); TRL's generation call of a training batch sends or
   receives that rollout (`_generate_single_turn`), and its prompts are tokenized once, when it is launched
   (`_tokenize_prompts`). Evaluation and weight syncs wait for the batch in flight first; training ends by draining
   it (`train`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import MISSING, fields
from functools import partial

import datasets
import torch
from accelerate.utils import gather_object
from transformers import ProcessorMixin
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from ..configs import FREEZABLE_MODULES, TriuneGRPOConfig, check_async_rollouts
from ..data.deferred_images import IMAGE_COLUMN, DeferredImageDataset, has_image_refs, resolve_images
from ..generation.client import use_server_client
from ..generation.cpu_sync import on_vllm_cpu_platform, sync_weights_by_reload
from ..generation.prompts import collapse_placeholder_runs, drop_replaced_logprobs
from ..models.expert_layout import send_released_layout
from ..models.prefill import completion_prefill
from ..monitoring.collector import SourceMonitor, current_iou_threshold
from ..monitoring.eval_table import completion_records
from ..monitoring.trackers import adjust_callbacks
from .async_rollouts import AsyncRollouts
from .image_buffers import offload, onload
from .image_less_forwards import prepare_image_less_forwards
from .nonfinite import check_deepspeed_config, drop_update

logger = logging.getLogger(__name__)

# `GRPOTrainer._generate` in TRL 1.16 returns, in order: prompt_ids, completion_ids, tool_mask, completions,
# logprobs, extra_fields, images, tool_images.
_GENERATE_OUTPUTS = 8
_COMPLETION_IDS_INDEX = 1
_TOOL_MASK_INDEX = 2
_LOGPROBS_INDEX = 4
_IMAGES_INDEX = 6
SKIPPED_UPDATES_KEY = "skipped_nonfinite_updates"


def images_for_processor(images: list | None) -> list | None:
    """Per-prompt image lists as the processor accepts them: `None` entries (text-only prompts) become `[]`."""
    if images is None:
        return None
    return [image_list if image_list is not None else [] for image_list in images]


def use_left_padding(processing_class) -> None:
    """Make the processor (or tokenizer) pad and truncate on the left, as TRL's GRPO code assumes."""
    tokenizer = processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class
    if tokenizer is None:
        return
    if tokenizer.padding_side != "left":
        logger.info(
            "Setting the tokenizer's padding_side to 'left' (was %r): GRPO prompts are left-padded.",
            tokenizer.padding_side,
        )
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"


def module_group(parameter_name: str) -> str | None:
    """Which freezable part of a Qwen-VL model a parameter belongs to: "vit", "connector", "llm" or None.

    Matched on name segments so that PEFT (`base_model.model.model.visual...`) and the transformers 4/5 layouts
    (`visual.` at the top or under `model.`) all resolve: the vision tower is `visual.*` except its `merger`
    (Qwen3-VL's `deepstack_merger_list` too), which is the connector; the language model is `language_model.*`
    plus `lm_head`.
    """
    segments = parameter_name.split(".")
    if "visual" in segments:
        return "connector" if any("merger" in segment for segment in segments) else "vit"
    if "language_model" in segments or "lm_head" in segments:
        return "llm"
    return None


def freeze_modules(model: torch.nn.Module, modules: Sequence[str]) -> dict[str, int]:
    """Set `requires_grad = False` on the named parts; return parameter counts (total, trainable, per part frozen).

    Raises ValueError for an unknown part, or for one that matches no parameter of this model (freezing nothing
    silently would train the ViT of a run that asked for it frozen).
    """
    unknown = sorted(set(modules) - set(FREEZABLE_MODULES))
    if unknown:
        raise ValueError(f"freeze_modules: unknown module(s) {unknown}; choose among {list(FREEZABLE_MODULES)}")
    counts = {f"frozen_{group}": 0 for group in modules}
    matched = dict.fromkeys(modules, 0)
    for name, parameter in model.named_parameters():
        group = module_group(name)
        if group in modules:
            parameter.requires_grad_(False)
            counts[f"frozen_{group}"] += _numel(parameter)
            matched[group] += 1
    empty = [group for group, tensors in matched.items() if tensors == 0]
    if empty:
        raise ValueError(
            f"freeze_modules: {empty} matched no parameter of {type(model).__name__}; the vision tower must be named "
            "`visual.*` (connector: `visual.merger`) and the language model `language_model.*` / `lm_head`"
        )
    return {**counts, **parameter_counts(model)}


def _numel(parameter: torch.Tensor) -> int:
    """Elements of a parameter, also when DeepSpeed ZeRO-3 has partitioned it away (`numel()` is then 0)."""
    return int(getattr(parameter, "ds_numel", parameter.numel()))


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Total and trainable (requires_grad) parameter counts."""
    parameters = list(model.parameters())
    return {
        "total": sum(_numel(p) for p in parameters),
        "trainable": sum(_numel(p) for p in parameters if p.requires_grad),
    }


def replacement_token_id(tokenizer, text: str | None) -> int | None:
    """The id of the single token `text` encodes to (None for no replacement); ValueError if it is not one token."""
    if text is None:
        return None
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"vision_pad_replacement {text!r} encodes to {len(ids)} tokens {ids}; it must be exactly one token "
            "(the default ' ' is one token for Qwen tokenizers)"
        )
    return ids[0]


def replace_tokens(
    completion_ids: list[list[int]], targets: set[int], replacement: int, tool_mask: list[list[int]] | None = None
) -> tuple[list[list[int]], list[int]]:
    """`completion_ids` with every id in `targets` replaced, and the per-completion replacement counts.

    With a `tool_mask`, only model-generated positions (mask 1) change: tool responses may carry real image pads.
    """
    replaced_ids, counts = [], []
    for row, ids in enumerate(completion_ids):
        mask = tool_mask[row] if tool_mask is not None else None
        new = [
            replacement if token in targets and (mask is None or mask[position]) else token
            for position, token in enumerate(ids)
        ]
        counts.append(sum(1 for old, token in zip(ids, new, strict=True) if old != token))
        replaced_ids.append(new)
    return replaced_ids, counts


class ResumableRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler whose shuffle order is a function of (seed, epoch), so a resumed run sees the same order.

    TRL's sampler draws each epoch's permutation from one generator seeded once; a run resumed in epoch k builds a
    fresh sampler and replays epoch 0's order. `set_epoch(k)` (called by the Trainer at every epoch start) reseeds
    and skips k permutations, which reproduces exactly the order of an uninterrupted run.
    """

    def set_epoch(self, epoch: int) -> None:
        if not self.shuffle or self.seed is None:
            return
        self.generator.manual_seed(self.seed)
        for _ in range(epoch):
            torch.randperm(self.num_samples, generator=self.generator)


class TriuneGRPOTrainer(GRPOTrainer):
    """GRPOTrainer for V-Triune: mixed-modality batches, per-source metrics and the paper's training tricks."""

    def __init__(self, *args, processing_class=None, **kwargs):
        if processing_class is not None:
            use_left_padding(processing_class)
        training_args = kwargs.get("args", args[2] if len(args) > 2 else None)
        with use_server_client(training_args):  # 14. above: TRL builds its vLLM client (and communicator) here
            super().__init__(*args, processing_class=processing_class, **kwargs)
        adjust_callbacks(self)  # 12. above
        self._source_monitor = SourceMonitor()
        # set to a list to keep every evaluated completion with its row and scores (`triune eval`'s completions.jsonl)
        self.eval_completions: list[dict] | None = None
        # TRL's own image gather is one-sided on mixed-modality ranks (see 2. above); ours runs on every rank.
        self._log_images = self.log_multimodal and self.log_completions
        self.log_multimodal = False
        self._router = next((func for func in self.reward_funcs if hasattr(func, "last_scores")), None)
        self._set_completion_prefix()
        self._vision_pad_ids = self._find_vision_pad_ids()
        self._pad_replacement_id = replacement_token_id(self._tokenizer, self._option("vision_pad_replacement"))
        self._vision_pads_replaced: list[int] | None = None
        self._skipped_updates = 0  # in this process's run; the logged total adds what a resumed checkpoint had
        self._skipped_updates_before: int | None = None
        if self._option("skip_nonfinite_updates") and self.is_deepspeed_enabled:
            check_deepspeed_config(self.accelerator.state.deepspeed_plugin.deepspeed_config)  # 6. above
        self.parameter_counts = self._freeze()
        # text-only micro-batches: empty image tensors count as none; under ZeRO-3 / FSDP the vision tower still runs
        deepspeed_plugin = self.accelerator.state.deepspeed_plugin if self.is_deepspeed_enabled else None
        self.image_less_forward_hooks = prepare_image_less_forwards(
            [self.model, getattr(self, "ref_model", None)],
            self.accelerator.distributed_type,
            deepspeed_plugin.zero_stage if deepspeed_plugin is not None else None,
            self.accelerator.num_processes,
        )
        if self.use_vllm:  # 9. above: fused MoE experts reach vLLM in the released layout, in every mode
            send_released_layout(self.vllm_generation, self.model)
        if self.use_vllm and self.vllm_mode == "colocate" and on_vllm_cpu_platform():  # 9. above
            self.vllm_generation.sync_weights = partial(sync_weights_by_reload, self.vllm_generation)
        self._rollouts = self._async_rollouts()  # 15. above

    def _async_rollouts(self) -> AsyncRollouts | None:
        if not self._option("async_rollouts"):
            return None
        check_async_rollouts(self.args)
        if self.tools or self.rollout_func is not None or self.environment_factories is not None:
            raise ValueError("async_rollouts does not support tools, environments or a rollout_func: they generate "
                             "several turns per batch; drop async_rollouts for such runs")
        check_behaviour = self._option("async_check_behaviour_logps")
        if check_behaviour and (self.is_fsdp_enabled or self._zero_hpz()):
            raise ValueError("async_check_behaviour_logps swaps DeepSpeed ZeRO partitions (or full weights); FSDP and "
                             "ZeRO++ hpZ gather from other copies: drop the check for such runs")
        return AsyncRollouts(self, self._option("max_staleness"), check_behaviour)

    def _zero_hpz(self) -> bool:
        if not self.is_deepspeed_enabled:
            return False
        config = self.accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        return int(config.get("zero_hpz_partition_size", 1) or 1) > 1

    def _set_completion_prefix(self) -> None:
        """Rewards score `prefill + completion` when the chat template pre-fills an opening tag (Qwen3.5's
        `<think>\n`), so the release's think/answer format can be met (triune_trl.models.prefill, docs/rewards.md)."""
        if self._router is None:
            return
        prefix = completion_prefill(self.processing_class, self.chat_template_kwargs)
        self._router.completion_prefix = prefix
        if prefix:
            logger.info("the chat template pre-fills %r in the assistant turn: rewards score it + completion", prefix)

    def _option(self, name: str):
        """A TriuneGRPOConfig option, or its default when the trainer was given a plain GRPOConfig."""
        if hasattr(self.args, name):
            return getattr(self.args, name)
        default = next(f for f in fields(TriuneGRPOConfig) if f.name == name)
        return default.default_factory() if default.default_factory is not MISSING else default.default

    def _freeze(self) -> dict[str, int]:
        modules = list(self._option("freeze_modules"))
        counts = freeze_modules(self.model, modules) if modules else parameter_counts(self.model)
        logger.info(
            "trainable parameters: %d of %d (%s)",
            counts["trainable"],
            counts["total"],
            ", ".join(f"{key} {value}" for key, value in counts.items() if key.startswith("frozen_")) or "none frozen",
        )
        for key, value in counts.items():
            self._metrics["train"][f"params/{key}"] = [float(value)]
        return counts

    def _find_vision_pad_ids(self) -> set[int]:
        ids = {self._image_pad_token_id, self._video_pad_token_id}
        config = getattr(self.model, "config", None)
        ids |= {getattr(config, "image_token_id", None), getattr(config, "video_token_id", None)}
        return {token for token in ids if isinstance(token, int)}

    # --- generation: mixed modalities, vision pad replacement, greedy evaluation -------------------------------

    def _generate(self, prompts: list):
        outputs = super()._generate(prompts)
        if len(outputs) != _GENERATE_OUTPUTS:
            raise RuntimeError(
                f"GRPOTrainer._generate returned {len(outputs)} values, expected {_GENERATE_OUTPUTS}: this TRL version "
                "is not the one triune-trl supports (trl 1.16.x). Install trl>=1.16,<1.17."
            )
        outputs = list(outputs)
        outputs[_IMAGES_INDEX] = images_for_processor(outputs[_IMAGES_INDEX])
        self._vision_pads_replaced = None
        if self._pad_replacement_id is not None and self._vision_pad_ids:
            generated_ids = outputs[_COMPLETION_IDS_INDEX]
            outputs[_COMPLETION_IDS_INDEX], self._vision_pads_replaced = replace_tokens(
                generated_ids, self._vision_pad_ids, self._pad_replacement_id, outputs[_TOOL_MASK_INDEX],
            )
            if outputs[_LOGPROBS_INDEX] is not None:  # vLLM's log-probs (9. above)
                outputs[_LOGPROBS_INDEX] = drop_replaced_logprobs(
                    outputs[_LOGPROBS_INDEX], generated_ids, outputs[_COMPLETION_IDS_INDEX]
                )
        return tuple(outputs)

    def _tokenize_prompts(self, prompts: list):
        if self._rollouts is not None and self.model.training:  # 15. above: once per batch, when it is launched
            return self._rollouts.tokenize(prompts, super()._tokenize_prompts)
        return super()._tokenize_prompts(prompts)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self._rollouts is not None:  # 15. above
            if self.model.training:
                return self._rollouts.generate(prompt_ids, images, num_generations)
            self._rollouts.settle()  # an evaluation's sync must not change the weights under the batch in flight
        if self.use_vllm and self.vllm_mode == "colocate" and images is not None:  # 9. above
            prompt_ids = [collapse_placeholder_runs(ids, self._vision_pad_ids) for ids in prompt_ids]
        greedy = not self.model.training and self._option("eval_greedy")
        with self._greedy_decoding() if greedy else nullcontext():
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images=has_tool_images
            )

    @contextmanager
    def _greedy_decoding(self) -> Iterator[None]:
        """Swap the sampling settings for greedy ones (transformers: do_sample False; vLLM: temperature 0)."""
        saved_config, saved_kwargs = getattr(self, "generation_config", None), getattr(self, "generation_kwargs", None)
        vllm = getattr(self, "vllm_generation", None) if self.use_vllm else None
        saved_temperature = vllm.temperature if vllm is not None else None
        unset = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "min_p": None}
        if saved_config is not None:
            greedy_config = copy.deepcopy(saved_config)
            for key, value in unset.items():
                setattr(greedy_config, key, value)
            self.generation_config = greedy_config
        if saved_kwargs is not None:
            self.generation_kwargs = {**saved_kwargs, **unset}
        if vllm is not None:
            vllm.temperature = 0.0
        try:
            yield
        finally:
            if saved_config is not None:
                self.generation_config = saved_config
            if saved_kwargs is not None:
                self.generation_kwargs = saved_kwargs
            if vllm is not None:
                vllm.temperature = saved_temperature

    # --- per-source metrics ------------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        mode = "train" if self.model.training else "eval"
        # TRL's combined reward: weighted sum over reward functions, NaN where every function returned None.
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        combined = (rewards_per_func * weights).nansum(dim=1)
        combined[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        start = self.accelerator.process_index * len(prompts)
        if self._router is not None and len(self._router.last_scores) == len(prompts):
            scores = self._router.last_scores
        else:  # no router among the reward functions: the combined reward is all there is
            local = combined[start : start + len(prompts)].tolist()
            scores = [{"final_reward": None if math.isnan(r) else r, "accuracy_reward": None} for r in local]
        records = SourceMonitor.local_records(
            inputs,
            completions,
            completion_ids_list,
            scores,
            stop_token_ids=[*self.eos_token_ids, self._tokenizer.pad_token_id],
            iou_threshold=current_iou_threshold(self._router, self.state),
            vision_pads_replaced=self._vision_pads_replaced,
        )
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        self._source_monitor.add(mode, gather_object(records), combined.tolist(), group_size)
        if mode == "eval" and self.eval_completions is not None:
            self.eval_completions.extend(gather_object(completion_records(inputs, completions, scores)))
        if self._log_images:
            self._logs["images"].extend(gather_object([list(row.get("images") or []) for row in inputs]))
        return rewards_per_func

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        for key, value in self._source_monitor.flush(mode).items():
            self._metrics[mode][key] = [value]
        if mode == "train" and self._option("skip_nonfinite_updates"):
            self._metrics[mode][SKIPPED_UPDATES_KEY] = [float(self._skipped_updates_total())]
        super().log(logs, start_time)

    # --- non-finite updates, resumable data order ------------------------------------------------------------

    def _skipped_updates_total(self) -> int:
        """Skipped updates of the whole run: this process's plus the last total a resumed checkpoint logged."""
        if self._skipped_updates_before is None:
            logged = [entry[SKIPPED_UPDATES_KEY] for entry in self.state.log_history if SKIPPED_UPDATES_KEY in entry]
            self._skipped_updates_before = int(logged[-1]) if logged else 0
        return self._skipped_updates_before + self._skipped_updates

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if not self._option("skip_nonfinite_updates") or grad_norm is None:
            return grad_norm
        if not math.isfinite(float(grad_norm)):
            drop_update(model)  # gradients dropped before optimizer.step(); under DeepSpeed: checked it refused
            self._skipped_updates += 1
            logger.warning(
                "step %d: gradient norm is %s, update skipped (%d skipped so far)",
                self.state.global_step + 1,
                float(grad_norm),
                self._skipped_updates_total(),
            )
        return grad_norm

    # --- images: decoded once per generation round, buffered in host memory ------------------------------------

    def get_train_dataloader(self):
        """TRL's train DataLoader over `DeferredImageDataset`: images are decoded when their round generates (10.)."""
        dataset = self.train_dataset
        self._deferred_images = None
        if not isinstance(dataset, datasets.Dataset) or IMAGE_COLUMN not in dataset.column_names:
            return super().get_train_dataloader()
        self._deferred_images = DeferredImageDataset(dataset)
        self.train_dataset = self._deferred_images  # only while TRL builds the loader from it
        try:
            return super().get_train_dataloader()
        finally:
            self.train_dataset = dataset

    def generation_rows(self, rows: list[dict]) -> list[dict]:
        """A generation batch's rows as TRL generates from them: the train loader's image references decoded."""
        deferred = getattr(self, "_deferred_images", None)
        if deferred is None or not has_image_refs(rows):
            return rows
        return resolve_images(rows, deferred)

    def _prepare_inputs(self, generation_batch):
        training = self.model.training
        generate_every = self.args.steps_per_generation * self.num_iterations
        generates = not training or self._step % generate_every == 0 or self._buffered_inputs is None  # as TRL
        if training and generates and self._rollouts is not None:  # 15.: decoded rows of the rollout to train
            inputs = super()._prepare_inputs(self._rollouts.rows_to_train(generation_batch))
            self._rollouts.trained()
        elif training and self._rollouts is not None:  # 15.: the last update on a batch launches the next one
            self._rollouts.launch_following()
            inputs = super()._prepare_inputs(generation_batch)
        else:
            inputs = super()._prepare_inputs(self.generation_rows(generation_batch) if generates else generation_batch)
        if training and self.accelerator.device.type != "cpu":  # 11.: one micro-batch's images on the accelerator
            if generates:
                self._buffered_inputs = offload(self._buffered_inputs)
            inputs = onload(inputs, self.accelerator.device)
        return inputs

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        if type(sampler) is not RepeatSampler:
            return sampler
        return ResumableRepeatSampler(  # TRL's sampler, same arguments, plus set_epoch
            data_source=sampler.data_source,
            mini_repeat_count=sampler.mini_repeat_count,
            batch_size=sampler.batch_size,
            repeat_count=sampler.repeat_count,
            shuffle=sampler.shuffle,
            seed=sampler.seed,
        )

    # --- one-step off-policy rollouts (15.) ----------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        if self._rollouts is not None:
            epoch_iterator = self._rollouts.batches(epoch_iterator)
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self._rollouts is not None and self.model.training:
            self._rollouts.check_behaviour(output)
        return output

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if self._rollouts is not None:
                self._rollouts.drain()
