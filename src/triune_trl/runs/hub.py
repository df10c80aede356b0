"""Ship a trained checkpoint: the model card, the exact recipe of the run, and the push to the Hub.

Why not `Trainer.push_to_hub`: it overwrites README.md with TRL's generic card, uploads `training_args.bin` (a pickle
that holds `hub_token` in clear), and pushes twice when `save_model` is called with `push_to_hub` set. Here a run
writes three files next to the weights and the processor:

- `README.md`: a model card naming the base model, the data (per-source row counts), the recipe and its key
  hyperparameters, the distributed set-up, the per-source evaluation table when there is one (`triune eval` writes
  it), and how to reproduce the run;
- `triune_recipe.yaml`: every option of the run that differs from its default, readable by
  `recipes/grpo_triune.py --config` (so the card's reproduce command is exact);
- `triune_run.json`: the facts the card is rendered from, so `python -m triune_trl.runs.hub` can re-render it later with
  an evaluation table and push.

The push itself goes through an `Uploader`: `HubUploader` calls `huggingface_hub` (create the repo, one commit of the
selected files); `LocalFolderUploader` writes the same files to a local folder instead (a dry run that shows exactly
what would be pushed, and what the tests load back with `from_pretrained`).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import fnmatch
import json
import shutil
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import yaml

from ..errors import TriuneError

RECIPE_FILE = "triune_recipe.yaml"
FACTS_FILE = "triune_run.json"
CARD_FILE = "README.md"

# Never written to the recipe: secrets, and options that only make sense on the machine that ran it.
# push_to_hub too: a reproduction would otherwise push into the original author's repository at the end.
_RECIPE_EXCLUDED = {
    "hub_token", "push_to_hub_token", "resume_from_checkpoint", "logging_dir", "local_rank", "push_to_hub",
}
# Files of an output folder that are not part of the shipped model.
_PUSH_EXCLUDED = [
    "checkpoint-*", "global_step*", "runs", "training_args.bin", "trainer_state.json", "optimizer.pt",
    "scheduler.pt", "rng_state*", "latest", "zero_to_fp32.py", "zero_to_torch.py", ".*",
]
_KEY_HYPERPARAMETERS = [
    "learning_rate", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm",
    "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation", "generation_batch_size",
    "num_iterations", "num_generations", "max_completion_length", "temperature", "top_p", "beta", "epsilon",
    "epsilon_high", "loss_type", "scale_rewards", "freeze_modules", "use_vllm", "vllm_mode", "bf16",
    "max_steps", "num_train_epochs", "seed",
]


class HubPushError(TriuneError):
    """An output folder cannot be shipped as it is; the message names the file and what to do."""


class Uploader(Protocol):
    """Sends `files` (path in the repo, local path) to `repo_id` as one commit; returns where they went."""

    def __call__(self, repo_id: str, files: list[tuple[str, Path]], commit_message: str) -> str: ...


@dataclasses.dataclass
class HubUploader:
    """The network boundary: `huggingface_hub` creates the repo if needed and commits the files in one go."""

    token: str | None = None
    private: bool | None = None
    revision: str | None = None

    def __call__(self, repo_id: str, files: list[tuple[str, Path]], commit_message: str) -> str:
        from huggingface_hub import CommitOperationAdd, HfApi

        api = HfApi(token=self.token)
        repo_url = api.create_repo(repo_id, private=self.private, exist_ok=True)
        if self.revision:
            api.create_branch(repo_url.repo_id, branch=self.revision, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files]
        commit = api.create_commit(
            repo_url.repo_id, operations=operations, commit_message=commit_message, revision=self.revision
        )
        return commit.commit_url


@dataclasses.dataclass
class LocalFolderUploader:
    """Writes what would be pushed to `root/<repo_id>/` (a dry run); returns that folder."""

    root: Path

    def __call__(self, repo_id: str, files: list[tuple[str, Path]], commit_message: str) -> str:
        target = Path(self.root) / repo_id
        for name, path in files:
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
        (target / ".commit_message").write_text(commit_message + "\n", encoding="utf-8")
        return str(target)


def _plain(value: Any) -> Any:
    """A value as YAML/JSON can hold it: enums by value, dataclasses and tuples as dicts and lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {key: _plain(item) for key, item in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


# Values that `__post_init__` or the trainer derive from the host or from other options: writing them would pin the
# reproduction to this machine (e.g. pin_memory off because this run was on a CPU).
_DERIVED_VALUES: dict[str, Any] = {
    "debug": lambda value, options: value == [],
    "report_to": lambda value, options: value in ([], ["none"], "none"),
    "disable_tqdm": lambda value, options: value is False,
    "pad_to_multiple_of": lambda value, options: value is None,
    "dataloader_pin_memory": lambda value, options: value is False,
    "ddp_find_unused_parameters": lambda value, options: value is True,
    "generation_batch_size": lambda value, options: True,
    "steps_per_generation": lambda value, options: value == options.get("gradient_accumulation_steps", 1),
}
# model_init_kwargs entries that `training._model_init_kwargs` copies from ModelConfig.
_MODEL_INIT_FROM_MODEL_CONFIG = {
    "revision": "model_revision", "dtype": "dtype", "attn_implementation": "attn_implementation",
}


def recipe_options(*configs: Any) -> dict[str, Any]:
    """Every init field of the given config dataclasses that differs from its default, ready for a YAML recipe.

    Left out: secrets and machine-local options (`_RECIPE_EXCLUDED`), values derived from the host or from other
    options (`_DERIVED_VALUES`; `generation_batch_size` always, since GRPOConfig derives it from
    `steps_per_generation` and refuses both), and the `model_init_kwargs` entries copied from ModelConfig.
    """
    options: dict[str, Any] = {}
    for config in configs:
        for field in dataclasses.fields(config):
            if not field.init or field.name.startswith("_") or field.name in _RECIPE_EXCLUDED:
                continue
            raw = getattr(config, field.name)
            if dataclasses.is_dataclass(raw) and _plain(raw) == _plain(type(raw)()):
                continue  # e.g. accelerator_config expanded from None to its default object
            value, default = _plain(raw), _plain(_field_default(field))
            if value != default and not (value in (None, [], {}) and default in (None, [], {})):
                options[field.name] = value
    for name, derived in _DERIVED_VALUES.items():
        if name in options and derived(options[name], options):
            del options[name]
    init_kwargs = options.get("model_init_kwargs")
    if isinstance(init_kwargs, dict):
        for key, option in _MODEL_INIT_FROM_MODEL_CONFIG.items():
            if key in init_kwargs and init_kwargs[key] == _option_value(configs, option):
                del init_kwargs[key]
        if not init_kwargs:
            del options["model_init_kwargs"]
    return options


def _option_value(configs: tuple[Any, ...], name: str) -> Any:
    for config in configs:
        if hasattr(config, name):
            return _plain(getattr(config, name))
    return dataclasses.MISSING


def write_recipe(output_dir: Path, *configs: Any) -> Path:
    """Write `triune_recipe.yaml`: the run's non-default options, loadable with `--config`."""
    path = Path(output_dir) / RECIPE_FILE
    header = (
        "# Every option of this run that differs from its default (triune-trl). Reproduce with:\n"
        "#   python recipes/grpo_triune.py --config triune_recipe.yaml   (or under accelerate launch / torchrun)\n"
    )
    path.write_text(header + yaml.safe_dump(recipe_options(*configs), sort_keys=True), encoding="utf-8")
    return path


def read_eval_table(table: str | Path | None) -> str | None:
    """The per-source evaluation table as markdown: `table` is a path to `triune eval`'s markdown file, or its text."""
    if table is None or str(table).strip() == "":
        return None
    text = str(table)
    if "\n" not in text and "|" not in text:
        path = Path(text)
        if not path.is_file():
            raise HubPushError(
                f"--eval-table {text}: no such file; pass the markdown file `triune eval` wrote, or the table text"
            )
        text = path.read_text(encoding="utf-8")
    if not any(line.lstrip().startswith("|") for line in text.splitlines()):
        raise HubPushError(f"--eval-table: expected a markdown table (lines starting with '|'), got {text[:80]!r}")
    return text.strip()


def run_facts(trainer: Any, script_args: Any, training_args: Any, model_args: Any) -> dict[str, Any]:
    """What the model card says about a finished run, read from the trainer and the configs."""
    accelerator = trainer.accelerator
    distributed_type = _plain(accelerator.distributed_type)
    zero_stage = None
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        zero_stage = plugin.zero_stage
    log_history = trainer.state.log_history
    rewards = [entry["reward"] for entry in log_history if "reward" in entry]
    return {
        "base_model": model_args.model_name_or_path,
        "adapter": bool(model_args.use_peft),
        "lora_target_modules": _plain(model_args.lora_target_modules) if model_args.use_peft else None,
        "data_config": script_args.data_config,
        "data_root": script_args.data_root,
        "train_rows_per_source": _count_sources(trainer.train_dataset),
        "eval_rows_per_source": _count_sources(trainer.eval_dataset),
        "world_size": accelerator.num_processes,
        "distributed_type": str(distributed_type),
        "zero_stage": zero_stage,
        "deepspeed": training_args.deepspeed if isinstance(training_args.deepspeed, str) else None,
        "global_step": trainer.state.global_step,
        "first_reward": rewards[0] if rewards else None,
        "last_reward": rewards[-1] if rewards else None,
        "hyperparameters": {
            name: _plain(getattr(training_args, name))
            for name in _KEY_HYPERPARAMETERS
            if hasattr(training_args, name) and not (name == "num_train_epochs" and training_args.max_steps > 0)
        },
    }


def _count_sources(dataset: Any) -> dict[str, int] | None:
    """Rows per data source, read from the `data_source` column alone: the dataset's format decodes and rescales
    every image of a row it hands out, which at Orsta scale is tens of thousands of decodes after training."""
    dataset = getattr(dataset, "dataset", dataset)  # the train loader's DeferredImageDataset wraps the rows
    if dataset is None or "data_source" not in getattr(dataset, "column_names", []):
        return None
    if hasattr(dataset, "with_format"):
        dataset = dataset.select_columns(["data_source"]).with_format(None)
    return dict(sorted(Counter(dataset["data_source"]).items()))


def _launch_command(facts: dict[str, Any]) -> str:
    world_size = facts.get("world_size") or 1
    precision = "bf16" if facts.get("hyperparameters", {}).get("bf16") else "no"  # must agree with the recipe's bf16
    if facts.get("deepspeed"):
        launcher = f"torchrun --nproc_per_node {world_size} "  # the recipe names its DeepSpeed JSON
    elif facts.get("distributed_type") == "DEEPSPEED":
        stage = facts.get("zero_stage") or 3
        launcher = (
            f"accelerate launch --config_file local_scripts/zero{stage}.yaml --num_processes {world_size} "
            f"--mixed_precision {precision} "
        )
    elif world_size > 1:
        launcher = (
            f"accelerate launch --config_file local_scripts/ddp.yaml --num_processes {world_size} "
            f"--mixed_precision {precision} "
        )
    else:
        launcher = "python "
    return f"{launcher}recipes/grpo_triune.py --config {RECIPE_FILE}"


def render_model_card(repo_id: str, facts: dict[str, Any], eval_table: str | None = None) -> str:
    """The model card (README.md) of a V-Triune checkpoint, with Hub metadata in its YAML header."""
    from huggingface_hub import ModelCardData

    base_model = facts.get("base_model")
    on_hub = _is_hub_id(base_model)
    metadata = ModelCardData(
        base_model=base_model if on_hub else None,
        library_name="peft" if facts.get("adapter") else "transformers",
        pipeline_tag="image-text-to-text",
        tags=["triune-trl", "v-triune", "grpo", "trl", "reinforcement-learning"],
    )
    name = repo_id.split("/")[-1]
    kind = "A LoRA adapter for" if facts.get("adapter") else "A fine-tune of"
    base = f"[{base_model}](https://huggingface.co/{base_model})" if on_hub else f"`{base_model}` (a local model)"
    lines = [
        f"---\n{metadata.to_yaml()}\n---",
        "",
        f"# {name}",
        "",
        f"{kind} {base} trained with V-Triune (one GRPO run over "
        "visual reasoning and perception tasks, the recipe of the Orsta models, "
        "[arXiv:2505.18129](https://arxiv.org/abs/2505.18129)) using triune-trl on TRL's `GRPOTrainer`.",
        "",
        "## Data",
        "",
        f"Data config `{facts.get('data_config')}`"
        + (f" with data root `{facts['data_root']}`" if facts.get("data_root") else "")
        + ". Rows per data source:",
        "",
    ]
    lines += _source_table(facts.get("train_rows_per_source"), facts.get("eval_rows_per_source"))
    lines += ["", "## Recipe", ""]
    world_size = facts.get("world_size") or 1
    setup = f"{world_size} process" + ("es" if world_size > 1 else "")
    if facts.get("distributed_type") not in (None, "NO"):
        setup += f" ({facts['distributed_type']}" + (
            f", ZeRO-{facts['zero_stage']})" if facts.get("zero_stage") is not None else ")"
        )
    lines.append(f"Trained for {facts.get('global_step')} optimizer steps on {setup}.")
    if facts.get("adapter"):
        lines.append(f"LoRA target modules: `{facts.get('lora_target_modules')}` (the vision tower is not adapted).")
    if facts.get("first_reward") is not None:
        lines.append(
            f"Mean training reward: {facts['first_reward']:.3f} at the first logged step, "
            f"{facts['last_reward']:.3f} at the last."
        )
    lines += ["", "| hyperparameter | value |", "|---|---|"]
    lines += [f"| `{key}` | `{value}` |" for key, value in facts.get("hyperparameters", {}).items()]
    lines += ["", f"Every option of the run is in [`{RECIPE_FILE}`]({RECIPE_FILE}).", "", "## Evaluation", ""]
    lines.append(eval_table if eval_table else "No evaluation table was attached (`triune eval` writes one).")
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        f"hf download {repo_id} {RECIPE_FILE} --local-dir .",
        "# in a clone of triune-trl, after `pip install -e .` (point --data_root at your copy of the data):",
        _launch_command(facts),
        "```",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'model = AutoModelForImageTextToText.from_pretrained("{repo_id}")',
        f'processor = AutoProcessor.from_pretrained("{repo_id}")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _is_hub_id(name: str | None) -> bool:
    """A `namespace/name` that is not a folder on this machine."""
    return bool(name) and name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/"))


def _source_table(train: dict[str, int] | None, test: dict[str, int] | None) -> list[str]:
    if not train and not test:
        return ["(no per-source counts recorded)"]
    sources = sorted(set(train or {}) | set(test or {}))
    if test is None:
        return ["| data source | train rows |", "|---|---:|"] + [f"| {s} | {train[s]} |" for s in sources]
    rows = ["| data source | train rows | test rows |", "|---|---:|---:|"]
    rows += [f"| {s} | {(train or {}).get(s, 0)} | {test.get(s, 0)} |" for s in sources]
    return rows


def write_model_card(output_dir: Path, repo_id: str, facts: dict[str, Any], eval_table: str | None = None) -> Path:
    """Write README.md and triune_run.json into `output_dir`."""
    output_dir = Path(output_dir)
    (output_dir / FACTS_FILE).write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    path = output_dir / CARD_FILE
    path.write_text(render_model_card(repo_id, facts, eval_table), encoding="utf-8")
    return path


def files_to_push(output_dir: Path) -> list[tuple[str, Path]]:
    """The shipped files of an output folder (no checkpoints, optimizer states or pickled arguments), checked.

    Raises HubPushError naming the missing piece if the folder lacks weights, the processor or the model card.
    """
    output_dir = Path(output_dir)
    selected = []
    for path in sorted(output_dir.rglob("*")):
        relative = path.relative_to(output_dir)
        if not path.is_file() or any(_excluded(part) for part in relative.parts):
            continue
        selected.append((relative.as_posix(), path))
    names = {name for name, _ in selected}
    required = {
        "weights (model*.safetensors or adapter_model.safetensors)": _any(names, ["model*.safetensors",
                                                                                   "adapter_model.safetensors",
                                                                                   "pytorch_model*.bin"]),
        "config.json or adapter_config.json": _any(names, ["config.json", "adapter_config.json"]),
        "the processor (processor_config.json or preprocessor_config.json)": _any(
            names, ["processor_config.json", "preprocessor_config.json"]
        ),
        "the tokenizer (tokenizer_config.json)": "tokenizer_config.json" in names,
        f"the model card ({CARD_FILE})": CARD_FILE in names,
    }
    missing = [what for what, present in required.items() if not present]
    if missing:
        raise HubPushError(
            f"{output_dir}: cannot push, missing {', '.join(missing)}; push the folder a finished `triune train` "
            "run saved (it holds the model, the processor and the card), or save the processor with "
            "`processor.save_pretrained` there"
        )
    return selected


def _excluded(part: str) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for pattern in _PUSH_EXCLUDED)


