"""The trainer's client of a vLLM server (TRL server mode): TRL's `VLLMClient` plus the `triune_http` weight transfer.

TRL 1.16 builds its `VLLMClient` inside `GRPOTrainer.__init__` and calls `init_communicator` there, which on a host
without CUDA raises NotImplementedError (NCCL only). `TriuneVLLMClient` reads the server's weight-transfer backend
from `/server_info` and:

- `nccl` (GPU servers, the default there): TRL's NCCL path, unchanged;
- `triune_http` (`triune vllm-serve` on a host without CUDA; `triune_trl.generation.http_weights`): no communicator;
  each sync posts the weights to `/update_weights` in chunks, between `/start_weight_update` and
  `/finish_weight_update`.

After every sync (TRL calls `reset_prefix_cache`) it also resets the server's encoder cache: vLLM keeps vision
embeddings by image hash across requests, and no weight-transfer path of vLLM 0.31 clears them, so an image seen
before the sync would keep embeddings of the old vision tower (measured on CPU: see docs/scaling.md).

A server that stops answering ends the run with one `VLLMServerError` line naming the server and the request: killed
or crashed (connection refused), and, on the `triune_http` path, after two quick connection retries instead of TRL's
~60 s of backoff (a dead vLLM server does not come back in a minute: a restart reloads the model); frozen or gone
without a reset (a node that vanished) after the request timeouts (connect 10 s, answer `TRIUNE_VLLM_READ_TIMEOUT`,
default 1800 s, long enough for a large generation request) instead of hanging. The weight routes are never resent
after the request reached the server: `/start_weight_update` and `/update_weights` are not idempotent, and a server
that refused one (HTTP 500, e.g. a protocol mismatch) says why in the error instead of "stopped answering".
`use_server_client` installs the class where TRL looks it up, only while the trainer is built.

A server started with a token (`triune vllm-serve --token_file`, `triune_trl.generation.auth`) gets it on every
request, as `Authorization: Bearer`, from `TRIUNE_VLLM_TOKEN_FILE` or `TRIUNE_VLLM_TOKEN` in the trainer's environment
(TRL's options have no field for it); a 401 ends the run with one line saying whether the token is missing or wrong.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from contextlib import contextmanager

import requests
from requests.adapters import HTTPAdapter
from trl.generation.vllm_client import VLLMClient
from urllib3.util.retry import Retry

from ..errors import TriuneError
from .auth import TOKEN_ENV, TOKEN_FILE_ENV, resolve_token
from .http_weights import BACKEND, DEFAULT_CHUNK_BYTES, PROTOCOL, update_chunks

logger = logging.getLogger(__name__)

CHUNK_ENV = "TRIUNE_VLLM_WEIGHT_CHUNK_MB"  # raw tensor MiB per /update_weights request (default 64)
READ_TIMEOUT_ENV = "TRIUNE_VLLM_READ_TIMEOUT"  # seconds the server may take to answer a request (default 1800)
CONNECT_TIMEOUT_S = 10.0


class VLLMServerError(TriuneError):
    """The vLLM generation server cannot be used (unreachable, gone, or a weight transfer this host cannot do)."""


def server_backend(server_info: dict) -> str | None:
    """The weight-transfer backend in a `/server_info` vllm_config (None: the server has no weight transfer)."""
    config = server_info.get("weight_transfer_config")
    if config is None:
        return None
    return config.get("backend", "nccl") if isinstance(config, dict) else str(config)


class TriuneVLLMClient(VLLMClient):
    """TRL's VLLMClient with the `triune_http` weight transfer, encoder-cache resets, a one-line dead-server error."""

    def __init__(self, *args, **kwargs):
        token, self.token_source = resolve_token()  # a bad token file fails before any request
        try:
            super().__init__(*args, **kwargs)  # GETs /health and /v1/models, which a token does not guard
        except requests.exceptions.RequestException as exc:
            raise VLLMServerError(
                f"the vLLM server at {kwargs.get('base_url') or 'the configured host/port'} cannot be reached "
                f"({type(exc).__name__}): start it first (`triune vllm-serve --model MODEL`) or fix "
                "--vllm_server_host / --vllm_server_port / --vllm_server_base_url"
            ) from None
        self.weight_backend: str | None = None
        mb = os.environ.get(CHUNK_ENV)
        self.chunk_bytes = int(float(mb) * 2**20) if mb else DEFAULT_CHUNK_BYTES
        self.last_sync: dict[str, float] = {}
        self.timeout = (CONNECT_TIMEOUT_S, float(os.environ.get(READ_TIMEOUT_ENV) or 1800))
        self.session.request = self._request_or_fail(self.session.request)
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _use_http_retries(self) -> None:
        """The `triune_http` path's retries: two quick ones for a connection that never reached the server (nothing
        was sent), none after it did (TRL resends POSTs on read errors and HTTP 500s, up to ~60 s of backoff)."""
        retry = Retry(total=2, connect=2, read=0, status=0, other=0, backoff_factor=0.5, raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=64)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _request_or_fail(self, request):
        def checked(method, url, *args, **kwargs):
            kwargs.setdefault("timeout", self.timeout)
            try:
                response = request(method, url, *args, **kwargs)
            except requests.exceptions.RequestException as exc:
                path = url.removeprefix(self.base_url)
                raise VLLMServerError(
                    f"the vLLM server at {self.base_url} stopped answering ({type(exc).__name__} on {method} {path}): "
                    "its log says why; restart it (`triune vllm-serve`) and resume from the last checkpoint "
                    "(--resume_from_checkpoint)"
                ) from None
            if response.status_code == 401:
                raise VLLMServerError(self._unauthorized(f"{method} {url.removeprefix(self.base_url)}"))
            return response

        return checked

    def _unauthorized(self, request: str) -> str:
        """The one line for a 401: the server has a token and this trainer sends none, or another one."""
        if not self.token_source:
            return (f"the vLLM server at {self.base_url} requires a bearer token (HTTP 401 on {request}): set "
                    f"{TOKEN_FILE_ENV} (or {TOKEN_ENV}) to the token it was started with")
        return (f"the vLLM server at {self.base_url} refused the bearer token from {self.token_source} (HTTP 401 on "
                f"{request}): give the trainer the token the server was started with")

    def init_communicator(self, device=0):
        """TRL's NCCL communicator, unless the server runs `triune_http`: then only the HTTP engine is opened."""
        self.weight_backend = server_backend(self.get_server_info())
        if self.weight_backend == BACKEND:
            self._use_http_retries()
            self._post_json(f"{self.base_url}/init_weight_transfer_engine", {"init_info": {"protocol": PROTOCOL}},
                            "refused to open the weight transfer")
            logger.info("vLLM server %s: weights travel over HTTP (%s)", self.base_url, BACKEND)
            return
        if self.weight_backend == "nccl" and str(device).split(":")[0] != "cuda" and not isinstance(device, int):
            raise VLLMServerError(
                f"the vLLM server at {self.base_url} takes weights over NCCL, which needs a CUDA device in the "
                f"trainer (this one is on {device}): start the server with `triune vllm-serve`, which picks the "
                f"{BACKEND} backend on a host without CUDA (or pass --weight_transfer {BACKEND})"
            )
        super().init_communicator(device)

    def update_named_params(self, metadata, named_params):
        """TRL's NCCL broadcast, or over `triune_http`: the weights in chunked `/update_weights` bodies."""
        if self.weight_backend != BACKEND:
            return super().update_named_params(metadata, named_params)
        start, raw, wire, requests_sent, tensors = time.perf_counter(), 0, 0, 0, 0
        own_update = not self._updating_weights  # TRL may hold one update open across several calls
        if own_update:
            self._post_json(f"{self.base_url}/start_weight_update", {})
        try:
            for chunk, size in update_chunks(named_params, self.chunk_bytes):
                response = self._post_json(f"{self.base_url}/update_weights", {"update_info": chunk})
                raw, wire, requests_sent, tensors = raw + size, wire + response, requests_sent + 1, tensors + len(
                    chunk["names"])
        except BaseException:
            if own_update:  # close the server's update, but report what went wrong first, not this
                with contextlib.suppress(Exception):
                    self._post_json(f"{self.base_url}/finish_weight_update", {})
            raise
        if own_update:
            self._post_json(f"{self.base_url}/finish_weight_update", {})
        self.last_sync = {"tensors": tensors, "raw_bytes": raw, "wire_bytes": wire, "requests": requests_sent,
                          "seconds": time.perf_counter() - start}
        logger.debug("weight sync over HTTP: %s", self.last_sync)

    def _post_json(self, url: str, body: dict, refusal: str = "refused a weight update") -> int:
        """POST `body` as JSON; returns the request body's size in bytes. A refusal is one line with the server's
        reason (vLLM's error text, e.g. the protocol mismatch of `HTTPWeightTransferEngine`)."""
        data = json.dumps(body, separators=(",", ":")).encode()
        response = self.session.post(url, data=data, headers={"Content-Type": "application/json"})
        if response.status_code != 200:
            reason = " ".join(response.text.split())[:300]
            raise VLLMServerError(f"the vLLM server at {self.base_url} {refusal} "
                                  f"({url.removeprefix(self.base_url)}): HTTP {response.status_code} {reason}")
        return len(data)

    def reset_prefix_cache(self):
        """TRL's prefix-cache reset after a sync, then the encoder cache's (vision embeddings of the old weights)."""
        super().reset_prefix_cache()
        response = self.session.post(f"{self.base_url}/reset_encoder_cache")
        if response.status_code != 200:
            logger.warning("vLLM server %s: /reset_encoder_cache answered HTTP %d; image embeddings computed before "
                           "this sync may be reused", self.base_url, response.status_code)


@contextmanager
def use_server_client(args):
    """While TRL builds a server-mode trainer (`GRPOTrainer.__init__` creates the client and calls
    `init_communicator`), TRL's `VLLMClient` is `TriuneVLLMClient`."""
    if not (getattr(args, "use_vllm", False) and getattr(args, "vllm_mode", None) == "server"):
        yield
        return
    import trl.generation.vllm_generation as vllm_generation

    saved = vllm_generation.VLLMClient
    vllm_generation.VLLMClient = TriuneVLLMClient
    try:
        yield
    finally:
        vllm_generation.VLLMClient = saved
