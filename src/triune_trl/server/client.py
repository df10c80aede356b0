"""The remote reward router: the TRL reward function that scores a batch on reward servers, with failover.

Why remote: V-Triune scores rewards in separate servers so reward capacity scales apart from the GPUs. The
release's client sent one sample per request to a random server, 3 attempts, and scored 0 when they failed, so a
dead server silently taught the policy that its answers were wrong. This client:

- is the same router as `RewardRouter` (same jobs, deduplication, progress, logging, `last_scores`), only its jobs
  are scored by `POST /v1/score` instead of local worker processes, with the router's own IoU threshold and
  progress on every item, so remote scores equal in-process ones;
- is an `async` reward function: TRL runs it on its event loop thread, and a batch goes out as requests of
  `batch_size` completions spread over the servers (least in flight first), at most `max_in_flight` at a time,
  each bounded by `timeout` seconds;
- on a failure (connection error, timeout, HTTP 5xx, an answer that is not one score per item) marks that server
  down, counts a failover and retries the request, after a backoff, on another server, up to `retries` attempts;
  a down server's `/health` is probed at most every `health_interval` seconds and it is used again once it
  answers;
- never turns a failure into a reward: a completion whose every attempt failed is unverifiable (None, the reason
  names the servers and their errors) and counted (`rewards/remote_failed_count`); when every server has been
  down for `grace_period` seconds the run stops with `RewardServerUnavailable`; a 401 stops it at once (the token
  option is named); a 422 is this client's bug, so those completions are None with the server's message and the
  server stays in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

import httpx

from triune_trl import __version__
from triune_trl.errors import TriuneError
from triune_trl.rewards.iou_schedule import IouThreshold
from triune_trl.rewards.pool import Job, JobResult
from triune_trl.rewards.registry import image_size_pair
from triune_trl.rewards.router import RewardRouter
from triune_trl.rewards.scoring import resolve, unverifiable
from triune_trl.server.discovery import parse_server_urls
from triune_trl.server.protocol import SCORE_FIELDS

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_GRACE_PERIOD",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "RemoteRewardRouter",
    "RemoteStats",
    "RewardServerAuthError",
    "RewardServerError",
    "RewardServerUnavailable",
    "ServerState",
    "read_client_token",
]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_IN_FLIGHT = 8
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 3
DEFAULT_GRACE_PERIOD = 300.0
DEFAULT_HEALTH_INTERVAL = 5.0
DEFAULT_BACKOFF = 0.2
MAX_BACKOFF = 5.0
PROBE_TIMEOUT = 5.0
SCORE_PATH = "/v1/score?echo=false"
TOKEN_OPTION = "--reward_server_token_file"
# HTTP statuses that say "this server, now" rather than "this request": the request is retried elsewhere.
TRANSIENT_STATUSES = frozenset({408, 425, 429})
STATUS_FAILED = "remote_failed"
STATUS_REJECTED = "remote_rejected"


class RewardServerError(TriuneError, RuntimeError):
    """The reward servers cannot be used as configured; raised out of the reward function, so the run stops."""


class RewardServerUnavailable(RewardServerError):
    """Every reward server has been down for longer than the grace period."""


class RewardServerAuthError(RewardServerError):
    """A server answered 401: the client sends no token, or not the server's."""


def read_client_token(path: str | Path) -> str:
    """The bearer token in `path` (surrounding whitespace stripped), or an error naming the option and the file."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise RewardServerError(f"{TOKEN_OPTION} {path}: cannot read it ({exc.strerror})") from None
    if not token or any(ch.isspace() for ch in token):
        raise RewardServerError(
            f"{TOKEN_OPTION} {path}: expected one word, the server's token (the content of the file given to "
            "`triune serve-rewards --token-file`), on the first line"
        )
    return token


@dataclass
class ServerState:
    """What the client knows about one server; read by tests and the load benchmark."""

    url: str
    up: bool = True
    in_flight: int = 0
    requests: int = 0  # score requests sent to it, every attempt counted
    failures: int = 0
    last_error: str | None = None
    down_since: float | None = None  # monotonic
    next_probe: float = 0.0  # monotonic time before which /health is not probed again
    probing: bool = False
    last_pick: int = 0
    version: str | None = None


@dataclass
class RemoteStats:
    """Counters over the router's life (each call's share is logged as metrics)."""

    requests: int = 0  # score requests sent, every attempt counted
    completions: int = 0  # completions sent and answered with scores
    failovers: int = 0  # failed requests retried on another server
    failed: int = 0  # completions left unverifiable because every attempt failed
    rejected: int = 0  # completions the server refused (422, or 413 for a single completion)
    peak_in_flight: int = 0
    seconds: float = 0.0
    server_requests: Counter = field(default_factory=Counter)  # requests sent, by server URL


@dataclass
class _Tally:
    """One call's share of the counters."""

    failovers: int = 0
    failed: int = 0
    rejected: int = 0
    seconds: float = 0.0


