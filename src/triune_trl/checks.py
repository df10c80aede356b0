"""Checks of what a person types, made before anything heavy runs, so that a common mistake ends in one line that
names the option and the fix instead of a library traceback minutes later.

- `parse_recipe_args`: `TrlParser` parsing of `triune train` / the recipe, with an unknown option (command line or
  YAML key) answered by the closest known one, and dataclass validation errors (bf16 on a machine without bf16
  support, ...) as one line;
- `check_launch_precision`: the mixed precision `accelerate launch` hands DeepSpeed against the recipe's bf16/fp16
  (DeepSpeed refuses a mismatch, but only once the model is loaded and training starts);
- `check_model_path`: a model that is neither a folder holding a model nor a Hub id;
- `check_data_root`: a `--data_root` that does not exist.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from pathlib import Path

from .errors import UsageError

__all__ = [
    "SuggestingArgumentParser",
    "check_data_root",
    "check_launch_precision",
    "check_model_path",
    "load_model_error",
    "load_processor",
    "parse_recipe_args",
]

_BF16_UNSUPPORTED = "doesn't support bf16"


def _closest(name: str, known: list[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def _option_names(parser) -> list[str]:
    return sorted({option for action in parser._actions for option in action.option_strings if option.startswith("--")})


class SuggestingArgumentParser(argparse.ArgumentParser):
    """argparse for the `triune` subcommands, whose errors also name the closest known option of a mistyped one.

    argparse reports a mistyped required option as missing, and any other as unrecognized, without saying what was
    meant; this adds `; unknown option --modle (did you mean --model?)`. `argv` is the command line being parsed
    (set on the class by `triune_trl.cli.main`, so that subcommand parsers see it too; default `sys.argv[1:]`).
    """

    argv: list[str] | None = None

    def _chosen(self, tokens: list[str]) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self
        for token in tokens:
            subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if subcommands and token in subcommands[0].choices:
                parser = subcommands[0].choices[token]
        return parser

    def error(self, message: str):
        tokens = list(self.argv if self.argv is not None else sys.argv[1:])
        parser = self._chosen(tokens)
        known = _option_names(parser)
        unknown = [token.split("=", 1)[0] for token in tokens if token.startswith("--")]
        hints = [f"unknown option {name}{_closest(name, known)}" for name in unknown if name not in known]
        parser.print_usage(sys.stderr)
        self.exit(2, f"{parser.prog}: error: {'; '.join([message, *hints])}\n")


def _unknown(strings: list[str]) -> list[str]:
    return [item.split("=", 1)[0] for item in strings if item.startswith("--")]


def parse_recipe_args(parser, argv: list[str], command: str = "triune train"):
    """`parser.parse_args_and_config(argv)` with `UsageError`s a person can act on."""
    known = _option_names(parser)
    config = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    try:
        *parsed, from_config, from_command_line = parser.parse_args_and_config(
            argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except ValueError as exc:
        message = " ".join(str(exc).split())
        if _BF16_UNSUPPORTED in message:
            raise UsageError(
                "bf16: this machine has no GPU with bf16 support; pass --bf16 false (fp32, or --fp16 true on a GPU), "
                "or --use_cpu true to run bf16 on the CPU"
            ) from None
        raise UsageError(message) from None
    keys = [name[2:] for name in _unknown(from_config)]
    problems = [f"{config}: unknown key {key}{_closest(key, [k[2:] for k in known])}" for key in keys]
    problems += [f"unknown option {name}{_closest(name, known)}" for name in _unknown(from_command_line)]
    if problems:
        raise UsageError(f"{'; '.join(problems)}; `{command} --help` lists every option")
    if from_command_line:
        raise UsageError(f"unexpected argument {from_command_line[0]!r}; options are --name value pairs")
    return tuple(parsed)


def _truthy(value: str | None) -> bool:
    return str(value).lower() in {"1", "true", "yes"}


def check_launch_precision(training_args) -> None:
    """Under `accelerate launch` with DeepSpeed, the launcher's mixed precision must equal the recipe's.

    accelerate passes its `mixed_precision` (config file or `--mixed_precision`) in ACCELERATE_MIXED_PRECISION and
    builds DeepSpeed's config from it; transformers then refuses a recipe whose bf16/fp16 differ ("ds
    bf16.enabled=True vs hf bf16=False"), after the model is loaded.
    """
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher is None or not _truthy(os.environ.get("ACCELERATE_USE_DEEPSPEED")):
        return
    recipe = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no"
    if launcher.lower() == recipe:
        return
    fix = f"add --mixed_precision {recipe} to accelerate launch (before the script)"
    other = {"bf16": "--bf16 true", "fp16": "--fp16 true"}.get(launcher.lower())
    if other:
        fix += f", or pass {other} to the recipe"
    raise UsageError(
        f"accelerate launch runs DeepSpeed with mixed precision {launcher!r} (its --config_file or --mixed_precision) "
        f"but the recipe trains with {'bf16' if recipe == 'bf16' else 'fp16' if recipe == 'fp16' else 'fp32'} "
        f"(bf16: {str(bool(training_args.bf16)).lower()}); DeepSpeed refuses the mismatch: {fix}"
    )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _looks_local(name: str) -> bool:
    """A path no Hub id can be: absolute, relative with ./ or ../ or ~, more than one `/`, or a backslash."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name


