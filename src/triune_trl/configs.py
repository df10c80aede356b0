"""Options of a V-Triune run that TRL's own dataclasses do not have.

Everything about optimisation, generation and logging is a `trl.GRPOConfig` field, everything about the model a
`trl.ModelConfig` field. `TriuneScriptArguments` adds where the data lives and how rewards are computed;
`TriuneGRPOConfig` adds the trainer-side tricks of the paper (module freezing, vision pad token replacement,
skipping non-finite updates, greedy evaluation). All are read together by `TrlParser` from a YAML recipe
(`--config`) with command-line overrides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from trl import GRPOConfig

from .data.prompt_length import OVERLONG_MODES
from .monitoring.run_files import last_complete_checkpoint
from .rewards.iou_schedule import parse_iou_threshold

RELEASE_MIN_PIXELS = 512 * 512
RELEASE_MAX_PIXELS = 2048 * 2048


@dataclass
class TriuneScriptArguments:
    """Data and reward options of a V-Triune run."""

    data_config: str = field(
        default="data_configs/sample.yaml",
        metadata={"help": "YAML file listing the train and test parquet files (see data_configs/)."},
    )
    data_root: str | None = field(
        default=None,
        metadata={
            "help": "Directory the data config's relative paths resolve against; overrides the config's `root`. "
            "For Orsta-Data-47k: the folder holding train/ and test/."
        },
    )
    iou_threshold: str = field(
        default="dynamic",
        metadata={
            "help": "IoU threshold of the detection verifier: 'dynamic' (0.85 for the first 10%% of steps, 0.95 "
            "until 25%%, then 0.99, as in the paper), 'average' (mean over 0.5:0.05:0.95 and 0.99) or a number."
        },
    )
    reward_workers: int = field(
        default=2,
        metadata={
            "help": "Worker processes per training process that compute rewards; each completion is scored under "
            "--reward_time_limit and a hung or crashed one is killed, replaced and reported unverifiable. 0 scores "
            "in the trainer process without a time limit (debugging only)."
        },
    )
    reward_time_limit: float = field(
        default=10.0,
        metadata={
            "help": "Seconds one completion's reward may take before its worker is killed and the completion is "
            "reported unverifiable (reward None, counted as rewards/timeout_count), never scored 0."
        },
    )
    reward_batch_time_limit: float | None = field(
        default=None,
        metadata={
            "help": "Seconds the rewards of one batch may take in all (default: no bound). When they run out, the "
            "completions not scored yet are unverifiable (reward None, counted as rewards/over_budget_count): a "
            "batch in which every completion hangs then costs this long, not completions x --reward_time_limit / "
            "--reward_workers."
        },
    )
    reward_server_urls: str | None = field(
        default=None,
        metadata={
            "help": "Score rewards on reward servers (`triune serve-rewards`) instead of local worker processes: "
            "their base URLs, separated by '|' or ',' (e.g. 'http://10.0.0.5:8192|http://10.0.0.6:8192'). Requests "
            "are spread over the servers with failover; see docs/server.md. --reward_workers and "
            "--reward_time_limit then do not apply (each server has its own --workers and --time-limit)."
        },
    )
    reward_server_job_ids: str | None = field(
        default=None,
        metadata={
            "help": "Find the reward servers the V-Triune release's way: job ids separated by '|' ('j-a|j-b'), each "
            "a folder under --reward_server_dir holding one empty `host:port` file per server (written by "
            "`triune serve-rewards --job-id J` or local_scripts/reward_server.sh). Default: the release's "
            "REMOTE_REWARD_JOB_ID environment variable, when set. Combined with --reward_server_urls if both are given."
        },
    )
    reward_server_dir: str = field(
        default=".reward_server",
        metadata={"help": "Discovery folder of --reward_server_job_ids (the release's .reward_server/)."},
    )
    reward_server_token_file: str | None = field(
        default=None,
        metadata={
            "help": "File holding the bearer token of the reward servers (the file given to `triune serve-rewards "
            "--token-file`); sent as `Authorization: Bearer <token>`."
        },
    )
    reward_server_batch_size: int = field(
        default=64, metadata={"help": "Completions per reward server request (a batch is split into such requests)."}
    )
    reward_server_max_in_flight: int = field(
        default=8, metadata={"help": "Most reward server requests in flight at once, over all servers, per process."}
    )
    reward_server_timeout: float = field(
        default=60.0,
        metadata={
            "help": "Seconds a reward server request may take before it counts as failed and is retried on another "
            "server. Keep it above the servers' --time-limit."
        },
    )
    reward_server_retries: int = field(
        default=3,
        metadata={
            "help": "Attempts per reward server request, each on another server when one is up; a completion whose "
            "every attempt failed is unverifiable (reward None, counted as rewards/remote_failed_count), never 0."
        },
    )
    reward_server_grace_period: float = field(
        default=300.0,
        metadata={
            "help": "Seconds every reward server may be down (requests wait, /health is probed) before the run stops "
            "with an error naming the servers and their last errors."
        },
    )
    rescale_images: bool = field(
        default=True,
        metadata={
            "help": "Rescale every image so its pixel area lies in [rescale_min_pixels, rescale_max_pixels] "
            "before the processor sees it, as the V-Triune release does."
        },
    )
    rescale_rule: str = field(
        default="release",
        metadata={
            "help": "How images are rescaled when rescale_images is true: 'release' (the V-Triune rule: scale the "
            "area into [min, max] keeping the aspect ratio) or 'qwen-vl' (qwen-vl-utils' fetch_image: snap both "
            "sides to multiples of the processor's patch_size x merge_size (28 for Qwen2.5-VL, 32 for Qwen3-VL and "
            "Qwen3.5) with the area in [min, max], for data prepared the VLM-R1 way)."
        },
    )
    rescale_min_pixels: int = field(
        default=RELEASE_MIN_PIXELS, metadata={"help": "Lower bound of the image area rescale (release: 512*512)."}
    )
    rescale_max_pixels: int = field(
        default=RELEASE_MAX_PIXELS, metadata={"help": "Upper bound of the image area rescale (release: 2048*2048)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows after loading (smoke runs)."}
    )
    max_prompt_length: int | None = field(
        default=8192,
        metadata={
            "help": "Most tokens a prompt may have, text and image tokens together (computed for every row before "
            "training from the image sizes, as the processor will expand them; the release's 8192). Keep "
            "max_prompt_length + max_completion_length within the vLLM server's max model length: a longer prompt "
            "gets HTTP 400 from vLLM and stops the run. null: no limit."
        },
    )
    overlong_prompts: str = field(
        default="drop",
        metadata={
            "help": "What happens to rows whose prompt is over max_prompt_length: 'drop' (the release's "
            "filter_overlong_prompts; the dropped rows are counted per data source, logged and printed) or 'error' "
            "(stop before training with one FILE:ROW line per such row)."
        },
    )

    def __post_init__(self):
        parse_iou_threshold(self.iou_threshold)  # fail on a bad setting before any data is loaded
        if self.reward_workers < 0:
            raise ValueError(f"--reward_workers must be >= 0, got {self.reward_workers}")
        if not self.reward_time_limit > 0:
            raise ValueError(f"--reward_time_limit must be > 0 seconds, got {self.reward_time_limit}")
        if self.reward_batch_time_limit is not None and not self.reward_batch_time_limit > 0:
            raise ValueError(f"--reward_batch_time_limit must be > 0 seconds, got {self.reward_batch_time_limit}")
        self._check_reward_server_options()
        if self.overlong_prompts not in OVERLONG_MODES:
            modes = ", ".join(OVERLONG_MODES)
            raise ValueError(f"--overlong_prompts must be one of {modes}, got {self.overlong_prompts!r}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"--max_prompt_length must be >= 1 (or null: no limit), got {self.max_prompt_length}")
        if self.rescale_rule not in ("release", "qwen-vl"):
            raise ValueError(f"--rescale_rule must be 'release' or 'qwen-vl', got {self.rescale_rule!r}")
        if self.rescale_min_pixels <= 0 or self.rescale_max_pixels < self.rescale_min_pixels:
            raise ValueError(
                "--rescale_min_pixels must be positive and not above --rescale_max_pixels, got "
                f"{self.rescale_min_pixels} and {self.rescale_max_pixels}"
            )

    def _check_reward_server_options(self) -> None:
        from .server.discovery import parse_job_ids, parse_server_urls

        if self.reward_server_job_ids is None and os.environ.get("REMOTE_REWARD_JOB_ID", "").strip():
            self.reward_server_job_ids = os.environ["REMOTE_REWARD_JOB_ID"].strip()  # the release's variable
        if self.reward_server_urls is not None:
            parse_server_urls(self.reward_server_urls)
        if self.reward_server_job_ids is not None:
            parse_job_ids(self.reward_server_job_ids)
        if self.reward_server_token_file is not None and not self.uses_reward_servers:
            raise ValueError(
                "--reward_server_token_file is set but no reward server is: add --reward_server_urls or "
                "--reward_server_job_ids, or drop the token file"
            )
        for name in ("reward_server_batch_size", "reward_server_max_in_flight", "reward_server_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name} must be an integer >= 1, got {value!r}")
        if not self.reward_server_timeout > 0:
            raise ValueError(f"--reward_server_timeout must be > 0 seconds, got {self.reward_server_timeout}")
        if not self.reward_server_grace_period >= 0:
            raise ValueError(
                f"--reward_server_grace_period must be >= 0 seconds, got {self.reward_server_grace_period}"
            )

    @property
    def uses_reward_servers(self) -> bool:
        """True when rewards are scored on reward servers (URLs or job ids given)."""
        return bool(self.reward_server_urls) or bool(self.reward_server_job_ids)

    @property
    def iou_threshold_value(self) -> float | str:
        """The threshold as the reward router takes it: a float, or the name of a schedule (raises if invalid)."""
        return parse_iou_threshold(self.iou_threshold)


FREEZABLE_MODULES = ("vit", "connector", "llm")
RESUME_LAST = ("true", "last", "latest")


@dataclass
class TriuneGRPOConfig(GRPOConfig):
    """`trl.GRPOConfig` plus the training tricks of the V-Triune paper, read by `TriuneGRPOTrainer`.

    Kept as GRPOConfig fields (not script arguments) because the trainer itself applies them: freezing before the
    optimizer is built, replacing vision pad tokens before log-probs are computed, skipping non-finite updates, and
    greedy decoding during evaluation.
    """

    freeze_modules: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Parts of the vision-language model whose weights are not trained, any of 'vit' (vision "
            "encoder: visual.patch_embed, visual.blocks), 'connector' (visual.merger) and 'llm' (language model and "
            "lm_head). The paper freezes vit and connector. Applied before the optimizer is built; the trainable and "
            "frozen parameter counts are logged."
        },
    )
    vision_pad_replacement: str | None = field(
        default=" ",
        metadata={
            "help": "Text of the single token that replaces image/video pad tokens the policy generates inside a "
            "completion, before log-probs are computed (a pad token in the completion would not match the image "
            "features and crash the forward pass, or train on a meaningless token). Default: the space token, as "
            "in the paper. Empty string or null: no replacement."
        },
    )
    skip_nonfinite_updates: bool = field(
        default=True,
        metadata={
            "help": "Skip the optimizer update of a step whose gradient norm is NaN or infinite (no weight changes, "
            "the step still counts) and log the running count as `skipped_nonfinite_updates`. Without DeepSpeed the "
            "gradients are dropped before the optimizer step; under DeepSpeed (ZeRO-1/2/3, bf16 or fp32), which "
            "steps inside backward, DeepSpeed's own gradient-norm check refuses the update and the trainer checks "
            "that it did (a DeepSpeed config with bf16.check_grad_overflow or zero_optimization.compute_grad_norm "
            "false is refused)."
        },
    )
    eval_greedy: bool = field(
        default=True,
        metadata={
            "help": "Decode greedily during evaluation (the paper's test protocol); num_generations_eval then "
            "defaults to 1, since greedy completions of one prompt are identical."
        },
    )

    async_rollouts: bool = field(
        default=False,
        metadata={
            "help": "vLLM server mode only: the server generates the next batch, with the weights before this "
            "update, while the trainer takes its update (one-step off-policy, corrected by decoupled PPO with TRL's "
            "importance sampling; triune_trl.trainer.async_rollouts, docs/scaling.md). Needs use_vllm, vllm_mode "
            "server, vllm_importance_sampling_correction and a token_* vllm_importance_sampling_mode "
            "(token_truncate: the truncated importance weight)."
        },
    )
    max_staleness: int = field(
        default=1,
        metadata={
            "help": "With async_rollouts: optimizer steps between the weights that generate a batch and the update "
            "on it. 1: generation overlaps the update; 0: each batch is generated at its own step, the synchronous "
            "run bit for bit."
        },
    )
    async_check_behaviour_logps: bool = field(
        default=False,
        metadata={
            "help": "With async_rollouts: keep a copy of the weights each batch was generated with and log the "
            "trainer's log-probs under them against vLLM's (async/behaviour_logp_gap/*, ~0 when the weight sync is "
            "right). Costs up to two copies of this process's trainable weights (its ZeRO-3 partition) and one "
            "forward pass per batch: for checks, not runs. Not with FSDP or ZeRO++ hpZ."
        },
    )

    def __post_init__(self):
        unknown = sorted(set(self.freeze_modules) - set(FREEZABLE_MODULES))
        if unknown:
            raise ValueError(
                f"--freeze_modules: unknown module(s) {unknown}; choose among {list(FREEZABLE_MODULES)}, "
                "e.g. `freeze_modules: [vit, connector]` in the recipe"
            )
        self._check_async_rollouts()
        if self.vision_pad_replacement == "":
            self.vision_pad_replacement = None
        if self.eval_greedy and self.num_generations_eval is None:
            self.num_generations_eval = 1
        if isinstance(self.resume_from_checkpoint, str) and self.resume_from_checkpoint.lower() in RESUME_LAST:
            checkpoint = last_complete_checkpoint(self.output_dir)
            if checkpoint is None:
                raise ValueError(
                    f"--resume_from_checkpoint {self.resume_from_checkpoint}: no complete checkpoint-N folder (one "
                    f"holding trainer_state.json) under {self.output_dir}; pass a checkpoint path, or drop the flag "
                    "to start from scratch"
                )
            self.resume_from_checkpoint = str(checkpoint)
        if isinstance(self.report_to, str) and "," in self.report_to:  # a command line gives one string
            self.report_to = [name.strip() for name in self.report_to.split(",") if name.strip()]
        super().__post_init__()

    def _check_async_rollouts(self) -> None:
        check_async_rollouts(self)


def check_async_rollouts(args) -> None:
    """The options `async_rollouts` needs, checked when the config is built and again by the trainer (a plain
    GRPOConfig with the attributes set afterwards)."""
    if not getattr(args, "async_rollouts", False):
        return
    if not (args.use_vllm and args.vllm_mode == "server"):
        raise ValueError(
            "--async_rollouts true needs a vLLM server (--use_vllm true --vllm_mode server, `triune vllm-serve`): "
            "in colocate mode and without vLLM, generation and the update share the same devices"
        )
    if args.max_staleness not in (0, 1):
        raise ValueError(f"--max_staleness {args.max_staleness}: 0 (synchronous) or 1 (one step off-policy)")
    if args.max_staleness == 0:
        return
    if not args.vllm_importance_sampling_correction:
        raise ValueError(
            "--async_rollouts true needs --vllm_importance_sampling_correction true: it weighs the loss by the "
            "current weights' probability of each sampled token over the generating (one step older) weights'"
        )
    if not args.vllm_importance_sampling_mode.startswith("token_"):
        raise ValueError(
            f"--async_rollouts true needs --vllm_importance_sampling_mode token_truncate (or token_mask), not "
            f"{args.vllm_importance_sampling_mode}: a sequence's ratio multiplies one step's drift over every token, "
            "so most stale sequences would be masked"
        )
