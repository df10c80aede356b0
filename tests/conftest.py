"""Session-wide fixtures: the tiny offline model and the bundled sample set are built once per test run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

# Nothing may reach the Hub: the tiny model and the sample data are built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker (and every process it starts) computes on one thread: two workers with torch's
# default of one OpenMP thread per core put four spinning threads on two cores, and a CPU training step then ran
# up to ten times slower (test_monitor_training: 12 s alone, 205 s beside another worker).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
TRIUNE = str(Path(sys.executable).with_name("triune"))  # the `triune` a user of this environment types


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from triune_trl.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen2.5-vl")


@pytest.fixture(scope="session")
def tiny_family_model(tmp_path_factory, request):
    """family name -> folder of that family's tiny model (`triune_trl.models.tiny.FAMILIES`), each built once per test
    run.

    Qwen2.5-VL is the `tiny_model_dir` model itself, so a test over every family builds nothing twice."""
    from triune_trl.models.tiny import DEFAULT_FAMILY, build_tiny_model

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family == DEFAULT_FAMILY:
            return request.getfixturevalue("tiny_model_dir")
        if family not in built:
            built[family] = build_tiny_model(tmp_path_factory.mktemp("tiny") / f"tiny-{family}", family=family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory) -> Path:
    from triune_trl.data.make_sample import make_sample_dataset

    out = tmp_path_factory.mktemp("sample") / "sample_data"
    make_sample_dataset(out, seed=0, train_rows=8, test_rows=2)
    return out


def write_data_config(path: Path, root: Path, train: list[str], test: list[str] | None = None) -> Path:
    """A data config YAML selecting some of the files under `root`."""
    import yaml

    config = {"root": str(root), "train": [{"path": p} for p in train]}
    if test:
        config["test"] = [{"path": p} for p in test]
    path.write_text(yaml.safe_dump(config))
    return path


_PYTEST_TEMP = re.compile(r"/tmp/pytest-of-[^/]+/pytest-\d+/(popen-gw\d+/)?")


def printed_length(line: str) -> int:
    """A printed line's length with pytest's temporary root (`/tmp/pytest-of-USER/pytest-N/popen-gwK/`) counted as
    `/tmp/`: messages name the paths a user typed, whose length is the user's, and the test runner's own prefix
    (longer under pytest-xdist) is not."""
    return len(_PYTEST_TEMP.sub("/tmp/", line))


def user_environment() -> dict[str, str]:
    """The environment the recipe headers tell users to set on a CPU host."""
    return {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB
        "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(REPO_ROOT / ".pytest_cache" / "vllm")),
    }


def run_as_user(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=user_environment(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def user_checkout(tmp_path_factory, sample_data_dir) -> Path:
    """A user's working folder: the repository's recipes, data configs and launch scripts, and artifacts/ holding the
    bundled sample set (small), so documented commands run there as typed and write nothing into the repository."""
    root = tmp_path_factory.mktemp("checkout")
    for folder in ("recipes", "data_configs", "local_scripts"):
        shutil.copytree(REPO_ROOT / folder, root / folder)
    (root / "artifacts").mkdir()
    (root / "artifacts" / "sample_data").symlink_to(sample_data_dir)
    return root


# What a launcher or TRL's colocate mode puts in the environment of the process that starts a process group.
DISTRIBUTED_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                         "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_distributed_environment_leaks():
    """Each test ends with the launcher variables it started with. An in-process vLLM colocate engine sets them for
    its process group; left behind, every later `triune` subprocess of the same worker believed it was rank 0 of a
    launched job and tried to open MASTER_PORT (two pytest-xdist workers then collided on port 29500)."""
    before = {name: os.environ.get(name) for name in DISTRIBUTED_VARIABLES}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


VLLM_READY = re.compile(r"triune vllm-serve: ready at (\S+) \(pid (\d+)\)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_vllm_server(command: list[str], log: Path, env: dict[str, str], cwd: Path, what: str = "") -> SimpleNamespace:
    """Start `triune vllm-serve` (`command`), its output to `log`, and wait for its ready line (at most 10 minutes);
    the test fails with the log's end when it exits first. Returns base (URL), pid (the server's process group) and
    launcher (the `triune vllm-serve` process)."""
    with open(log, "w") as out:
        launcher = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    deadline, ready = time.monotonic() + 600, None
    while ready is None and time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(1)
        ready = VLLM_READY.search(log.read_text())
    if ready is None:
        launcher.kill()
        pytest.fail(f"triune vllm-serve{what} did not get ready (exit {launcher.poll()}):\n{log.read_text()[-3000:]}")
    return SimpleNamespace(base=ready.group(1), pid=int(ready.group(2)), launcher=launcher)


def stop_vllm_server(server: SimpleNamespace) -> None:
    """SIGTERM, as a user's Ctrl-C; the whole process group is killed when it is not gone within a minute."""
    server.launcher.send_signal(signal.SIGTERM)
    try:
        server.launcher.wait(60)
    except subprocess.TimeoutExpired:
        server.launcher.kill()
        os.killpg(server.pid, signal.SIGKILL)
