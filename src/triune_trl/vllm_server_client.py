"""The trainer's client of a vLLM server (TRL server mode): TRL's `VLLMClient` plus the `triune_http` weight transfer.

TRL 1.16 builds its `VLLMClient` inside `GRPOTrainer.__init__` and calls `init_communicator` there, which on a host
without CUDA raises NotImplementedError (NCCL only). `TriuneVLLMClient` reads the server's weight-transfer backend
from `/server_info` and:

- `nccl` (GPU servers, the default there): TRL's NCCL path, unchanged;
- `triune_http` (`triune vllm-serve` on a host without CUDA; `triune_trl.vllm_http_weights`): no communicator; each
  sync posts the weights to `/update_weights` in chunks, between `/start_weight_update` and `/finish_weight_update`.

After every sync (TRL calls `reset_prefix_cache`) it also resets the server's encoder cache: vLLM keeps vision
embeddings by image hash across requests, and no weight-transfer path of vLLM 0.31 clears them, so an image seen
before the sync would keep embeddings of the old vision tower (measured on CPU: see docs/scaling.md).

A server that stops answering (killed, crashed) ends the run with one `VLLMServerError` line naming the server and
the request, after two quick retries instead of TRL's ~60 s of backoff: a dead vLLM server does not come back in a
minute (a restart reloads the model). `use_server_client` installs the class where TRL looks it up, only while the
trainer is built.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager

import requests
from requests.adapters import HTTPAdapter
from trl.generation.vllm_client import VLLMClient
from urllib3.util.retry import Retry

from .errors import TriuneError
from .vllm_http_weights import BACKEND, DEFAULT_CHUNK_BYTES, PROTOCOL, update_chunks

logger = logging.getLogger(__name__)

CHUNK_ENV = "TRIUNE_VLLM_WEIGHT_CHUNK_MB"  # raw tensor MiB per /update_weights request (default 64)


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
        try:
            super().__init__(*args, **kwargs)
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
        # TRL retries 5 times with exponential backoff (~60 s); a refused connection means the server is gone.
        retry = Retry(total=4, connect=2, read=2, status=3, status_forcelist=[500, 502, 503], backoff_factor=0.5,
                      allowed_methods=["POST", "GET"])
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=64)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.request = self._request_or_fail(self.session.request)

    def _request_or_fail(self, request):
        def checked(method, url, *args, **kwargs):
            try:
                return request(method, url, *args, **kwargs)
            except requests.exceptions.RequestException as exc:
                path = url.removeprefix(self.base_url)
                raise VLLMServerError(
                    f"the vLLM server at {self.base_url} stopped answering ({type(exc).__name__} on {method} {path}): "
                    "its log says why; restart it (`triune vllm-serve`) and resume from the last checkpoint "
                    "(--resume_from_checkpoint)"
                ) from None

        return checked

    def init_communicator(self, device=0):
        self.weight_backend = server_backend(self.get_server_info())
        if self.weight_backend == BACKEND:
            self._post(f"{self.base_url}/init_weight_transfer_engine", json={"init_info": {"protocol": PROTOCOL}})
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
        if self.weight_backend != BACKEND:
            return super().update_named_params(metadata, named_params)
        start, raw, wire, requests_sent, tensors = time.perf_counter(), 0, 0, 0, 0
        if not self._updating_weights:
            self._start_weight_update()
        try:
            for chunk, size in update_chunks(named_params, self.chunk_bytes):
                response = self._post_json(f"{self.base_url}/update_weights", {"update_info": chunk})
                raw, wire, requests_sent, tensors = raw + size, wire + response, requests_sent + 1, tensors + len(
                    chunk["names"])
        finally:
            if not self._updating_weights:
                self._finish_weight_update()
        self.last_sync = {"tensors": tensors, "raw_bytes": raw, "wire_bytes": wire, "requests": requests_sent,
                          "seconds": time.perf_counter() - start}
        logger.debug("weight sync over HTTP: %s", self.last_sync)

    def _post_json(self, url: str, body: dict) -> int:
        """POST `body` as JSON; returns the request body's size in bytes."""
        import json

        data = json.dumps(body, separators=(",", ":")).encode()
        response = self.session.post(url, data=data, headers={"Content-Type": "application/json"})
        if response.status_code != 200:
            raise VLLMServerError(f"the vLLM server at {self.base_url} refused a weight update: HTTP "
                                  f"{response.status_code} {response.text[:300]}")
        return len(data)

    def reset_prefix_cache(self):
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
