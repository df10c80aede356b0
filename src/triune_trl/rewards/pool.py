"""Worker processes that score completions under a per-sample time limit, and replace a worker that hangs or dies.

Why processes: a model's output is untrusted input. One adversarial completion can make sympy (inside math-verify)
or a regular expression run for minutes, and the only timeout math-verify has, `signal.alarm`, works only in the
main thread of the main interpreter, not in a trainer's reward thread or a server's request thread. A process can
always be stopped from outside. So every completion is scored in a worker process, and the parent:

- sends a worker a *chunk*: one reward spec and the completions scored against it (a prompt group), so the gold is
  parsed once per group (and cached by the worker for later chunks of the same spec);
- reads, from a few shared-memory numbers the worker updates before each step (no message, no system call),
  which completion of the chunk is in progress and since when; the chunk's results come back in one message;
- kills the worker (SIGKILL, which nothing inside Python can delay) when that completion has run longer than the
  time limit, reports it as unverifiable (`status="timeout"`, never a silent 0), starts a replacement and hands the
  rest of the chunk (including the completions the killed worker had finished but not yet reported) to the next
  free worker;
- does the same when a worker dies on its own (a segfault in a C extension, the OOM killer: `status="crash"`).

Workers are started with the `forkserver` method where the platform has it (a clean, single-threaded server
process preloads the reward modules once, so starting or replacing a worker costs milliseconds and never forks a
trainer's CUDA or thread state), else `spawn`. Each worker imports the modules of every registered verifier, so
custom verifiers registered at import time of an importable module work in workers too; the program's own main
module (a training script importing torch and TRL) is not imported unless a verifier is defined there. Nothing is
ever evaluated as code in the parent (which, in training, is the trainer).
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import types
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler as _ForkingPickler
from typing import Any

from triune_trl.rewards.registry import ScoringContext, available_verifiers, get_verifier
from triune_trl.rewards.scoring import Resolved, resolve, score_text, unverifiable

__all__ = ["Job", "JobResult", "PoolStats", "ScoringPool", "score_jobs_in_process"]

PRELOAD = ("triune_trl.rewards", "math_verify", "latex2sympy2_extended", "sacrebleu", "rouge_score.rouge_scorer")
START_TIMEOUT_S = 120.0
MAIN_GUARD_HINT = (
    "A script that defines its own verifier has its main module imported by every worker: it must train or score "
    "under `if __name__ == \"__main__\":`."
)
GOLD_CACHE_SIZE = 512
DEFAULT_CHUNK = 16
# A second chunk is queued in a busy worker's pipe (so it never waits for the parent between chunks, which matters
# on a loaded machine) only when it is this small: a write that fits the pipe buffer cannot block the parent.
PREFETCH_BYTES = 32 * 1024


@dataclass(frozen=True)
class Job:
    """One completion text to score against a `reward_model`; `key` groups jobs that share the spec (and its gold)."""

    text: str
    reward_model: Any
    ctx: ScoringContext
    key: str | None = None


@dataclass
class JobResult:
    """The score dict of a job, how it ended (`ok`, `timeout`, `crash`, `budget`) and the seconds its scoring took."""

    scores: dict[str, Any]
    status: str = "ok"
    seconds: float = 0.0


@dataclass
class PoolStats:
    """Counters over the pool's life: completions scored, gold parses, timeouts, crashes, completions failed for
    the batch budget, workers started."""

    scored: int = 0
    gold_parses: int = 0
    timeouts: int = 0
    crashes: int = 0
    over_budget: int = 0
    workers_started: int = 0


# ------------------------------------------------------------------------------------------------ worker side


def _load_modules(modules: Sequence[str]) -> None:
    importlib.import_module("triune_trl.rewards")
    for module in modules:
        importlib.import_module(module)


class _GoldCache:
    """Resolved specs by key, least recently used dropped first."""

    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict[str, Resolved] = OrderedDict()

    def get(self, key: str, reward_model: Any) -> tuple[Resolved, bool]:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key], False
        resolved = resolve(reward_model)
        self.items[key] = resolved
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return resolved, True


# Shared progress record of a worker: the chunk it is on, the step within it (-1: parsing the gold; i >= 0: the
# chunk's i-th completion; len(chunk): sending the results) and when that step started (time.monotonic, which is
# system-wide). The worker writes the start time first and the chunk id last, so a half-updated record can only
# look *fresh*, never stale.
_CHUNK, _STEP, _STARTED = 0, 1, 2


def _mark(progress: Any, chunk_id: int, step: int) -> None:
    progress[_STARTED] = time.monotonic()
    progress[_STEP] = step
    progress[_CHUNK] = chunk_id


def _worker_main(conn: Connection, progress: Any, modules: Sequence[str]) -> None:
    """Score chunks until told to stop (None) or the parent goes away (EOF)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    try:
        _load_modules(modules)
    except BaseException:
        conn.send(("failed", traceback.format_exc()))
        return
    cache = _GoldCache(GOLD_CACHE_SIZE)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        chunk_id, key, reward_model, items = message
        _mark(progress, chunk_id, -1)
        resolved, parsed = cache.get(key, reward_model)
        results = []
        for step, (index, text, ctx) in enumerate(items):
            _mark(progress, chunk_id, step)
            started = time.perf_counter()
            try:
                scores = score_text(text, resolved, ctx)
            except Exception as exc:  # score_text does not raise; a bug here must not take the worker down
                scores = unverifiable(f"scoring failed: {type(exc).__name__}: {exc}")
            results.append((index, scores, time.perf_counter() - started))
        _mark(progress, chunk_id, len(items))  # sending: a kill now fails no completion, the chunk is redone
        conn.send(("done", chunk_id, parsed, results))


