"""Every shell command the docs show is run in CI, or docs/not_in_ci.md says why not.

Documented commands are read from README.md and docs/*.md (```bash blocks and inline `triune ...`, `make ...`,
`python ...` spans) and from the headers of recipes/ (the scripts' docstrings, the YAML recipes' comments),
data_configs/ and local_scripts/. Each one, normalised (comments, `NAME=value` prefixes, line continuations and
`[optional ...]` groups dropped; placeholders such as DIR, FILE, RUN_DIR, <recipe> and `...` become `*`), must be

  (a) in TESTED_BY: a test that runs it (the same entry point and recipe, reduced where needed: the tiny model, fewer
      steps, a temporary folder), named `tests/<file>::<test>` and checked to exist in that file's AST, or `.ci/run`
      for `make test` itself;
  (b) in RUN_HERE: run here exactly as documented, in a temporary folder holding its inputs, because it takes
      seconds (make-sample, tiny-model, reward score, ...); or
  (c) in docs/not_in_ci.md, with why CI does not run it (a GPU, several nodes, the Orsta data, the Hub, ...).

A command in none of them fails the test, so a new doc line either comes with a way to run it or says why not.
An entry that matches no documented command fails it too, so the tables do not outlive the docs. Besides, every
`--help` (each `triune` subcommand, nested ones included, and both recipe scripts) must print, and every documented
`make` command must name a real target (`make -n`).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import glob
import io
import json
import re
import runpy
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOT_IN_CI = REPO_ROOT / "docs" / "not_in_ci.md"

# First words of a command (after any NAME=value prefix); anything else in a code span is prose or an option.
COMMAND_WORDS = ("triune", "make", "python", "accelerate", "torchrun", "pip", "huggingface-cli", "local_scripts/")


@dataclass(frozen=True)
class Documented:
    """One documented command: where it is shown, its normalised text, and its words as a shell would pass them."""

    source: str
    command: str
    argv: tuple[str, ...]


def _is_placeholder(part: str) -> bool:
    """DIR, FILE, RUN_DIR, OUT.png, <recipe>, `...`: a value the reader fills in."""
    return part == "..." or bool(re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[a-z]+)?|<[^>]*>", part))


def _normalise_token(token: str) -> str:
    if "\n" in token:  # a multi-line `python -c` program
        return "*"
    parts = [("*" if _is_placeholder(part) else re.sub(r"<[^>]*>", "*", part)) for part in token.split("/")]
    return "/".join(parts)


def _drop_optional(tokens: list[str]) -> list[str]:
    """`[--max_steps 10 --output_dir D ...]`: optional arguments shown in brackets are not part of the command."""
    kept, depth = [], 0
    for token in tokens:
        if token.startswith("[") and not token.startswith("[["):
            depth += 1
        if depth == 0:
            kept.append(token)
        if depth and token.endswith("]"):
            depth -= 1
    return kept


def command_words(text: str) -> list[str] | None:
    """The words of a shell command as the program gets them, without its `NAME=value` prefix and its `[optional]`
    groups; None when `text` is not a command (prose, an option, a comment)."""
    try:
        tokens = shlex.split(text.replace("\\\n", " "), comments=True)
    except ValueError:
        return None
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
        tokens = tokens[1:]
    if not tokens or not (tokens[0] in COMMAND_WORDS or tokens[0].startswith(COMMAND_WORDS[-1])):
        return None
    if tokens[0].endswith("/") or tokens == ["make"]:  # a folder or the tool named in a sentence
        return None
    return _drop_optional(tokens)


def _quote(token: str) -> str:
    if " " not in token:
        return token
    return f"'{token}'" if '"' in token else f'"{token}"'


def normalise(words: list[str]) -> str:
    """The comparable form of a command: placeholders as `*`, words joined by single spaces."""
    return " ".join(_quote(_normalise_token(token)) for token in words)


def _logical_lines(code: str) -> list[str]:
    """Commands of a code block: continuation lines joined, a quoted string spanning lines kept whole."""
    commands, pending = [], ""
    for line in code.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.rstrip().endswith("\\"):
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        commands.append(pending)
        pending = ""
    return commands + ([pending] if pending else [])


FENCE = re.compile(r"^([ \t]*)```(\w*)\n(.*?)^\1```[ \t]*$", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")


def _inline_spans(text: str) -> list[str]:
    """`code spans` of prose that name a command with its arguments; a bare `triune eval` only names the command."""
    spans = [span.replace("\n", " ") for span in INLINE.findall(text)]
    return [span for span in spans if not _is_mention(span)]


def _is_mention(span: str) -> bool:
    """`triune eval`, `accelerate launch`, `triune data ...`: command names in a sentence (`make demo` is a command)."""
    words = span.split()
    return not words or words[0] != "make" and all(re.fullmatch(r"[a-z][a-z-]*|\.\.\.", word) for word in words)


def _markdown_commands(text: str) -> list[str]:
    found = []
    for match in FENCE.finditer(text):
        if match.group(2) in ("bash", "sh", "shell"):
            indent = len(match.group(1))
            found += _logical_lines("\n".join(line[indent:] for line in match.group(3).splitlines()))
    return found + _inline_spans(FENCE.sub("", text))


def _comment_header(path: Path) -> str:
    """The leading comment block of a YAML or shell file, without its `#` marks."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("#!"):
            continue
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines)


