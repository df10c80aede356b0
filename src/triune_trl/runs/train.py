"""One V-Triune GRPO run: load the processor and data, build the router and the trainer, train, save, push.

`recipes/grpo_triune.py` and `triune train` both parse `(TriuneScriptArguments, TriuneGRPOConfig, ModelConfig)` with
`TrlParser` and call `run`, so the recipe file stays a thin entry point and all logic is tested here.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import set_seed
from trl import GRPOConfig, ModelConfig, TrlParser

from ..checks import (
    check_data_root,
    check_launch_precision,
    check_model_path,
    end_launched_run,
    load_processor,
    parse_recipe_args,
)
from ..configs import TriuneGRPOConfig, TriuneScriptArguments
from ..data import ImageSizing, load_data_config, load_split, make_image_resize
from ..data.prompt_length import PromptLimit, PromptTokenCounter
from ..errors import DataError, TriuneError, UsageError, fit
from ..models.expert_layout import write_released_layout
from ..models.lora import apply_lora_defaults
from ..rewards import RewardRouter
from ..trainer.callbacks import DynamicIoUCallback
from ..trainer.distributed import apply_cpu_distributed_shim, check_world_size
from .hub import HubUploader, Uploader, default_repo_id, push_checkpoint, run_facts, write_model_card, write_recipe

if TYPE_CHECKING:
    from ..trainer.grpo_trainer import TriuneGRPOTrainer

logger = logging.getLogger(__name__)


def make_parser() -> TrlParser:
    """The parser shared by the recipe script and `triune train`.

    Parsing builds the GRPOConfig, whose `__post_init__` creates accelerate's process state, so the CPU-only
    multi-process shim (`triune_trl.trainer.distributed`) is applied here, before that happens.
    """
    apply_cpu_distributed_shim()
    return TrlParser((TriuneScriptArguments, TriuneGRPOConfig, ModelConfig))


def parse_args(argv: list[str] | None = None, command: str = "triune train"):
    """(script_args, training_args, model_args) of a command line; a wrong option or launch setting is a one-line
    `UsageError` (`triune_trl.checks`) rather than a traceback."""
    parsed = parse_recipe_args(make_parser(), list(sys.argv[1:] if argv is None else argv), command)
    try:
        check_launch_precision(parsed[1])
    except UsageError as error:
        end_launched_run(error)  # under accelerate launch: one line, no ChildFailedError traceback
        raise
    return parsed


def _model_init_kwargs(model_args: ModelConfig, training_args: GRPOConfig) -> dict:
    """Model loading options from ModelConfig, unless the recipe already set GRPOConfig.model_init_kwargs."""
    kwargs = dict(training_args.model_init_kwargs or {})
    kwargs.setdefault("revision", model_args.model_revision)
    kwargs.setdefault("dtype", model_args.dtype)
    if model_args.attn_implementation is not None:
        kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    return kwargs


def build_reward_router(script_args: TriuneScriptArguments) -> RewardRouter:
    """The reward function of a run: on reward servers when URLs or job ids are configured, else in local workers.

    Job ids are resolved to URLs here, before data or model are loaded, so a missing discovery folder stops the run
    at once with the folder named.
    """
    if not script_args.uses_reward_servers:
        return RewardRouter(
            iou_threshold=script_args.iou_threshold_value,
            workers=script_args.reward_workers,
            time_limit=script_args.reward_time_limit,
            batch_time_limit=script_args.reward_batch_time_limit,
        )
    from ..server.client import RemoteRewardRouter
    from ..server.discovery import discover_urls, parse_server_urls

    urls = parse_server_urls(script_args.reward_server_urls) if script_args.reward_server_urls else []
    if script_args.reward_server_job_ids:
        urls += discover_urls(script_args.reward_server_job_ids, script_args.reward_server_dir)
    logger.info("scoring rewards on %d reward server(s): %s", len(urls), ", ".join(urls))
    return RemoteRewardRouter(
        urls,
        iou_threshold=script_args.iou_threshold_value,
        token_file=script_args.reward_server_token_file,
        batch_size=script_args.reward_server_batch_size,
        max_in_flight=script_args.reward_server_max_in_flight,
        timeout=script_args.reward_server_timeout,
        retries=script_args.reward_server_retries,
        grace_period=script_args.reward_server_grace_period,
    )


def check_length_budget(script_args: TriuneScriptArguments, training_args: GRPOConfig) -> None:
    """`UsageError` when a prompt of max_prompt_length plus a full completion would not fit vLLM's model length.

    Checked before the processor loads: the fix is a recipe setting, so it is one line, not a traceback."""
    limit = getattr(training_args, "vllm_max_model_length", None)
    if not training_args.use_vllm or limit is None or script_args.max_prompt_length is None:
        return
    need = script_args.max_prompt_length + training_args.max_completion_length
    if need > limit:
        over = (f"max_prompt_length {script_args.max_prompt_length} + max_completion_length "
                f"{training_args.max_completion_length} = {need} tokens is over vllm_max_model_length {limit}")
        fix = "lower --max_prompt_length or raise --vllm_max_model_length"
        raise UsageError(fit(f"{over}: vLLM would refuse (HTTP 400) or cut such prompts; {fix}", f"{over}: {fix}"))


def build_trainer(
    script_args: TriuneScriptArguments, training_args: GRPOConfig, model_args: ModelConfig
) -> TriuneGRPOTrainer:
    """Everything up to `trainer.train()`: data is loaded and validated here, before any GPU time is spent."""
    if not model_args.model_name_or_path:
        raise UsageError(
            "--model_name_or_path is required (a Hub id or a local folder, e.g. artifacts/tiny-qwen2.5-vl)"
        )
    check_model_path(model_args.model_name_or_path, "--model_name_or_path", revision=model_args.model_revision)
    check_data_root(script_args.data_root, "--data_root")
    check_length_budget(script_args, training_args)
    check_world_size(training_args.world_size)  # before any data loading: N silent copies of one run are worse
    apply_lora_defaults(model_args)  # --use_peft alone: LoRA on the language model only, the ViT stays frozen
    set_seed(training_args.seed)
    router = build_reward_router(script_args)  # before data loading: a missing reward server is found at once
    processor = load_processor(
        model_args.model_name_or_path, "--model_name_or_path", revision=model_args.model_revision,
        padding_side="left", truncation_side="left",
    )
    sizing = ImageSizing.from_processor(processor)
    rescale = make_image_resize(
        script_args.rescale_rule if script_args.rescale_images else "none",
        script_args.rescale_min_pixels,
        script_args.rescale_max_pixels,
        factor=sizing.factor,
    )
    prompt_limit = None
    if script_args.max_prompt_length is not None:
        prompt_limit = PromptLimit(PromptTokenCounter(processor), script_args.max_prompt_length,
                                   script_args.overlong_prompts)
    data_config = load_data_config(script_args.data_config, data_root=script_args.data_root)
    train_dataset = load_split(data_config, "train", sizing, rescale=rescale, prompt_limit=prompt_limit)
    if train_dataset is None:
        raise DataError(f"{script_args.data_config}: the data config lists no train files; add a `train:` section")
    if script_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(script_args.max_train_samples, len(train_dataset))))
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = load_split(data_config, "test", sizing, rescale=rescale, prompt_limit=prompt_limit)
        if eval_dataset is None:
            raise DataError(
                f"{script_args.data_config}: eval_strategy is {training_args.eval_strategy!r} but the data config "
                "lists no test files; add a `test:` section or pass --eval_strategy no"
            )

    training_args.model_init_kwargs = _model_init_kwargs(model_args, training_args)
    from trl import get_peft_config  # (peft) and the trainer here, not at the top: an option error needs neither

    from ..trainer.grpo_trainer import TriuneGRPOTrainer

    return TriuneGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=[router],
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        callbacks=[DynamicIoUCallback(router)],
        peft_config=get_peft_config(model_args),
    )


def training_summary(log_history: list[dict], output_dir: Path, window: int = 3) -> str:
    """Two lines a person reads at the end of a run: how the mean reward moved, and where the model is."""
    rewards = [entry["reward"] for entry in log_history if "reward" in entry]
    lines = []
    if rewards:
        first, last = rewards[:window], rewards[-window:]
        lines.append(
            f"mean reward: {sum(first) / len(first):.3f} over the first {len(first)} logged steps -> "
            f"{sum(last) / len(last):.3f} over the last {len(last)}"
        )
    lines.append(f"model and processor saved to {output_dir} (reload with from_pretrained)")
    return "\n".join(lines)


def save_final_model(trainer, output_dir: str | Path) -> Path:
    """`trainer.save_model(output_dir)`, then the fused MoE experts of the saved folder in the released layout.

    Why: transformers 5.17 saves Qwen3-VL-MoE's experts in its in-memory (transposed) layout, from which vLLM cannot
    start (`triune_trl.models.expert_layout`), and the final folder is the one users serve and push. Only the final
    folder:
    the `checkpoint-N` folders keep transformers' layout because `Trainer` resumes them with a plain
    `load_state_dict`, which does not convert. A no-op for every other family and for LoRA adapters."""
    output_dir = Path(output_dir)
    trainer.save_model(str(output_dir))
    if trainer.accelerator.is_main_process and (output_dir / "config.json").is_file():
        rewritten = write_released_layout(output_dir)
        if rewritten:
            logger.info("Wrote %d fused expert tensors of %s in the released layout", len(rewritten), output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def run(
    script_args: TriuneScriptArguments,
    training_args: GRPOConfig,
    model_args: ModelConfig,
    uploader: Uploader | None = None,
) -> Path:
    """Train, save the final model with its processor to `output_dir`, push if asked; return `output_dir`.

    `Trainer.save_model` writes the processor files next to the weights, so the folder reloads with
    `AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained`; `triune_trl.runs.hub` adds the
    model card (README.md), the run's exact recipe (triune_recipe.yaml) and the card's facts (triune_run.json).
    With `push_to_hub`, that folder is pushed once at the end through `uploader` (default: the Hub; see
    `triune_trl.runs.hub` for why the Trainer's own pushes are turned off).
    """
    push = training_args.push_to_hub
    training_args.push_to_hub = False  # no Trainer push at init or on every save: one push of the final folder below
    try:
        trainer = build_trainer(script_args, training_args, model_args)
    except TriuneError as error:
        end_launched_run(error)  # under accelerate launch: one line, no ChildFailedError traceback
        raise
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    output_dir = save_final_model(trainer, training_args.output_dir)
    trainer.save_state()  # output_dir/trainer_state.json: the per-source log history `triune plot` reads
    training_args.push_to_hub = push
    if trainer.accelerator.is_main_process:
        print(training_summary(trainer.state.log_history, output_dir))
        repo_id = default_repo_id(training_args.hub_model_id, output_dir)
        write_recipe(output_dir, script_args, training_args, model_args)
        write_model_card(output_dir, repo_id, run_facts(trainer, script_args, training_args, model_args))
        if push:
            uploader = uploader or HubUploader(
                token=training_args.hub_token, private=training_args.hub_private_repo,
                revision=training_args.hub_revision,
            )
            print(f"pushed {output_dir} to {push_checkpoint(output_dir, repo_id, uploader)}")
    logger.info("Saved model and processor to %s", output_dir)
    return output_dir