# ------------------------------------------------------------------------------------------------ parent side


@dataclass
class _Chunk:
    chunk_id: int
    key: str
    reward_model: Any
    items: list[tuple[int, str, ScoringContext]]


@dataclass
class _Worker:
    process: Any
    conn: Connection
    progress: Any  # the shared record written by `_mark`
    ready: bool = False
    inflight: deque = field(default_factory=deque)  # chunks sent and not reported, oldest (the current one) first
    since: float = 0.0  # monotonic time the current chunk was sent, or became current

    @property
    def chunk(self) -> _Chunk | None:
        """The chunk the worker is on (or will start next), None when idle."""
        return self.inflight[0] if self.inflight else None

    def step(self) -> tuple[int, float]:
        """(step within the current chunk, monotonic start of that step) as the worker recorded it; before the
        worker picked the chunk up, (-1, since)."""
        chunk = self.chunk
        if chunk is None or int(self.progress[_CHUNK]) != chunk.chunk_id:
            return -1, self.since
        return int(self.progress[_STEP]), self.progress[_STARTED]


def _verifier_modules() -> list[str]:
    """Modules that register the verifiers known here; workers import them so custom verifiers exist there too."""
    modules = {type(get_verifier(name)).__module__ for name in available_verifiers()}
    return sorted(module for module in modules if module not in ("__main__", "__mp_main__"))


_MAIN_SWAP = threading.Lock()


@contextlib.contextmanager
def _bare_main_module() -> Iterator[None]:
    """Start workers without the program's `__main__`: multiprocessing's spawn and forkserver starts import it in
    every child, and for a training script that is torch, transformers and TRL, seconds and hundreds of MB per
    worker (and per replacement after a timeout) for modules the workers never use. So while a worker starts,
    `sys.modules["__main__"]` is an empty module. Kept when a registered verifier lives in `__main__` (a script
    that defines its own verifier), which the workers then need."""
    main = sys.modules.get("__main__")
    in_main = any(type(get_verifier(name)).__module__ in ("__main__", "__mp_main__") for name in available_verifiers())
    if main is None or in_main:
        yield
        return
    with _MAIN_SWAP:
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = main


def _context(start_method: str | None) -> Any:
    method = start_method or ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(list(PRELOAD))
    return context


def _chunks(jobs: Sequence[Job], chunk_size: int, ids: Iterator[int]) -> list[_Chunk]:
    """Jobs grouped by spec key (first-appearance order), each group split into chunks of at most `chunk_size`;
    chunk ids come from `ids`, unique over the pool's life (a worker's progress record never matches a stale id)."""
    groups: dict[str, list[int]] = {}
    for index, job in enumerate(jobs):
        key = job.key if job.key is not None else f"\0unkeyed:{index}"
        groups.setdefault(key, []).append(index)
    chunks = []
    for key, indices in groups.items():
        for start in range(0, len(indices), chunk_size):
            part = indices[start : start + chunk_size]
            items = [(i, jobs[i].text, jobs[i].ctx) for i in part]
            chunks.append(_Chunk(next(ids), key, jobs[part[0]].reward_model, items))
    return chunks