@dataclass
class _Answer:
    """What one score request came to: scores, a failure of the server, or the server's objection to the items."""

    scores: list[dict[str, Any]] | None = None
    error: str | None = None  # the server failed: mark it down, retry elsewhere
    too_large: bool = False  # 413: split the request
    rejected: dict[int, str] | None = None  # 422: position in the request -> the server's message


@dataclass
class _LoopState:
    """The HTTP client and the in-flight bound of one event loop (httpx and asyncio objects belong to their loop)."""

    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    tasks: set = field(default_factory=set)


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays that may sit in a dataset's `reward_model` column."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _encode(item: Mapping[str, Any]) -> bytes:
    """Strict JSON (NaN and infinities are errors here, as they would be a 422 at the server).

    UTF-8 where possible (smaller); a lone surrogate in model output cannot be UTF-8, so then ASCII escapes.
    """
    try:
        return json.dumps(item, default=_plain, ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError:
        return json.dumps(item, default=_plain, ensure_ascii=True, allow_nan=False).encode()


def _wire_image_size(size: Any) -> list[float] | None:
    """[width, height] when both are positive finite numbers (the server's rule); None otherwise."""
    if image_size_pair(size) is None:
        return None
    return [v if isinstance(v, int) else float(v) for v in size]


def _reward_value(value: Any) -> bool:
    return value is None or (isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value))


