"""Real reward servers for tests: `triune serve-rewards` in a subprocess on 127.0.0.1, waited for until healthy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT_S = 60.0
MATH_SPEC = {"ground_truth": "\\boxed{4}", "verifier": "mathverify", "accuracy_ratio": 1.0, "format_ratio": 0.0}
DET_PARM = {
    "det_verifier_normalized": True,
    "det_reward_ratio": {"iou_max_label_first": 1.0, "iou_max_iou_first": 0.0, "iou_completeness": 0.3,
                         "map": 0.0, "map50": 0.0, "map75": 0.0},
}  # fmt: skip


def expected_scores(item: dict, iou_threshold="dynamic") -> dict:
    """What in-process scoring gives a /v1/score item (its own `iou_threshold` wins, as on the server)."""
    from triune_trl.rewards import score_sample

    return score_sample(
        item["completion"],
        item["reward_model"],
        image_size=item.get("image_size"),
        step=item.get("step"),
        total_steps=item.get("total_steps"),
        iou_threshold=item.get("iou_threshold", iou_threshold),
    )


def call_router(router, **batch) -> tuple[list, dict]:
    """Call a remote router the way TRL does (awaited on an event loop, with `log_metric`): rewards and metrics."""
    metrics: dict[str, float] = {}

    async def run():
        try:
            return await router(**batch, log_metric=metrics.__setitem__)
        finally:
            await router.aclose()

    return asyncio.run(run()), metrics


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    """A server subprocess: its URL, and ways to stop it politely (SIGTERM) or not (SIGKILL)."""

    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self, token: str | None = None) -> dict:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.get(f"{self.url}/health", headers=headers, timeout=10)
        response.raise_for_status()
        return response.json()

    def kill(self) -> None:
        """SIGKILL the server (and so its scoring workers lose their parent): a crashed machine, as seen by clients."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_server(
    *,
    port: int | None = None,
    workers: int = 1,
    token: str | None = None,
    extra_args: Sequence[str] = (),
    log_dir: Path | None = None,
    cwd: Path | None = None,
) -> RunningServer:
    """Start `triune serve-rewards` and return once `/health` answers (raises with the server's output if not)."""
    port = port or free_port()
    log_dir = Path(log_dir or os.environ.get("TMPDIR", "/tmp"))
    log = log_dir / f"reward-server-{port}-{time.monotonic_ns()}.log"
    args = [sys.executable, "-m", "triune_trl.cli", "serve-rewards", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), *extra_args]  # fmt: skip
    if token is not None:
        token_file = log_dir / f"token-{port}-{time.monotonic_ns()}"
        token_file.write_text(token + "\n")
        args += ["--token-file", str(token_file)]
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    server = RunningServer(process, port, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"reward server exited with {process.returncode}:\n{server.output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"reward server did not answer /health within {START_TIMEOUT_S:g} s:\n{server.output()}")


@contextlib.contextmanager
def running_server(**kwargs) -> Iterator[RunningServer]:
    """`start_server(**kwargs)`, stopped (or killed) on the way out."""
    server = start_server(**kwargs)
    try:
        yield server
    finally:
        server.stop()
