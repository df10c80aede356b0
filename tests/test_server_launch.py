"""Launching the reward server: the release-style launch script with discovery, port 0, and start-up errors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from triune_trl.server.discovery import discover_urls

from .conftest import REPO_ROOT
from .server_helpers import free_port, running_server

TRIUNE = Path(sys.executable).parent / "triune"


def _wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_launch_script_registers_for_discovery_and_cleans_up_on_stop(tmp_path):
    port = free_port()
    env = {**os.environ, "TRIUNE": str(TRIUNE), "PORT": str(port), "WORKERS": "1", "JOB_ID": "j-test-a",
           "DISCOVERY_DIR": str(tmp_path / "discovery")}  # fmt: skip
    process = subprocess.Popen(
        ["bash", str(REPO_ROOT / "local_scripts" / "reward_server.sh")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    entry = tmp_path / "discovery" / "j-test-a" / f"127.0.0.1:{port}"
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: entry.exists() and _healthy(url), what="the server and its discovery file")
        assert entry.read_bytes() == b""  # the release's format: the name is the address
        assert discover_urls("j-test-a", tmp_path / "discovery") == [url]
        assert httpx.get(f"{url}/").json() == {"message": "Reward Judge Server"}
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode in (0, -signal.SIGTERM), stderr  # uvicorn re-raises the signal after its shutdown
    assert "JOB_ID=j-test-a" in stderr
    assert not entry.exists()


def test_port_zero_announces_the_port_it_took():
    process = subprocess.Popen(
        [str(TRIUNE), "serve-rewards", "--port", "0", "--workers", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        url = f"http://127.0.0.1:{match.group(1)}"
        _wait_for(lambda: _healthy(url), what="the server")
        assert "no token" in line
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize(
    ("content", "message"), [(None, "cannot read it"), ("", "the file is empty"), ("two words", "one word")]
)
def test_a_bad_token_file_stops_the_start_naming_the_file(tmp_path, content, message):
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    result = subprocess.run(
        [str(TRIUNE), "serve-rewards", "--port", "0", "--token-file", str(token_file)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert str(token_file) in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_port_stops_the_start_with_a_message():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(TRIUNE), "serve-rewards", "--port", str(port), "--workers", "0"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_triune_reward_score_on_a_server_writes_what_local_scoring_writes(tmp_path):
    math = {"ground_truth": "\\boxed{12}", "verifier": "mathverify", "accuracy_ratio": 1.0, "format_ratio": 0.1}
    det = {"ground_truth": '<answer>\n[{"bbox_2d": [100, 100, 500, 500], "label": "dog"}]\n</answer>',
           "verifier": "detection", "accuracy_ratio": 1.0, "format_ratio": 0.1,
           "verifier_parm": {"det_verifier_normalized": True,
                             "det_reward_ratio": {"iou_max_label_first": 1.0, "iou_completeness": 0.3}}}  # fmt: skip
    lines = [
        {"completion": "<think>\nx\n</think>\n<answer>\n\\boxed{12}\n</answer>", "reward_model": math, "id": 1},
        {"completion": "\\boxed{13}", "reward_model": math, "data_source": "mm_math"},
        {"completion": '<answer>\n[{"bbox_2d": [100, 100, 480, 520], "label": "dog"}]\n</answer>',
         "reward_model": det, "image_size": [1000, 1000], "step": 3, "total_steps": 10},
    ]  # fmt: skip
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    score = [str(TRIUNE), "reward", "score", "--input", str(source)]
    subprocess.run([*score, "--output", str(local), "--workers", "0"], check=True, capture_output=True, timeout=120)
    with running_server(workers=1, token="cli-token") as server:
        token_file = tmp_path / "token"
        token_file.write_text("cli-token\n")
        result = subprocess.run([*score, "--output", str(remote), "--server", server.url, "--token-file",
                                 str(token_file)], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stderr
        refused = subprocess.run([*score, "--output", str(tmp_path / "x.jsonl"), "--server", server.url],
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
    assert local.read_text() == remote.read_text()
    assert [json.loads(line)["final_reward"] for line in remote.read_text().splitlines()][1] == 0.0
    assert refused.returncode == 1 and "requires a bearer token" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "x.jsonl").exists()
