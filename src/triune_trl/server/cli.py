"""`triune serve-rewards`: run the reward server (FastAPI app served by uvicorn) until interrupted."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from triune_trl.errors import TriuneError
from triune_trl.rewards.router import DEFAULT_TIME_LIMIT, DEFAULT_WORKERS
from triune_trl.server.protocol import DEFAULT_PORT

DEFAULT_DISCOVERY_DIR = ".reward_server"


class ServerConfigError(TriuneError):
    """A server option that cannot work (unreadable token file, bad threshold); the message says what to change."""


def read_token_file(path: str | os.PathLike) -> str:
    """The bearer token in `path` (surrounding whitespace stripped); it must not be empty."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ServerConfigError(f"--token-file {path}: cannot read it ({exc.strerror})") from None
    if not token:
        raise ServerConfigError(f"--token-file {path}: the file is empty; put the token on its first line")
    if any(ch.isspace() for ch in token):
        raise ServerConfigError(f"--token-file {path}: the token must be one word without spaces or line breaks")
    return token


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so `--port 0` works (the chosen port is announced) and a taken port fails early."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServerConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from triune_trl.rewards.iou_schedule import parse_iou_threshold
    from triune_trl.server.app import ServerSettings, create_app

    try:
        threshold = parse_iou_threshold(args.iou_threshold)
    except ValueError as exc:
        raise ServerConfigError(f"--iou-threshold: {exc}") from None
    if args.workers < 0:
        raise ServerConfigError(f"--workers must be >= 0, got {args.workers}")
    if not args.time_limit > 0:
        raise ServerConfigError(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    if args.batch_budget < 0:
        raise ServerConfigError(f"--batch-budget must be >= 0 seconds (0: no bound), got {args.batch_budget}")
    if args.max_body_mb <= 0 or args.max_batch_items <= 0:
        raise ServerConfigError("--max-body-mb and --max-batch-items must be positive")
    token = read_token_file(args.token_file) if args.token_file else None
    if not _is_loopback(args.host) and token is None:
        print(
            f"triune serve-rewards: WARNING: listening on {args.host} without a token: anyone who can reach this port "
            "can use it. Pass --token-file to require a bearer token.",
            file=sys.stderr,
        )
    settings = ServerSettings(
        workers=args.workers,
        time_limit=args.time_limit,
        iou_threshold=threshold,
        token=token,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_batch_items=args.max_batch_items,
        cors_origins=tuple(args.cors_origin or ()),
        batch_budget=args.batch_budget or None,
    )
    sock = _listening_socket(args.host, args.port)
    port = sock.getsockname()[1]
    registered: list[Path] = []

    def announce() -> None:
        """Once the workers are up: the discovery file (if asked for) and one line saying where to connect."""
        if args.job_id:
            from triune_trl.server.discovery import register_server

            registered.append(register_server(args.job_id, args.host, port, args.discovery_dir))
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(
            f"triune reward server: http://{host}:{port} ({args.workers} scoring workers, IoU threshold "
            f"{threshold}, {'token required' if token else 'no token'})"
            + (f"; discovery file {registered[0]}" if registered else ""),
            flush=True,
        )

    def withdraw() -> None:
        from triune_trl.server.discovery import unregister_server

        for path in registered:
            unregister_server(path)

    app = create_app(settings, on_ready=announce, on_stop=withdraw)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log, lifespan="on"))
    try:
        server.run(sockets=[sock])
    finally:
        withdraw()  # a start-up failure after the file was written; a signal stop already withdrew it
    return 0 if server.started else 1


def register(commands: argparse._SubParsersAction) -> None:
    """Add `triune serve-rewards` to the top-level parser."""
    serve = commands.add_parser(
        "serve-rewards",
        help="run the reward server (POST /v1/score, GET /health, and the release's GET / and POST /judge)",
        description="Score completions over HTTP with the same verifiers, worker pool and time limits as training.",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: only this machine)"
    )
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"scoring worker processes (default {DEFAULT_WORKERS}; 0: score in the server process, no time limit)",
    )
    serve.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT,
        help=f"seconds one completion may take before it is reported unverifiable (default {DEFAULT_TIME_LIMIT:g})",
    )
    serve.add_argument(
        "--iou-threshold",
        default=os.environ.get("DET_IOU_THRESHOLD", "dynamic"),
        help="detection IoU threshold for items that do not carry their own: 'dynamic' (from each item's step and "
        "total_steps), 'average' or a number (default: $DET_IOU_THRESHOLD as in the release, else 'dynamic')",
    )
    serve.add_argument(
        "--batch-budget",
        type=float,
        default=45.0,
        help="seconds one batch of merged requests may take in all; completions not scored by then are answered "
        "unverifiable (default 45, below the client's 60 s request timeout; 0: no bound)",
    )
    serve.add_argument("--token-file", help="file holding a bearer token that every scoring request must send")
    serve.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body in MiB (default 64)")
    serve.add_argument("--max-batch-items", type=int, default=8192, help="most items in one /v1/score request")
    serve.add_argument(
        "--cors-origin", action="append", help="allow browser requests from this origin (repeatable; default: none)"
    )
    serve.add_argument(
        "--job-id",
        default=os.environ.get("JOB_ID"),
        help="write DISCOVERY_DIR/JOB_ID/host:port while serving, as the release's launcher does (default: $JOB_ID)",
    )
    serve.add_argument(
        "--discovery-dir", default=DEFAULT_DISCOVERY_DIR, help="discovery folder (default .reward_server)"
    )
    serve.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--access-log", action="store_true", help="log every request (off by default)")
    serve.set_defaults(func=_serve)