def _is_score(scores: Any) -> bool:
    """An answer the router can use: the score fields, rewards None or finite, and no final reward without an
    accuracy (a broken or foreign server's strings, NaN or missing fields must not become a reward)."""
    return (
        isinstance(scores, dict)
        and all(field in scores for field in SCORE_FIELDS)
        and all(_reward_value(scores[field]) for field in ("final_reward", "format_reward", "accuracy_reward"))
        and (scores["unverifiable_reason"] is None or isinstance(scores["unverifiable_reason"], str))
        and (scores["final_reward"] is None) == (scores["accuracy_reward"] is None)
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _rejections(response: httpx.Response, count: int) -> dict[int, str]:
    """422 detail -> {position in the request: "field: message"}; every position when the detail names no item."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    found: dict[int, list[str]] = {}
    general: list[str] = []
    for error in detail if isinstance(detail, list) else []:
        if not isinstance(error, Mapping):
            continue
        loc = list(error.get("loc") or [])
        message = str(error.get("msg", "invalid"))
        if len(loc) >= 2 and loc[0] == "body" and isinstance(loc[1], int) and 0 <= loc[1] < count:
            where = ".".join(str(part) for part in loc[2:]) or "item"
            found.setdefault(loc[1], []).append(f"{where}: {message}")
        else:
            general.append(message)
    if not found:
        text = "; ".join(general) or (detail if isinstance(detail, str) else response.text[:300])
        return dict.fromkeys(range(count), text)
    return {position: "; ".join(messages) for position, messages in found.items()}


class RemoteRewardRouter(RewardRouter):
    """`RewardRouter` whose jobs are scored by reward servers (`triune serve-rewards`); an `async` TRL reward function.

    `urls` are server base URLs (a list, or `"http://a:8192|http://b:8192"`). A request carries `batch_size`
    completions; at most `max_in_flight` requests are in flight per event loop; each has `timeout` seconds and up
    to `retries` attempts on different servers. `token` (or `token_file`) is sent as `Authorization: Bearer`. See
    the module docstring for failover, health probing (`health_interval`) and `grace_period`.

    `stats` keeps counters over the router's life and `servers` each server's state. The HTTP client belongs to
    the event loop that first uses it (TRL's reward loop thread); `close()` or `await aclose()` closes it.
    `score_items` is a blocking convenience for scripts: it takes `triune reward score` input objects.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        iou_threshold: IouThreshold | str = "dynamic",
        *,
        token: str | None = None,
        token_file: str | Path | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        backoff: float = DEFAULT_BACKOFF,
    ):
        super().__init__(iou_threshold, workers=0)
        for name, value, minimum in (("batch_size", batch_size, 1), ("max_in_flight", max_in_flight, 1),
                                     ("retries", retries, 1)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        for name, value in (("timeout", timeout), ("health_interval", health_interval)):
            if isinstance(value, bool) or not isinstance(value, Real) or not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        for name, value in (("grace_period", grace_period), ("backoff", backoff)):
            if isinstance(value, bool) or not isinstance(value, Real) or not value >= 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if token is not None and token_file is not None:
            raise ValueError("give the reward server token or a token file, not both")
        self.token_source = None if token_file is None else str(token_file)
        self.token = read_client_token(token_file) if token_file is not None else token
        self.servers = [ServerState(url) for url in parse_server_urls(urls)]
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.timeout = float(timeout)
        self.retries = retries
        self.grace_period = float(grace_period)
        self.health_interval = float(health_interval)
        self.backoff = float(backoff)
        self.stats = RemoteStats()
        self.last_tally = _Tally()
        self._lock = threading.Lock()
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._picks = 0
        self._all_down_since: float | None = None

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def __getstate__(self) -> dict[str, Any]:
        """Copies carry the settings and counters, not the HTTP clients or the lock."""
        state = super().__getstate__()
        state["_loops"] = {}
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------- TRL entry point

    async def __call__(  # type: ignore[override]
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] | None = None,
        reward_model: Sequence[Any] | None = None,
        image_sizes: Sequence[Any] | None = None,
        data_source: Sequence[str] | None = None,
        trainer_state: Any = None,
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        started = time.perf_counter()
        jobs, slots = self.build_jobs(completions, reward_model, image_sizes, trainer_state)
        results = await self.ascore_jobs(jobs)
        return self.finish_call(results, slots, log_metric, started)

    def _report(
        self, scores: list[dict[str, Any]], log_metric: Callable[[str, float], None] | None, seconds: float
    ) -> None:
        super()._report(scores, log_metric, seconds)
        if log_metric is None or not scores:
            return
        log_metric("rewards/remote_failover_count", float(self.last_tally.failovers))
        log_metric("rewards/remote_failed_count", float(self.last_tally.failed))
        log_metric("rewards/remote_seconds", self.last_tally.seconds)

    # ---------------------------------------------------------------------------------------- scoring

    def score_jobs(self, jobs: Sequence[Job]) -> list[JobResult]:
        """Blocking form of `ascore_jobs` (outside a running event loop)."""
        return self._run_blocking(self.ascore_jobs(jobs), "ascore_jobs")

    def score_items(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Score `triune reward score` input objects on the servers; one score dict per item, in order.

        Items without their own `iou_threshold` get the router's. Blocking: for scripts and benchmarks outside an
        event loop (inside one, `await ascore_items(items)`).
        """
        return self._run_blocking(self.ascore_items(items), "ascore_items")

    def _run_blocking(self, coroutine: Coroutine, name: str) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coroutine.close()
            raise RuntimeError(f"an event loop is running in this thread: use `await router.{name}(...)` instead")

        async def run_and_close() -> Any:
            try:
                return await coroutine
            finally:
                await self.aclose()  # this loop ends with asyncio.run: so must its client

        return asyncio.run(run_and_close())

    async def ascore_items(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        bodies = []
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise TypeError(f"item {index}: expected a score item object, got {type(item).__name__}")
            wire = dict(item)
            wire.setdefault("iou_threshold", self.iou_threshold)
            try:
                bodies.append(_encode(wire))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"item {index}: cannot be sent as JSON: {exc}") from None
        outcomes, self.last_tally = await self._score_bodies(bodies)
        return [scores for scores, _ in outcomes]

    async def ascore_jobs(self, jobs: Sequence[Job]) -> list[JobResult]:
        """Score jobs on the servers; one result per job, in order (status `ok`, `remote_failed`, `remote_rejected`)."""
        results: list[JobResult | None] = [None] * len(jobs)
        bodies: list[bytes] = []
        positions: list[int] = []
        for index, job in enumerate(jobs):
            wire = self._wire_item(job)
            if isinstance(wire, bytes):
                bodies.append(wire)
                positions.append(index)
            else:
                results[index] = JobResult(wire, "ok")
        outcomes, self.last_tally = await self._score_bodies(bodies)
        for index, (scores, status) in zip(positions, outcomes, strict=True):
            results[index] = JobResult(scores, status)
        return [result for result in results if result is not None]

    def _wire_item(self, job: Job) -> bytes | dict[str, Any]:
        """The job as a /v1/score item, or its score dict when it is not worth sending (it cannot be scored)."""
        spec = job.reward_model
        if isinstance(spec, (str, bytes)):
            with contextlib.suppress(ValueError):
                spec = json.loads(spec)
        if not isinstance(spec, Mapping):
            # the spec does not parse: resolving it says why, without running a verifier on the completion
            return unverifiable(resolve(job.reward_model).error or "the reward spec could not be resolved")
        item: dict[str, Any] = {"completion": job.text, "reward_model": dict(spec)}
        size = _wire_image_size(job.ctx.image_size)
        if size is not None:
            item["image_size"] = size
        step, total = job.ctx.step, job.ctx.total_steps
        if isinstance(step, int) and isinstance(total, int) and step >= 0 and total > 0:
            item["step"], item["total_steps"] = step, total
        item["iou_threshold"] = job.ctx.iou_threshold
        try:
            return _encode(item)
        except (TypeError, ValueError) as exc:
            return unverifiable(f"cannot send this sample to the reward server: {exc}")

    async def _score_bodies(self, bodies: list[bytes]) -> tuple[list[tuple[dict[str, Any], str]], _Tally]:
        started = time.perf_counter()
        tally = _Tally()
        outcomes: list[tuple[dict[str, Any], str] | None] = [None] * len(bodies)
        if bodies:
            state = self._loop_state()
            parts = [list(range(start, min(start + self.batch_size, len(bodies))))
                     for start in range(0, len(bodies), self.batch_size)]  # fmt: skip
            tasks = [asyncio.ensure_future(self._score_part(state, bodies, part, outcomes, tally)) for part in parts]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        tally.seconds = time.perf_counter() - started
        with self._lock:
            self.stats.seconds += tally.seconds
            self.stats.failovers += tally.failovers
            self.stats.failed += tally.failed
            self.stats.rejected += tally.rejected
        return [outcome for outcome in outcomes if outcome is not None], tally

    async def _score_part(
        self,
        state: _LoopState,
        bodies: list[bytes],
        part: list[int],
        outcomes: list[tuple[dict[str, Any], str] | None],
        tally: _Tally,
    ) -> None:
        """Score one request's worth of items, failing over between servers; fills `outcomes` at `part`."""
        errors: list[str] = []
        tried: list[str] = []
        attempts = 0
        while part:
            async with state.semaphore:
                server = await self._pick(state, tried)
                try:
                    answer = await self._post(state, server, [bodies[index] for index in part])
                finally:
                    with self._lock:
                        server.in_flight -= 1
            if answer.scores is not None:
                for index, scores in zip(part, answer.scores, strict=True):
                    outcomes[index] = (scores, "ok")
                with self._lock:
                    self.stats.completions += len(part)
                return
            if answer.too_large:
                if len(part) == 1:
                    reason = f"{server.url} refused this sample as too large (HTTP 413): it is over the server's limit"
                    outcomes[part[0]] = (unverifiable(reason), STATUS_REJECTED)
                    tally.rejected += 1
                    return
                logger.warning(
                    "reward server %s: a request of %d completions is over its size limit; splitting it (lower "
                    "--reward_server_batch_size or raise the server's --max-body-mb / --max-batch-items)",
                    server.url, len(part),
                )  # fmt: skip
                half = len(part) // 2
                await asyncio.gather(
                    self._score_part(state, bodies, part[:half], outcomes, tally),
                    self._score_part(state, bodies, part[half:], outcomes, tally),
                )
                return
            if answer.rejected is not None:
                logger.warning(
                    "reward server %s rejected %d of %d completions (HTTP 422, a client bug): %s",
                    server.url, len(answer.rejected), len(part), next(iter(answer.rejected.values())),
                )  # fmt: skip
                for position, message in answer.rejected.items():
                    reason = f"the reward server rejected this sample (HTTP 422): {message}"
                    outcomes[part[position]] = (unverifiable(reason), STATUS_REJECTED)
                tally.rejected += len(answer.rejected)
                part = [index for position, index in enumerate(part) if position not in answer.rejected]
                continue  # the rest of the request is fine: send it again, no attempt used
            attempts += 1
            errors.append(f"{server.url}: {answer.error}")
            tried.append(server.url)
            self._mark_down(server, answer.error or "failed")
            if attempts >= self.retries:
                reason = f"every attempt to score this sample on a reward server failed ({'; '.join(errors)})"
                for index in part:
                    outcomes[index] = (unverifiable(reason), STATUS_FAILED)
                tally.failed += len(part)
                logger.warning("reward scoring: %d completions left unverifiable: %s", len(part), reason)
                return
            tally.failovers += 1
            logger.warning(
                "reward server %s failed (%s): retrying %d completions on another server (attempt %d of %d)",
                server.url, answer.error, len(part), attempts + 1, self.retries,
            )  # fmt: skip
            await asyncio.sleep(min(self.backoff * 2 ** (attempts - 1), MAX_BACKOFF))

    # ---------------------------------------------------------------------------------------- servers

    async def _pick(self, state: _LoopState, avoid: Sequence[str]) -> ServerState:
        """The up server with the fewest requests in flight (least recently used first), preferring those not in
        `avoid`; while none is up, wait for a probe to find one, up to the grace period."""
        while True:
            with self._lock:
                now = time.monotonic()
                due = [s for s in self.servers if not s.up and not s.probing and now >= s.next_probe]
                for server in due:
                    server.probing = True
                up = [s for s in self.servers if s.up]
                chosen = None
                if up:
                    chosen = min([s for s in up if s.url not in avoid] or up, key=lambda s: (s.in_flight, s.last_pick))
                    chosen.in_flight += 1
                    self._picks += 1
                    chosen.last_pick = self._picks
                    in_flight = sum(s.in_flight for s in self.servers)
                    self.stats.peak_in_flight = max(self.stats.peak_in_flight, in_flight)
                down_for = now - (self._all_down_since if self._all_down_since is not None else now)
            for server in due:
                task = asyncio.ensure_future(self._probe(state, server))
                state.tasks.add(task)
                task.add_done_callback(state.tasks.discard)
            if chosen is not None:
                return chosen
            if down_for > self.grace_period:
                raise RewardServerUnavailable(self._unavailable_message(down_for))
            await asyncio.sleep(min(0.05, self.health_interval))

    def _unavailable_message(self, down_for: float) -> str:
        errors = "; ".join(f"{s.url}: {s.last_error}" for s in self.servers)
        return (
            f"every reward server has been down for {down_for:.1f} s, longer than the grace period of "
            f"{self.grace_period:g} s (--reward_server_grace_period); stopping. Last errors: {errors}. Start or "
            "restart the servers (`triune serve-rewards`), check --reward_server_urls / --reward_server_job_ids, or "
            "allow a longer outage with --reward_server_grace_period."
        )

    def _mark_down(self, server: ServerState, error: str) -> None:
        with self._lock:
            now = time.monotonic()
            server.failures += 1
            server.last_error = error
            if not server.up:
                return
            server.up = False
            server.down_since = now
            server.next_probe = now + self.health_interval
            if not any(s.up for s in self.servers):
                self._all_down_since = now
        logger.warning("reward server %s marked down (%s); its /health is probed every %g s", server.url, error,
                       self.health_interval)  # fmt: skip

    async def _probe(self, state: _LoopState, server: ServerState) -> None:
        """Ask a down server's /health; mark it up when it answers `ok`, else probe again after `health_interval`."""
        version, error = None, "/health gave no answer"
        try:
            response = await asyncio.wait_for(
                state.client.get(f"{server.url}/health", timeout=PROBE_TIMEOUT), timeout=PROBE_TIMEOUT
            )
            body = response.json() if response.status_code == 200 else None
            if isinstance(body, Mapping) and body.get("status") == "ok":
                version, error = str(body.get("version")), None
            else:
                error = f"/health answered HTTP {response.status_code}"
        except asyncio.TimeoutError:
            error = "/health gave no answer in time"
        except (httpx.HTTPError, OSError, ValueError) as exc:
            error = f"/health: {_describe(exc)}"
        finally:
            with self._lock:
                now = time.monotonic()
                server.probing = False
                if error is not None:
                    server.last_error = error
                    server.next_probe = now + self.health_interval
                else:
                    was_down_for = now - (server.down_since if server.down_since is not None else now)
                    server.up, server.down_since, server.version = True, None, version
                    self._all_down_since = None
        if error is not None:
            return
        logger.warning("reward server %s answers /health again after %.1f s down: using it", server.url, was_down_for)
        if version != __version__:
            logger.warning("reward server %s runs triune-trl %s, this trainer %s: scores may differ", server.url,
                           version, __version__)  # fmt: skip

    async def _post(self, state: _LoopState, server: ServerState, items: list[bytes]) -> _Answer:
        with self._lock:
            server.requests += 1
            self.stats.requests += 1
            self.stats.server_requests[server.url] += 1
        body = b"[" + b",".join(items) + b"]"
        try:
            response = await asyncio.wait_for(
                state.client.post(f"{server.url}{SCORE_PATH}", content=body), timeout=self.timeout
            )
        except asyncio.TimeoutError:
            return _Answer(error=f"no answer within {self.timeout:g} s (--reward_server_timeout)")
        except (httpx.HTTPError, OSError) as exc:
            return _Answer(error=_describe(exc))
        status = response.status_code
        if status == 200:
            try:
                scores = response.json()
            except ValueError:
                scores = None
            if not isinstance(scores, list) or len(scores) != len(items) or not all(map(_is_score, scores)):
                return _Answer(error=f"the answer is not one score object per item: {response.text[:200]!r}")
            return _Answer(scores=scores)
        if status == 401:
            raise RewardServerAuthError(self._auth_message(server))
        if status == 413:
            return _Answer(too_large=True)
        if status == 422:
            return _Answer(rejected=_rejections(response, len(items)))
        if status >= 500 or status in TRANSIENT_STATUSES:
            return _Answer(error=f"HTTP {status}: {response.text[:200]}")
        raise RewardServerError(
            f"reward server {server.url} answered HTTP {status} to POST /v1/score: {response.text[:200]}. Is it a "
            "triune-trl reward server (`triune serve-rewards`)? The V-Triune release's server has only POST /judge."
        )

    def _auth_message(self, server: ServerState) -> str:
        if self.token is None:
            return (
                f"reward server {server.url} requires a bearer token (HTTP 401): set {TOKEN_OPTION} to a file holding "
                "the token the server was started with (`triune serve-rewards --token-file`)"
            )
        source = f"in {self.token_source}" if self.token_source else "given to the router"
        return (
            f"reward server {server.url} refused the bearer token {source} (HTTP 401): {TOKEN_OPTION} must hold the "
            "same token as the server's --token-file"
        )

    # ---------------------------------------------------------------------------------------- event loops

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._loops.get(loop)
            if state is None:
                for old in [old for old in self._loops if old.is_closed()]:
                    del self._loops[old]  # its loop is gone, and with it the client's connections
                headers = {"Content-Type": "application/json", "User-Agent": f"triune-trl/{__version__}"}
                if self.token is not None:
                    headers["Authorization"] = f"Bearer {self.token}"
                client = httpx.AsyncClient(
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout),
                    limits=httpx.Limits(max_connections=self.max_in_flight + len(self.servers)),
                    trust_env=False,  # reward servers are on the cluster's own network: no proxy in between
                )
                state = self._loops[loop] = _LoopState(loop, client, asyncio.Semaphore(self.max_in_flight))
        return state

    async def aclose(self) -> None:
        """Close the HTTP client of the running event loop (a later call opens a new one)."""
        with self._lock:
            state = self._loops.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await self._close_state(state)

    @staticmethod
    async def _close_state(state: _LoopState) -> None:
        for task in list(state.tasks):
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)
        await state.client.aclose()

    def close(self) -> None:
        """Close every HTTP client this router opened, from any thread (a later call opens new ones)."""
        with self._lock:
            states, self._loops = list(self._loops.values()), {}
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for state in states:
            loop = state.loop
            if loop.is_closed():
                continue
            if loop is running:
                task = loop.create_task(self._close_state(state))
                task.add_done_callback(lambda done: done.cancelled() or done.exception())
            elif loop.is_running():
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(self._close_state(state), loop).result(timeout=10)
            else:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(self._close_state(state))
        super().close()
