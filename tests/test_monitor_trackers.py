"""The console and the trackers of one real tiny run: the recipe, `--logging_steps 1`, train and eval, reported to
TensorBoard, Trackio, W&B (offline) and MLflow (local file store) at once.

Every per-source key of `trainer_state.json` must reach every tracker at the step it was logged at, read back with
each tracker's own reader: TensorBoard's `EventAccumulator`, Trackio's `SQLiteStorage`, MLflow's `MlflowClient`,
and for W&B the offline run file (`run-*.wandb`: wandb's record log of its own `Record` protobufs).
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from triune_trl.monitoring.console import MAX_LINE
from triune_trl.monitoring.per_source import split_metric_key
from triune_trl.monitoring.reflection import REFLECTION_WORDS, word_metric_name

from .conftest import REPO_ROOT, write_data_config

pytestmark = pytest.mark.slow

SOURCES = ("tag_format", "text_math", "d3")  # a text-only, a text-only math and a grounding (IoU) source
FILES = ("format_tagformat", "math_textmath", "grounding_d3")
# per-source metrics every source has in every log entry, whatever its answers (the others need a verified answer)
ALWAYS = (
    "num_completions", "unverifiable_count", "response_length", "response_clip_ratio", "reflection_ratio",
    "vision_pads_replaced", *(word_metric_name(word) for word in REFLECTION_WORDS),
)  # fmt: skip


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_model_dir, sample_data_dir):
    root = tmp_path_factory.mktemp("tracked")
    config = write_data_config(
        root / "data.yaml",
        sample_data_dir,
        [f"train/train_{name}_*.parquet" for name in FILES],
        [f"test/test_{name}_*.parquet" for name in FILES],
    )
    recipe = yaml.safe_load((REPO_ROOT / "recipes" / "configs" / "tiny_cpu.yaml").read_text())
    recipe["report_to"] = ["tensorboard", "trackio", "wandb", "mlflow"]  # a list: YAML only, not the command line
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = root / "run"
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(root / "wandb"),
        "WANDB_SILENT": "true",
        "TRACKIO_DIR": str(root / "trackio"),
        "MLFLOW_TRACKING_URI": (root / "mlruns").as_uri(),
        "MLFLOW_ALLOW_FILE_STORE": "true",
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        [
            sys.executable, str(REPO_ROOT / "recipes" / "grpo_triune.py"), "--config", str(root / "recipe.yaml"),
            "--model_name_or_path", str(tiny_model_dir), "--data_config", str(config), "--output_dir", str(out),
            "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no",
            "--per_device_train_batch_size", "16", "--eval_strategy", "steps", "--eval_steps", "2",
        ],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((out / "trainer_state.json").read_text())
    return {"root": root, "out": out, "stdout": result.stdout, "history": state["log_history"]}


def expected_per_source(history: list[dict], mode: str) -> dict[tuple[int, str], float]:
    """{(step, key): value} of the per-source keys of trainer_state's train or eval entries."""
    prefix = "eval_" if mode == "eval" else ""
    expected = {}
    for entry in history:
        for key, value in entry.items():
            parts = split_metric_key(key)
            if parts is not None and parts[0] == prefix:
                expected[(entry["step"], key)] = value
    return expected


def tracker_name(key: str) -> str:
    """transformers' `rewrite_logs` name of a logged key, as TensorBoard, W&B and Trackio show it."""
    return "eval/" + key[len("eval_") :] if key.startswith("eval_") else "train/" + key


def assert_all_arrived(history, received: dict[tuple[int, str], float], rename=tracker_name) -> None:
    """Every per-source key, train and eval, at its step with its value; at least three sources of each."""
    for mode in ("train", "eval"):
        expected = expected_per_source(history, mode)
        sources = {split_metric_key(key)[2] for _, key in expected}
        assert sources >= set(SOURCES), (mode, sources)
        missing = {(step, key) for step, key in expected if (step, rename(key)) not in received}
        assert not missing, f"{mode}: {len(missing)} of {len(expected)} missing, e.g. {sorted(missing)[:5]}"
        for (step, key), value in expected.items():
            assert math.isclose(received[(step, rename(key))], value, rel_tol=1e-6, abs_tol=1e-6), (step, key)


