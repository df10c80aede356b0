"""Checks of what a person types, made before anything heavy runs, so that a common mistake ends in one line that
names the option and the fix instead of a library traceback minutes later.

- `parse_recipe_args`: `TrlParser` parsing of `triune train` / the recipe, with an unknown option (command line or
  YAML key) answered by the closest known one, and dataclass validation errors (bf16 on a machine without bf16
  support, ...) as one line;
- `check_launch_precision`: the mixed precision `accelerate launch` hands DeepSpeed against the recipe's bf16/fp16
  (DeepSpeed refuses a mismatch, but only once the model is loaded and training starts);
- `check_model_path`: a model folder that does not exist or holds no model, named with the command that builds it
  (`errors.BUILDERS`), or a Hub id that cannot load now (offline and not in the Hub cache);
- `check_data_root`: a `--data_root` that does not exist;
- `check_recipe_paths`: those two on a recipe command line (YAML + overrides) before TRL is imported;
- `end_launched_run`: under `accelerate launch` / `torchrun`, one error line per node and no launcher traceback.

Local path or Hub id (`looks_local`): a Hub id is `name` or `owner/name`. Everything else is a local path: absolute,
`~`, `.`/`./`/`../`, a backslash or drive letter, two or more `/`, a first part that is a folder here, or a first part
that is one of this project's folders (`artifacts/`, `outputs/`, `checkpoints/`). A missing local path is reported at
once; only a Hub id is ever looked up on the Hub, and only after a 3-second probe says the Hub answers.

Every message fits one printed line of at most 200 characters (`fit`).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import os
import re
import sys
from pathlib import Path

from .errors import UsageError, builder, fit

__all__ = [
    "SuggestingArgumentParser",
    "check_data_root",
    "check_hub_model",
    "check_launch_precision",
    "check_model_path",
    "check_recipe_paths",
    "end_launched_run",
    "is_hub_id",
    "load_model_error",
    "load_processor",
    "looks_local",
    "parse_recipe_args",
    "recipe_values",
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
    """`parser.parse_args_and_config(argv)` with `UsageError`s a person can act on (printed once per launch when a
    launcher started this process: `end_launched_run`)."""
    try:
        return _parse_recipe_args(parser, argv, command)
    except UsageError as error:
        end_launched_run(error)
        raise


def _parse_recipe_args(parser, argv: list[str], command: str):
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
        raise UsageError(fit(f"{'; '.join(problems)}; `{command} --help` lists every option", "; ".join(problems)))
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
    trains = {"bf16": "bf16", "fp16": "fp16"}.get(recipe, "fp32")
    other = {"bf16": "--bf16 true", "fp16": "--fp16 true"}.get(launcher.lower())
    fix = f"pass --mixed_precision {recipe} to accelerate launch" + (f" or {other} to the recipe" if other else "")
    raise UsageError(  # the launcher's value comes from its --config_file or --mixed_precision
        f"accelerate launch's mixed precision {launcher!r} is not the recipe's {trains}; DeepSpeed refuses that: {fix}"
    )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
# Folders this project writes into (the Makefile, the recipes' output_dir): a name under them is a local path even
# on a fresh clone, where none of them exists yet.
PROJECT_FOLDERS = ("artifacts", "outputs", "checkpoints")


def looks_local(name: str) -> bool:
    """Whether `name` is a local path rather than a Hub id, so that a missing one is reported, not looked up.

    A Hub id is `name` or `owner/name`. A local path is anything else: absolute or home-relative (`/`, `~`),
    explicitly relative (`.`, `./`, `../`), a Windows path (a backslash or a drive letter), more than one `/`, a first
    part that exists here as a folder (`outputs/run1` beside an `outputs/`), or a first part that is one of the
    folders this project writes into (`artifacts/`, `outputs/`, `checkpoints/`), which a fresh clone does not have
    yet. So `Qwen/Qwen2.5-VL-7B-Instruct` stays a Hub id unless a folder `Qwen` is in the current directory.
    """
    if name in (".", "..") or name.startswith(("/", "./", "../", "~")) or "\\" in name or re.match(r"^[A-Za-z]:", name):
        return True
    first, slash, _ = name.partition("/")
    return name.count("/") > 1 or bool(slash) and (first in PROJECT_FOLDERS or Path(first).is_dir())


def is_hub_id(name: str) -> bool:
    """Whether `check_model_path` takes `name` for a Hub id: nothing of that name here, not `looks_local`, and in the
    Hub's `name` / `owner/name` form."""
    return not Path(name).expanduser().exists() and not looks_local(name) and bool(_HUB_ID.match(name))