def _any(names: Iterable[str], patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for name in names for pattern in patterns)


def default_repo_id(hub_model_id: str | None, output_dir: str | Path) -> str:
    """`hub_model_id`, or the output folder's name as `Trainer` would use it."""
    return hub_model_id or Path(output_dir).absolute().name


def push_checkpoint(output_dir: Path, repo_id: str, uploader: Uploader, commit_message: str | None = None) -> str:
    """Push the shipped files of `output_dir` to `repo_id` in one commit; return the commit URL (or local folder)."""
    files = files_to_push(output_dir)
    return uploader(repo_id, files, commit_message or f"triune-trl: upload {Path(output_dir).name}")


def main(argv: list[str] | None = None) -> int:
    """`python -m triune_trl.runs.hub OUTPUT_DIR --repo-id ORG/NAME [--eval-table eval.md] [--to-folder DIR]`."""
    parser = argparse.ArgumentParser(
        prog="python -m triune_trl.runs.hub",
        description="Re-render the model card of a finished run (optionally with `triune eval`'s per-source table) "
        "and push the checkpoint to the Hub, or to a local folder with --to-folder.",
    )
    parser.add_argument("output_dir", type=Path, help="folder a finished run saved (holds triune_run.json)")
    parser.add_argument("--repo-id", required=True, help="Hub repository, e.g. my-org/Orsta-7B-triune")
    parser.add_argument("--eval-table", help="markdown file written by `triune eval`, or the table text")
    parser.add_argument("--to-folder", type=Path, help="write the files to DIR/<repo-id>/ instead of the Hub")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    parser.add_argument("--revision", help="branch to push to (created if missing)")
    parser.add_argument("--token", help="Hub token (default: the one `hf auth login` stored)")
    args = parser.parse_args(argv)
    try:
        facts_path = args.output_dir / FACTS_FILE
        if not facts_path.is_file():
            raise HubPushError(f"{facts_path}: not found; pass the output folder of a finished `triune train` run")
        facts = json.loads(facts_path.read_text(encoding="utf-8"))
        write_model_card(args.output_dir, args.repo_id, facts, read_eval_table(args.eval_table))
        uploader: Uploader = (
            LocalFolderUploader(args.to_folder)
            if args.to_folder
            else HubUploader(token=args.token, private=args.private or None, revision=args.revision)
        )
        print(push_checkpoint(args.output_dir, args.repo_id, uploader))
    except TriuneError as error:
        print(f"triune-hub: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