def _header_commands(header: str) -> list[str]:
    """Indented command lines of a header (`#   triune ...`), and `code spans` in its prose."""
    indented = "\n".join(line for line in header.splitlines() if line.startswith("  "))
    return [line.strip() for line in _logical_lines(indented)] + _inline_spans(header)


def _header(path: Path) -> str:
    if path.suffix == ".py":
        return ast.get_docstring(ast.parse(path.read_text())) or ""
    if path.suffix == ".json":
        return ""
    return _comment_header(path)


def documented_commands() -> list[Documented]:
    """Every command the docs show, normalised, with the file it is in."""
    shown: list[tuple[Path, str]] = []
    markdown = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    for path in [path for path in markdown if path != NOT_IN_CI]:  # its commands are the list, not docs
        shown += [(path, text) for text in _markdown_commands(path.read_text())]
    recipes = REPO_ROOT / "recipes"
    headed = [*sorted(recipes.glob("*.py")), *sorted((recipes / "configs").glob("*.yaml")),
              *sorted((REPO_ROOT / "data_configs").glob("*.yaml")), *sorted((REPO_ROOT / "local_scripts").iterdir())]
    for path in headed:
        shown += [(path, text) for text in _header_commands(_header(path))]
    found = []
    for path, text in shown:
        if words := command_words(text):
            found.append(Documented(str(path.relative_to(REPO_ROOT)), normalise(words), tuple(words)))
    return found


def matches(pattern: str, command: str) -> bool:
    """`*` in an entry stands for any text (a placeholder's `*` included); everything else is literal."""
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), command) is not None


# --- (a) commands a test runs, as documented or reduced (the tiny model, fewer steps, a temporary folder) ---------