def _checkpoint_hint(folder: Path) -> str:
    from .monitoring.run_files import last_complete_checkpoint

    checkpoint = last_complete_checkpoint(folder)
    return f"; it holds {checkpoint}: pass that" if checkpoint is not None else ""


def check_model_path(name: str, option: str, *, tiny_hint: bool = True) -> None:
    """`UsageError` unless `name` is a folder holding a model (config.json) or could be a Hub id.

    A Hub id that does not exist is only known once the Hub answers: `load_model_error` words that failure.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
            raise UsageError(
                f"{option} {name}: the folder holds no model (no config.json); pass a run's output_dir or one of its "
                f"checkpoint-N folders{_checkpoint_hint(path)}"
            )
        return
    if path.exists():
        raise UsageError(f"{option} {name}: a file, not a model folder; pass the folder that holds config.json")
    if _looks_local(name) or not _HUB_ID.match(name):
        hint = f"; build the tiny offline model with `triune tiny-model {name}`" if tiny_hint else ""
        raise UsageError(f"{option} {name}: no such folder, and not a Hub id (like Qwen/Qwen2.5-VL-7B-Instruct){hint}")


def load_model_error(name: str, option: str, exc: Exception) -> UsageError:
    """The one line for a Hub id that `from_pretrained` could not load (no such model, no network, offline)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    first = first if len(first) <= 160 else first[:157] + "..."
    local = f"; if it is a local folder, build it (`triune tiny-model {name}`) or fix the path"
    offline = "; HF_HUB_OFFLINE is set, so only models already in the Hub cache load" if _truthy(
        os.environ.get("HF_HUB_OFFLINE")
    ) else ""
    return UsageError(f"{option} {name}: not a local folder, and it could not be loaded from the Hub ({first}){offline}"
                      f"{local}")


def load_processor(name: str, option: str, **kwargs):
    """`AutoProcessor.from_pretrained(name, **kwargs)`, or the one line of `load_model_error` when it cannot load.

    Train, warm start and eval all load the processor first, so this is where a bad model name is met.
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(name, **kwargs)
    except OSError as exc:  # a Hub id the Hub does not have, or cannot be reached for
        raise load_model_error(name, option, exc) from None


def check_data_root(data_root: str | None, option: str) -> None:
    """`UsageError` when a data root was given and is not a folder."""
    if data_root is None:
        return
    path = Path(data_root).expanduser()
    if not path.is_dir():
        what = "a file, not a folder" if path.exists() else "no such folder"
        raise UsageError(
            f"{option} {data_root}: {what}; pass the folder your data config's relative paths start from (e.g. the "
            "downloaded Orsta-Data-47k), or leave it out to use the config's `root`"
        )