def _checkpoint_hint(option: str, name: str, folder: Path) -> str:
    from .monitoring.run_files import last_complete_checkpoint

    base = f"{option} {name}: the folder holds no model (no config.json)"
    checkpoint = last_complete_checkpoint(folder)
    if checkpoint is None:
        return f"{base}; pass a run's output_dir or one of its checkpoint-N folders"
    return fit(f"{base}; pass a run's output_dir or one of its checkpoint-N folders; it holds {checkpoint}: pass that",
               f"{base}; pass its complete {checkpoint.name} (its newest): {checkpoint}",
               f"{base}; pass its newest complete checkpoint, {checkpoint.name} in it")


def missing_local_model(name: str, option: str, tiny_hint: bool = True) -> str:
    """The one line for a model path (`looks_local`) that does not exist: its builder, or what to pass instead."""
    hint = builder(name)
    if hint:
        return f"{option} {name}: no such folder; {hint}"
    base = f"{option} {name}: no such folder (a local path, not a Hub id like Qwen/Qwen2.5-VL-7B-Instruct)"
    if not tiny_hint:
        return fit(f"{base}; fix the path, or pass a checkpoint folder or a Hub id",
                   f"{option} {name}: no such folder; fix the path, or pass a checkpoint folder or a Hub id")
    return fit(f"{base}; build a tiny offline model there with `triune tiny-model {name}`, or fix the path",
               f"{option} {name}: no such folder; fix the path, or build a tiny model there with triune tiny-model")


def check_model_path(name: str, option: str, *, tiny_hint: bool = True, revision: str | None = None) -> None:
    """`UsageError` unless `name` is a folder holding a model (config.json) or a Hub id that can load now.

    A name that `looks_local` and does not exist is one line naming its builder (`errors.BUILDERS`) before anything
    looks it up on the Hub (which would retry it for minutes); a Hub id is checked by `check_hub_model`. A Hub id
    that does not exist is only known once the Hub answers: `load_model_error` words that failure.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
            raise UsageError(_checkpoint_hint(option, name, path))
        return
    if path.exists():
        raise UsageError(f"{option} {name}: a file, not a model folder; pass the folder that holds config.json")
    if not is_hub_id(name):
        raise UsageError(missing_local_model(name, option, tiny_hint))
    check_hub_model(name, option, revision, tiny_hint=tiny_hint)


HUB_PROBE_SECONDS = 3.0


@functools.cache
def hub_unreachable(endpoint: str) -> str | None:
    """Why the Hub at `endpoint` cannot be reached (a short phrase), or None when it answers at all.

    Why: huggingface_hub retries a request that fails to connect 5 times (1 + 2 + 4 + 8 + 8 s) for every file
    transformers asks for, so a machine without network spent 2.5 minutes and ~70 lines before saying anything. One
    HEAD request through huggingface_hub's own client (its proxy and TLS settings) with a short timeout answers in
    milliseconds when DNS or the route fails, and in HUB_PROBE_SECONDS at worst. Asked once per process.
    """
    import httpx
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=HUB_PROBE_SECONDS, follow_redirects=False)
    except httpx.HTTPError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return reason if len(reason) <= 50 else reason[:47] + "..."
    return None


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)


def use_hub_cache_only() -> None:
    """Offline mode for this process (and its children): transformers then reads the Hub cache without asking."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # read once at import: set the value already read, too
        constants.HF_HUB_OFFLINE = True