class ScoringPool:
    """`workers` processes scoring jobs, each completion bounded by `time_limit` seconds (see the module docstring).

    Workers start on first use and stay up between calls; `close()` (or leaving a `with` block) stops them. Safe to
    call from any thread, one call at a time.
    """

    def __init__(
        self,
        workers: int = 2,
        time_limit: float = 10.0,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        start_method: str | None = None,
    ):
        if workers < 1:
            raise ValueError(f"a scoring pool needs at least 1 worker, got {workers}")
        if not time_limit > 0:
            raise ValueError(f"the per-sample time limit must be > 0 seconds, got {time_limit}")
        self.workers = int(workers)
        self.time_limit = float(time_limit)
        self.chunk_size = max(1, int(chunk_size))
        self.stats = PoolStats()
        self._start_method = start_method
        self._context: Any = None
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()
        self._chunk_ids = itertools.count()

    # -------------------------------------------------------------------------------------- lifecycle

    def _spawn(self) -> _Worker:
        if self._context is None:
            self._context = _context(self._start_method)
        parent, child = self._context.Pipe(duplex=True)
        progress = self._context.RawArray("d", [-1.0, -1.0, 0.0])
        process = self._context.Process(
            target=_worker_main, args=(child, progress, _verifier_modules()), name="triune-reward-worker", daemon=True
        )
        with _bare_main_module():
            process.start()
        child.close()
        self.stats.workers_started += 1
        return _Worker(process, parent, progress)

    def _await_ready(self, pending: list[_Worker]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = [worker for worker in pending if not worker.ready]
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"a reward worker process did not start within {START_TIMEOUT_S:g} s")
            for conn in wait([worker.conn for worker in waiting], timeout=remaining):
                worker = next(w for w in waiting if w.conn is conn)
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    worker.process.join(timeout=5)
                    message = ("failed", f"it exited with code {worker.process.exitcode}. {MAIN_GUARD_HINT}")
                if message[0] != "ready":
                    self._stop(worker)
                    raise RuntimeError(f"a reward worker process failed to start:\n{message[1]}")
                worker.ready = True
            waiting = [worker for worker in waiting if not worker.ready]

    def start(self) -> None:
        """Start the workers now rather than on the first call (a server does this before it takes requests)."""
        with self._lock:
            self._ensure_workers()

    def _ensure_workers(self) -> None:
        started = [self._spawn() for _ in range(self.workers - len(self._pool))]
        self._pool.extend(started)
        self._await_ready(started)

    @staticmethod
    def _stop(worker: _Worker) -> None:
        with contextlib.suppress(Exception):
            worker.process.kill()
        with contextlib.suppress(Exception):
            worker.process.join(timeout=5)
        with contextlib.suppress(Exception):
            worker.conn.close()

    def close(self) -> None:
        """Stop every worker (asked first, killed after a second)."""
        pool, self._pool = self._pool, []
        for worker in pool:
            with contextlib.suppress(Exception):
                worker.conn.send(None)
        for worker in pool:
            with contextlib.suppress(Exception):
                worker.process.join(timeout=1)
            self._stop(worker)

    def __enter__(self) -> ScoringPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a ScoringPool holds live processes and cannot be copied or pickled")

    # -------------------------------------------------------------------------------------- scoring

    def score(self, jobs: Sequence[Job], *, progress: Any = None, budget: float | None = None) -> list[JobResult]:
        """Score every job; one result per job, in order. `progress` (a tqdm bar or None) is advanced per result.

        `budget` bounds the whole call in seconds: when it runs out, the busy workers are stopped (and replaced on
        the next call) and every job not scored yet is unverifiable with status `budget`. Without it, a batch in
        which every completion hangs takes `len(jobs) * time_limit / workers` seconds.
        """
        if budget is not None and not budget > 0:
            raise ValueError(f"the batch budget must be > 0 seconds, got {budget}")
        with self._lock:
            try:
                return self._score(list(jobs), progress, budget)
            except BaseException:
                self.close()  # the workers' state is unknown after an interrupt: start fresh next time
                raise

    def _score(self, jobs: list[Job], progress: Any, budget: float | None = None) -> list[JobResult]:
        call_started = time.monotonic()
        call_deadline = None if budget is None else call_started + budget
        results: list[JobResult | None] = [None] * len(jobs)
        queue = deque(_chunks(jobs, self.chunk_size, self._chunk_ids))
        left = len(jobs)
        self._ensure_workers()

        def finish(index: int, result: JobResult) -> None:
            nonlocal left
            if results[index] is None:
                results[index] = result
                left -= 1
                self.stats.scored += 1
                if progress is not None:
                    progress.update(1)

        def release(worker: _Worker, status: str) -> None:
            """A worker is gone or must go: fail the step it was on, requeue the rest, start a replacement."""
            chunk = worker.chunk
            step, started = worker.step()
            self._stop(worker)
            self._pool.remove(worker)
            for waiting in reversed(list(worker.inflight)[1:]):  # sent but not started: redo them elsewhere
                queue.appendleft(waiting)
            if chunk is not None:
                elapsed = time.monotonic() - started
                what = "parsing the gold" if step < 0 else "scoring this completion"
                if status == "timeout":
                    self.stats.timeouts += 1
                    reason = f"{what} took longer than the {self.time_limit:g} s time limit; the worker was stopped"
                else:
                    self.stats.crashes += 1
                    code = worker.process.exitcode
                    reason = f"the reward worker process died (exit code {code}) while {what}"
                failed = chunk.items if step < 0 else chunk.items[step : step + 1]
                for index, _, _ in failed:
                    finish(index, JobResult(unverifiable(reason), status, elapsed))
                rest = [item for item in chunk.items if results[item[0]] is None]
                if rest:
                    queue.appendleft(_Chunk(next(self._chunk_ids), chunk.key, chunk.reward_model, rest))
            replacement = self._spawn()
            self._pool.append(replacement)
            self._await_ready([replacement])

        def dispatch(worker: _Worker) -> None:
            """Send the worker the next chunk if it is idle, or a small second one to queue behind its current one."""
            if not queue or len(worker.inflight) >= 2:
                return
            chunk = queue[0]
            try:
                payload = _ForkingPickler.dumps((chunk.chunk_id, chunk.key, chunk.reward_model, chunk.items))
            except Exception as exc:  # the spec or a context cannot be pickled: those jobs cannot be scored
                queue.popleft()
                for index, _, _ in chunk.items:
                    finish(index, JobResult(unverifiable(f"cannot send this sample to a worker: {exc}"), "ok"))
                return
            if worker.inflight and len(payload) > PREFETCH_BYTES:
                return
            try:
                if not worker.process.is_alive():
                    raise BrokenPipeError
                worker.conn.send_bytes(payload)
            except (OSError, ValueError):  # BrokenPipeError; ValueError for a closed connection
                release(worker, "idle")
                return
            queue.popleft()
            if not worker.inflight:
                worker.since = time.monotonic()
            worker.inflight.append(chunk)

        def receive(worker: _Worker) -> bool:
            """Take the chunks the worker finished; False when the worker is gone."""
            try:
                while worker.conn.poll():
                    _, chunk_id, parsed, done = worker.conn.recv()
                    self.stats.gold_parses += int(parsed)
                    for index, scores, seconds in done:
                        finish(index, JobResult(scores, "ok", seconds))
                    if worker.inflight and worker.inflight[0].chunk_id == chunk_id:
                        worker.inflight.popleft()
                        worker.since = time.monotonic()
            except (EOFError, OSError):
                return False
            return worker.process.is_alive() or not worker.inflight

        def expire() -> None:
            """The call's budget ran out: stop the busy workers, fail every job not scored yet."""
            for worker in [worker for worker in self._pool if worker.inflight]:
                if receive(worker) and not worker.inflight:
                    continue
                self._stop(worker)
                self._pool.remove(worker)
            elapsed = time.monotonic() - call_started
            reason = f"the batch's scoring budget of {budget:g} s ran out before this completion was scored"
            for index, result in enumerate(results):
                if result is None:
                    self.stats.over_budget += 1
                    finish(index, JobResult(unverifiable(reason), "budget", elapsed))

        while left > 0:
            for worker in list(self._pool):
                dispatch(worker)
                if worker in self._pool:
                    dispatch(worker)  # a second, small chunk to queue behind the first
            if left == 0:
                break
            if call_deadline is not None and time.monotonic() >= call_deadline:
                expire()
                break
            busy = [worker for worker in self._pool if worker.inflight]
            if not busy:  # nothing in flight but results missing: cannot happen; guard against a silent hang
                raise RuntimeError("reward pool lost track of its work")
            deadline = min(worker.step()[1] for worker in busy) + self.time_limit
            if call_deadline is not None:
                deadline = min(deadline, call_deadline)
            handles = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            wait(handles, timeout=max(0.0, deadline - time.monotonic()))
            for worker in busy:  # read what arrived first: a finished chunk is never mistaken for a late one
                if not receive(worker):
                    release(worker, "crash")
                elif worker.inflight and time.monotonic() - worker.step()[1] > self.time_limit:
                    release(worker, "timeout")
        return [result for result in results if result is not None]


def score_jobs_in_process(jobs: Sequence[Job]) -> list[JobResult]:
    """The same scoring without worker processes (no time limit beyond math-verify's own): for debugging and
    for callers that cannot start processes. Each distinct spec is resolved once."""
    resolved: dict[str, Resolved] = {}
    results = []
    for job in jobs:
        if job.key is None:
            spec = resolve(job.reward_model)
        else:
            if job.key not in resolved:
                resolved[job.key] = resolve(job.reward_model)
            spec = resolved[job.key]
        started = time.perf_counter()
        scores = score_text(job.text, spec, job.ctx)
        results.append(JobResult(scores, "ok", time.perf_counter() - started))
    return results