CI_SCRIPT = ".ci/run"  # CI runs `make test` as it is, and `make install` is its first prerequisite
TESTED_BY = {
    "make test*": CI_SCRIPT,
    "make install": CI_SCRIPT,
    "python recipes/grpo_triune.py --config recipes/configs/tiny_cpu.yaml*":
        "tests/test_training_e2e.py::test_recipe_with_cli_overrides_trains_all_tasks_and_saves_a_reloadable_checkpoint",
    "triune train --config recipes/configs/tiny_cpu.yaml*":
        "tests/test_cli_matrix.py::test_a_family_trains_in_a_generation_mode_saves_pushes_and_reloads",
    "python recipes/grpo_triune.py --config recipes/configs/tiny_cpu_vllm.yaml*":  # `triune train`: the same run
        "tests/test_cli_matrix.py::test_a_family_trains_in_a_generation_mode_saves_pushes_and_reloads",
    "triune pretrain --config recipes/configs/tiny_see_*":
        "tests/test_cli_recipes.py::test_the_staged_pretraining_and_its_rl_recipe_run_as_documented",
    "triune train --config recipes/configs/tiny_see_rl.yaml":
        "tests/test_cli_recipes.py::test_the_staged_pretraining_and_its_rl_recipe_run_as_documented",
    "python recipes/grpo_triune.py --config recipes/configs/tiny_learn.yaml":  # through `triune train`: the same run
        "tests/test_cli_recipes.py::test_the_learning_pipeline_recipes_run_as_documented",
    "python recipes/sft_warm_start.py --config recipes/configs/tiny_warm_start.yaml":  # via `triune warm-start`
        "tests/test_cli_recipes.py::test_the_learning_pipeline_recipes_run_as_documented",
    "triune vllm-serve --model artifacts/tiny-qwen2.5-vl --max_model_len 1024 --dtype float32":
        "tests/test_vllm_server.py::test_server_mode_trains_on_mixed_batches_with_vllm_following_the_trainer",
    "triune train --config recipes/configs/tiny_cpu_vllm_server.yaml --async_rollouts true":
        "tests/test_vllm_server.py::test_async_rollouts_resume_after_a_hard_kill_trains_each_step_once_on_the_same_batches",
    "triune train --config recipes/configs/tiny_cpu_vllm_server.yaml*":
        "tests/test_vllm_server.py::test_server_mode_trains_on_mixed_batches_with_vllm_following_the_trainer",
    "triune preflight --config *":
        "tests/test_vllm_server.py::test_preflight_reads_the_servers_context_not_the_recipes",
    "triune warm-start --config recipes/configs/tiny_warm_start.yaml*":
        "tests/test_warm_start.py::test_a_warm_start_trains_saves_and_reloads",
    "triune eval --model * --data-config * --split test":
        "tests/test_monitor_cli.py::test_triune_eval_writes_a_per_source_table",
    "triune plot *": "tests/test_monitor_training.py::test_triune_plot_draws_the_run",
    "triune tiny-model * --family *": "tests/test_tiny.py::test_cli_builds_the_named_family",
    "triune data make-sample artifacts/* --*": "tests/test_cli.py::test_make_sample_writes_orsta_named_files",
    "triune data validate data/train/*.parquet":
        "tests/test_data_validate.py::test_triune_data_validate_exits_0_on_good_files_and_1_on_a_bad_one_and_writes_nothing",
    "triune data inspect *": "tests/test_data_cli.py::test_inspect_shows_format_schema_counts_and_rows",
    "triune data convert omnirl.json --to orsta *":
        "tests/test_data_cli.py::test_convert_writes_orsta_parquet_that_loads_to_the_same_rows",
    "triune data convert rec.jsonl --to orsta * --data-config *":
        "tests/test_data_cli.py::test_convert_keeps_detection_parameters_and_refuses_bad_files",
    "triune data stats*--family qwen3-vl*": "tests/test_families.py::test_data_stats_sizes_images_for_the_named_family",
    "triune data validate|inspect|stats|convert *": "tests/test_docs_commands.py::test_every_help_text_prints",
    "triune reward score --workers * --time-limit *":
        "tests/test_rewards_score_file.py::test_the_cli_passes_workers_and_time_limit",
    "triune reward score --input * --output * --server *":
        "tests/test_server_launch.py::test_triune_reward_score_on_a_server_writes_what_local_scoring_writes",
    "triune serve-rewards --port 8192 --workers 4":
        "tests/test_server_launch.py::test_port_zero_announces_the_port_it_took",
    "triune serve-rewards *--token-file*":
        "tests/test_server_client.py::test_a_missing_or_wrong_token_stops_at_once_naming_the_option",
    "triune serve-rewards --job-id * --discovery-dir *":
        "tests/test_server_discovery.py::test_serve_rewards_registers_while_it_runs_and_unregisters_when_stopped",
    "local_scripts/reward_server.sh":
        "tests/test_server_launch.py::test_launch_script_registers_for_discovery_and_cleans_up_on_stop",
    "python -m triune_trl.runs.learning *":
        "tests/test_learning.py::test_command_prints_the_table_from_two_eval_folders",
    "python -m triune_trl.runs.hub * --to-folder *":
        "tests/test_scale_hub.py::test_the_card_is_re_rendered_with_the_eval_table_and_pushed_again",
    "accelerate launch --config_file local_scripts/zero3.yaml *":
        "tests/test_scale_launch.py::test_accelerate_deepspeed_zero3_on_two_cpu_processes",
    "accelerate launch recipes/grpo_triune.py --config *":
        "tests/test_scale_launch.py::test_accelerate_deepspeed_zero3_on_two_cpu_processes",
    "accelerate launch --config_file local_scripts/zero2.yaml *":
        "tests/test_scale_nonfinite.py::test_zero2_bf16_skips_a_non_finite_update",
    "torchrun --nproc_per_node 2": "tests/test_scale_launch.py::test_torchrun_ddp_on_two_cpu_processes",
}


