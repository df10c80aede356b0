"""The bearer token of `triune vllm-serve`: read by the launcher, checked inside the vLLM server, sent by the client.

Why. With `VLLM_SERVER_DEV_MODE=1` (which TRL's server mode needs) vLLM 0.31 serves routes that change the served
model or the server's state with no authentication: `/init_weight_transfer_engine`, `/start_weight_update`,
`/update_weights`, `/finish_weight_update` (any weights, `triune_http` or NCCL), `/collective_rpc` (any method on
every worker), `/sleep`, `/wake_up`, `/pause`, `/resume`, `/abort_requests`, the cache resets, `/scale_elastic_ep`,
LoRA loading, the profiler. vLLM's own `--api-key` guards only the `/v1`, `/v2`, `/inference` and `/cohere` prefixes,
none of these. Once the server listens beyond loopback (trainers on other nodes), anyone who reaches its port could
replace the policy being trained.

What is protected. With a token, every request needs `Authorization: Bearer <token>` except GET/HEAD of the
read-only probes in OPEN_PATHS (`/health`: TRL's client and `triune preflight` poll it without headers; `/v1/models`:
TRL's client reads the model name before it can be given a header, preflight reads `max_model_len`; `/version`,
`/metrics`: monitoring). An allowlist rather than a list of dangerous routes: a route a later vLLM adds is closed until
someone decides it is harmless. Inference (`/v1/completions`, `/inference/v1/generate`, ...) is protected too: it
changes no weight, but an open port would let anyone spend the generation GPUs and read the policy's outputs, and
the trainer sends the token on every request anyway.

How. `BearerTokenMiddleware` is a pure ASGI middleware that `triune vllm-serve` hands to `vllm serve --middleware`
(vLLM adds it outermost, so a refused request reaches no route and changes nothing). Both the given and the expected
token are hashed with SHA-256 and compared with `hmac.compare_digest` (time independent of the token), as the reward
server does. A refused request gets 401 after its body is drained (up to DRAIN_LIMIT_BYTES), so a client still
uploading a weight chunk reads the 401 instead of a reset connection.

Where the token comes from (launcher and client alike): `triune vllm-serve --token_file FILE`, else the environment,
`TRIUNE_VLLM_TOKEN_FILE` (a file holding it: the same file on every node of a shared file system) or
`TRIUNE_VLLM_TOKEN` (the token itself). A file holds one word, as the reward server's `--token-file`. Never a
command-line value: other users can list command lines.

Standard library only: the vLLM API server imports this module.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import UsageError

TOKEN_ENV = "TRIUNE_VLLM_TOKEN"
TOKEN_FILE_ENV = "TRIUNE_VLLM_TOKEN_FILE"
TOKEN_OPTION = "--token_file"
MIDDLEWARE = f"{__name__}.BearerTokenMiddleware"  # the import path `vllm serve --middleware` takes
OPEN_PATHS = frozenset({"/health", "/v1/models", "/version", "/metrics"})  # GET/HEAD only
DRAIN_LIMIT_BYTES = 256 * 2**20  # as the reward server's 413


def read_token_file(path: str | os.PathLike, source: str) -> str:
    """The one-word token in `path`; a UsageError naming `source` (the option or variable that named the file)."""
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"{source} {path}: cannot read it ({exc.strerror})") from None
    if not token or any(ch.isspace() for ch in token):
        raise UsageError(f"{source} {path}: expected one word, the token, on the first line")
    return token


def resolve_token(token_file: str | None = None, environ: Mapping[str, str] = os.environ) -> tuple[str | None, str]:
    """The token and where it came from (for messages): `token_file`, else TRIUNE_VLLM_TOKEN_FILE, else
    TRIUNE_VLLM_TOKEN; (None, "") when none is set. Both variables set is an error: which one wins would be a guess."""
    if token_file:
        return read_token_file(token_file, TOKEN_OPTION), f"{TOKEN_OPTION} {token_file}"
    file_env, value = environ.get(TOKEN_FILE_ENV), environ.get(TOKEN_ENV)
    if file_env and value:
        raise UsageError(f"both {TOKEN_FILE_ENV} and {TOKEN_ENV} are set: unset one")
    if file_env:
        return read_token_file(file_env, TOKEN_FILE_ENV), f"{TOKEN_FILE_ENV}={file_env}"
    if value is not None:
        if not value.strip() or any(ch.isspace() for ch in value.strip()):
            raise UsageError(f"{TOKEN_ENV}: expected one word, the token")
        return value.strip(), TOKEN_ENV
    return None, ""


def server_environment(environ: Mapping[str, str], token: str, token_file: str | None) -> dict[str, str]:
    """`environ` for the server's processes, naming the token the launcher resolved and only it: the file's absolute
    path when it came from a file (the token itself stays out of every worker's environment), else the token."""
    env = {key: value for key, value in environ.items() if key not in (TOKEN_ENV, TOKEN_FILE_ENV)}
    file = token_file or environ.get(TOKEN_FILE_ENV)
    if file:
        env[TOKEN_FILE_ENV] = str(Path(file).expanduser().resolve())
    else:
        env[TOKEN_ENV] = token
    return env


def is_loopback(host: str) -> bool:
    """Whether a server bound to `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


class BearerTokenMiddleware:
    """ASGI middleware: a request reaches the app only with the server's bearer token, or as GET/HEAD of OPEN_PATHS.

    vLLM builds it with the app only (`app.add_middleware(cls)`), so the token comes from the environment the
    launcher set; without one it refuses to start (a server that was meant to be protected never runs open)."""

    def __init__(self, app, token: str | None = None):
        if token is None:
            token, _ = resolve_token()
        if not token:
            raise RuntimeError(f"{MIDDLEWARE}: no token; set {TOKEN_FILE_ENV} or {TOKEN_ENV} (triune vllm-serve does)")
        self.app = app
        self.expected = _digest(token)

    def authorized(self, scope) -> bool:
        """The request carries `Authorization: Bearer <token>` with the server's token (constant-time compare)."""
        value = dict(scope.get("headers") or ()).get(b"authorization", b"")
        scheme, _, given = value.partition(b" ")
        # both sides hashed to one length first, so the comparison's time says nothing about the token
        return scheme.lower() == b"bearer" and hmac.compare_digest(_digest(given.strip()), self.expected)

    def is_open(self, scope) -> bool:
        """GET/HEAD of a read-only probe, whose path is matched as Starlette's router matches it (root_path off)."""
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            return False
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        return path in OPEN_PATHS

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self.is_open(scope) or self.authorized(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect; closing before accepting answers the handshake with 403
            await send({"type": "websocket.close", "code": 1008})
        else:
            await self.refuse(receive, send)

    @staticmethod
    async def refuse(receive, send) -> None:
        """401 after draining the request body (bounded); the connection closes if the body was not all read."""
        size, more = 0, True
        while more and size <= DRAIN_LIMIT_BYTES:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = json.dumps({"detail": "missing or wrong bearer token: send `Authorization: Bearer <token>` with the "
                                     f"server's token ({TOKEN_FILE_ENV} / {TOKEN_ENV})"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"www-authenticate", b"Bearer")]
        if more:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
