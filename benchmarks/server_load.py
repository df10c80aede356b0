"""Load on the reward server: many concurrent clients, every answer checked, latency and throughput measured.

`--clients` concurrent clients (default 16) each send `--batches` requests (default 200) of `--batch-size`
completions (default 64) to `POST /v1/score` on a local `triune serve-rewards` (started here on a free port with
`--server-workers` scoring processes, or the one at `--url`). The completions are the Orsta-shaped batch of
`benchmarks/rewards.py` (57% mathverify, 43% detection; correct, wrong and malformed), so each request is real
work (the server keeps no cache between requests). Every answer is checked against the in-process router's score
of the same completion: a request that fails, or an answer of the wrong length, order or value, is counted as
lost or mismatched. Reported: completions/s through the server, request latency p50/p90/p99, and the rate of the
in-process router with the same number of worker processes on the same completions (the server's overhead is the
difference). The clients run in this process on asyncio with one httpx connection pool, as a trainer's reward
function does, and share the machine's cores with the server.

    python benchmarks/server_load.py                       # 16 x 200 x 64, writes benchmarks/results/latest/
    python benchmarks/server_load.py --batches 20          # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rewards import STEP, TOTAL_STEPS, make_batch  # noqa: E402  (benchmarks/rewards.py: the Orsta-shaped batch)

from triune_trl.rewards import RewardRouter  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "latest" / "server_load.json"  # git-ignored (README)
POOL_SIZE = 8192  # distinct completions the requests are cut from


def _items(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    items = []
    for row in rows:
        item = {"completion": row["completion"], "reward_model": row["reward_model"], "step": STEP,
                "total_steps": TOTAL_STEPS}  # fmt: skip
        if row["image_size"]:
            item["image_size"] = list(row["image_size"])
        items.append(item)
    return items


def _in_process(rows: list[dict[str, Any]], workers: int) -> tuple[list[float | None], float]:
    """The router's scores for every row and its wall-clock seconds (workers started before the clock)."""
    router = RewardRouter(iou_threshold="dynamic", workers=workers)
    router.set_progress(STEP, TOTAL_STEPS)
    try:
        router(prompts=["p"], completions=[rows[0]["completion"]], reward_model=[rows[0]["reward_model"]],
               image_sizes=[[rows[0]["image_size"]] if rows[0]["image_size"] else []])  # fmt: skip
        started = time.perf_counter()
        scores = router(
            prompts=["p"] * len(rows),
            completions=[row["completion"] for row in rows],
            reward_model=[row["reward_model"] for row in rows],
            image_sizes=[[row["image_size"]] if row["image_size"] else [] for row in rows],
        )
        return scores, time.perf_counter() - started
    finally:
        router.close()


def _start_server(workers: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "triune_trl.cli", "serve-rewards", "--host", "127.0.0.1", "--port", "0",
         "--workers", str(workers)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = process.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not match:
        process.kill()
        raise RuntimeError(f"the server did not announce its address: {line!r}")
    url = f"http://127.0.0.1:{match.group(1)}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not become healthy within 60 s")


async def _load(url: str, items: list[dict[str, Any]], expected: list[float | None], clients: int, batches: int,
                batch_size: int) -> dict[str, Any]:  # fmt: skip
    latencies: list[float] = []
    lost = mismatched = 0
    bar = tqdm(total=clients * batches, desc="requests", unit="request")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:

        async def client(number: int) -> None:
            nonlocal lost, mismatched
            for batch in range(batches):
                start = ((number * batches + batch) * batch_size) % (len(items) - batch_size)
                started = time.perf_counter()
                try:
                    response = await http.post("/v1/score?echo=false", json=items[start : start + batch_size])
                    response.raise_for_status()
                    answer = response.json()
                except (httpx.HTTPError, ValueError):
                    lost += 1
                else:
                    latencies.append(time.perf_counter() - started)
                    got = [out.get("final_reward") for out in answer] if isinstance(answer, list) else None
                    if got != expected[start : start + batch_size]:
                        mismatched += 1
                bar.update(1)

        started = time.perf_counter()
        await asyncio.gather(*(client(number) for number in range(clients)))
        seconds = time.perf_counter() - started
    bar.close()
    latencies.sort()

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    requests = clients * batches
    return {
        "requests": requests,
        "completions": requests * batch_size,
        "lost_requests": lost,
        "mismatched_responses": mismatched,
        "seconds": seconds,
        "completions_per_s": requests * batch_size / seconds,
        "latency_ms": {
            "p50": 1000 * percentile(0.50),
            "p90": 1000 * percentile(0.90),
            "p99": 1000 * percentile(0.99),
            "max": 1000 * latencies[-1] if latencies else float("nan"),
            "mean": 1000 * statistics.fmean(latencies) if latencies else float("nan"),
        },  # fmt: skip
    }


def run(clients: int, batches: int, batch_size: int, server_workers: int, url: str | None) -> dict[str, Any]:
    rows = make_batch(POOL_SIZE, seed=0)
    items = _items(rows)
    expected, in_process_seconds = _in_process(rows, server_workers)
    print(f"in-process router, {server_workers} workers: {len(rows) / in_process_seconds:.0f} completions/s",
          file=sys.stderr)  # fmt: skip
    process = None
    if url is None:
        process, url = _start_server(server_workers)
    try:
        load = asyncio.run(_load(url, items, expected, clients, batches, batch_size))
        health = httpx.get(f"{url}/health", timeout=10).json()
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    return {
        "clients": clients,
        "batches_per_client": batches,
        "batch_size": batch_size,
        "server_workers": server_workers,
        "server": load,
        # what the server saw: completions scored, of which distinct within their merged batch, in how many batches
        "server_scored": health.get("scored"),
        "server_distinct_scored": health.get("distinct_scored"),
        "server_batches": health.get("batches"),
        "in_process": {
            "workers": server_workers,
            "completions": len(rows),
            "seconds": in_process_seconds,
            "completions_per_s": len(rows) / in_process_seconds,
        },  # fmt: skip
        "server_vs_in_process": load["completions_per_s"] / (len(rows) / in_process_seconds),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1min_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },  # fmt: skip
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batches", type=int, default=200, help="requests per client")
    parser.add_argument("--batch-size", type=int, default=64, help="completions per request")
    parser.add_argument("--server-workers", type=int, default=2, help="scoring processes of the server started here")
    parser.add_argument("--url", help="use this running server instead of starting one (same --server-workers)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args.clients, args.batches, args.batch_size, args.server_workers, args.url)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    server, latency = result["server"], result["server"]["latency_ms"]
    print(f"\n{args.clients} clients x {args.batches} requests x {args.batch_size} completions = "
          f"{server['completions']} completions in {server['seconds']:.1f} s")  # fmt: skip
    print(f"lost requests: {server['lost_requests']}, mismatched responses: {server['mismatched_responses']}")
    print(f"server: {server['completions_per_s']:.0f} completions/s; latency p50 {latency['p50']:.0f} ms, "
          f"p90 {latency['p90']:.0f} ms, p99 {latency['p99']:.0f} ms")  # fmt: skip
    print(f"the server merged the {server['requests']} requests into {result['server_batches']} scoring batches; "
          f"{result['server_distinct_scored']} of {result['server_scored']} completions were distinct in their batch")
    print(f"in-process router ({args.server_workers} workers, same completions): "
          f"{result['in_process']['completions_per_s']:.0f} completions/s; server / in-process "
          f"{result['server_vs_in_process']:.2f}")  # fmt: skip
    print(f"results: {args.output}")
    return 0 if server["lost_requests"] == 0 and server["mismatched_responses"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