# --- (b) commands this file runs as documented, in a temporary folder holding their inputs --------------------------


@dataclass(frozen=True)
class Run:
    """How to run a documented command here: `prepare` writes its inputs into the folder, `check` asserts on the
    folder and the command's output (stdout, then stderr) after it exited 0."""

    prepare: Callable[[Path], None]
    check: Callable[[Path, str], None]


def _nothing(cwd: Path) -> None:
    """The command needs no input."""


def _png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), "white").save(path)


def _omnirl_file(cwd: Path) -> None:
    """An OmniRL file, a text-only and a one-image row, whose image is in images/ and in omnirl/images/."""
    rows = [{"problem": "What is 2+2?", "solution": "4"},
            {"problem": "<image>How many?", "solution": "3", "image": ["shape.png"]}]
    (cwd / "omnirl.json").write_text(json.dumps(rows))
    _png(cwd / "images" / "shape.png")
    _png(cwd / "omnirl" / "images" / "shape.png")


def _readme_score_input(cwd: Path) -> None:
    """completions.jsonl holding the README's own example line for `triune reward score`."""
    block = re.search(r"```json\n(\{\"completion\".*?)```", (REPO_ROOT / "README.md").read_text(), re.S)
    (cwd / "completions.jsonl").write_text(json.dumps(json.loads(block.group(1))) + "\n")


