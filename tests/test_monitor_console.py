"""The console text of a log entry (monitoring/console.py) and the MLflow names (monitoring/trackers.py)."""

from __future__ import annotations

from types import SimpleNamespace

from triune_trl.monitoring.console import MAX_LINE, ConsoleCallback, format_log, per_source_rows
from triune_trl.monitoring.per_source import PER_SOURCE_METRICS
from triune_trl.monitoring.trackers import leaf_safe_names


def full_entry(sources: list[str], prefix: str = "") -> dict[str, float]:
    """A log entry as a V-Triune run writes it: TRL's scalars plus every per-source metric of every source."""
    entry = {f"{prefix}{key}": 0.5 for key in ("loss", "reward", "reward_std", "frac_reward_zero_std", "entropy")}
    entry.update({"grad_norm": 1.25, "learning_rate": 3e-6, "epoch": 0.125, "params/total": 1e9})
    entry.update({f"{prefix}rewards/accuracy": 0.25, f"{prefix}completions/mean_length": 512.0})
    for index, source in enumerate(sources):
        for metric in PER_SOURCE_METRICS:
            if metric != "iou_threshold" or "detection" in source:
                entry[f"{prefix}{metric}/{source}"] = float(index)
        entry[f"{prefix}reward_map50/{source}"] = 0.75
    return entry


SOURCES = [f"train_detection_v3det_{n}" for n in range(4)]
SOURCES += [f"some_very_long_source_name_{'x' * 60}_{n}" for n in range(14)]


def test_eighteen_sources_print_one_table_row_each_within_the_line_limit():
    text = format_log(full_entry(SOURCES), step=7, max_steps=100, width=MAX_LINE)
    lines = text.splitlines()
    assert max(map(len, lines)) <= MAX_LINE
    assert lines[0].startswith("step 7/100 train | loss 0.5 | grad_norm 1.25 | lr 3e-06 | reward 0.5")
    assert "params/total" not in text and "map50" not in text  # in trainer_state and the trackers, not printed
    assert "per source, step 7 (train)" in lines
    for source in SOURCES[:4]:  # detection rows carry their IoU threshold, the others a dash
        (row,) = [line for line in lines if line.startswith(source + " ")]
        assert row.split()[-1] == f"{SOURCES.index(source):.3f}"
    assert "IoU" in text
    assert sum("some_very_long_source_name_" in line for line in lines) >= 14  # long names fold, nothing is dropped


def test_a_narrow_console_still_keeps_every_column():
    lines = format_log(full_entry(SOURCES[:2]), step=1, width=80).splitlines()
    assert max(map(len, lines)) <= 80
    header = " ".join(lines[lines.index("per source, step 1 (train)") + 1 :][:3])
    columns = ("source", "n", "reward", "accuracy", "format", "unveri-", "fiable", "mean", "length", "clip", "IoU")
    for column in columns:
        assert column in header


def test_eval_entries_use_their_eval_keys():
    entry = full_entry(["a", "b"], prefix="eval_") | {"eval_runtime": 12.5, "epoch": 1.0}
    text = format_log(entry, step=4, max_steps=8)
    assert text.splitlines()[0] == (
        "step 4/8 eval | loss 0.5 | reward 0.5 | reward_std 0.5 | zero_std 0.5 | accuracy 0.25 | len 512 | "
        "entropy 0.5 | runtime 12.5 | epoch 1"
    )
    assert "per source, step 4 (eval)" in text
    assert set(per_source_rows(entry, "eval_")) == {"a", "b"} and per_source_rows(entry, "") == {}


def test_an_entry_without_sources_prints_only_its_scalars():
    text = format_log({"train_runtime": 12.0, "train_loss": 0.1, "epoch": 2.0}, step=10, max_steps=10)
    assert text == "step 10/10 train | train_loss 0.1 | train_runtime 12 | epoch 2"


def test_the_callback_prints_on_the_main_process_only(capsys):
    state = SimpleNamespace(is_world_process_zero=True, global_step=3, max_steps=9)
    callback = ConsoleCallback(progress=False)
    callback.on_log(None, state, None, logs=full_entry(["a"]))
    assert capsys.readouterr().out.startswith("step 3/9 train | loss 0.5")
    callback.on_log(None, SimpleNamespace(**{**vars(state), "is_world_process_zero": False}), None, logs={"loss": 1.0})
    assert capsys.readouterr().out == ""


def test_mlflow_names_rename_only_a_name_that_is_also_a_family():
    families: set[str] = set()
    first = leaf_safe_names({"reward": 1.0, "reward/d3": 2.0, "eval_reward/d3": 3.0, "loss": 0.5}, families)
    assert first == {"reward/all": 1.0, "reward/d3": 2.0, "eval_reward/d3": 3.0, "loss": 0.5}
    # a family seen in an earlier entry still counts: `eval_reward` alone is no longer a leaf
    assert leaf_safe_names({"eval_reward": 4.0}, families) == {"eval_reward/all": 4.0}
    assert leaf_safe_names({"rewards/accuracy": 1.0}) == {"rewards/accuracy": 1.0}


def test_report_to_takes_a_comma_separated_list_on_the_command_line():
    from tests.conftest import REPO_ROOT
    from triune_trl.runs.train import make_parser

    recipe = str(REPO_ROOT / "recipes" / "configs" / "tiny_cpu.yaml")
    _, args, _ = make_parser().parse_args_and_config(["--config", recipe, "--report_to", "tensorboard, mlflow"])
    assert args.report_to == ["tensorboard", "mlflow"]