def check_hub_model(name: str, option: str, revision: str | None = None, *, tiny_hint: bool = True) -> None:
    """`UsageError` when the Hub id `name` cannot load now: offline (HF_HUB_OFFLINE, or the Hub unreachable) and not
    in the Hub cache. Unreachable but cached: this process goes offline (`use_hub_cache_only`) and loads the cache,
    instead of retrying every file for minutes first."""
    from huggingface_hub import constants

    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or constants.HF_HUB_OFFLINE:
        if not _in_hub_cache(name, revision):
            base = f"{option} {name}: not a local folder, and it could not load: HF_HUB_OFFLINE is set"
            if not tiny_hint:
                raise UsageError(fit(f"{base} and the Hub cache lacks it; fix the path, or download it first",
                                     f"{base}, not cached"))
            raise UsageError(fit(
                f"{base} and the Hub cache lacks it; if it is a local folder, build it: `triune tiny-model {name}`",
                f"{base}, not cached; or build it: `triune tiny-model {name}`",
                f"{base}, not cached; or `triune tiny-model {name}`",
            ))
        return
    reason = hub_unreachable(constants.ENDPOINT)
    if reason is None:
        return
    if _in_hub_cache(name, revision):
        print(f"triune: the Hub is unreachable ({reason}); loading {name} from the Hub cache", file=sys.stderr)
        use_hub_cache_only()
        return
    raise UsageError(fit(
        f"{option} {name}: the Hub ({constants.ENDPOINT}) is unreachable ({reason}) and the Hub cache lacks it; "
        "check the network or proxy, or pass a local folder",
        f"{option} {name}: the Hub is unreachable ({reason}) and its cache lacks it; fix the network or pass a folder",
    ))