def _eval_completions(cwd: Path) -> None:
    """outputs/tiny_cpu/eval_test/completions.jsonl as `triune eval` writes it: `chart` is the worse source."""
    answers = [("clevr", 1.0), ("clevr", 0.0), ("chart", 0.0), ("chart", None)]
    rows = [{"data_source": source, "row": row, "prompt": "<image>Q", "completion": f"answer {row}", "gold": "3",
             "reward": accuracy, "accuracy": accuracy, "format": 0.0, "unverifiable": accuracy is None}
            for row, (source, accuracy) in enumerate(answers)]
    folder = cwd / "outputs" / "tiny_cpu" / "eval_test"
    folder.mkdir(parents=True)
    (folder / "completions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def _tensorboard_runs(cwd: Path) -> None:
    """Event files where the documented commands look: RUN_DIR/runs/<run> and outputs/tiny_cpu/runs/<RUN>."""
    from torch.utils.tensorboard import SummaryWriter

    for folder in (cwd / "RUN_DIR" / "runs" / "run1", cwd / "outputs" / "tiny_cpu" / "runs" / "<RUN>"):
        with SummaryWriter(str(folder)) as writer:
            for step in range(1, 4):
                for family in ("train/reward", "eval/reward", "train/iou_threshold", "train/response_length"):
                    for source in ("clevr", "v3det_train"):
                        writer.add_scalar(f"{family}/{source}", step / 4, step)
    (cwd / "docs").mkdir()


def _wrote(pattern: str) -> Callable[[Path, str], None]:
    def check(cwd: Path, out: str) -> None:
        assert list(cwd.glob(pattern)), f"nothing matches {pattern} in {sorted(cwd.rglob('*'))[:20]}"

    return check


def _printed(text: str) -> Callable[[Path, str], None]:
    def check(cwd: Path, out: str) -> None:
        assert text in out, out[-2000:]

    return check


def _scored_one(cwd: Path, out: str) -> None:
    """The README's example line (the right answer, a format ratio of 0) scores 1."""
    [line] = (cwd / "scored.jsonl").read_text().splitlines()
    assert json.loads(line)["final_reward"] == 1.0, line


RUN_HERE: dict[str, Run] = {
    "triune data make-sample artifacts/sample_data": Run(_nothing, _wrote("artifacts/sample_data/*/*.parquet")),
    "triune tiny-model artifacts/*": Run(_nothing, _wrote("artifacts/*/config.json")),
    "triune tiny-model * --preset see": Run(_nothing, _wrote("*/config.json")),
    "triune tiny-model * --family qwen*": Run(_nothing, _wrote("*/config.json")),
    "triune data validate omnirl.json --verifier mathverify --image-root *": Run(_omnirl_file, _printed("no problems")),
    "triune reward score --input completions.jsonl --output scored.jsonl":
        Run(_readme_score_input, _scored_one),
    "python -c *": Run(_eval_completions, _printed("chart 2 'answer 2' gold: '3'")),
    "python local_scripts/tensorboard_png.py *": Run(_tensorboard_runs, _wrote("**/*.png")),
}


# --- (c) docs/not_in_ci.md -------------------------------------------------------------------------------------------

def not_in_ci() -> dict[str, str]:
    """The list items of docs/not_in_ci.md, "- `pattern` — why" (continued on indented lines): pattern -> why."""
    items = re.split(r"\n(?=- )", NOT_IN_CI.read_text())
    entries = {}
    for item in items:
        if match := re.match(r"- `([^`]+)`\s*(?:—|:|-)?\s*(.*)", " ".join(item.split("\n")), re.S):
            entries[match.group(1)] = " ".join(match.group(2).split())
    return entries


def classify(command: str, listed: dict[str, str]) -> tuple[str, str] | None:
    """(category, entry) of the first entry matching `command`: docs/not_in_ci.md first (a GPU command is not made
    a tested one by a broad test pattern), then this file's runs, then the tests."""
    for category, entries in (("not in CI", listed), ("run here", RUN_HERE), ("run by a test", TESTED_BY)):
        for pattern in entries:
            if matches(pattern, command):
                return category, pattern
    return None


DOCUMENTED = documented_commands()


def test_every_documented_command_is_run_or_says_why_not():
    listed = not_in_ci()
    missing = sorted({f"{d.command}    ({d.source})" for d in DOCUMENTED if classify(d.command, listed) is None})
    assert not missing, (
        "documented commands that no test runs, that tests/test_docs_commands.py does not run and that "
        "docs/not_in_ci.md does not list (add a test to TESTED_BY, a cheap run to RUN_HERE, or a line with why to "
        "docs/not_in_ci.md):\n" + "\n".join(missing)
    )


def test_every_entry_is_used_by_a_documented_command():
    """An entry no documented command needs (the doc changed, or an earlier entry covers it) is stale."""
    listed = not_in_ci()
    used = {classify(d.command, listed) for d in DOCUMENTED}
    tables = (("docs/not_in_ci.md", "not in CI", listed), ("RUN_HERE", "run here", RUN_HERE),
              ("TESTED_BY", "run by a test", TESTED_BY))
    stale = [f"{where}: {pattern}" for where, category, entries in tables for pattern in entries
             if (category, pattern) not in used]
    assert not stale, "entries that no documented command uses:\n" + "\n".join(stale)


def test_every_not_in_ci_line_says_why():
    assert all(len(why.split()) >= 3 for why in not_in_ci().values()), not_in_ci()


def _defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


@pytest.mark.parametrize("test", sorted(set(TESTED_BY.values())), ids=lambda test: test.rpartition("::")[2][:70])
def test_tested_by_names_a_test_that_exists(test):
    if test == CI_SCRIPT:
        assert "make test" in (REPO_ROOT / CI_SCRIPT).read_text()
        return
    path, _, name = test.partition("::")
    assert (REPO_ROOT / path).is_file(), f"{path} does not exist"
    assert name in _defined_tests(REPO_ROOT / path), f"{path} defines no {name}"


# --- help texts: every `triune` subcommand and both recipe scripts ---------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every path of subcommands under `parser`, nested ones included (`data validate`, `reward score`)."""
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                paths += [(*prefix, name), *_subcommands(child, (*prefix, name))]
    return paths


def _exit_status(call: Callable[[], int | None]) -> int:
    try:
        return call() or 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)