def test_console_is_compact_with_a_per_source_table_every_logging_step(tracked_run):
    lines = tracked_run["stdout"].splitlines()
    assert max(len(line) for line in lines) <= MAX_LINE
    assert "{'loss'" not in tracked_run["stdout"]  # transformers' printed dict is gone
    assert sum(line.startswith("step 1/2 train | loss") for line in lines) == 1
    for title in ("per source, step 1 (train)", "per source, step 2 (train)", "per source, step 2 (eval)"):
        words = " ".join(lines[lines.index(title) + 1 :][:2]).split()  # two header lines
        assert words[words.index("source") :][:9] == ["source", "┃", "n", "┃", "reward", "┃", "accuracy", "┃", "format"]
        assert "clip" in words
    eval_table = lines[lines.index("per source, step 2 (eval)") :][:7]  # title, two header lines, rule, 3 rows
    assert "IoU" in eval_table[1]  # d3 is scored on boxes
    assert all(any(line.startswith(source + " ") for line in eval_table) for source in SOURCES)


def test_trainer_state_still_holds_every_per_source_key(tracked_run):
    for mode in ("train", "eval"):
        prefix = "eval_" if mode == "eval" else ""
        entries = [e for e in tracked_run["history"] if any(k.startswith(prefix + "num_completions/") for k in e)]
        assert len(entries) == (2 if mode == "train" else 1)
        for entry in entries:
            sources = [key.split("/")[1] for key in entry if key.startswith(prefix + "num_completions/")]
            for source in sources:
                assert {f"{prefix}{metric}/{source}" for metric in ALWAYS} <= entry.keys(), (mode, source)
            if "d3" in sources:
                assert f"{prefix}iou_threshold/d3" in entry


def test_tensorboard_event_files_hold_every_per_source_key(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (log_dir,) = (tracked_run["out"] / "runs").iterdir()
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    received = {
        (event.step, tag): event.value for tag in events.Tags()["scalars"] for event in events.Scalars(tag)
    }
    assert_all_arrived(tracked_run["history"], received)


def _wandb_history(run_file: Path) -> list[dict[str, float]]:
    """The history rows of a W&B offline run file: wandb's record log (32 KiB blocks of chunks after a 7-byte
    header, LevelDB style) of `wandb_internal_pb2.Record` messages."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending, rows = 32 * 1024, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})  # fmt: skip
    return rows


def test_wandb_offline_run_holds_every_per_source_key(tracked_run):
    (run_file,) = (tracked_run["root"] / "wandb" / "wandb").glob("offline-run-*/run-*.wandb")
    received = {}
    for row in _wandb_history(run_file):
        if "train/global_step" in row:  # W&B's x axis for the Trainer's metrics (define_metric step_metric)
            received.update({(row["train/global_step"], key): value for key, value in row.items()})
    assert_all_arrived(tracked_run["history"], received)


def test_trackio_local_store_holds_every_per_source_key(tracked_run, monkeypatch):
    import trackio.sqlite_storage
    from trackio.sqlite_storage import SQLiteStorage

    # the store folder is read from TRACKIO_DIR once, at import: point this process's reader at the run's
    monkeypatch.setattr(trackio.sqlite_storage, "TRACKIO_DIR", tracked_run["root"] / "trackio")
    (run,) = SQLiteStorage.get_runs("huggingface")
    received = {}
    for row in SQLiteStorage.get_logs("huggingface", run):
        if "train/global_step" in row:  # Trackio's own step counts log calls (TRL's profiling adds some)
            received.update({(row["train/global_step"], key): value for key, value in row.items()})
    assert_all_arrived(tracked_run["history"], received)


def test_mlflow_file_store_holds_every_per_source_key(tracked_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch

    client = MlflowClient(tracking_uri=(tracked_run["root"] / "mlruns").as_uri())
    (run,) = client.search_runs(experiment_ids=[e.experiment_id for e in client.search_experiments()])
    received = {}
    for name in run.data.metrics:
        received.update({(m.step, name): m.value for m in client.get_metric_history(run.info.run_id, name)})
    assert_all_arrived(tracked_run["history"], received, rename=lambda key: key)  # MLflow keeps the keys as logged
    # the run-wide values whose names are also a family are there too, as <name>/all
    for step, key in [(1, "reward"), (2, "reward"), (2, "eval_reward"), (2, "frac_reward_zero_std")]:
        (value,) = [e[key] for e in tracked_run["history"] if e["step"] == step and key in e]
        assert received[(step, f"{key}/all")] == pytest.approx(value)
