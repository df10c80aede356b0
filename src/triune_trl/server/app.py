"""The reward server: a FastAPI app that scores completions with the same verifiers and worker pool as training.

Why a server at all: V-Triune computes rewards in a separate service so reward capacity scales apart from the
GPUs and a new task needs no trainer change. The release's server scored one sample per request, listened on
0.0.0.0 with CORS `*` and no authentication, and answered 0 for any failure. This one:

- scores lists (`POST /v1/score`) and keeps the release's single-sample `POST /judge` and `GET /` for existing
  V-Triune clients (`server/protocol.py` has the wire format);
- scores in worker processes with a per-completion time limit (`rewards/pool.py`), concurrent requests merged
  into one batch by a single scoring thread (`server/batching.py`), so an adversarial completion costs one
  time limit and never a hung server;
- is closed by default: it listens on 127.0.0.1 unless told otherwise, checks an optional bearer token in
  constant time (401), bounds request bodies and list lengths (413), validates every item (422 naming the
  field, without echoing the offending input back) and sends no CORS headers unless origins are configured.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from triune_trl import __version__
from triune_trl.rewards.iou_schedule import IouThreshold
from triune_trl.rewards.pool import Job, JobResult, ScoringPool, score_jobs_in_process
from triune_trl.rewards.registry import available_verifiers
from triune_trl.server.batching import BatchScorer
from triune_trl.server.protocol import (
    JUDGE_ROOT_MESSAGE,
    JudgePayload,
    ScoreItem,
    item_job,
    judge_job,
    judge_response,
    loads_strict,
    score_response,
)

__all__ = ["DEFAULT_BATCH_BUDGET", "DEFAULT_MAX_BATCH_ITEMS", "DEFAULT_MAX_BODY_BYTES", "ServerSettings", "create_app"]

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_BATCH_ITEMS = 8192
# Seconds one merged batch may take in all: below the client's default request timeout (60 s), so a batch of
# completions that all hang is answered (unverifiable, status `budget`) before its clients give up and retry the
# same doomed work on another server.
DEFAULT_BATCH_BUDGET = 45.0
# Past this many bytes of an oversized body the server stops reading and closes the connection after its 413.
DRAIN_LIMIT_BYTES = 256 * 1024 * 1024

_ITEMS = TypeAdapter(list[ScoreItem])
_JUDGE = TypeAdapter(JudgePayload)


@dataclass(frozen=True)
class ServerSettings:
    """What `triune serve-rewards` configures; see its `--help` for each option."""

    workers: int = 2
    time_limit: float = 10.0
    iou_threshold: IouThreshold = "dynamic"
    token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS
    cors_origins: tuple[str, ...] = ()
    max_scoring_batch: int = 2048
    batch_budget: float | None = DEFAULT_BATCH_BUDGET


def _errors(errors: Sequence[dict[str, Any]], prefix: tuple = ("body",)) -> list[dict[str, Any]]:
    """Validation errors without the offending input (it may be megabytes of model output) and with `body` first."""
    cleaned = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        cleaned.append({"type": error.get("type"), "loc": list(loc if loc[:1] == prefix else prefix + loc),
                        "msg": error.get("msg")})  # fmt: skip
    return cleaned


class BodySizeLimit:
    """Answers 413 for a request body over `max_bytes` before any route reads it.

    The whole body is read here (up to the limit) and replayed to the app, so chunked uploads without a
    Content-Length are bounded too. An oversized body is drained up to DRAIN_LIMIT_BYTES before the 413, so a
    client still uploading sees the answer instead of a reset connection.
    """

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, too_large, done = 0, False, False
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            too_large = True
        while not done:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            done = not message.get("more_body", False)
            if size > self.max_bytes:
                too_large = True
                if size > DRAIN_LIMIT_BYTES:
                    break
            if not too_large:
                chunks.append(body)
        if too_large:
            app = scope.get("app")
            if app is not None and hasattr(app.state, "counters"):
                app.state.counters["too_large"] += 1
            detail = f"request body over the server's limit of {self.max_bytes} bytes (--max-body-mb): split the batch"
            response = JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _token_check(token: str | None) -> Any:
    """A FastAPI dependency that lets a request through only with `Authorization: Bearer <token>`."""
    expected = None if token is None else hashlib.sha256(token.encode()).digest()

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # both sides hashed to the same length first, so the comparison's time says nothing about the token
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            hashlib.sha256(given.strip().encode()).digest(), expected
        ):
            request.app.state.counters["unauthorized"] += 1
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token: send `Authorization: Bearer <token>` with the server's token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a lone surrogate (valid JSON, e.g. in model output) cannot be
    encoded as UTF-8 and would otherwise fail the answer; the escapes read back as the same string."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _json_body(raw: bytes) -> Any:
    try:
        return loads_strict(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        error = {"type": "json_invalid", "loc": ("body",), "msg": f"not valid JSON: {exc}"}
        raise RequestValidationError([error]) from None


def _parse_items(raw: bytes, max_items: int) -> tuple[list[Any], list[ScoreItem]]:
    """The request's raw objects (echoed back) and their validated form; raises the 413/422 the caller sends."""
    data = _json_body(raw)
    if not isinstance(data, list):
        message = f"expected a JSON list of score items, got a JSON {type(data).__name__}"
        raise RequestValidationError([{"type": "list_type", "loc": ("body",), "msg": message}])
    if len(data) > max_items:
        raise HTTPException(
            status_code=413,
            detail=f"{len(data)} items in one request; the server's limit is {max_items} (--max-batch-items): "
            "split the batch",
        )
    try:
        return data, _ITEMS.validate_python(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None


def create_app(
    settings: ServerSettings | None = None,
    *,
    on_ready: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> FastAPI:
    """The app; its worker processes start with the app's lifespan and stop with it.

    `on_ready` runs once the workers are up (the CLI writes its discovery file then, so a trainer never finds a
    server that cannot score yet); `on_stop` runs at shutdown, also on SIGTERM/SIGINT, after which uvicorn
    re-raises the signal and the process ends without running anything else.
    """
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool = ScoringPool(settings.workers, settings.time_limit) if settings.workers > 0 else None
        if pool is not None:
            await run_in_threadpool(pool.start)

        def score(jobs: list[Job], budget: float | None) -> list[JobResult]:
            return score_jobs_in_process(jobs) if pool is None else pool.score(jobs, budget=budget)

        app.state.pool = pool
        app.state.scorer = BatchScorer(score, max_batch=settings.max_scoring_batch, budget=settings.batch_budget)
        try:
            if on_ready is not None:
                on_ready()
            yield
        finally:
            if on_stop is not None:
                on_stop()
            app.state.scorer.close()
            if pool is not None:
                await run_in_threadpool(pool.close)

    app = FastAPI(title="triune-trl reward server", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.counters = Counter()
    app.state.started = time.time()
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    authorized = Depends(_token_check(settings.token))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.app.state.counters["invalid"] += 1
        return JSONResponse({"detail": _errors(exc.errors())}, status_code=422)

    async def scored(request: Request, jobs: list[Job]) -> list[JobResult]:
        return await asyncio.wrap_future(request.app.state.scorer.submit(jobs))

    @app.get("/")
    async def root() -> dict[str, str]:
        """The release's liveness answer, which its clients check before sending work."""
        return {"message": JUDGE_ROOT_MESSAGE}

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        """Version, verifiers and load: what a client or an operator needs to route work and spot trouble."""
        state = request.app.state
        scorer: BatchScorer = state.scorer
        pool: ScoringPool | None = state.pool
        queued_requests, queued_completions = scorer.queued
        return {
            "status": "ok",
            "version": __version__,
            "verifiers": available_verifiers(),
            "workers": settings.workers,
            "time_limit": settings.time_limit,
            "batch_budget": settings.batch_budget,
            "iou_threshold": settings.iou_threshold,
            "auth": settings.token is not None,
            "uptime_seconds": round(time.time() - state.started, 3),
            "load": {
                "queued_requests": queued_requests,
                "queued_completions": queued_completions,
                "scoring_completions": scorer.in_progress,
                "busy_seconds": round(scorer.stats.busy_seconds, 3),
            },
            "requests": {"score": state.counters["score"], "judge": state.counters["judge"]},
            "rejected": {key: state.counters[key] for key in ("unauthorized", "too_large", "invalid")},
            "scored": scorer.stats.completions,
            "distinct_scored": scorer.stats.distinct_completions,
            "batches": scorer.stats.batches,
            "statuses": dict(scorer.stats.statuses),
            "worker_restarts": 0 if pool is None else max(0, pool.stats.workers_started - settings.workers),
        }

    @app.post("/v1/score", dependencies=[authorized])
    async def score(request: Request, echo: bool = True) -> JSONResponse:
        """Score a list of `triune reward score` objects; the answer keeps their order."""
        raw = await request.body()
        try:
            data, items = await run_in_threadpool(_parse_items, raw, settings.max_batch_items)
        except HTTPException:
            request.app.state.counters["too_large"] += 1  # the only HTTPException _parse_items raises
            raise
        request.app.state.counters["score"] += 1
        results = await scored(request, [item_job(item, settings.iou_threshold) for item in items])
        pairs = zip(data, results, strict=True)
        answer = [score_response(raw_item if echo else None, result.scores) for raw_item, result in pairs]
        return AsciiJSONResponse(answer)

    @app.post("/judge", dependencies=[authorized])
    async def judge(request: Request) -> AsciiJSONResponse:
        """The release's single-sample endpoint, with its payload and answer shapes.

        The body is read as JSON whatever its Content-Type says, as the release's clients expect.
        """
        data = _json_body(await request.body())
        try:
            payload = _JUDGE.validate_python(data)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None
        request.app.state.counters["judge"] += 1
        [result] = await scored(request, [judge_job(payload, settings.iou_threshold)])
        return AsciiJSONResponse(judge_response(result.scores, payload.reward_verifier))

    return app