def _triune_subcommands() -> list[tuple[str, ...]]:
    from triune_trl.cli import build_parser

    return [(), *_subcommands(build_parser())]


@pytest.mark.parametrize("path", _triune_subcommands(), ids=lambda path: " ".join(("triune", *path)))
def test_every_help_text_prints(path):
    """In process (a subprocess importing TRL costs ~10 s each): a `%` that argparse reads as a format code, as
    `triune train --help` once had ("10% of"), fails here for every command."""
    from triune_trl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = _exit_status(lambda: main([*path, "--help"]))
    assert status == 0, err.getvalue()[-3000:]
    assert out.getvalue().startswith("usage:") and len(out.getvalue().splitlines()) > 3, out.getvalue()[:500]


@pytest.mark.parametrize("script", ["recipes/grpo_triune.py", "recipes/sft_warm_start.py"])
def test_recipe_scripts_print_their_help(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = _exit_status(lambda: runpy.run_path(str(REPO_ROOT / script), run_name="__main__"))
    assert status == 0 and out.getvalue().startswith("usage:"), out.getvalue()[:500]


# --- running the (b) commands ----------------------------------------------------------------------------------------


def _expand(words: tuple[str, ...], cwd: Path) -> list[str]:
    """A shell's glob expansion, relative to `cwd`."""
    expanded = []
    for word in words:
        hits = sorted(glob.glob(word, root_dir=cwd)) if "*" in word else []
        expanded += hits or [word]
    return expanded


def _run(words: list[str]) -> int:
    """The command in this process: `triune` through its entry point, `python -c` and `python SCRIPT` as Python
    would run them."""
    if words[0] == "triune":
        from triune_trl.cli import main

        return _exit_status(lambda: main(words[1:]))
    if words[:2] == ["python", "-c"]:
        return _exit_status(lambda: exec(compile(words[2], "<docs>", "exec"), {"__name__": "__main__"}))
    sys.argv = words[1:]
    return _exit_status(lambda: runpy.run_path(str(REPO_ROOT / words[1]), run_name="__main__") and 0)


def _run_here_commands() -> list[Documented]:
    listed, seen, found = not_in_ci(), set(), []
    for documented in DOCUMENTED:
        if (classify(documented.command, listed) or ("",))[0] == "run here" and documented.argv not in seen:
            seen.add(documented.argv)
            found.append(documented)
    return found


@pytest.mark.parametrize("documented", _run_here_commands(), ids=lambda d: " ".join(d.argv)[:80])
def test_documented_command_runs(documented, tmp_path, monkeypatch):
    """The command as the docs show it, in a temporary folder holding its inputs: it exits 0 and does its job."""
    _, pattern = classify(documented.command, not_in_ci())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    RUN_HERE[pattern].prepare(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = _run(_expand(documented.argv, tmp_path))
    shown = f"{documented.source}: {' '.join(documented.argv)}"
    assert status == 0, f"{shown}\n{out.getvalue()[-2000:]}{err.getvalue()[-3000:]}"
    RUN_HERE[pattern].check(tmp_path, out.getvalue() + err.getvalue())


def test_documented_make_commands_name_real_targets():
    """`make -n` (print, run nothing): each documented make target and variable exists in the Makefile."""
    for words in sorted({d.argv for d in DOCUMENTED if d.argv[0] == "make"}):
        result = subprocess.run(["make", "-n", *words[1:]], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{' '.join(words)}: {result.stderr}"