def load_model_error(name: str, option: str, exc: Exception) -> UsageError:
    """The one line for a Hub id that `from_pretrained` could not load (no such model, no network, offline)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    offline = "; HF_HUB_OFFLINE is set, so only models already in the Hub cache load" if _truthy(
        os.environ.get("HF_HUB_OFFLINE")
    ) else ""
    base = f"{option} {name}: not a local folder, and it could not be loaded from the Hub"
    short = first if len(first) <= 60 else first[:57] + "..."
    return UsageError(fit(
        f"{base} ({first}){offline}; if it is a local folder, build it (`triune tiny-model {name}`) or fix the path",
        f"{base} ({short}){offline}; if it is a local folder, build it (`triune tiny-model {name}`)",
        f"{base} ({short}){offline}",
    ))


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
    """`UsageError` when a data root was given and is not a folder: its builder when the project makes it, else
    what a data root is."""
    if data_root is None:
        return
    path = Path(data_root).expanduser()
    if path.is_dir():
        return
    what = "a file, not a folder" if path.exists() else "no such folder"
    hint = builder(data_root)
    if hint and not path.exists():
        raise UsageError(f"{option} {data_root}: {what}; {hint}")
    raise UsageError(fit(
        f"{option} {data_root}: {what}; pass the folder your data config's relative paths start from (e.g. the "
        "downloaded Orsta-Data-47k), or leave it out",
        f"{option} {data_root}: {what}; pass the folder your data config's relative paths start from, or leave it out",
    ))


def _option_value(argv: list[str], name: str) -> str | None:
    """The last value given to `--name` (or its dashed alias, as HfArgumentParser adds) as `--name v` or `--name=v`."""
    spellings = {f"--{name}", f"--{name.replace('_', '-')}"}
    value = None
    for i, token in enumerate(argv):
        option, equals, rest = token.partition("=")
        if option in spellings:
            value = rest if equals else argv[i + 1] if i + 1 < len(argv) else None
    return value


def recipe_values(argv: list[str], names: list[str]) -> dict[str, str]:
    """What `names` will be once TrlParser parses `argv`: the `--config` YAML's values, then the command line's.

    Read without TRL (which imports torch and transformers: ~10 s), so that a path that does not exist is reported
    before any of that; a YAML that does not parse is left to TrlParser, which reports it.
    """
    import yaml

    values: dict[str, str] = {}
    config = _option_value(argv, "config")
    if config is not None:
        if not Path(config).is_file():
            raise UsageError(f"--config {config}: no such file; the recipes are in recipes/configs/")
        try:
            recipe = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            recipe = None
        if isinstance(recipe, dict):
            values.update({name: str(recipe[name]) for name in names if recipe.get(name) is not None})
    for name in names:
        given = _option_value(argv, name)
        if given is not None:
            values[name] = given
    return values


def check_recipe_paths(argv: list[str], models: tuple[str, ...] = ("model_name_or_path",),
                       roots: tuple[str, ...] = ("data_root",), *, tiny_hint: bool = True) -> dict[str, str]:
    """`check_model_path` / `check_data_root` on the paths a recipe command line names, before its heavy imports;
    returns the values read (`recipe_values`).

    The same checks run again where the command uses them (cheaply: the Hub probe is asked once per process), in the
    same order (model, data root, then what parsing finds); these make a missing path a one-line error in about a
    second instead of after ~10 s of imports, or minutes of Hub retries. A data config's own `root` is checked where
    it is read (`DataConfig`), after the recipe's cheaper checks (the prompt budget), as before.
    """
    values = recipe_values(argv, [*models, *roots, "model_revision"])
    named = [name for name in models if values.get(name)]
    hub = [name for name in named if is_hub_id(values[name])]

    def check_model(name: str) -> None:
        check_model_path(values[name], f"--{name}", tiny_hint=tiny_hint, revision=values.get("model_revision"))

    for name in named:  # what is on this disk first; the Hub (a network probe) last
        if name not in hub:
            check_model(name)
    for name in roots:
        if values.get(name):
            check_data_root(values[name], f"--{name}")
    for name in hub:
        check_model(name)
    return values


LAUNCHED_WAIT_SECONDS = 20.0


def _parent_is_accelerate_launch() -> bool:
    """Whether this process's parent is `accelerate launch` (which runs torch elastic's agent in its own process)."""
    try:
        args = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")[:3]
    except OSError:  # no /proc (not Linux): keep the launcher's own reporting
        return False
    if any(Path(arg).name == "accelerate-launch" or arg == "accelerate.commands.launch" for arg in args):
        return True
    return any(Path(arg).name == "accelerate" for arg in args) and "launch" in args


def end_launched_run(error: Exception, prog: str | None = None) -> None:
    """Under a torch elastic launcher (`accelerate launch`, `torchrun`), end this rank with `error` printed once per
    node and no launcher traceback; return at once otherwise (the caller prints and exits 1 as usual).

    Why: every rank meets the same wrong option, so each printed the line, and torch elastic then reported the failed
    child as a ~50-line ChildFailedError traceback. Here only each node's local rank 0 prints. Under
    `accelerate launch` it then sends SIGTERM to the launcher: elastic's agent shuts the ranks down and accelerate
    exits with 128 + 15 = 143 and no traceback (its `_run_torchrun` catches elastic's SignalException), so the
    failure stays in the exit status. Under another launcher it exits 1 (the launcher reports that as before). The
    other ranks wait for the shutdown; one still alive after LAUNCHED_WAIT_SECONDS (its error was its own) prints
    its error and exits 1.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import signal
    import time

    def leave(*_):
        raise SystemExit(1)

    prog = prog or Path(sys.argv[0]).stem
    with contextlib.suppress(ValueError):  # not the main thread: the launcher's SIGTERM then ends it as it would
        signal.signal(signal.SIGTERM, leave)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        if not _parent_is_accelerate_launch():
            raise SystemExit(1)
        os.kill(os.getppid(), signal.SIGTERM)
        time.sleep(LAUNCHED_WAIT_SECONDS)
        raise SystemExit(1)
    time.sleep(LAUNCHED_WAIT_SECONDS)
    print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(1)
